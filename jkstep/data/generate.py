"""GFN-xTB reference trajectories: thermalise, then deterministic NVE, chunked and resumable.

Per molecule: a SMILES conformer (RDKit, seeded), Maxwell–Boltzmann velocities at
``temperature_k``, Langevin (BAOAB) thermalisation for ``equilibration_ps``, centre-of-mass
momentum and angular momentum removed, then ``production_ps`` of velocity Verlet (NVE) at
``dt_fs``, storing a frame every ``frame_spacing`` base steps. Production is NVE because the
training targets must be deterministic functions of the state. Validation and test molecules
also get same-energy replicas (``replica_01``, ...): the production start positions with new
velocity directions at the same kinetic energy, run NVE for ``replica_ps`` (the noise floor).

Every run is a TrajectoryStore directory ``<output>/<name>/<run>/`` written chunk by chunk,
atomically; running the same configuration again continues each run from its last stored
frame and skips finished molecules. An SCF failure (the potential's NaN + ``failed`` flag)
stops that run at its last good chunk, is recorded in meta.json, and the job moves on.

Molecules run in parallel as tasks of the Dask execution layer (``jkstep.parallel``: an
embedded LocalCluster of processes with ``OMP_NUM_THREADS=1``, or an existing scheduler), one
task per molecule; a task resumes from its stores, so a retried one (its worker died) continues
where the stores end and never duplicates frames. Steps come back to the client as Dask events.

Units: Å, fs, eV, amu, K; lengths of runs in ps; friction in 1/fs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import traceback
import zlib
from typing import Callable

import numpy as np

from jkstep.data.replicas import remove_rigid_motion, same_energy_velocities
from jkstep.data.store import TrajectoryStore
from jkstep.config import load_dataclass
from jkstep.errors import MAX_TEMPERATURE_K, InputError
from jkstep.units import KINETIC as _KINETIC

PRODUCTION = "production"
SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: Meta keys that must match the configuration when a run is resumed.
_RESUME_KEYS = ("smiles", "numbers", "method", "accuracy", "dt_fs", "frame_spacing", "temperature_k",
                "seed", "conformer_seed", "equilibration")


def replica_name(index: int) -> str:
    """Run name of replica ``index`` (1-based): replica_01, replica_02, ..."""
    return f"replica_{index:02d}"


class RunLengths:
    """Run lengths and the ``only`` list shared by the xTB and MM generation configs (which
    define dt_fs in fs, frame_spacing in steps, equilibration_ps, production_ps, only)."""

    def _check_fields(self, strings, numbers, integers):
        """Check (and turn to float) the config's plain fields: ``strings`` non-empty; ``numbers``
        (key, low, strict) finite and > low (strict) or ≥ low; ``integers`` (key, low) integers ≥
        low, None allowed for ``workers``. One InputError names the first bad key."""
        for key in strings:
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise InputError(f"config {key} must be a non-empty string, got {getattr(self, key)!r}")
        for key, low, strict in numbers:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise InputError(f"config {key} must be a number, got {value!r}")
            if value < low or (strict and value == low):
                raise InputError(f"config {key} must be {'>' if strict else '≥'} {low}, got {value}")
            if key == "temperature_k" and value > MAX_TEMPERATURE_K:
                raise InputError(f"config temperature_k must be at most {MAX_TEMPERATURE_K:g} K, got {value:g}")
            setattr(self, key, float(value))
        for key, low in integers:
            value = getattr(self, key)
            if key == "workers" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"config {key} must be an integer ≥ {low}, got {value!r}")

    def _check_lengths_and_only(self):
        from jkstep.errors import MAX_STEPS

        for key in ("equilibration_ps", "production_ps", "replica_ps"):
            ps = getattr(self, key, 0.0)
            if ps * 1000.0 / self.dt_fs > MAX_STEPS:
                raise InputError(f"config {key} {ps} at dt_fs {self.dt_fs} would take {ps * 1000.0 / self.dt_fs:.3g} "
                                 f"steps (more than {MAX_STEPS:.0e}); check the length (ps) and the time step (fs)")
        if self.only is not None:
            if isinstance(self.only, str) or not all(isinstance(n, str) for n in self.only):
                raise InputError(f"config only must be a list of molecule names, got {self.only!r}")
            self.only = tuple(self.only)
        if self.steps(self.production_ps) < self.frame_spacing:
            raise InputError(f"production_ps {self.production_ps} is shorter than one frame "
                             f"({self.frame_spacing} steps of {self.dt_fs} fs)")

    def steps(self, ps: float) -> int:
        """Base steps in ``ps`` picoseconds (rounded)."""
        return int(round(ps * 1000.0 / self.dt_fs))

    def target_frames(self, ps: float) -> int:
        """Frames of a run of ``ps`` picoseconds: the start frame plus one every frame_spacing steps."""
        return self.steps(ps) // self.frame_spacing + 1

    @property
    def equilibration_steps(self) -> int:
        return self.steps(self.equilibration_ps)


@dataclasses.dataclass
class GenerateConfig(RunLengths):
    """Settings of a generation job (the keys of configs/qm.yaml). Paths are relative to the
    working directory; dt in fs, lengths in ps, temperature in K, friction in 1/fs."""

    molecules: str = "data/qm_molecules.smi"
    splits: str = "data/qm_splits.json"
    output: str = "data/qm"
    method: str = "GFN2-xTB"
    accuracy: float = 0.01
    temperature_k: float = 300.0
    friction_per_fs: float = 0.01
    dt_fs: float = 0.25
    equilibration_ps: float = 1.0
    production_ps: float = 10.0
    frame_spacing: int = 1
    replicas: int = 3
    replica_ps: float = 5.0
    replica_splits: tuple = ("val", "test")
    chunk_frames: int = 1000
    workers: int | None = None
    seed: int = 0
    conformer_seed: int = 0
    only: tuple | None = None

    def __post_init__(self):
        from jkstep.potentials.xtb import METHODS

        self._check_fields(
            strings=("molecules", "splits", "output", "method"),
            numbers=(("accuracy", 0, True), ("temperature_k", 0, False), ("friction_per_fs", 0, False),
                     ("dt_fs", 0, True), ("equilibration_ps", 0, False), ("production_ps", 0, True),
                     ("replica_ps", 0, False)),
            integers=(("frame_spacing", 1), ("replicas", 0), ("chunk_frames", 1), ("seed", 0),
                      ("conformer_seed", 0), ("workers", 1)))
        if self.method not in METHODS:
            raise InputError(f"config method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        if isinstance(self.replica_splits, str) or not all(s in SPLITS for s in self.replica_splits):
            raise InputError(f"config replica_splits must be a list drawn from {list(SPLITS)}, "
                             f"got {self.replica_splits!r}")
        self.replica_splits = tuple(self.replica_splits)
        self._check_lengths_and_only()



def load_config(path, **overrides) -> GenerateConfig:
    """Read a YAML generation config; keys are GenerateConfig's fields. ``overrides`` (not
    None) replace file values. Unknown keys, bad values or a missing file raise InputError."""
    return load_dataclass(GenerateConfig, path, **overrides)


# -- molecule list and splits -------------------------------------------------------------


def make_output_dir(path) -> None:
    """Create the data directory ``path`` (or use it as it is); InputError if it cannot be."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"output: {path} (or a folder above it) is a file; give a directory for the data") from None
    except OSError as exc:
        raise InputError(f"output: cannot create {path}: {exc.strerror}") from None


def read_molecules(path) -> list[tuple[str, str]]:
    """(SMILES, name) pairs of a ``SMILES name`` file; blank lines and ``#`` comments (at the start
    of a line or after a space: SMILES use ``#`` for triple bonds) skipped. Names must be unique and
    usable as directory names."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"molecules: {path} is a directory; give a file of `SMILES name` lines")
    if not os.path.isfile(path):
        raise InputError(f"no such molecules file: {path}")
    out, seen = [], set()
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = re.sub(r"(?:^|\s)#.*", "", line).split()
            if not fields:
                continue
            if len(fields) != 2:
                raise InputError(f"{path}:{lineno}: expected `SMILES name`, got {line.strip()!r}")
            smiles, name = fields
            if not _NAME.match(name):
                raise InputError(f"{path}:{lineno}: name {name!r} must be letters, digits, _ . + - only")
            if name in seen:
                raise InputError(f"{path}:{lineno}: duplicate molecule name {name!r}")
            seen.add(name)
            out.append((smiles, name))
    if not out:
        raise InputError(f"{path} lists no molecules")
    return out


def read_splits(path, names=None) -> dict[str, list[str]]:
    """train/val/test name lists of a splits JSON file; checks that they are disjoint and, given
    ``names``, that every split name is a known molecule."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"no such splits file: {path}")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    splits = {}
    for split in SPLITS:
        value = data.get(split, []) if isinstance(data, dict) else None
        if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
            raise InputError(f"{path}: {split} must be a list of molecule names")
        splits[split] = list(value)
    seen: dict[str, str] = {}
    for split, members in splits.items():
        for name in members:
            if name in seen:
                raise InputError(f"{path}: {name!r} is in both {seen[name]} and {split}")
            seen[name] = split
    if names is not None:
        unknown = sorted(set(seen) - set(names))
        if unknown:
            raise InputError(f"{path} names molecules not in the molecules file: {', '.join(unknown)}")
    return splits


def molecule_seed(seed: int, name: str, *extra: int) -> int:
    """A stable 31-bit seed for ``name`` (independent of file order)."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), *map(int, extra)])
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)


def package_versions() -> dict:
    """Versions of the packages that shape the data (None if not installed)."""
    from importlib import metadata

    out = {}
    for pkg in ("jax", "jaxlib", "tblite", "ase", "rdkit", "numpy", "jkstep"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# -- one molecule -------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
    """One molecule's work: its production run and ``replicas`` same-energy replicas."""

    smiles: str
    name: str
    replicas: int
    split: str | None = None


class _Stop(Exception):
    """The chunk budget of this call is spent (a simulated interruption)."""


def planned_steps(job: Job, cfg: GenerateConfig) -> int:
    """Base steps still to run for ``job``, from what its stores hold."""
    root = os.path.join(cfg.output, job.name)
    prod = TrajectoryStore(os.path.join(root, PRODUCTION))
    runs = [(prod, cfg.production_ps)]
    runs += [(TrajectoryStore(os.path.join(root, replica_name(r))), cfg.replica_ps)
             for r in range(1, job.replicas + 1)]
    total = 0
    if not prod.exists or (prod.n_frames == 0 and prod.meta.get("status") != "failed"):
        total += cfg.equilibration_steps
    for store, ps in runs:
        if store.exists and store.meta.get("status") == "failed":
            continue
        target = cfg.target_frames(ps)
        done = store.n_frames
        total += max(0, target - max(done, 1)) * cfg.frame_spacing
    return total


def _default_potential(molecule, cfg: GenerateConfig):
    from jkstep.potentials.xtb import xtb_potential

    return xtb_potential(molecule, method=cfg.method, accuracy=cfg.accuracy, workers=1)


def run_molecule(job: Job, cfg: GenerateConfig, progress: Callable[[int], None] | None = None,
                 max_chunks: int | None = None, potential_factory=None) -> dict:
    """Generate (or continue) ``job``'s production run and replicas under ``cfg.output``.

    ``progress(n)`` is told of every n base steps run. ``max_chunks`` stops after writing that
    many chunks (status "interrupted"; for tests). ``potential_factory(molecule, cfg)`` builds the
    energy-and-forces function (default: tblite xTB). Returns a summary dict per run."""
    import jax

    from jkstep import integrate
    from jkstep.molecule import Molecule

    t0 = time.perf_counter()
    progress = progress or (lambda n: None)
    budget = [np.inf if max_chunks is None else int(max_chunks)]
    molecule = Molecule.from_smiles(job.smiles, seed=cfg.conformer_seed)
    pot = (potential_factory or _default_potential)(molecule, cfg)
    root = os.path.join(cfg.output, job.name)
    base_meta = _base_meta(job, cfg, molecule)
    init_nve, apply_nve = integrate.verlet(pot, molecule.masses, cfg.dt_fs)
    ctx = _RunContext(pot=pot, masses=molecule.masses, init=init_nve, apply=apply_nve, cfg=cfg,
                      progress=progress, budget=budget, hint=_scf_hint(molecule))
    summary = {"name": job.name, "split": job.split, "n_atoms": len(molecule), "runs": {}}
    try:
        prod = TrajectoryStore(os.path.join(root, PRODUCTION))
        _check_resume(prod, base_meta)
        if prod.exists and prod.meta.get("status") == "failed":
            pass  # recorded; a rerun does not retry a failed run
        elif prod.n_frames == 0:
            t_eq, mark = time.perf_counter(), _counter_delta(pot, None)
            start = _thermalise(molecule, pot, cfg, job, progress)  # (positions, velocities) or a failure
            meta = dict(base_meta, run=PRODUCTION, target_frames=cfg.target_frames(cfg.production_ps),
                        start={"from": "langevin thermalisation, rigid motion removed"},
                        equilibration_counters=_counter_delta(pot, mark),
                        equilibration_wall_s=time.perf_counter() - t_eq)
            if isinstance(start, str):
                prod.create(dict(meta, status="failed", failure=start))
            else:
                prod.create(meta)
                _run_nve(ctx, prod, start, cfg.target_frames(cfg.production_ps))
        else:
            _run_nve(ctx, prod, None, cfg.target_frames(cfg.production_ps))
        summary["runs"][PRODUCTION] = _run_summary(prod)

        for r in range(1, job.replicas + 1):
            store = TrajectoryStore(os.path.join(root, replica_name(r)))
            _check_resume(store, base_meta)
            if prod.n_frames == 0:
                summary["runs"][replica_name(r)] = {"status": "skipped: production has no start frame"}
                continue
            if store.n_frames == 0 and not (store.exists and store.meta.get("status") == "failed"):
                first = prod.frame(0)
                seed = molecule_seed(cfg.seed, job.name, r)
                velocities = same_energy_velocities(molecule, first["positions"], first["velocities"], seed)
                store.create(dict(base_meta, run=replica_name(r),
                                  target_frames=cfg.target_frames(cfg.replica_ps),
                                  start={"from": "production frame 0 positions, same-energy velocities "
                                                 "(jkstep.data.replicas.same_energy_velocities)",
                                         "replica_seed": seed}))
                _run_nve(ctx, store, (first["positions"], velocities), cfg.target_frames(cfg.replica_ps))
            else:
                _run_nve(ctx, store, None, cfg.target_frames(cfg.replica_ps))
            summary["runs"][replica_name(r)] = _run_summary(store)
        summary["status"] = "failed" if any(
            s.get("status") == "failed" for s in summary["runs"].values()) else "complete"
    except _Stop:
        summary["status"] = "interrupted"
    finally:
        close = getattr(pot, "close", None)
        if close:
            close()
    summary["wall_s"] = time.perf_counter() - t0
    jax.clear_caches()
    return summary


def _base_meta(job: Job, cfg: GenerateConfig, molecule) -> dict:
    return {
        "kind": "qm", "name": job.name, "smiles": job.smiles, "split": job.split,
        "numbers": molecule.numbers.tolist(), "symbols": molecule.symbols, "formula": molecule.formula,
        "masses": molecule.masses.tolist(), "charge": molecule.charge, "spin": molecule.spin,
        **_config_meta(job, cfg),
        "conformer": "rdkit ETKDGv3 + MMFF94 relaxation",
        "units": {"positions": "angstrom", "velocities": "angstrom/fs", "forces": "eV/angstrom",
                  "energy": "eV (potential)", "kinetic": "eV", "masses": "amu", "time": "fs"},
        "versions": package_versions(),
        "status": "running", "failure": None, "counters": _ZERO_COUNTERS, "wall_s": 0.0, "steps_run": 0,
    }


def _config_meta(job: Job, cfg: GenerateConfig) -> dict:
    return {
        "method": cfg.method, "accuracy": cfg.accuracy, "electronic_temperature_k": 300.0,
        "dt_fs": cfg.dt_fs, "frame_spacing": cfg.frame_spacing, "frame_dt_fs": cfg.dt_fs * cfg.frame_spacing,
        "integrator": "velocity_verlet", "ensemble": "nve", "temperature_k": cfg.temperature_k,
        "equilibration": {"integrator": "langevin_baoab", "ps": cfg.equilibration_ps,
                          "steps": cfg.equilibration_steps, "friction_per_fs": cfg.friction_per_fs,
                          "temperature_k": cfg.temperature_k,
                          "start_velocities": "maxwell_boltzmann, centre-of-mass motion removed"},
        "rigid_motion_removed": True,
        "seed": cfg.seed, "molecule_seed": molecule_seed(cfg.seed, job.name),
        "conformer_seed": cfg.conformer_seed,
    }


_ZERO_COUNTERS = {"calls": 0, "scf_failures": 0, "retries": 0, "fallbacks": 0, "failed": 0}


def _check_resume(store: TrajectoryStore, base_meta: dict) -> None:
    """InputError if ``store`` exists but was made with other settings than ``base_meta``'s."""
    if not store.exists:
        return
    meta = store.meta
    for key in _RESUME_KEYS:
        if key not in base_meta:
            continue
        if _jsonish(meta.get(key)) != _jsonish(base_meta.get(key)):
            raise InputError(f"{store.path} was generated with {key} = {meta.get(key)!r}, the config now "
                             f"gives {base_meta.get(key)!r}; restore the config or delete that directory")


def _jsonish(value):
    return json.loads(json.dumps(value))


def _scf_hint(molecule) -> str:
    return (f"check the charge ({molecule.charge}) and unpaired electrons ({molecule.spin}) that the SMILES "
            "gives (e.g. [NH4+], [CH3] for a radical) and the geometry (try another conformer_seed)")


def _thermalise(molecule, pot, cfg: GenerateConfig, job: Job, progress):
    """Langevin thermalisation from Maxwell–Boltzmann velocities → (positions, velocities) with
    rigid motion removed, or the failure (a message) if a force call failed."""
    import jax

    from jkstep import integrate
    from jkstep.rollout import runner

    seed = molecule_seed(cfg.seed, job.name)
    positions = molecule.positions
    velocities = molecule.thermal_velocities(cfg.temperature_k, seed)
    n_steps = cfg.equilibration_steps
    if n_steps > 0:
        init, apply = integrate.langevin(pot, molecule.masses, cfg.dt_fs, cfg.temperature_k,
                                         cfg.friction_per_fs)
        state = init(positions, velocities, jax.random.PRNGKey(seed))
        if bool(state.failed):
            return (f"the xTB SCF did not converge at the start geometry (the RDKit conformer), before any "
                    f"MD step; {_scf_hint(molecule)}; no frames written")
        piece = max(1, min(n_steps, cfg.chunk_frames * cfg.frame_spacing))
        runners = {}
        done = 0
        while done < n_steps and not bool(state.failed):
            n = min(piece, n_steps - done)
            if n not in runners:
                runners[n] = runner(apply, 1, n)
            state, _ = runners[n](state)
            done += n
            progress(n)
        if bool(state.failed):
            return (f"SCF failed during the Langevin thermalisation (steps {done - n}-{done} of {n_steps}); "
                    "no frames written")
        positions, velocities = np.asarray(state.positions), np.asarray(state.velocities)
    return positions, remove_rigid_motion(positions, velocities, molecule.masses)


@dataclasses.dataclass
class _RunContext:
    pot: object
    masses: np.ndarray
    init: Callable
    apply: Callable
    cfg: GenerateConfig
    progress: Callable
    budget: list
    hint: str = ""
    runners: dict = dataclasses.field(default_factory=dict)

    def runner(self, n_frames: int):
        from jkstep.rollout import runner

        if n_frames not in self.runners:
            self.runners[n_frames] = runner(self.apply, n_frames, self.cfg.frame_spacing)
        return self.runners[n_frames]


def _counter_delta(pot, since: dict | None) -> dict:
    now = pot.counters() if hasattr(pot, "counters") else dict(_ZERO_COUNTERS)
    since = since or dict(_ZERO_COUNTERS)
    return {k: int(now.get(k, 0)) - int(since.get(k, 0)) for k in _ZERO_COUNTERS}


def _add(a: dict, b: dict) -> dict:
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in _ZERO_COUNTERS}


def _run_nve(ctx: _RunContext, store: TrajectoryStore, start, target_frames: int) -> None:
    """Continue ``store`` with velocity Verlet until it holds ``target_frames`` frames.

    ``start`` (positions, velocities) begins an empty store; otherwise the run continues from
    the last stored frame (its forces are recomputed: one extra call)."""
    import jax.numpy as jnp

    meta = store.meta
    if meta.get("status") == "failed":
        return
    if store.n_frames >= target_frames:
        if meta.get("status") != "complete" or meta.get("target_frames") != target_frames:
            store.update_meta(status="complete", target_frames=max(target_frames, store.n_frames))
        return
    if meta.get("target_frames") != target_frames or meta.get("status") != "running":
        store.update_meta(target_frames=target_frames, status="running")
    spacing = ctx.cfg.frame_spacing
    mark = ctx.pot.counters() if hasattr(ctx.pot, "counters") else None
    reset = getattr(ctx.pot, "reset_restart", None)
    if reset:
        reset()  # each run starts its SCF from a fresh guess, as a resumed run would
    t_mark = time.perf_counter()

    def record(frames=None, **changes):
        nonlocal mark, t_mark
        delta = _counter_delta(ctx.pot, mark)
        mark = ctx.pot.counters() if hasattr(ctx.pot, "counters") else None
        now = time.perf_counter()
        changes.update(counters=_add(store.meta.get("counters", {}), delta),
                       wall_s=float(store.meta.get("wall_s", 0.0)) + now - t_mark)
        t_mark = now
        if frames is None:
            store.update_meta(**changes)
        else:
            store.append(frames, **changes)

    if start is not None:
        positions, velocities = start
        state = ctx.init(jnp.asarray(positions), jnp.asarray(velocities))
        first = _to_frames(state, ctx.masses, single=True)
        if first is None:
            record(status="failed", failure=f"the xTB SCF did not converge at the start geometry of this run "
                                            f"(step 0), before any MD step; {ctx.hint}; no frames written")
            return
        pending = [first]
    else:
        positions, velocities, step = store.last_state()
        state = ctx.init(jnp.asarray(positions), jnp.asarray(velocities))
        state = state.replace(step=jnp.asarray(step, state.step.dtype))
        if bool(state.failed):
            record(status="failed", failure=f"SCF failed when resuming at step {step}")
            return
        pending = []

    chunk = ctx.cfg.chunk_frames
    n_frames = store.n_frames
    while n_frames < target_frames:
        if ctx.budget[0] <= 0:
            raise _Stop()
        n_new = min(chunk - len(pending), target_frames - n_frames - len(pending))
        if n_new > 0:
            steps_before = int(state.step)
            state, fr = ctx.runner(n_new)(state)
            ctx.progress(n_new * spacing)
            frames = _to_frames(fr, ctx.masses)
            if frames is None:
                bad = np.flatnonzero(np.asarray(fr.failed) | ~np.isfinite(np.asarray(fr.energy)))
                step_bad = int(np.asarray(fr.step)[bad[0]]) if bad.size else steps_before
                record(status="failed", steps_run=int(store.meta.get("steps_run", 0)) + n_new * spacing,
                       failure=f"SCF failed (xTB returned NaN) at step {step_bad}, "
                               f"{step_bad * ctx.cfg.dt_fs:.2f} fs; stopped at the last good chunk "
                               f"({n_frames} frames)")
                return
            pending.append(frames)
        else:
            n_new = 0
        joined = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        steps_run = int(store.meta.get("steps_run", 0)) + n_new * spacing
        n_frames += len(joined["step"])
        done = n_frames >= target_frames
        record(joined, steps_run=steps_run, status="complete" if done else "running")
        ctx.budget[0] -= 1
        pending = []


def _to_frames(fr, masses, single: bool = False) -> dict | None:
    """Frames (or one state) as store arrays on the host; None if anything is not finite or a
    force call failed."""
    out = {k: np.asarray(getattr(fr, k), np.float64) for k in ("positions", "velocities", "forces", "energy")}
    out["step"] = np.asarray(fr.step, np.int64)
    failed = np.asarray(fr.failed)
    if single:
        out = {k: v[None] for k, v in out.items()}
    out["kinetic"] = 0.5 * _KINETIC * np.sum(np.asarray(masses)[None, :, None] * out["velocities"] ** 2,
                                             axis=(1, 2))
    if np.any(failed) or not all(np.all(np.isfinite(v)) for v in out.values()):
        return None
    return out


def _run_summary(store: TrajectoryStore) -> dict:
    meta = store.reload().meta
    steps = int(meta.get("steps_run", 0))
    wall = float(meta.get("wall_s", 0.0))
    return {"status": meta.get("status"), "failure": meta.get("failure"), "n_frames": store.n_frames,
            "target_frames": meta.get("target_frames"), "counters": meta.get("counters"),
            "wall_s": wall, "ms_per_step": 1000.0 * wall / steps if steps else None}


# -- many molecules -----------------------------------------------------------------------


def plan(cfg: GenerateConfig) -> list[Job]:
    """The jobs of ``cfg``: its molecules (restricted to ``cfg.only``), with replicas for the
    molecules of ``cfg.replica_splits``."""
    molecules = read_molecules(cfg.molecules)
    names = [n for _, n in molecules]
    splits = read_splits(cfg.splits, names)
    split_of = {n: s for s, members in splits.items() for n in members}
    if cfg.only is not None:
        unknown = sorted(set(cfg.only) - set(names))
        if unknown:
            raise InputError(f"only (--only or the config's only:) names unknown molecule(s) {', '.join(unknown)}; "
                             f"the names are those of {cfg.molecules}")
    jobs = []
    for smiles, name in molecules:
        if cfg.only is not None and name not in cfg.only:
            continue
        check_molecule(smiles, name, cfg)
        split = split_of.get(name)
        jobs.append(Job(smiles, name, cfg.replicas if split in cfg.replica_splits else 0, split))
    return jobs


def check_molecule(smiles: str, name: str, cfg: GenerateConfig) -> None:
    """InputError naming the molecule if its SMILES does not give a conformer that ``cfg.method``
    can simulate (unparsable, a single atom, elements without parameters); no xTB call."""
    from jkstep.molecule import Molecule, check_simulatable
    from jkstep.potentials.xtb import check_parametrised

    try:
        molecule = Molecule.from_smiles(smiles, seed=cfg.conformer_seed)
        check_simulatable(molecule)
        check_parametrised(molecule.numbers, cfg.method)
    except InputError as exc:
        raise InputError(f"{cfg.molecules}: molecule {name!r}: {exc}") from None


def generate(cfg: GenerateConfig, progress: Callable[[int], None] | None = None,
             on_total: Callable[[int], None] | None = None, processes: bool = True,
             max_chunks: int | None = None, potential_factory=None, scheduler: str | None = None,
             executor=None) -> list[dict]:
    """Generate (or continue) every molecule of ``cfg``; returns one summary per molecule.

    ``on_total(n)`` is told the base steps still to run (for a progress bar) and ``progress(n)``
    of every n steps done. With ``processes`` each molecule is one task of the Dask execution
    layer (``jkstep.parallel``): on ``executor`` if given, else an embedded cluster of
    ``cfg.workers`` processes (default: one per core) or the Dask scheduler at ``scheduler``;
    without, one after the other in this process (``max_chunks`` and ``potential_factory`` only
    apply then). A molecule whose task fails is reported with status "error" and the others go on."""
    jobs = plan(cfg)
    for job in jobs:  # settings that changed under existing data: bad input, before any work
        for run in [PRODUCTION] + [replica_name(r) for r in range(1, job.replicas + 1)]:
            _check_resume(TrajectoryStore(os.path.join(cfg.output, job.name, run)), dict(
                _config_meta(job, cfg), smiles=job.smiles))
    make_output_dir(cfg.output)
    planned = {job.name: planned_steps(job, cfg) for job in jobs}
    if on_total:
        on_total(sum(planned.values()))
    progress = progress or (lambda n: None)
    finished = {job.name: _stored_summary(job, cfg) for job in jobs if planned[job.name] == 0}
    todo = [job for job in jobs if job.name not in finished]
    if not processes:
        results = {job.name: run_molecule(job, cfg, progress, max_chunks, potential_factory) for job in todo}
    elif max_chunks is not None or potential_factory is not None:
        raise ValueError("max_chunks and potential_factory need processes=False")
    else:
        results = dict(zip([job.name for job in todo], _run_as_tasks(todo, cfg, progress, executor, scheduler)))
    results.update(finished)
    return [results[job.name] for job in jobs]


def _stored_summary(job: Job, cfg: GenerateConfig) -> dict:
    """Summary of a job with nothing left to run, from its stores (no process, no xTB)."""
    root = os.path.join(cfg.output, job.name)
    runs = {}
    for run in [PRODUCTION] + [replica_name(r) for r in range(1, job.replicas + 1)]:
        store = TrajectoryStore(os.path.join(root, run))
        runs[run] = _run_summary(store) if store.exists else {"status": "skipped: production has no start frame"}
    failed = any(r.get("status") == "failed" for r in runs.values())
    return {"name": job.name, "split": job.split, "n_atoms": len(TrajectoryStore(os.path.join(
        root, PRODUCTION)).meta["numbers"]), "runs": runs, "status": "failed" if failed else "complete",
        "wall_s": 0.0}


def _molecule_task(job: Job, cfg: GenerateConfig) -> dict:
    """One molecule as a Dask task (``jkstep.parallel``): its runs continued from what its stores
    hold (so a retried task resumes, never duplicates), steps reported to the client; an error
    is this molecule's summary (status "error"), never the job's end."""
    from jkstep.parallel import flush_steps, step_reporter

    report = step_reporter()
    try:
        return run_molecule(job, cfg, report)
    except InputError as exc:
        return {"name": job.name, "status": "error", "error": str(exc)}
    except Exception as exc:  # report it with the others; the other molecules go on
        return {"name": job.name, "status": "error",
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"}
    finally:
        flush_steps(report)


def _run_as_tasks(jobs: list[Job], cfg: GenerateConfig, progress, executor=None, scheduler=None) -> list[dict]:
    """Every job as one task of the Dask execution layer (``jkstep.parallel``): on ``executor``,
    else on a cluster opened here (``cfg.workers`` processes, or the scheduler at ``scheduler``)."""
    from jkstep import parallel

    # absolute paths: a worker of an external cluster has another working directory
    cfg = dataclasses.replace(cfg, output=os.path.abspath(cfg.output), molecules=os.path.abspath(cfg.molecules),
                              splits=os.path.abspath(cfg.splits))
    tasks = [parallel.Task(parallel.task_key(f"generate-{job.name}", cfg.output, job.name),
                           _molecule_task, job, cfg) for job in jobs]

    def failed(key, exc):
        name = jobs[[t.key for t in tasks].index(key)].name
        return {"name": name, "status": "error", "error": f"{type(exc).__name__}: {exc}"}

    options = dict(on_steps=lambda key, n: progress(n), on_error=failed)
    if executor is not None:
        results = executor.run(tasks, **options)
    else:
        results = parallel.run_tasks(tasks, workers=None if scheduler else cfg.workers, scheduler=scheduler,
                                     **options)
    return [results[t.key] for t in tasks]
