"""The Dask execution layer (jkstep.parallel) and the commands that run on it: results that do
not depend on the worker count or the cluster, a killed worker that loses nothing, an external
scheduler, and one-line errors for bad --workers / --scheduler."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from jkstep import parallel
from jkstep.data import generate as gen
from jkstep.data import mm
from jkstep.data.store import TrajectoryStore
from jkstep.errors import InputError

# -- helpers ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stores(root):
    """{relative run path: {array: values}} of every trajectory under ``root``."""
    out = {}
    for meta in sorted(glob.glob(os.path.join(root, "*", "*", "meta.json"))):
        path = os.path.dirname(meta)
        store = TrajectoryStore(path)
        arrays = {k: v for k, v in store.load().items() if k not in ("numbers", "masses", "meta")}
        out[os.path.relpath(path, root)] = arrays
    return out


def _assert_same_data(a, b):
    sa, sb = _stores(a), _stores(b)
    assert sa.keys() == sb.keys() and sa
    for run in sa:
        assert sa[run].keys() == sb[run].keys()
        np.testing.assert_array_equal(sa[run]["step"], np.arange(len(sa[run]["step"])))  # no gap, no duplicate
        for key in sa[run]:
            np.testing.assert_array_equal(sa[run][key], sb[run][key], err_msg=f"{run} {key}")  # bit for bit


def _xtb_config(tmp_path, output):
    (tmp_path / "m.smi").write_text("CCO ethanol\nO water\n")
    (tmp_path / "s.json").write_text(json.dumps({"train": ["ethanol"], "val": ["water"], "test": []}))
    return gen.GenerateConfig(molecules=str(tmp_path / "m.smi"), splits=str(tmp_path / "s.json"),
                              output=str(tmp_path / output), equilibration_ps=0.0025, production_ps=0.0025,
                              replicas=1, replica_ps=0.0025, chunk_frames=8, workers=1)


def _write_yaml(path, cfg):
    import dataclasses

    import yaml

    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _mm_config(tmp_path, output, **changes):
    (tmp_path / "mm.smi").write_text("CCO ethanol\nCCS ethanethiol\n")
    settings = dict(molecules=str(tmp_path / "mm.smi"), output=str(tmp_path / output), equilibration_ps=0.01,
                    production_ps=0.05, replicas=2, chunk_frames=16, buckets=[12])
    return mm.MMConfig(**{**settings, **changes})


# -- no cluster -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers, scheduler, message", [
    (0, None, "--workers must be a whole number ≥ 1"),
    (-3, None, "--workers must be a whole number ≥ 1"),
    (2, "tcp://127.0.0.1:8786", "give one of them"),
    (None, " ", "--scheduler must be a Dask scheduler address"),
])
def test_bad_workers_or_scheduler_is_input_error(workers, scheduler, message):
    with pytest.raises(InputError, match=message):
        parallel.check_workers(workers, scheduler)


@pytest.mark.parametrize("command", [["generate", "--config", "none.yaml"], ["generate-mm", "--config", "none.yaml"],
                                     ["generate-fast", "--config", "none.yaml"], ["evaluate", "--smiles", "O"], ["run", "--smiles", "O", "--integrator", "verlet"]])
def test_cli_workers_0_is_one_line_exit_2(tmp_path, capsys, command):
    from jkstep import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(command + ["--workers", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jkstep: error: --workers must be")


def test_cli_unreachable_scheduler_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from jkstep import cli

    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT_S", 1.0)
    config = _write_yaml(tmp_path / "mm.yaml", _mm_config(tmp_path, "mm"))
    address = f"tcp://127.0.0.1:{_free_port()}"   # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate-mm", "--config", config, "--scheduler", address])
    assert exc.value.code == 2 and time.perf_counter() - t0 < 30
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"jkstep: error: --scheduler {address}: cannot reach a Dask scheduler there")
    assert not os.path.exists(tmp_path / "mm" / "ethanol")


def test_task_keys_are_stable_and_follow_the_identity():
    a = parallel.task_key("run", np.arange(3.0), {"seed": 1, "ps": 0.5})
    assert a == parallel.task_key("run", np.arange(3.0), {"ps": 0.5, "seed": 1})
    assert a != parallel.task_key("run", np.arange(3.0), {"seed": 2, "ps": 0.5})
    assert a != parallel.task_key("run", np.arange(3.0) + 1e-15 * 0 + np.array([0, 0, 1e-12]), {"seed": 1, "ps": 0.5})
    assert a.startswith("run-")


def test_result_cache_round_trip_without_pickle(tmp_path):
    cache = parallel.ResultCache(str(tmp_path / "results"))
    result = {"frames": {"positions": np.random.default_rng(0).normal(size=(2, 3, 3)),
                         "failed": np.array([[False, True]])},
              "xtb_calls": 7, "wall_s": 1.5, "drift": None, "nan": float("nan"), "names": ["a", "b"]}
    assert cache.load("k") is None
    cache.save("k", result)
    back = cache.load("k")
    np.testing.assert_array_equal(back["frames"]["positions"], result["frames"]["positions"])
    assert back["frames"]["failed"].dtype == bool and back["xtb_calls"] == 7 and back["drift"] is None
    assert np.isnan(back["nan"]) and back["names"] == ["a", "b"]
    with np.load(tmp_path / "results" / "k.npz", allow_pickle=False) as data:  # plain arrays
        assert sorted(data.files) == ["/frames/failed", "/frames/positions"]


# -- an embedded cluster ----------------------------------------------------------------------


def _square(x, extra=None):
    report = parallel.step_reporter()
    for _ in range(3):
        report(2)
    parallel.flush_steps(report)
    return {"y": np.asarray(x) ** 2 + (0.0 if extra is None else extra["y"].sum()), "pid": os.getpid()}


def _fails(x):
    raise InputError(f"bad input {x}")


def test_executor_runs_tasks_with_dependencies_progress_and_errors(tmp_path):
    cache = parallel.ResultCache(str(tmp_path / "results"))
    tasks = [parallel.Task(f"sq-{i}", _square, np.arange(3.0) + i, cache=True) for i in range(4)]
    tasks.append(parallel.Task("dep", _square, np.ones(2), after={"extra": "sq-0"}))
    steps, done = [], []
    with parallel.open_executor(workers=2) as ex:
        assert ex.n_workers == 2
        out = ex.run(tasks, on_steps=lambda k, n: steps.append(n), on_task=lambda k, r: done.append(k),
                     results=cache)
        np.testing.assert_array_equal(out["sq-3"]["y"], (np.arange(3.0) + 3) ** 2)
        np.testing.assert_array_equal(out["dep"]["y"], np.ones(2) + 5.0)   # after sq-0 = [0, 1, 4]
        assert sorted(done) == sorted(t.key for t in tasks)
        assert len({r["pid"] for r in out.values()} - {os.getpid()}) >= 1   # ran in worker processes
        # the cached ones are not run again
        again = ex.run([parallel.Task(f"sq-{i}", _square, np.arange(3.0) + i, cache=True) for i in range(4)],
                       results=cache)
        assert [again[f"sq-{i}"]["pid"] for i in range(4)] == [out[f"sq-{i}"]["pid"] for i in range(4)]
        with pytest.raises(InputError, match="bad input 3"):
            ex.run([parallel.Task("bad", _fails, 3)])
        failed = ex.run([parallel.Task("bad2", _fails, 4)], on_error=lambda k, e: str(e))
        assert failed == {"bad2": "bad input 4"}
    # the step events may trail the results a little; every step is counted at most once
    assert 0 < sum(steps) <= 5 * 6


@pytest.mark.slow
def test_mm_generation_on_two_workers_survives_a_killed_worker_bit_for_bit(tmp_path):
    """A worker SIGKILLed mid-task: its molecule is run again elsewhere, resumes from its stores,
    and the data equal an uninterrupted generation bit for bit: nothing lost or duplicated."""
    reference = _mm_config(tmp_path, "uninterrupted", production_ps=0.5, chunk_frames=100)
    cfg = _mm_config(tmp_path, "killed", production_ps=0.5, chunk_frames=100)
    killed = []
    with parallel.open_executor(workers=2) as ex:
        results = mm.generate_mm(reference, processes=True, executor=ex)
        assert [r["status"] for r in results] == ["complete", "complete"]
        pids = ex.client.run(os.getpid)

        def kill_mid_task():
            store = TrajectoryStore(os.path.join(cfg.output, "ethanol", "production"))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if store.reload().exists and 0 < store.n_frames < cfg.target_frames(cfg.production_ps):
                    for address, keys in ex.client.processing().items():
                        if any("ethanol" in k for k in keys):
                            os.kill(pids[address], signal.SIGKILL)
                            killed.append(store.n_frames)
                            return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_mid_task, daemon=True)
        watcher.start()
        results = mm.generate_mm(cfg, processes=True, executor=ex)
        watcher.join(5)
    assert killed, "the ethanol task finished before it could be killed"
    assert [r["status"] for r in results] == ["complete", "complete"]
    _assert_same_data(cfg.output, reference.output)
    assert not glob.glob(os.path.join(cfg.output, "**", ".tmp-*"), recursive=True)


@pytest.fixture(scope="module")
def xtb_reference(tmp_path_factory):
    """The tiny xTB generation run in this process, one molecule after the other."""
    tmp = tmp_path_factory.mktemp("xtb_reference")
    cfg = _xtb_config(tmp, "sequential")
    assert [r["status"] for r in gen.generate(cfg, processes=False)] == ["complete", "complete"]
    return cfg


@pytest.mark.slow
def test_cli_generate_on_two_workers_equals_one_after_the_other(tmp_path, capsys, xtb_reference):
    from jkstep import cli

    config = _write_yaml(tmp_path / "gen.yaml", _xtb_config(tmp_path, "two"))
    assert cli.main(["generate", "--config", config, "--workers", "2"]) == 0
    assert "ethanol: complete" in capsys.readouterr().out
    _assert_same_data(str(tmp_path / "two"), xtb_reference.output)


# -- an external scheduler --------------------------------------------------------------------


@pytest.fixture
def external_scheduler(tmp_path):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1 (free ports), torn down after."""
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS="1", DASK_LOGGING__DISTRIBUTED="critical")
    common = dict(cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              **common)]
    for i in range(2):
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--host", "127.0.0.1", "--name", f"w{i}"], **common))
    try:
        from distributed import Client

        parallel.silence_distributed()
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_cli_generate_on_an_external_scheduler_gives_the_same_data(tmp_path, capsys, external_scheduler,
                                                                    xtb_reference):
    from jkstep import cli

    config = _write_yaml(tmp_path / "gen.yaml", _xtb_config(tmp_path, "cluster"))
    assert cli.main(["generate", "--config", config, "--scheduler", external_scheduler]) == 0
    assert "water: complete" in capsys.readouterr().out
    _assert_same_data(str(tmp_path / "cluster"), xtb_reference.output)


# -- jkstep run --replicas N ------------------------------------------------------------------


@pytest.mark.slow
def test_cli_run_replicas_seeds_mean_and_reuse(tmp_path, capsys, monkeypatch):
    from jkstep import cli

    monkeypatch.setenv("JKSTEP_RESULTS", str(tmp_path / "results"))
    common = ["run", "--smiles", "O", "--integrator", "verlet", "--ps", "0.005", "--save-every", "1"]
    assert cli.main(common + ["--seed", "1", "--summary", str(tmp_path / "one.json")]) == 0
    argv = common + ["--seed", "0", "--replicas", "2", "--workers", "2", "--summary", str(tmp_path / "two.json")]
    assert cli.main(argv) == 0
    assert "mean of 2 replicas" in capsys.readouterr().out
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    runs = two["replicas"]["summaries"]
    assert two["replicas"]["seeds"] == [0, 1] and two["replicas"]["n"] == 2 and len(runs) == 2
    # replica 1 is seeded 0 + 1: the same run as a single run with --seed 1, bit for bit
    for key in ("drift_kj_mol_ps", "energy_std_kj_mol", "mean_temperature_k", "xtb_calls"):
        assert runs[1][key] == one[key]
        assert two[key] == two["replicas"]["mean"][key] == pytest.approx((runs[0][key] + runs[1][key]) / 2)
    assert runs[0]["mean_temperature_k"] != runs[1]["mean_temperature_k"]
    assert not any(k for k in two if "worker" in k or "address" in k)
    # the same command again: every replica from the result cache (no cluster, the same summaries)
    assert cli.main(argv) == 0
    again = json.loads((tmp_path / "two.json").read_text())
    assert again["replicas"]["summaries"] == runs


def test_cli_run_replicas_0_is_one_line(capsys):
    from jkstep import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--smiles", "O", "--integrator", "verlet", "--replicas", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "jkstep: error: --replicas must be a whole number ≥ 1, got 0"


@pytest.mark.slow
def test_ctrl_c_cancels_and_a_rerun_reuses_the_finished_replicas(tmp_path, ctrl_c_possible):
    results = tmp_path / "results"
    env = dict(os.environ, JKSTEP_RESULTS=str(results), OMP_NUM_THREADS="1")
    jkstep_command = os.path.join(os.path.dirname(sys.executable), "jkstep")
    argv = [jkstep_command, "run", "--smiles", "O", "--integrator", "verlet", "--ps", "0.5", "--replicas", "3",
            "--workers", "1", "--summary", str(tmp_path / "runs.json")]
    # ctrl_c_possible: SIGINT is not ignored here, so the command (a child) gets Ctrl-C as in a terminal
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not glob.glob(str(results / "*.json")) and proc.poll() is None:
        time.sleep(0.05)
    first = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(results / "*.json"))}
    assert first and proc.poll() is None, "no replica finished before the run ended"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "jkstep: interrupted;" in err and "of 3 replicas finished, kept in" in err and str(results) in err, err
    assert "Traceback" not in err, err
    assert not (tmp_path / "runs.json").exists()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert all(os.stat(p).st_mtime_ns == t for p, t in first.items()), done.stderr   # reused, not run again
    summary = json.loads((tmp_path / "runs.json").read_text())
    assert summary["replicas"]["seeds"] == [0, 1, 2]


# -- jkstep evaluate --------------------------------------------------------------------------


def _without_wall(value):
    if isinstance(value, dict):
        return {k: _without_wall(v) for k, v in value.items() if "wall" not in k}
    if isinstance(value, list):
        return [_without_wall(v) for v in value]
    return value


@pytest.mark.slow
def test_cli_evaluate_on_two_workers_equals_one_process_and_reruns_from_the_cache(tmp_path, monkeypatch, capsys):
    import contextlib

    from jkstep import cli

    argv = ["evaluate", "--smiles", "CCO", "--k", "4", "--ps", "0.02", "--replicas", "2", "--equilibrate-ps",
            "0.005"]
    monkeypatch.setenv("JKSTEP_RESULTS", str(tmp_path / "results-2"))
    assert cli.main(argv + ["--workers", "2", "--summary", str(tmp_path / "two.json")]) == 0
    capsys.readouterr()

    @contextlib.contextmanager
    def in_this_process(workers=None, scheduler=None):   # the same tasks, one after the other, here
        yield parallel.SerialExecutor()

    monkeypatch.setenv("JKSTEP_RESULTS", str(tmp_path / "results-1"))
    with monkeypatch.context() as m:
        m.setattr(parallel, "open_executor", in_this_process)
        assert cli.main(argv + ["--summary", str(tmp_path / "one.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    assert two["contenders"]["reference"]["xtb_calls"] > 0 and two["contenders"]["verlet_kdt"] is not None
    assert _without_wall(two) == _without_wall(one)    # bit for bit: every metric equal
    # run again: every task from the result cache, the same summary
    monkeypatch.setenv("JKSTEP_RESULTS", str(tmp_path / "results-2"))
    assert cli.main(argv + ["--workers", "2", "--summary", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == two
