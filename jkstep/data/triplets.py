"""Frame triplets along the motion, for the curvature term of a fast force's training.

Impulse RESPA at macro-step τ conserves H + (τ²/12)·d²ΔV/dt² to leading order, ΔV the xTB energy
minus the fast force's, so its energy fluctuates by about (τ²/12)·RMS(d²ΔV/dt²) (docs/results.md,
"The energy error's curvature"). ``TrainConfig.w_curvature`` fits that second time derivative; it
needs, for each frame x of the labelled set, the frames a short step s before and after along a
thermal motion. In the canonical ensemble the velocities are independent of the positions, so a
velocity v drawn from Maxwell–Boltzmann at ``temperature`` is as good as the trajectory's own:

    x± = x ± v·s + ½·(F_xTB(x)/m)·s²

(the velocity-Verlet positions one step s forward and backward), and (e(x₋) − 2e(x) + e(x₊))/s²
is d²e/dt² along that motion to O(s²). Two xTB calls per triplet, no dynamics.

For each molecule of the compact frame file (``data/fast_frames.npz``) and each of its frames of
the kinds in ``sources``: x₋ and x₊ rounded to float32 (the positions the network will see),
labelled with xTB (the same tblite settings as the potential in MD) and MMFF94 energies and
forces. One Dask task per molecule (``jkstep.parallel``), one ``.npz`` per molecule written
atomically, so an interrupted run resumes. ``jkstep.data.fastforce.compact`` packs them, each
molecule's frames as three blocks (all x₋, all x, all x₊), into one committed float32 file that
``load_frames`` reads.

Units: Å, fs, eV, eV/Å, amu, K.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jkstep.errors import InputError


@dataclasses.dataclass(frozen=True)
class TripletConfig:
    """Settings of ``generate_triplets`` (YAML: configs/fast/triplets.yaml).

    frames: the compact frame file whose frames are the triplets' centres.   output: directory of
    the per-molecule files.   spacing_fs: s, fs.   temperature: K of the drawn velocities.
    sources: kinds of centre frames (``fastforce.SOURCES``).   seed: of the velocities.
    accuracy, method: tblite's, as in MD."""

    frames: str = "data/fast_frames.npz"
    output: str = "data/fast_triplets"
    spacing_fs: float = 0.5
    temperature: float = 300.0
    sources: tuple[str, ...] = ("mmff_md", "xtb_md")
    seed: int = 0
    accuracy: float = 0.01
    method: str = "GFN2-xTB"

    def __post_init__(self):
        from jkstep.data.fastforce import SOURCES

        if not (self.spacing_fs > 0 and self.temperature > 0):
            raise InputError(f"triplets: spacing_fs and temperature must be > 0, got {self.spacing_fs!r} "
                             f"and {self.temperature!r}")
        if isinstance(self.sources, str) or not self.sources or any(s not in SOURCES for s in self.sources):
            raise InputError(f"triplets: sources must be a list of frame kinds from {', '.join(SOURCES)}, "
                             f"got {self.sources!r}")
        object.__setattr__(self, "sources", tuple(self.sources))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def load_config(path, **overrides) -> TripletConfig:
    from jkstep.config import load_dataclass

    return load_dataclass(TripletConfig, path, **overrides)


def displaced_pair(positions, forces, masses, spacing_fs: float, temperature: float, rng):
    """(x₋, x₊), each (F, N, 3) Å float64: one velocity-Verlet step of ``spacing_fs`` backward and
    forward from ``positions`` (F, N, 3) Å under ``forces`` (F, N, 3) eV/Å, with velocities drawn
    from Maxwell–Boltzmann at ``temperature`` K for ``masses`` (N,) amu."""
    from jkstep import units

    m = np.asarray(masses, np.float64)[:, None]
    sigma = np.sqrt(units.KB * temperature * units.ACCEL / m)
    v = sigma * rng.standard_normal(np.shape(positions))
    half_a = 0.5 * np.asarray(forces, np.float64) / m * units.ACCEL * spacing_fs**2
    x = np.asarray(positions, np.float64)
    return x - v * spacing_fs + half_a, x + v * spacing_fs + half_a


def molecule_triplets(m: dict, cfg: TripletConfig) -> dict:
    """The triplets of one molecule of ``fastforce.load_frames`` as a dict of numpy arrays: its
    frames in three blocks (x₋, x, x₊) with xTB and MMFF94 energies and forces; a triplet whose
    SCF failed at x₋ or x₊ is dropped and counted."""
    import jax
    import jax.numpy as jnp

    from jkstep.data.fastforce import SOURCES, label_xtb
    from jkstep.data.generate import molecule_seed
    from jkstep.molecule import Molecule
    from jkstep.potentials.mmff import mmff_potential
    from jkstep.potentials.xtb import xtb_potential

    t0 = time.perf_counter()
    name = m["name"]
    mol = Molecule.from_smiles(m["smiles"])
    if not np.array_equal(np.asarray(mol.numbers), m["numbers"]):
        raise InputError(f"{name}: the SMILES {m['smiles']!r} gives another atom order than the frame file")
    keep = np.isin(m["source"], [SOURCES.index(s) for s in cfg.sources])
    x = m["positions"][keep]
    rng = np.random.default_rng(molecule_seed(cfg.seed, name, 1))
    minus, plus = displaced_pair(x, m["xtb_forces"][keep], mol.masses, cfg.spacing_fs, cfg.temperature, rng)
    # the network sees float32 positions: label exactly those
    minus, plus = (p.astype(np.float32).astype(np.float64) for p in (minus, plus))
    pot = xtb_potential(mol, method=cfg.method, accuracy=cfg.accuracy, workers=1)
    # x₋ and x₊ of one centre one after the other: each SCF restarts from a near geometry
    pairs = np.stack([minus, plus], axis=1).reshape(-1, *x.shape[1:])
    e, f = label_xtb(pot, pairs)
    e, f = e.reshape(-1, 2), f.reshape(-1, 2, *x.shape[1:])
    mm = jax.jit(jax.vmap(mmff_potential(mol)))
    blocks = [(minus, e[:, 0], f[:, 0]), (x, m["xtb_energy"][keep], m["xtb_forces"][keep]), (plus, e[:, 1], f[:, 1])]
    ok = np.all(np.isfinite(e), axis=1) & np.all(np.isfinite(f), axis=(1, 2, 3))
    out = {k: [] for k in ("positions", "xtb_energy", "xtb_forces", "mmff_energy", "mmff_forces", "source")}
    for pos, xe, xf in blocks:
        me, mf = mm(jnp.asarray(pos[ok]))
        out["positions"].append(pos[ok]), out["xtb_energy"].append(xe[ok]), out["xtb_forces"].append(xf[ok])
        out["mmff_energy"].append(np.asarray(me)), out["mmff_forces"].append(np.asarray(mf))
        out["source"].append(m["source"][keep][ok])
    return {**{k: np.concatenate(v) for k, v in out.items()},
            "numbers": np.asarray(m["numbers"], np.int32), "smiles": np.array(m["smiles"]), "name": np.array(name),
            "triplets": np.array(int(ok.sum())), "dropped": np.array(int((~ok).sum())),
            "xtb_calls": np.array(int(pot.calls)), "spacing_fs": np.array(cfg.spacing_fs),
            "seconds": np.array(time.perf_counter() - t0)}


def _molecule_task(m: dict, cfg: TripletConfig, path: str) -> dict:
    """One task of ``generate_triplets``: one molecule into ``path`` unless it is there (atomic)."""
    from jkstep.data.fastforce import _atomic_savez

    if not os.path.exists(path):
        _atomic_savez(Path(path), molecule_triplets(m, cfg))
    with np.load(path) as d:
        return {"name": str(d["name"]), "triplets": int(d["triplets"]), "xtb_calls": int(d["xtb_calls"])}


def generate_triplets(cfg: TripletConfig, progress: Callable[[str, int, int], None] | None = None,
                      workers: int | None = None, scheduler: str | None = None, executor=None) -> dict:
    """Label the triplets of every molecule of ``cfg.frames`` into ``cfg.output/<name>.npz``, one
    Dask task per molecule (on ``executor`` if given, e.g. ``parallel.SerialExecutor()``, else a
    cluster of ``workers`` or the one at ``scheduler``); finished molecules are skipped, so the run
    resumes. Returns a summary (molecules, triplets, xTB calls, seconds, output)."""
    from jkstep import parallel
    from jkstep.data.fastforce import load_frames

    parallel.check_workers(workers, scheduler)
    molecules = load_frames(cfg.frames)
    out = Path(cfg.output).absolute()
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "config.json"
    if settings.exists() and json.loads(settings.read_text()) != cfg.to_dict():
        raise InputError(f"{cfg.output} was made with other triplet settings; use a new output directory")
    settings.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    t0 = time.perf_counter()
    paths = {m["name"]: os.fspath(out / f"{m['name']}.npz") for m in molecules}
    todo = [m for m in molecules if not os.path.exists(paths[m["name"]])]
    done = len(molecules) - len(todo)

    def finished(key, result):
        nonlocal done
        done += 1
        if progress:
            progress(result["name"], done, len(molecules))

    tasks = [parallel.Task(parallel.task_key(f"triplets-{m['name']}", os.fspath(out), m["name"]),
                           _molecule_task, m, cfg, paths[m["name"]]) for m in todo]
    if tasks:
        parallel.run_tasks_on(executor, tasks, finished, workers, scheduler)
    triplets = calls = 0
    for m in molecules:
        with np.load(paths[m["name"]]) as d:
            triplets, calls = triplets + int(d["triplets"]), calls + int(d["xtb_calls"])
    return {"molecules": len(molecules), "triplets": triplets, "xtb_calls": calls,
            "seconds": round(time.perf_counter() - t0, 1), "output": os.fspath(cfg.output)}
