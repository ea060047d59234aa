"""The one execution layer for parallel work: Dask distributed.

``jkstep generate``, ``jkstep generate-mm``, ``jkstep generate-fast``, ``jkstep evaluate`` and
``jkstep run --replicas N`` cut their work into tasks (one molecule, one replica, one
contender-replica) and hand them to ``Executor.run``. By default the executor starts an embedded
``LocalCluster`` of worker *processes*, one per core (``default_workers``), one thread each and
``OMP_NUM_THREADS=1`` (one OpenMP thread for each task's tblite); ``workers=N`` sets its size and
``scheduler=ADDRESS`` connects to an existing Dask scheduler instead (a cluster on many machines,
e.g. started with dask-jobqueue on SLURM: docs/cluster.md). No dashboard is started and
distributed's own loggers are silenced: what the user sees is jkstep's progress bar and its
one-line errors.

Results do not depend on where or in which order tasks ran: the callers cut tasks the same
way whatever the worker count, pass NumPy float64 arrays, seed each task from its identity and
build a fresh potential in every task. The task wrapper (``_call``) imports ``jkstep`` (float64
mode) before the task's arguments are used, turns on JAX's persistent compilation cache
(``compilation_cache_dir``) and sets one OpenMP thread where tblite is not yet loaded.

Faults: a worker that dies mid-task has its task run again on another worker (Dask does this:
up to ``distributed.scheduler.allowed-failures`` deaths of the same task); tasks are
idempotent (they resume from, or overwrite atomically, what they wrote), so nothing is lost or
duplicated. Ctrl-C (or SIGTERM) cancels the tasks still pending; finished results are kept —
generation tasks in their trajectory stores, evaluation and run tasks in the result cache
(``ResultCache``, default ``~/.cache/jkstep/results``) — so the same command run again reuses them.

Progress: ``Executor.run`` calls ``on_task(key, result)`` as each task finishes, and a task
can report steps with the callable ``step_reporter()`` returns, which reaches the client's
``on_steps(key, n)`` through Dask's event stream (retries are not counted twice).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Callable

import numpy as np

from jkstep.errors import InputError

#: Dask event topic of the steps tasks report.
PROGRESS_TOPIC = "jkstep-steps"
#: Seconds to wait for an external scheduler before giving up.
CONNECT_TIMEOUT_S = 10.0
#: Seconds between two step reports of one task (the last one is always sent).
REPORT_EVERY_S = 0.25


def default_workers() -> int:
    """Worker processes of the embedded cluster when none are asked for: the cores this
    process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def check_workers(workers, scheduler=None) -> None:
    """InputError (one line) for a bad ``--workers`` / ``--scheduler`` combination."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise InputError(f"--workers must be a whole number ≥ 1 (worker processes), got {workers!r}")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise InputError(f"--scheduler must be a Dask scheduler address such as tcp://HOST:8786, got {scheduler!r}")
        if workers is not None:
            raise InputError("--workers sizes the embedded cluster; with --scheduler the cluster's own workers run the "
                             "tasks: give one of them")


def compilation_cache_dir() -> str:
    """Directory of JAX's persistent compilation cache: ``$JKSTEP_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/jkstep/jax`` (``~/.cache/jkstep/jax``)."""
    return os.environ.get("JKSTEP_JAX_CACHE") or os.path.join(_cache_home(), "jkstep", "jax")


def _cache_home() -> str:
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in this process (every compilation, however
    short, is stored). Off when ``$JKSTEP_JAX_CACHE`` is ``off``. Returns the directory used.

    JAX does not store executables that contain host callbacks, i.e. anything that calls xTB
    (``jax.pure_callback``); those are compiled in every task (docs/cluster.md gives the cost)."""
    import jax

    directory = directory or compilation_cache_dir()
    if directory.lower() in ("off", "0", "none"):
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def silence_distributed() -> None:
    """distributed's loggers (and tornado's, which it uses) print nothing below CRITICAL, here and
    in worker processes started from here (through the environment)."""
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "critical"
    os.environ["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "critical"
    for name in ("distributed", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# -- the task side ----------------------------------------------------------------------------


_CURRENT = threading.local()   # the key of the task this thread runs (a worker may run several threads)


def _call(fn: Callable, key: str, cache_dir: str | None, args: tuple, kwargs: dict, worker: bool = True):
    """Run ``fn(*args, **kwargs)`` as task ``key``; on a worker (``worker``) with one OpenMP
    thread, float64 JAX and the persistent compilation cache on. The result goes to the result
    cache ``cache_dir`` (where given and reachable) before it is returned."""
    if worker:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite's OpenMP runtime is loaded
        import jax

        jax.config.update("jax_enable_x64", True)   # as `import jkstep` does: float64 before any task runs

        enable_compilation_cache()
    _CURRENT.key = key
    try:
        result = fn(*args, **kwargs)
    finally:
        _CURRENT.key = None
    if cache_dir is not None:
        try:
            ResultCache(cache_dir).save(key, result)
        except OSError:
            pass  # a worker on another machine without the client's file system: the client saves it
    return result


def step_reporter() -> Callable[[int], None]:
    """A ``progress(n)`` callable for code running as a task: tells the client of n more steps
    done (throttled; a no-op outside a Dask task)."""
    key = getattr(_CURRENT, "key", None)
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return lambda n: None
    if key is None:
        return lambda n: None
    done, last = [0], [0.0]

    def report(n):
        done[0] += int(n)
        now = time.monotonic()
        if now - last[0] >= REPORT_EVERY_S:
            last[0] = now
            worker.log_event(PROGRESS_TOPIC, {"key": key, "done": done[0]})

    report.flush = lambda: worker.log_event(PROGRESS_TOPIC, {"key": key, "done": done[0]})  # type: ignore
    return report


def flush_steps(report) -> None:
    """Send a reporter's last count (call at the end of a task)."""
    flush = getattr(report, "flush", None)
    if flush:
        flush()


# -- the result cache -------------------------------------------------------------------------


def results_dir() -> str:
    """Where finished task results are kept: ``$JKSTEP_RESULTS``, else
    ``$XDG_CACHE_HOME/jkstep/results`` (``~/.cache/jkstep/results``)."""
    return os.environ.get("JKSTEP_RESULTS") or os.path.join(_cache_home(), "jkstep", "results")


@contextlib.contextmanager
def _no_cache_dir_errors():
    try:
        yield
    except OSError:
        pass


def _code_version() -> str:
    """A digest of jkstep's source files: results of other code are never reused."""
    if _CODE[0] is None:
        root = os.path.dirname(os.path.abspath(__file__))
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in sorted(os.walk(root)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".py"):
                    with open(os.path.join(dirpath, name), "rb") as fh:
                        h.update(name.encode() + fh.read())
        _CODE[0] = h.hexdigest()[:16]
    return _CODE[0]


_CODE: list = [None]


def task_key(name: str, *identity) -> str:
    """A task's key: ``name`` plus a digest of its identity (numbers, strings, arrays, dicts,
    dataclasses) and of jkstep's code, the same in every process and on every run."""
    h = hashlib.sha256(_code_version().encode())
    _digest(h, identity)
    return f"{name}-{h.hexdigest()[:20]}"


def _digest(h, value) -> None:
    import dataclasses

    if isinstance(value, np.ndarray) or type(value).__module__.startswith(("jax", "jaxlib")):
        a = np.ascontiguousarray(np.asarray(value))
        h.update(f"a{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(type(value).__qualname__.encode())
        for f in dataclasses.fields(value):
            h.update(f.name.encode())
            _digest(h, getattr(value, f.name))
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _digest(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _digest(h, v)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


class ResultCache:
    """Finished task results on disk, one ``KEY.npz`` (arrays, no pickle) + ``KEY.json`` (the
    rest, written last: it marks the entry complete) per task, both written atomically.

    A result is a dict whose values are NumPy arrays (at any depth of nested dicts) or JSON values."""

    def __init__(self, directory: str | None = None):
        self.directory = directory or results_dir()

    def _paths(self, key: str):
        return os.path.join(self.directory, key + ".npz"), os.path.join(self.directory, key + ".json")

    def has(self, key: str) -> bool:
        return os.path.isfile(self._paths(key)[1])

    def load(self, key: str):
        """The stored result of ``key``, or None."""
        npz, meta = self._paths(key)
        try:
            with open(meta) as fh:
                info = json.load(fh)
            arrays = {}
            if info.get("arrays"):
                with np.load(npz, allow_pickle=False) as data:
                    arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError):
            return None
        return _unflatten(info["value"], arrays)

    def save(self, key: str, result) -> None:
        from jkstep.data.store import atomic_write_bytes

        os.makedirs(self.directory, exist_ok=True)
        arrays: dict = {}
        value = _flatten(result, arrays, "")
        npz, meta = self._paths(key)
        if arrays:
            atomic_write_bytes(npz, lambda fh: np.savez(fh, **arrays))
        text = json.dumps({"key": key, "arrays": bool(arrays), "value": value}).encode()
        atomic_write_bytes(meta, lambda fh: fh.write(text))


def _flatten(value, arrays: dict, path: str):
    if isinstance(value, dict):
        return {"__dict__": {str(k): _flatten(v, arrays, f"{path}/{k}") for k, v in value.items()}}
    if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, (np.bool_,)) or \
            type(value).__module__.startswith(("jax", "jaxlib")):
        arrays[path] = np.asarray(value)
        return {"__array__": path}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (list, tuple)):
        return [_flatten(v, arrays, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}
    return value


def _unflatten(value, arrays: dict):
    if isinstance(value, dict):
        if "__dict__" in value:
            return {k: _unflatten(v, arrays) for k, v in value["__dict__"].items()}
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__float__" in value:
            return float(value["__float__"])
    if isinstance(value, list):
        return [_unflatten(v, arrays) for v in value]
    return value


_BUILT: dict = {}
#: Integrators kept per worker process (``built``); the oldest go first.
MAX_BUILT = 16


def built(identity: str, make: Callable[[], Any]):
    """``make()``, once per process for each ``identity`` (a ``task_key`` of everything the
    result depends on): tasks of one kind that follow each other on a worker share what was
    built and compiled for the first (an integrator and its jitted chunk runners) instead of
    compiling it again. The caller renews any per-task state (an xTB potential's calculators and
    counters: ``fresh_potential``)."""
    if identity not in _BUILT:
        while len(_BUILT) >= MAX_BUILT:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[identity] = make()
    return _BUILT[identity]


def fresh_potential(pot) -> None:
    """Make a kept xTB potential what a new one is: its tblite calculators dropped (new ones,
    without any SCF restart guess, are made at the next call) and its counters at zero."""
    close = getattr(pot, "close", None)
    if close:
        close()
    for name in ("calls", "scf_failures", "retries", "fallbacks", "failed"):
        if hasattr(pot, name):
            setattr(pot, name, 0)


# -- the client side --------------------------------------------------------------------------


class Handle:
    """A submitted task (``Executor.submit``): ``result()`` waits for it (and keeps it in the
    result cache); ``done()`` says whether it has finished."""

    _MISSING = object()

    def __init__(self, key: str, future=None, value=_MISSING, results: "ResultCache | None" = None):
        self.key, self.future, self._value, self._results = key, future, value, results

    def done(self) -> bool:
        return self._value is not Handle._MISSING or (self.future is not None and self.future.done())

    def result(self):
        if self._value is Handle._MISSING:
            self._value = self.future.result()
            if self._results is not None and not self._results.has(self.key):
                with _no_cache_dir_errors():
                    self._results.save(self.key, self._value)
        return self._value

    @property
    def finished(self) -> bool:
        """The task has its result (here, in the result cache or on a worker), with no error."""
        return self._value is not Handle._MISSING or (self.future is not None and self.future.status == "finished")

    def cancel(self) -> None:
        if self.future is not None and not self.future.done():
            with contextlib.suppress(Exception):
                self.future.cancel(force=True)


class SerialExecutor:
    """The same tasks, run one after the other in this process when they are submitted (the
    Python functions' default; the command line always uses Dask). Same interface as
    ``Executor`` for ``submit``."""

    description = "this process"
    n_workers = 1

    def submit(self, task: Task, results: "ResultCache | None" = None, on_done=None,
               on_steps=None) -> Handle:
        cached = results.load(task.key) if (results is not None and task.cache) else None
        if cached is None:
            value = _call(task.fn, task.key, None, task.args, dict(task.kwargs), worker=False)
            if results is not None and task.cache:
                with _no_cache_dir_errors():
                    results.save(task.key, value)
        else:
            value = cached
        if on_done:
            on_done(task.key)
        return Handle(task.key, value=value)

    def cancel(self, handles) -> None:
        pass


class Task:
    """One unit of work: ``fn(*args, **kwargs)`` under ``key`` (unique, from its identity),
    optionally after ``after`` (keys of tasks whose results are passed as keyword arguments:
    {kwarg name: key}). ``cache`` keeps its result in the result cache (default: off, for tasks
    that keep their own results, e.g. in trajectory stores)."""

    def __init__(self, key: str, fn: Callable, *args, cache: bool = False, **kwargs):
        self.key, self.fn, self.args, self.kwargs, self.cache = key, fn, args, kwargs, cache


class Executor:
    """A Dask client over an embedded LocalCluster or an existing scheduler (``open_executor``)."""

    def __init__(self, client, cluster=None, description: str = ""):
        self.client, self.cluster, self.description = client, cluster, description
        self._step_handlers: dict[str, Callable[[int], None]] = {}
        self._seen: dict[str, int] = {}
        client.subscribe_topic(PROGRESS_TOPIC, self._on_event)

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {})) if self.client else 0

    def _on_event(self, event):
        _, msg = event
        key, done = msg.get("key"), int(msg.get("done", 0))
        handler = self._step_handlers.get(key)
        seen = self._seen.get(key, 0)
        if handler is not None and done > seen:  # a retried task counts again from 0: no double counting
            self._seen[key] = done
            handler(done - seen)

    def run(self, tasks: list[Task], on_task: Callable[[str, Any], None] | None = None,
            on_steps: Callable[[str, int], None] | None = None, results: ResultCache | None = None,
            on_error: Callable[[str, BaseException], Any] | None = None) -> dict:
        """Run ``tasks`` (in dependency order: a task's ``after`` results are passed to it);
        returns {key: result}. ``on_task(key, result)`` as each finishes (also for results found
        in ``results``, the result cache, which are not run again); ``on_steps(key, n)`` as tasks
        report steps. The first task error is raised (InputError as it is), or, with
        ``on_error(key, exc)``, its return value is that task's result (a task whose worker died
        too often ends as ``distributed.KilledWorker``) and the others go on. Ctrl-C cancels every
        task still pending and re-raises; finished results stay in ``results`` (and the tasks'
        own stores)."""
        from distributed import as_completed

        keys = [t.key for t in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError("task keys must be unique")
        out: dict[str, Any] = {}
        futures = {}
        try:
            for task in tasks:
                cached = results.load(task.key) if (results is not None and task.cache) else None
                if cached is not None:
                    out[task.key] = cached
                    if on_task:
                        on_task(task.key, cached)
                    continue
                if on_steps:
                    self._step_handlers[task.key] = (lambda n, k=task.key: on_steps(k, n))
                kwargs = dict(task.kwargs)
                deps = {name: futures[k] if k in futures else out[k] for name, k in kwargs.pop("after", {}).items()}
                cache_dir = results.directory if (results is not None and task.cache) else None
                futures[task.key] = self.client.submit(
                    _call, task.fn, task.key, cache_dir, task.args, {**kwargs, **deps}, key=task.key, pure=False)
            by_future = {f: k for k, f in futures.items()}
            for future in as_completed(list(futures.values()), loop=self.client.loop):
                key = by_future[future]
                if on_error is not None and future.status == "error":
                    result = on_error(key, future.exception())
                    out[key] = result
                    if on_task:
                        on_task(key, result)
                    continue
                result = future.result()  # a task's exception is raised here
                if results is not None and key in {t.key for t in tasks if t.cache} and not results.has(key):
                    with _no_cache_dir_errors():  # the worker could not write it there
                        results.save(key, result)
                out[key] = result
                if on_task:
                    on_task(key, result)
        except BaseException:
            # Ctrl-C or a failed task: nothing more is started; what finished stays where it was saved
            pending = [f for f in futures.values() if not f.done()]
            if pending:
                with contextlib.suppress(Exception):
                    self.client.cancel(pending, force=True)
            raise
        finally:
            for key in keys:
                self._step_handlers.pop(key, None)
        return out

    def submit(self, task: Task, results: ResultCache | None = None, on_done: Callable[[str], None] | None = None,
               on_steps: Callable[[str, int], None] | None = None) -> Handle:
        """Start ``task`` (or take its result from ``results``, the result cache) → a Handle.
        ``on_done(key)`` runs when it finishes (in Dask's client thread)."""
        cached = results.load(task.key) if (results is not None and task.cache) else None
        if cached is not None:
            if on_done:
                on_done(task.key)
            return Handle(task.key, value=cached)
        if on_steps:
            self._step_handlers[task.key] = (lambda n, k=task.key: on_steps(k, n))
        cache_dir = results.directory if (results is not None and task.cache) else None
        future = self.client.submit(_call, task.fn, task.key, cache_dir, task.args, dict(task.kwargs),
                                    key=task.key, pure=False)
        if on_done:
            future.add_done_callback(lambda f: on_done(task.key) if f.status == "finished" else None)
        return Handle(task.key, future, results=results if task.cache else None)

    def cancel(self, handles) -> None:
        """Cancel the handles' tasks that have not finished (Ctrl-C)."""
        pending = [h.future for h in handles if h.future is not None and not h.future.done()]
        if pending:
            with contextlib.suppress(Exception):
                self.client.cancel(pending, force=True)

    def close(self):
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(PROGRESS_TOPIC)
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=10)


@contextlib.contextmanager
def open_executor(workers: int | None = None, scheduler: str | None = None):
    """An ``Executor``: an embedded LocalCluster of ``workers`` processes (default
    ``default_workers()``), one thread and one OpenMP thread each, no dashboard; or a client of
    the Dask scheduler at ``scheduler``. An unreachable scheduler is an InputError (one line)."""
    check_workers(workers, scheduler)
    silence_distributed()
    import dask
    from distributed import Client, LocalCluster

    config = {"distributed.scheduler.work-stealing": True, "distributed.worker.daemon": True,
              "distributed.admin.tick.limit": "1h", "distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT_S}s",
              "logging.distributed": "critical"}
    executor = None
    with dask.config.set(config):
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InputError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there "
                                 f"({reason[:160]}); start one (dask scheduler) or check the address") from None
            executor = Executor(client, None, f"Dask scheduler {scheduler}")
        else:
            n = default_workers() if workers is None else int(workers)
            old = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = "1"   # inherited by the worker processes
            try:
                # no dashboard; the scheduler's small HTTP server (health checks) on a free local port
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                       scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                                       silence_logs=logging.CRITICAL, host="127.0.0.1",
                                       env={"OMP_NUM_THREADS": "1", "DASK_LOGGING__DISTRIBUTED": "critical"})
            finally:
                if old is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = old
            client = Client(cluster, set_as_default=False)
            executor = Executor(client, cluster, f"local cluster of {n} worker process(es)")
        try:
            yield executor
        finally:
            executor.close()


def run_tasks_on(executor, tasks: list[Task], on_task: Callable[[str, Any], None], workers: int | None = None,
                 scheduler: str | None = None) -> None:
    """Run ``tasks`` on an open ``executor`` (an ``Executor``, or ``SerialExecutor()`` for this
    process) if one is given, else on a cluster of ``workers`` or the one at ``scheduler``
    (``run_tasks``); ``on_task(key, result)`` as each finishes."""
    if executor is None:
        run_tasks(tasks, workers=None if scheduler else workers, scheduler=scheduler, on_task=on_task)
        return
    handles = [executor.submit(task) for task in tasks]
    for task, handle in zip(tasks, handles):
        on_task(task.key, handle.result())


def run_tasks(tasks: list[Task], workers: int | None = None, scheduler: str | None = None, **options) -> dict:
    """``Executor.run`` on a cluster opened for these tasks (``open_executor``) and closed after;
    no cluster at all when the result cache (``results=``) holds every task's result."""
    check_workers(workers, scheduler)
    results = options.get("results")
    if results is not None and tasks and all(t.cache for t in tasks):
        cached = {t.key: results.load(t.key) for t in tasks}
        if all(v is not None for v in cached.values()):
            for key, value in cached.items():
                if options.get("on_task"):
                    options["on_task"](key, value)
            return cached
    with open_executor(workers, scheduler) as executor:
        return executor.run(tasks, **options)
