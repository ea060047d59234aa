"""Classical (MMFF94) reference trajectories for pretraining, in the xTB data's format.

Per molecule of the molecules file (``data/mm_molecules.smi``) and per replica r = 0 .. R-1: an
RDKit conformer (seed ``conformer_seed + r`` with ``distinct_conformers``, else ``conformer_seed``),
Maxwell–Boltzmann velocities at ``temperature_k`` (seed ``replica_seed``), Langevin (BAOAB)
thermalisation for ``equilibration_ps``, centre-of-mass momentum and angular momentum removed,
then ``production_ps`` of velocity Verlet (NVE) at ``dt_fs``, storing a frame every
``frame_spacing`` base steps: the same k-step task as the xTB data (0.25 fs, every step).
Production is NVE because training targets must be deterministic functions of the input state: a
network trained by MSE on stochastic Langevin targets learns only their conditional mean, which
damps and shrinks the motion.

Replica 0 is stored as ``<output>/<name>/production/``, replica r ≥ 1 as ``replica_<rr>/``: each
a TrajectoryStore directory written chunk by chunk, atomically. Unlike the xTB replicas (same-
energy noise-floor copies of production), MM replicas are independent thermalisations: extra
training data. Rerunning the same configuration continues every run from its last stored frame
(resumed runs equal uninterrupted ones bit for bit) and skips finished molecules. A non-finite energy, force,
position or velocity stops that run at its last good chunk (the chunk in progress is dropped,
nothing non-finite is written) and is recorded in meta.json; the others go on.

All R replicas of a molecule run together under ``jax.vmap``. To keep the number of JIT
compilations small, molecules are padded into a few size ``buckets``: the atoms of the
``MMFFPotential`` up to the bucket size plus ``GHOSTS`` (4) ghost atoms, and each term list up to
the largest count of that term among the job's molecules in the bucket. Padded terms have zero
force constants, charges and ε and act only on the ghost atoms, which sit 1000+ Å from
everything; padded atoms have mass 1, zero velocity and zero force, so they never move and the
real atoms see exactly the unpadded force field. The padded potential is an argument of
module-level jitted functions (not closed over), so every molecule of a bucket reuses the same
compiled code: two compilations per bucket (thermalisation, NVE chunk). ``jkstep.rollout.runner``
closes over its step function (a new jit, hence a new compilation, per potential), so the NVE chunk
jits ``jkstep.rollout.rollout`` itself, vmapped over replicas, with the potential as an argument.
Only the real atoms are stored.

Units: Å, fs, eV, amu, K; lengths of runs in ps; friction in 1/fs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jkstep.data.generate import (PRODUCTION, RunLengths, make_output_dir, molecule_seed, package_versions,
                                   read_molecules, replica_name)
from jkstep.data.store import TrajectoryStore
from jkstep.config import load_dataclass
from jkstep.errors import InputError
from jkstep.units import KINETIC as _KINETIC, KJ_MOL as _KJ_MOL

#: Ghost atoms appended to every padded system; the padded terms act on them only.
GHOSTS = 4
#: Distance scale (Å) of the padded atoms' fixed positions from the molecule and each other.
FAR = 1000.0
_VARIANTS = ("MMFF94", "MMFF94s")
#: Meta keys that must match the configuration when a run is resumed.
_RESUME_KEYS = ("smiles", "numbers", "method", "force_field", "dt_fs", "frame_spacing", "temperature_k",
                "seed", "conformer_seed", "replica_seed", "run_conformer_seed", "equilibration")


# -- configuration ------------------------------------------------------------------------


@dataclasses.dataclass
class MMConfig(RunLengths):
    """Settings of an MM generation job (the keys of configs/mm.yaml). Paths are relative to the
    working directory; dt in fs, lengths in ps, temperature in K, friction in 1/fs; ``replicas``
    counts all runs of a molecule (production included); ``buckets`` are molecule sizes in atoms."""

    molecules: str = "data/mm_molecules.smi"
    output: str = "data/mm"
    method: str = "MMFF94"
    temperature_k: float = 300.0
    friction_per_fs: float = 0.01
    dt_fs: float = 0.25
    equilibration_ps: float = 1.0
    production_ps: float = 2.5
    frame_spacing: int = 1
    replicas: int = 4
    distinct_conformers: bool = True
    chunk_frames: int = 1000
    buckets: tuple = (16, 24, 32, 40)
    seed: int = 0
    conformer_seed: int = 0
    only: tuple | None = None

    def __post_init__(self):
        self._check_fields(
            strings=("molecules", "output", "method"),
            numbers=(("temperature_k", 0, False), ("friction_per_fs", 0, False), ("dt_fs", 0, True),
                     ("equilibration_ps", 0, False), ("production_ps", 0, True)),
            integers=(("frame_spacing", 1), ("replicas", 1), ("chunk_frames", 1), ("seed", 0),
                      ("conformer_seed", 0)))
        if self.method not in _VARIANTS:
            raise InputError(f"config method {self.method!r} is unknown; choose one of {', '.join(_VARIANTS)}")
        if self.replicas > 99:
            raise InputError(f"config replicas must be at most 99, got {self.replicas}")
        if not isinstance(self.distinct_conformers, bool):
            raise InputError(f"config distinct_conformers must be true or false, got {self.distinct_conformers!r}")
        buckets = self.buckets
        if (isinstance(buckets, (str, int)) or not buckets
                or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets)):
            raise InputError(f"config buckets must be a list of positive atom counts, got {buckets!r}")
        if list(buckets) != sorted(set(buckets)):
            raise InputError(f"config buckets must be increasing without repeats, got {list(buckets)}")
        self.buckets = tuple(buckets)
        self._check_lengths_and_only()


    @property
    def runs(self) -> list[str]:
        """Run directory names of each molecule: production, replica_01, ..."""
        return [PRODUCTION] + [replica_name(r) for r in range(1, self.replicas)]


def load_config(path, **overrides) -> MMConfig:
    """Read a YAML MM generation config; keys are MMConfig's fields. ``overrides`` (not None)
    replace file values. Unknown keys, bad values or a missing file raise InputError."""
    return load_dataclass(MMConfig, path, **overrides)


# -- padding ------------------------------------------------------------------------------

#: Term lists of an MMFFPotential: name → (index field or None, per-term parameter fields).
_TERM_FIELDS = {
    "bonds": ("bond_idx", ("bond_kb", "bond_r0")),
    "angles": ("angle_idx", ("angle_ka", "angle_theta0", "angle_linear", "stbn_k", "stbn_r0")),
    "oops": ("oop_idx", ("oop_koop",)),
    "torsions": ("torsion_idx", ("torsion_v",)),
    "pairs": ("pair_idx", ("vdw_rstar", "vdw_eps", "ele_qq")),
}
#: Value of each parameter on a padded term: zero force constants, charges and ε; harmless
#: nonzero reference lengths and angles.
_PAD_VALUES = {"bond_kb": 0.0, "bond_r0": 1.0, "angle_ka": 0.0, "angle_theta0": 109.5, "angle_linear": False,
               "stbn_k": 0.0, "stbn_r0": 1.0, "oop_koop": 0.0, "torsion_v": 0.0, "vdw_rstar": 3.0,
               "vdw_eps": 0.0, "ele_qq": 0.0}


def term_counts(pot) -> dict[str, int]:
    """Number of terms of each list of an ``MMFFPotential`` (keys of ``_TERM_FIELDS``)."""
    return {name: int(np.shape(getattr(pot, idx))[0]) for name, (idx, _) in _TERM_FIELDS.items()}


def bucket_of(n_atoms: int, buckets) -> int:
    """The smallest bucket that holds ``n_atoms`` atoms (InputError if none)."""
    fits = [b for b in buckets if b >= n_atoms]
    if not fits:
        raise InputError(f"a molecule of {n_atoms} atoms is larger than the largest bucket {max(buckets)}; "
                         f"add a larger bucket to the config")
    return fits[0]


def padded_size(bucket: int) -> int:
    """Atoms of a padded system of ``bucket``: the bucket plus the ghost atoms."""
    return int(bucket) + GHOSTS


def padding_positions(n_atoms: int, bucket: int) -> np.ndarray:
    """Fixed positions (Å) of the padded atoms n_atoms .. padded_size(bucket) - 1: filler atoms
    on the -z axis 1000 Å apart, then the ghosts on a tetrahedron-like cluster 2000+ Å out
    (not coplanar, so padded angles and torsions are well defined)."""
    fillers = bucket - n_atoms
    out = np.zeros((fillers + GHOSTS, 3))
    out[:fillers, 2] = -FAR * (1.0 + np.arange(fillers))
    out[fillers:] = 2.0 * FAR * np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    return out


def pad_potential(pot, bucket: int, sizes: dict[str, int]):
    """``pot`` (an MMFFPotential of N ≤ bucket atoms) padded to ``padded_size(bucket)`` atoms and
    ``sizes[name]`` terms of each list: padded terms have zero force constants / charges / ε and
    act on the ghost atoms only; ``n_atoms`` is the padded size and ``name`` is empty, so every
    padded potential of a bucket (and the same sizes) has the same pytree structure and shapes."""

    n = pot.n_atoms
    if n > bucket:
        raise InputError(f"{pot.name!r} has {n} atoms, more than its bucket {bucket}")
    size = padded_size(bucket)
    ghosts = np.arange(size - GHOSTS, size)
    changes = {}
    for name, (idx_field, fields) in _TERM_FIELDS.items():
        idx = np.asarray(getattr(pot, idx_field))
        extra = int(sizes[name]) - len(idx)
        if extra < 0:
            raise InputError(f"{pot.name!r} has {len(idx)} {name}, more than the padded size {sizes[name]}")
        fill = np.broadcast_to(ghosts[:idx.shape[1]], (extra, idx.shape[1]))
        changes[idx_field] = jnp.asarray(np.concatenate([idx, fill]).astype(np.int64))
        for field in fields:
            value = np.asarray(getattr(pot, field))
            pad = np.full((extra,) + value.shape[1:], _PAD_VALUES[field], value.dtype)
            changes[field] = jnp.asarray(np.concatenate([value, pad]))
    return dataclasses.replace(pot, n_atoms=size, name="", **changes)


def pad_state(positions, velocities, masses, bucket: int):
    """Real-atom arrays ((…, N, 3) positions Å, velocities Å/fs, (N,) masses amu) padded to
    ``padded_size(bucket)`` atoms: padded positions from ``padding_positions``, zero velocities,
    mass 1 amu. Returns (positions, velocities, masses, mask) with ``mask`` True on real atoms."""
    positions = np.asarray(positions, np.float64)
    velocities = np.asarray(velocities, np.float64)
    n = np.shape(masses)[0]
    pad = padding_positions(n, bucket)
    lead = positions.shape[:-2]
    pos = np.concatenate([positions, np.broadcast_to(pad, lead + pad.shape)], axis=-2)
    vel = np.concatenate([velocities, np.zeros(lead + pad.shape)], axis=-2)
    m = np.concatenate([np.asarray(masses, np.float64), np.ones(len(pad))])
    mask = np.arange(len(m)) < n
    return pos, vel, m, mask


# -- jitted, shared by every molecule of a bucket -------------------------------------------


@functools.partial(jax.jit, static_argnames=("n_steps", "dt", "temperature", "friction"))
def _thermalise(pot, masses, mask, positions, velocities, keys, *, n_steps, dt, temperature, friction):
    """Langevin (BAOAB) for ``n_steps`` of every replica (leading axis) → final MDStates. Padded
    atoms are pinned (the thermostat would otherwise kick them: they have mass 1)."""
    from jkstep import integrate

    init, apply = integrate.langevin(pot, masses, dt, temperature, friction)

    def one(x, v, key):
        anchor = x

        def step(_, state):
            s = apply(state)
            return s.replace(positions=jnp.where(mask[:, None], s.positions, anchor),
                             velocities=jnp.where(mask[:, None], s.velocities, 0.0))

        return jax.lax.fori_loop(0, n_steps, step, init(x, v, key))

    return jax.vmap(one)(positions, velocities, keys)


@functools.partial(jax.jit, static_argnames=("n_frames", "every", "dt"))
def _nve_chunk(pot, masses, positions, velocities, steps, *, n_frames, every, dt):
    """Velocity Verlet of every replica (leading axis) from (positions, velocities) at base step
    ``steps``: → (start frames (R, ...): the state at the start, its forces computed here;
    frames (R, F, ...) after every ``every`` steps, ``n_frames`` of them). Each call starts from
    positions and velocities only (one extra force call per call), at multiples of ``n_frames *
    every`` steps, and so does a resumed run: it equals an uninterrupted one bit for bit."""
    from jkstep import integrate
    from jkstep.rollout import frames_of, rollout

    init, apply = integrate.verlet(pot, masses, dt)

    def one(x, v, s):
        state = init(x, v).replace(step=s)
        return frames_of(state), rollout(apply, state, n_frames, every)[1]

    return jax.vmap(one)(positions, velocities, steps)


def compiled_functions() -> int:
    """Compiled variants held by the MM generator's jitted functions (a cache-size probe)."""
    return sum(f._cache_size() for f in (_thermalise, _nve_chunk))


# -- plan ---------------------------------------------------------------------------------


@dataclasses.dataclass
class MMJob:
    """One molecule: its SMILES, name, replica-0 molecule, unpadded potential and bucket."""

    smiles: str
    name: str
    molecule: object
    potential: object
    bucket: int


def plan(cfg: MMConfig) -> tuple[list[MMJob], dict[int, dict[str, int]]]:
    """The jobs of ``cfg`` (molecules typed with RDKit MMFF, each assigned a bucket) and the
    padded term counts of each bucket in use (the largest count among its molecules)."""
    from jkstep.molecule import Molecule, check_simulatable
    from jkstep.potentials.mmff import mmff_potential

    molecules = read_molecules(cfg.molecules)
    names = [n for _, n in molecules]
    if cfg.only is not None:
        unknown = sorted(set(cfg.only) - set(names))
        if unknown:
            raise InputError(f"only (--only or the config's only:) names unknown molecule(s) {', '.join(unknown)}; "
                             f"the names are those of {cfg.molecules}")
    jobs = []
    for smiles, name in molecules:
        if cfg.only is not None and name not in cfg.only:
            continue
        try:
            molecule = Molecule.from_smiles(smiles, seed=cfg.conformer_seed)
            check_simulatable(molecule)
            pot = mmff_potential(molecule, variant=cfg.method)
            bucket = bucket_of(len(molecule), cfg.buckets)
        except InputError as exc:
            raise InputError(f"{cfg.molecules}: molecule {name!r}: {exc}") from None
        jobs.append(MMJob(smiles, name, molecule, pot, bucket))
    sizes: dict[int, dict[str, int]] = {}
    for job in jobs:
        counts = term_counts(job.potential)
        old = sizes.setdefault(job.bucket, {k: 1 for k in counts})
        for k, v in counts.items():
            old[k] = max(old[k], v)
    return jobs, dict(sorted(sizes.items()))


def planned_steps(job: MMJob, cfg: MMConfig) -> int:
    """Base steps (of the replica batch) still to run for ``job``: the thermalisation if some run
    has no start yet, plus the longest remaining production."""
    target = cfg.target_frames(cfg.production_ps)
    total, remaining = 0, 0
    for run in cfg.runs:
        store = TrajectoryStore(os.path.join(cfg.output, job.name, run))
        if store.exists and store.meta.get("status") == "failed":
            continue
        if not store.exists or store.n_frames == 0:
            total = cfg.equilibration_steps
        remaining = max(remaining, target - max(store.n_frames, 1))
    return total + max(0, remaining) * cfg.frame_spacing


# -- meta ---------------------------------------------------------------------------------


def _run_meta(job: MMJob, cfg: MMConfig, r: int, sizes: dict) -> dict:
    molecule = job.molecule
    return {
        "kind": "mm", "name": job.name, "smiles": job.smiles, "split": None, "run": cfg.runs[r],
        "replica": r, "numbers": molecule.numbers.tolist(), "symbols": molecule.symbols,
        "formula": molecule.formula, "masses": molecule.masses.tolist(), "charge": molecule.charge,
        "spin": molecule.spin, "method": cfg.method,
        "force_field": {"variant": cfg.method, "dielectric": "constant", "nonbonded_cutoff": None,
                        "interfragment_terms": True, "implementation": "jkstep.potentials.mmff "
                        "(RDKit MMFF typing and parameters, energy in JAX)"},
        "dt_fs": cfg.dt_fs, "frame_spacing": cfg.frame_spacing, "frame_dt_fs": cfg.dt_fs * cfg.frame_spacing,
        "integrator": "velocity_verlet", "ensemble": "nve", "temperature_k": cfg.temperature_k,
        "equilibration": {"integrator": "langevin_baoab", "ps": cfg.equilibration_ps,
                          "steps": cfg.equilibration_steps, "friction_per_fs": cfg.friction_per_fs,
                          "temperature_k": cfg.temperature_k,
                          "start_velocities": "maxwell_boltzmann, centre-of-mass motion removed"},
        "rigid_motion_removed": True,
        "seed": cfg.seed, "molecule_seed": molecule_seed(cfg.seed, job.name),
        "replica_seed": molecule_seed(cfg.seed, job.name, r), "conformer_seed": cfg.conformer_seed,
        "run_conformer_seed": cfg.conformer_seed + (r if cfg.distinct_conformers else 0),
        "conformer": "rdkit ETKDGv3 + MMFF94 relaxation",
        "start": {"from": "independent Langevin thermalisation of this replica's conformer, rigid motion "
                          "removed (MM replicas are extra training data, not same-energy copies)"},
        "padding": {"bucket": job.bucket, "padded_atoms": padded_size(job.bucket), "ghost_atoms": GHOSTS,
                    "terms": dict(sizes[job.bucket])},
        "units": {"positions": "angstrom", "velocities": "angstrom/fs", "forces": "eV/angstrom",
                  "energy": "eV (potential)", "kinetic": "eV", "masses": "amu", "time": "fs"},
        "versions": _versions(),
        "status": "running", "failure": None, "counters": {"calls": 0}, "wall_s": 0.0, "steps_run": 0,
        "total_energy": None,
        "target_frames": cfg.target_frames(cfg.production_ps),
    }


@functools.cache
def _versions() -> dict:
    return package_versions()


def _check_resume(store: TrajectoryStore, meta: dict) -> None:
    if not store.exists:
        return
    old = store.meta
    for key in _RESUME_KEYS:
        if json.loads(json.dumps(old.get(key))) != json.loads(json.dumps(meta.get(key))):
            raise InputError(f"{store.path} was generated with {key} = {old.get(key)!r}, the config now "
                             f"gives {meta.get(key)!r}; restore the config or delete that directory")


def _energy_stats(store: TrajectoryStore) -> dict:
    """Total-energy conservation of a stored run: std, drift (linear fit) and max deviation."""
    parts = []
    for info in store.meta["chunks"]:
        with np.load(os.path.join(store.path, info["file"]), allow_pickle=False) as data:
            parts.append(np.stack([data["step"], data["energy"] + data["kinetic"]], axis=1))
    steps, total = np.concatenate(parts).T
    t_ps = steps * float(store.meta["dt_fs"]) / 1000.0
    slope = float(np.polyfit(t_ps, total, 1)[0]) if len(total) > 2 else 0.0
    return {"std_kj_mol": float(np.std(total)) / _KJ_MOL, "drift_kj_mol_ps": slope / _KJ_MOL,
            "max_abs_dev_kj_mol": float(np.max(np.abs(total - total[0]))) / _KJ_MOL}


# -- one molecule -------------------------------------------------------------------------


class _Stop(Exception):
    """The chunk budget of this call is spent (a simulated interruption)."""


def _to_host(frames, r: int, part: slice, n: int, masses) -> dict | None:
    """Replica ``r``'s frames ``part``, real atoms only, as store arrays; None if anything is
    not finite or flagged failed."""
    out = {k: np.asarray(getattr(frames, k)[r, part, :n], np.float64)
           for k in ("positions", "velocities", "forces")}
    out["energy"] = np.asarray(frames.energy[r, part], np.float64)
    out["step"] = np.asarray(frames.step[r, part], np.int64)
    out["kinetic"] = 0.5 * _KINETIC * np.sum(masses[None, :, None] * out["velocities"] ** 2, axis=(1, 2))
    if np.any(np.asarray(frames.failed[r, part])) or not all(np.all(np.isfinite(v)) for v in out.values()):
        return None
    return out


def _first_bad_step(frames, r: int, part: slice, n: int) -> int:
    ok = (~np.asarray(frames.failed[r, part]) & np.isfinite(np.asarray(frames.energy[r, part]))
          & np.all(np.isfinite(np.asarray(frames.positions[r, part, :n])), axis=(1, 2))
          & np.all(np.isfinite(np.asarray(frames.velocities[r, part, :n])), axis=(1, 2))
          & np.all(np.isfinite(np.asarray(frames.forces[r, part, :n])), axis=(1, 2)))
    steps = np.asarray(frames.step[r, part])
    bad = np.flatnonzero(~ok)
    return int(steps[bad[0]]) if bad.size else int(steps[0])


def _restart_frame(store: TrajectoryStore, block: int) -> tuple:
    """(positions, velocities, step) to continue ``store`` from: its last frame at a multiple of
    ``block`` base steps, where an uninterrupted run also restarted (each ``_nve_chunk`` call
    starts from positions and velocities), so the continuation is bit for bit the same; the
    frames between it and the last stored one are computed again and dropped."""
    last = int(store.meta["last_step"])
    step = (last // block) * block
    frame = store.frame(step // int(store.meta["frame_spacing"]))
    assert int(frame["step"]) == step, "stored steps are not frame_spacing apart"
    return frame["positions"], frame["velocities"], step


def run_molecule(job: MMJob, cfg: MMConfig, sizes: dict, progress: Callable[[int], None] | None = None,
                 budget: list | None = None) -> dict:
    """Generate (or continue) every replica run of ``job`` under ``cfg.output``; returns a summary.

    ``progress(n)`` is told of every n base steps the replica batch runs. ``budget`` ([chunks])
    stops after writing that many chunks (raises ``_Stop``; for tests of resume)."""
    from jkstep.data.replicas import remove_rigid_motion
    from jkstep.molecule import Molecule

    t_start = time.perf_counter()
    progress = progress or (lambda n: None)
    budget = budget if budget is not None else [np.inf]
    R, n, bucket = cfg.replicas, len(job.molecule), job.bucket
    masses = job.molecule.masses
    target = cfg.target_frames(cfg.production_ps)
    spacing, chunk = cfg.frame_spacing, cfg.chunk_frames
    stores = [TrajectoryStore(os.path.join(cfg.output, job.name, run)) for run in cfg.runs]
    metas = [_run_meta(job, cfg, r, sizes) for r in range(R)]
    for store, meta in zip(stores, metas):
        _check_resume(store, meta)
    ppot = pad_potential(job.potential, bucket, sizes[bucket])
    _, _, pmasses, mask = pad_state(np.zeros((n, 3)), np.zeros((n, 3)), masses, bucket)
    pmasses_j, mask_j = jnp.asarray(pmasses), jnp.asarray(mask)

    def failed(store):
        return store.exists and store.meta.get("status") == "failed"

    fresh = [r for r, s in enumerate(stores) if not failed(s) and s.n_frames == 0]
    starts: dict[int, tuple] = {}   # replica → (positions, velocities, step) real atoms
    pending: dict[int, dict | None] = {r: None for r in range(R)}

    # 1. thermalise (all R replicas together, so each replica's start does not depend on which
    #    others still need one), then create the fresh runs
    if fresh:
        t_eq = time.perf_counter()
        mols = [job.molecule if metas[r]["run_conformer_seed"] == cfg.conformer_seed else
                Molecule.from_smiles(job.smiles, seed=metas[r]["run_conformer_seed"]) for r in range(R)]
        for mol in mols:
            if mol.numbers.tolist() != job.molecule.numbers.tolist():
                raise InputError(f"conformers of {job.name!r} differ in atom order")
        x0 = np.stack([m.positions for m in mols])
        v0 = np.stack([m.thermal_velocities(cfg.temperature_k, metas[r]["replica_seed"])
                       for r, m in enumerate(mols)])
        if cfg.equilibration_steps > 0:
            px, pv, _, _ = pad_state(x0, v0, masses, bucket)
            keys = jnp.stack([jax.random.PRNGKey(metas[r]["replica_seed"]) for r in range(R)])
            st = _thermalise(ppot, pmasses_j, mask_j, jnp.asarray(px), jnp.asarray(pv), keys,
                             n_steps=cfg.equilibration_steps, dt=cfg.dt_fs, temperature=cfg.temperature_k,
                             friction=cfg.friction_per_fs)
            ok = ~np.asarray(st.failed)
            x0, v0 = np.asarray(st.positions)[:, :n], np.asarray(st.velocities)[:, :n]
            progress(cfg.equilibration_steps)
        else:
            ok = np.ones(R, bool)
        eq_wall = time.perf_counter() - t_eq
        for r in fresh:
            meta = dict(metas[r], equilibration_wall_s=eq_wall, equilibration_batch=R)
            if not (ok[r] and np.all(np.isfinite(x0[r])) and np.all(np.isfinite(v0[r]))):
                stores[r].create(dict(meta, status="failed", failure="non-finite energy or forces during "
                                      "the Langevin thermalisation; no frames written"))
                continue
            stores[r].create(meta)
            starts[r] = (x0[r], remove_rigid_motion(x0[r], v0[r], masses), 0)

    # 2. every run that still needs frames continues from its start or its last stored frame
    active = []
    for r, store in enumerate(stores):
        if failed(store):
            continue
        if store.n_frames >= target:
            if store.meta.get("status") != "complete" or store.meta.get("target_frames") != store.n_frames:
                store.update_meta(status="complete", target_frames=max(target, store.n_frames))
            continue
        if store.meta.get("status") != "running" or store.meta.get("target_frames") != target:
            store.update_meta(status="running", target_frames=target, total_energy=None)
        if r not in starts:
            starts[r] = _restart_frame(store, chunk * spacing)
        active.append(r)
    summary = {"name": job.name, "n_atoms": n, "bucket": bucket, "runs": {}}
    if active:
        filler = starts[active[0]]
        x = np.stack([starts.get(r, filler)[0] for r in range(R)])
        v = np.stack([starts.get(r, filler)[1] for r in range(R)])
        steps = np.array([starts.get(r, filler)[2] for r in range(R)], np.int32)
        px, pv, _, _ = pad_state(x, v, masses, bucket)
        book = ({r: 0.0 for r in active}, {r: 0 for r in active}, {r: 0 for r in active})
        walls, calls, stepped = book
        first_call = True
        try:
            while active:
                t0 = time.perf_counter()
                start, frames = jax.device_get(_nve_chunk(ppot, pmasses_j, px, pv, steps, n_frames=chunk,
                                                          every=spacing, dt=cfg.dt_fs))
                wall = time.perf_counter() - t0
                px, pv = frames.positions[:, -1], frames.velocities[:, -1]
                steps = np.asarray(frames.step[:, -1], np.int32)
                advanced = 0
                for r in list(active):
                    store = stores[r]
                    walls[r] += wall
                    calls[r] += 1 + chunk * spacing
                    if first_call and store.n_frames == 0:
                        pending[r] = _to_host(jax.tree.map(lambda a: a[:, None], start), r, slice(0, 1), n,
                                              masses)
                        if pending[r] is None:
                            _record(store, book, r, status="failed", failure="non-finite energy or forces "
                                    "at the start frame (step 0); no frames written")
                            active.remove(r)
                            continue
                    have = store.n_frames + (0 if pending[r] is None else len(pending[r]["step"]))
                    last = int(pending[r]["step"][-1]) if pending[r] is not None else int(store.meta["last_step"])
                    # frames already stored (a resumed run restarts at a chunk-call boundary) are dropped
                    lo = int(np.clip((last - int(frames.step[r, 0])) // spacing + 1, 0, chunk))
                    part = slice(lo, lo + max(0, min(chunk - lo, target - have)))
                    take = part.stop - part.start
                    advanced = max(advanced, take)
                    stepped[r] += take * spacing
                    if take == 0:
                        continue
                    new = _to_host(frames, r, part, n, masses)
                    if new is None:
                        step = _first_bad_step(frames, r, part, n)
                        _record(store, book, r, status="failed",
                                failure=f"non-finite energy, forces, positions or velocities (MMFF) at step "
                                        f"{step}, {step * cfg.dt_fs:.2f} fs; stopped at the last good chunk "
                                        f"({store.n_frames} frames)")
                        pending[r] = None
                        active.remove(r)
                        continue
                    joined = new if pending[r] is None else {k: np.concatenate([pending[r][k], new[k]])
                                                             for k in new}
                    while len(joined["step"]) >= chunk or (joined["step"].size and
                                                           store.n_frames + len(joined["step"]) >= target):
                        if budget[0] <= 0:
                            raise _Stop()
                        part = {k: a[:chunk] for k, a in joined.items()}
                        joined = {k: a[chunk:] for k, a in joined.items()}
                        done = store.n_frames + len(part["step"]) >= target
                        _record(store, book, r, part, status="complete" if done else "running")
                        budget[0] -= 1
                    pending[r] = joined if joined["step"].size else None
                    if store.n_frames >= target:
                        active.remove(r)
                first_call = False
                progress(advanced * spacing)
        except _Stop:
            summary["status"] = "interrupted"
    for r, store in enumerate(stores):
        if store.exists and store.meta.get("status") == "complete" and not store.meta.get("total_energy"):
            store.update_meta(total_energy=_energy_stats(store))
        summary["runs"][cfg.runs[r]] = _run_summary(store)
    if "status" not in summary:
        summary["status"] = "failed" if any(s["status"] == "failed" for s in summary["runs"].values()) \
            else "complete"
    summary["wall_s"] = time.perf_counter() - t_start
    return summary


def _record(store: TrajectoryStore, book: tuple, r: int, frames=None, **changes) -> None:
    """Append ``frames`` (or only update meta) with the run's bookkeeping since the last record:
    ``book`` = (wall time of the batched calls, shared by the replica batch; force calls; base
    steps run), dicts by replica."""
    walls, calls, stepped = book
    changes.update(wall_s=float(store.meta.get("wall_s", 0.0)) + walls[r],
                   counters={"calls": int(store.meta.get("counters", {}).get("calls", 0)) + calls[r]},
                   steps_run=int(store.meta.get("steps_run", 0)) + stepped[r])
    walls[r], calls[r], stepped[r] = 0.0, 0, 0
    if frames is None:
        store.update_meta(**changes)
    else:
        store.append(frames, **changes)


def _run_summary(store: TrajectoryStore) -> dict:
    if not store.exists:
        return {"status": "missing", "n_frames": 0}
    meta = store.reload().meta
    return {"status": meta.get("status"), "failure": meta.get("failure"), "n_frames": store.n_frames,
            "target_frames": meta.get("target_frames"), "wall_s": float(meta.get("wall_s", 0.0)),
            "total_energy": meta.get("total_energy")}


# -- many molecules -----------------------------------------------------------------------


def generate_mm(cfg: MMConfig, progress: Callable[[int], None] | None = None,
                on_total: Callable[[int], None] | None = None, max_chunks: int | None = None,
                processes: bool = False, workers: int | None = None, scheduler: str | None = None,
                executor=None) -> list[dict]:
    """Generate (or continue) every molecule of ``cfg``; one summary per molecule.

    ``on_total(n)`` is told the base steps (of replica batches) still to run, ``progress(n)`` of
    every n done. By default the molecules run one after the other in this process;
    ``max_chunks`` then stops after writing that many chunks in all (the molecule in progress and
    the rest are reported "interrupted"; rerun to continue). With ``processes`` (what ``jkstep
    generate-mm`` does) each molecule is one task of the Dask execution layer
    (``jkstep.parallel``): on ``executor``, else an embedded cluster of ``workers`` processes
    (default one per core) or the scheduler at ``scheduler``. A task computes what the
    sequential loop computes (the padded sizes come from the whole job), so the data are the
    same bit for bit either way."""
    jobs, sizes = plan(cfg)
    stores = {job.name: [TrajectoryStore(os.path.join(cfg.output, job.name, run)) for run in cfg.runs]
              for job in jobs}
    for job in jobs:  # changed settings under existing data: bad input, before any work
        for r, store in enumerate(stores[job.name]):
            _check_resume(store, _run_meta(job, cfg, r, sizes))
    make_output_dir(cfg.output)
    planned = {job.name: planned_steps(job, cfg) for job in jobs}
    if on_total:
        on_total(sum(planned.values()))
    if processes:
        if max_chunks is not None:
            raise ValueError("max_chunks needs processes=False")
        todo = [job for job in jobs if planned[job.name] > 0]
        done = _run_as_tasks(todo, cfg, sizes, progress or (lambda n: None), workers, scheduler, executor)
        return [done[job.name] if job.name in done else _finished_summary(job, cfg, stores[job.name])
                for job in jobs]
    budget = [np.inf if max_chunks is None else int(max_chunks)]
    results = []
    for job in jobs:
        if budget[0] <= 0:
            results.append({"name": job.name, "n_atoms": len(job.molecule), "bucket": job.bucket,
                            "status": "interrupted", "runs": {}})
            continue
        if planned[job.name] == 0:  # finished (or failed): nothing to compile or run
            results.append(_finished_summary(job, cfg, stores[job.name]))
            continue
        results.append(run_molecule(job, cfg, sizes, progress, budget))
    return results


def _finished_summary(job: MMJob, cfg: MMConfig, stores) -> dict:
    runs = {run: _run_summary(s) for run, s in zip(cfg.runs, stores)}
    return {"name": job.name, "n_atoms": len(job.molecule), "bucket": job.bucket, "runs": runs,
            "status": "failed" if any(s["status"] == "failed" for s in runs.values()) else "complete",
            "wall_s": 0.0}


def _molecule_task(smiles: str, name: str, bucket: int, cfg: MMConfig, sizes: dict) -> dict:
    """One molecule as a Dask task: its molecule and MMFF potential built here from the SMILES
    (plain data crosses the wire), then ``run_molecule``, which continues from the stores (a
    retried task resumes, bit for bit, and never duplicates frames)."""
    from jkstep.molecule import Molecule
    from jkstep.parallel import flush_steps, step_reporter
    from jkstep.potentials.mmff import mmff_potential

    molecule = Molecule.from_smiles(smiles, seed=cfg.conformer_seed)
    job = MMJob(smiles, name, molecule, mmff_potential(molecule, variant=cfg.method), bucket)
    report = step_reporter()
    try:
        return run_molecule(job, cfg, sizes, report)
    finally:
        flush_steps(report)


def _run_as_tasks(jobs: list[MMJob], cfg: MMConfig, sizes: dict, progress, workers, scheduler, executor) -> dict:
    from jkstep import parallel

    sizes = {int(b): {k: int(v) for k, v in counts.items()} for b, counts in sizes.items()}
    # absolute paths: a worker of an external cluster has another working directory
    cfg = dataclasses.replace(cfg, output=os.path.abspath(cfg.output), molecules=os.path.abspath(cfg.molecules))
    tasks = [parallel.Task(parallel.task_key(f"generate-mm-{job.name}", cfg.output, job.name),
                           _molecule_task, job.smiles, job.name, job.bucket, cfg, sizes) for job in jobs]

    def failed(key, exc):
        job = jobs[[t.key for t in tasks].index(key)]
        return {"name": job.name, "n_atoms": len(job.molecule), "bucket": job.bucket, "runs": {},
                "status": "error", "error": f"{type(exc).__name__}: {exc}"}

    options = dict(on_steps=lambda key, n: progress(n), on_error=failed)
    if executor is not None:
        results = executor.run(tasks, **options)
    else:
        results = parallel.run_tasks(tasks, workers=workers, scheduler=scheduler, **options)
    return {job.name: results[t.key] for job, t in zip(jobs, tasks)}


def run_paths(output, runs=None, complete_only: bool = True) -> list[str]:
    """Run directories under an MM (or xTB) data root, ``<output>/<name>/<run>``, sorted: all runs
    or only those named in ``runs``; with ``complete_only`` only runs with status "complete".
    Feed them to ``jkstep.data.windows.WindowDataset``."""
    output = os.fspath(output)
    out = []
    for name in sorted(os.listdir(output)) if os.path.isdir(output) else []:
        root = os.path.join(output, name)
        if not os.path.isdir(root):
            continue
        for run in sorted(os.listdir(root)):
            store = TrajectoryStore(os.path.join(root, run))
            if (runs is None or run in runs) and store.exists and store.n_frames > 0 and (
                    not complete_only or store.meta.get("status") == "complete"):
                out.append(store.path)
    return out
