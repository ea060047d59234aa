"""Labelled frames for the learned fast force: xTB and MMFF94 energies and forces at broadly
sampled geometries of many small molecules.

For each molecule of a ``SMILES name`` list (``data/fast_molecules.smi``: C, H, N, O, S, 5-30
atoms, none of the validation or test molecules of ``data/qm_splits.json``):

- MMFF94 Langevin dynamics (``jkstep.mmff_potential`` + ``jkstep.integrate.langevin``, dt 0.5 fs)
  at each of ``mm_temperatures`` (vmapped: one compile per molecule), a frame every ``mm_every``
  steps;
- GFN2-xTB Langevin dynamics (``jkstep.xtb_potential``, the same SCF settings as the potential
  used in MD) at each of ``xtb_temperatures``;
- randomly displaced frames (Gaussian, σ drawn from ``displace_sigma``) and uniformly compressed or
  stretched frames (factor from ``compress``) drawn from the dynamics frames;

every frame labelled with xTB energy and forces and MMFF94 energy and forces (eV, eV/Å). Frames
whose SCF failed are dropped and counted. Each molecule is one task of the Dask execution layer
(``jkstep.parallel``; ``jkstep generate-fast --workers N`` or ``--scheduler ADDRESS``) and one
``.npz`` file (no pickle), written atomically, so an interrupted run resumes where it stopped:
finished molecules are skipped.

``compact(...)`` packs all molecule files into one float32 file (energies as offsets from a
per-molecule float64 reference) for committing; ``load_frames`` reads it.

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

#: codes of the ``source`` array: how a frame's geometry was made
SOURCES = ("mmff_md", "xtb_md", "displaced", "compressed")
ELEMENTS = (1, 6, 7, 8, 16)


@dataclasses.dataclass(frozen=True)
class FastDataConfig:
    """Settings of ``generate`` (YAML: configs/fast/data.yaml)."""

    molecules: str = "data/fast_molecules.smi"
    output: str = "data/fast"
    seed: int = 0
    mm_temperatures: tuple[float, ...] = (300.0, 450.0, 600.0)
    mm_frames: int = 40            # per temperature
    mm_every: int = 40             # Langevin steps of 0.5 fs between frames
    xtb_temperatures: tuple[float, ...] = (300.0, 600.0)
    xtb_frames: int = 40           # per temperature
    xtb_every: int = 8             # Langevin steps of 0.5 fs between frames
    dt_fs: float = 0.5
    friction: float = 0.02         # 1/fs
    displaced: int = 60
    displace_sigma: tuple[float, ...] = (0.01, 0.06)   # Å, uniform range of the per-frame σ
    compressed: int = 20
    compress: tuple[float, ...] = (0.90, 1.05)         # range of the uniform scale factor
    accuracy: float = 0.01         # tblite SCF accuracy: the xtb_potential default used in MD
    method: str = "GFN2-xTB"
    max_molecules: int | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def load_config(path, **overrides) -> FastDataConfig:
    from jkstep.config import load_dataclass

    return load_dataclass(FastDataConfig, path, **overrides)


# ---------------------------------------------------------------------------------------------
# molecule list


def n_atoms_of(smiles: str) -> tuple[int, set[int]]:
    """(atoms with hydrogens, element set) of a SMILES string (no 3-D embedding)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise InputError(f"cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    return mol.GetNumAtoms(), {a.GetAtomicNum() for a in mol.GetAtoms()}


#: small molecules (5-9 atoms) that the other lists lack, so the fast force sees small fragments
SMALL = [("C", "methane"), ("CO", "methanol"), ("CN", "methylamine"), ("CS", "methanethiol"),
         ("C=O", "formaldehyde_f"), ("CC", "ethane"), ("C=C", "ethene"), ("CC=O", "acetaldehyde_f"),
         ("OC=O", "formic_acid_f"), ("NC=O", "formamide_f"), ("CCO", "ethanol_f"), ("CSC", "dimethylsulfide"),
         ("COC", "dimethylether"), ("CC#N", "acetonitrile_f"), ("C1CO1", "oxirane"), ("NCO", "aminomethanol"),
         ("CC(=O)O", "acetic_acid_f"), ("c1ccoc1", "furan_f"), ("c1ccsc1", "thiophene_f"), ("c1cc[nH]c1", "pyrrole_f")]


def build_molecule_list(out="data/fast_molecules.smi", sources=("data/qm_molecules.smi", "data/mm_molecules.smi"),
                        splits="data/qm_splits.json", min_atoms: int = 5, max_atoms: int = 30) -> list[tuple[str, str]]:
    """Write the fast-force molecule list: ``SMALL`` plus every molecule of ``sources`` with
    ``min_atoms``-``max_atoms`` atoms and only C, H, N, O, S, except the validation and test
    molecules of ``splits`` (by name and by canonical SMILES). Returns the (SMILES, name) pairs."""
    from rdkit import Chem

    from jkstep.data.generate import read_molecules, read_splits

    def canonical(s):
        return Chem.MolToSmiles(Chem.MolFromSmiles(s))

    qm = dict((n, s) for s, n in read_molecules(sources[0]))
    held = read_splits(splits)
    excluded_names = set(held["val"]) | set(held["test"])
    excluded = {canonical(qm[n]) for n in excluded_names if n in qm}
    out_list, seen_smiles, seen_names = [], set(), set()
    for smiles, name in SMALL + [p for src in sources for p in read_molecules(src)]:
        can = canonical(smiles)
        n, elements = n_atoms_of(smiles)
        if (name in excluded_names or can in excluded or can in seen_smiles or name in seen_names
                or not (min_atoms <= n <= max_atoms) or not elements <= set(ELEMENTS)):
            continue
        seen_smiles.add(can)
        seen_names.add(name)
        out_list.append((smiles, name))
    with open(out, "w") as fh:
        fh.write("# Molecules for the learned fast force (jkstep.data.fastforce): `SMILES name`, C H N O S,\n"
                 f"# {min_atoms}-{max_atoms} atoms with hydrogens. Built by jkstep.data.fastforce.build_molecule_list()\n"
                 f"# from a few small molecules and {', '.join(sources)}, leaving out the validation and test\n"
                 f"# molecules of {splits} (by name and canonical SMILES).\n")
        for smiles, name in out_list:
            fh.write(f"{smiles} {name}\n")
    return out_list


# ---------------------------------------------------------------------------------------------
# one molecule


#: atom-count buckets of the padded MMFF94 dynamics (one compile per bucket, not per molecule)
MM_BUCKETS = (10, 20, 30)


def _mm_frames_fn():
    import functools

    import jax
    import jax.numpy as jnp

    from jkstep import integrate, units

    @functools.partial(jax.jit, static_argnames=("n_frames", "every", "dt", "friction"))
    def frames(pot, masses, mask, x0, temperatures, keys, *, n_frames, every, dt, friction):
        def one(temperature, key):
            init, apply = integrate.langevin(pot, masses, dt, temperature, friction)
            kv, kl = jax.random.split(key)
            sigma = jnp.sqrt(units.KB * temperature * units.ACCEL / masses)[:, None] * mask[:, None]
            state = init(x0, sigma * jax.random.normal(kv, x0.shape), kl)

            def step(_, s):   # padded atoms stay pinned (the thermostat would kick them)
                s = apply(s)
                return s.replace(positions=jnp.where(mask[:, None], s.positions, x0),
                                 velocities=jnp.where(mask[:, None], s.velocities, 0.0))

            def outer(s, _):
                s = jax.lax.fori_loop(0, every, step, s)
                return s, s.positions

            return jax.lax.scan(outer, state, None, length=n_frames)[1]

        return jax.vmap(one)(temperatures, keys)

    return frames


_MM_FRAMES = []


def mm_term_sizes(molecules, cfg: "FastDataConfig") -> dict[int, dict[str, int]]:
    """Padded MMFF94 term counts of each bucket: the largest among the listed molecules (all of
    them, so a resumed run pads exactly as an uninterrupted one)."""
    from jkstep.data import mm as mmdata
    from jkstep.data.generate import molecule_seed
    from jkstep.molecule import Molecule
    from jkstep.potentials.mmff import mmff_potential

    sizes: dict[int, dict[str, int]] = {}
    for smiles, name in molecules:
        mol = Molecule.from_smiles(smiles, seed=molecule_seed(cfg.seed, name) % (2**31))
        counts = mmdata.term_counts(mmff_potential(mol))
        old = sizes.setdefault(mmdata.bucket_of(len(mol), MM_BUCKETS), {k: 1 for k in counts})
        for k, v in counts.items():
            old[k] = max(old[k], v)
    return sizes


def _mm_langevin(mm, masses, x0, temperatures, key, cfg: FastDataConfig, sizes=None):
    """MMFF94 Langevin frames (T, F, N, 3) at each temperature (vmapped); with ``sizes`` (from
    ``mm_term_sizes``) the potential is padded to its bucket, so molecules share one compile."""
    import jax
    import jax.numpy as jnp

    from jkstep.data import mm as mmdata

    n = len(masses)
    x0 = np.asarray(x0, np.float64)
    if sizes is None:
        pot, m, mask, x = mm, np.asarray(masses, np.float64), np.ones(n, bool), x0
    else:
        bucket = mmdata.bucket_of(n, MM_BUCKETS)
        pot = mmdata.pad_potential(mm, bucket, sizes[bucket])
        x, _, m, mask = mmdata.pad_state(x0, np.zeros_like(x0), masses, bucket)
    if not _MM_FRAMES:
        _MM_FRAMES.append(_mm_frames_fn())
    keys = jax.random.split(key, len(temperatures))
    out = _MM_FRAMES[0](pot, jnp.asarray(m), jnp.asarray(mask), jnp.asarray(x),
                        jnp.asarray(temperatures, jnp.float64), keys, n_frames=cfg.mm_frames,
                        every=cfg.mm_every, dt=cfg.dt_fs, friction=cfg.friction)
    return np.asarray(out)[:, :, :n]


def _xtb_langevin(pot, masses, x0, temperature, key, cfg: FastDataConfig):
    """GFN2-xTB Langevin frames (F, N, 3) with their energies (F,) and forces (F, N, 3)."""
    import jax
    import jax.numpy as jnp

    from jkstep import integrate, units

    init, apply = integrate.langevin(pot, masses, cfg.dt_fs, temperature, cfg.friction)
    kv, kl = jax.random.split(key)
    sigma = np.sqrt(units.KB * temperature * units.ACCEL / np.asarray(masses))[:, None]
    v0 = sigma * np.asarray(jax.random.normal(kv, x0.shape))
    state = init(jnp.asarray(x0), jnp.asarray(v0), kl)

    @jax.jit
    def chunk(state):
        return jax.lax.fori_loop(0, cfg.xtb_every, lambda i, s: apply(s), state)

    xs, es, fs = [], [], []
    for _ in range(cfg.xtb_frames):
        state = chunk(state)
        if bool(state.failed):
            break
        xs.append(np.asarray(state.positions))
        es.append(float(state.energy))
        fs.append(np.asarray(state.forces))
    return np.array(xs).reshape(-1, len(masses), 3), np.array(es), np.array(fs).reshape(-1, len(masses), 3)


def label_xtb(pot, frames: np.ndarray):
    """xTB (energy (F,), forces (F, N, 3)) of frames through the potential's host side (the same
    tblite settings and SCF failure policy as under JAX, without a JAX dispatch per frame): one
    request each, one after the other, each restarting from the previous wavefunction (one tblite
    calculator, so never two frames at once, whatever the potential's ``workers``); NaN where the
    SCF failed."""
    frames = np.asarray(frames, np.float64)
    energy, forces = np.empty(len(frames)), np.empty_like(frames)
    for i, x in enumerate(frames):
        e, f, _ = pot._host(x[None], np.ones(1, bool), np.zeros(1, np.int32))
        energy[i], forces[i] = np.asarray(e).reshape(()), np.asarray(f).reshape(x.shape)
    return energy, forces


def molecule_frames(smiles: str, name: str, cfg: FastDataConfig, mm_sizes=None) -> dict:
    """All labelled frames of one molecule as a dict of numpy arrays (see module doc)."""
    import jax
    import jax.numpy as jnp

    from jkstep.data.generate import molecule_seed
    from jkstep.molecule import Molecule
    from jkstep.potentials.mmff import mmff_potential
    from jkstep.potentials.xtb import xtb_potential

    seed = molecule_seed(cfg.seed, name)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed % (2**31))
    mol = Molecule.from_smiles(smiles, seed=seed % (2**31))
    masses = np.asarray(mol.masses, np.float64)
    x0 = np.asarray(mol.positions, np.float64)
    mm = mmff_potential(mol)
    pot = xtb_potential(mol, method=cfg.method, accuracy=cfg.accuracy, workers=1)
    t0 = time.perf_counter()

    k_mm, k_xtb = jax.random.split(key)
    mm_frames = _mm_langevin(mm, masses, x0, cfg.mm_temperatures, k_mm, cfg, mm_sizes)
    mm_frames = mm_frames.reshape(-1, len(masses), 3)
    t_mm = time.perf_counter() - t0
    xtb_x, xtb_e, xtb_f = [], [], []
    for i, temperature in enumerate(cfg.xtb_temperatures):
        x, e, f = _xtb_langevin(pot, masses, x0, float(temperature), jax.random.fold_in(k_xtb, i), cfg)
        xtb_x.append(x), xtb_e.append(e), xtb_f.append(f)
    xtb_x, xtb_e, xtb_f = np.concatenate(xtb_x), np.concatenate(xtb_e), np.concatenate(xtb_f)
    t_xtb = time.perf_counter() - t0 - t_mm

    pool = np.concatenate([mm_frames, xtb_x])
    finite = np.all(np.isfinite(pool), axis=(1, 2))
    pool = pool[finite]
    pick = rng.integers(0, len(pool), cfg.displaced)
    sig = rng.uniform(*cfg.displace_sigma, size=(cfg.displaced, 1, 1))
    displaced = pool[pick] + sig * rng.standard_normal((cfg.displaced,) + x0.shape)
    pick = rng.integers(0, len(pool), cfg.compressed)
    scale = rng.uniform(*cfg.compress, size=(cfg.compressed, 1, 1))
    centre = pool[pick].mean(axis=1, keepdims=True)
    compressed = centre + scale * (pool[pick] - centre)

    new = np.concatenate([mm_frames, displaced, compressed])
    new_e, new_f = label_xtb(pot, new)
    positions = np.concatenate([mm_frames, xtb_x, displaced, compressed])
    source = np.concatenate([np.full(len(mm_frames), 0), np.full(len(xtb_x), 1),
                             np.full(len(displaced), 2), np.full(len(compressed), 3)]).astype(np.int8)
    xtb_energy = np.concatenate([new_e[:len(mm_frames)], xtb_e, new_e[len(mm_frames):]])
    xtb_forces = np.concatenate([new_f[:len(mm_frames)], xtb_f, new_f[len(mm_frames):]])
    mm_e, mm_f = jax.jit(jax.vmap(mm))(jnp.asarray(positions))
    mm_e, mm_f = np.asarray(mm_e), np.asarray(mm_f)
    ok = (np.isfinite(xtb_energy) & np.all(np.isfinite(xtb_forces), axis=(1, 2))
          & np.isfinite(mm_e) & np.all(np.isfinite(mm_f), axis=(1, 2)))
    # frames far from anything dynamics visit (an xTB force above 20 eV/Å) teach nothing useful
    ok &= np.max(np.linalg.norm(np.nan_to_num(xtb_forces), axis=-1), axis=-1) < 20.0
    return {
        "numbers": np.asarray(mol.numbers, np.int32), "masses": masses,
        "positions": positions[ok], "xtb_energy": xtb_energy[ok], "xtb_forces": xtb_forces[ok],
        "mmff_energy": mm_e[ok], "mmff_forces": mm_f[ok], "source": source[ok],
        "smiles": np.array(smiles), "name": np.array(name),
        "dropped": np.array(int((~ok).sum())), "xtb_calls": np.array(int(pot.calls)),
        "scf_failures": np.array(int(pot.scf_failures)), "seconds": np.array(time.perf_counter() - t0),
        "seconds_mm_md": np.array(t_mm), "seconds_xtb_md": np.array(t_xtb),
    }


def _atomic_savez(path: Path, arrays: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _molecule_task(smiles: str, name: str, cfg: FastDataConfig, mm_sizes, path: str) -> dict:
    """One task of ``generate``: label one molecule into ``path`` unless it is there (atomic write,
    so a task that is run again after a dead worker neither loses nor duplicates frames)."""
    if not os.path.exists(path):
        _atomic_savez(Path(path), molecule_frames(smiles, name, cfg, mm_sizes))
    with np.load(path) as d:
        return {"name": name, "frames": int(len(d["xtb_energy"])), "xtb_calls": int(d["xtb_calls"])}


def generate(cfg: FastDataConfig, progress: Callable[[str, int, int], None] | None = None,
             workers: int | None = None, scheduler: str | None = None, executor=None) -> dict:
    """Label every molecule of ``cfg.molecules`` into ``cfg.output/<name>.npz``, one task per
    molecule on the Dask execution layer (``jkstep.parallel``: ``executor``, else a cluster of
    ``workers`` processes or the one at ``scheduler``). Finished molecules are skipped, so the run
    resumes. ``progress(name, done, total)`` is called as molecules finish. Returns a summary
    (molecules, frames, xTB calls, seconds, output)."""
    from jkstep import parallel
    from jkstep.data.generate import read_molecules

    parallel.check_workers(workers, scheduler)
    molecules = read_molecules(cfg.molecules)
    if cfg.max_molecules is not None:
        molecules = molecules[:cfg.max_molecules]
    out = Path(cfg.output).absolute()   # a worker of an external cluster has another working directory
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "config.json"
    if settings.exists():
        old = json.loads(settings.read_text())
        changed = sorted(k for k in old if k not in ("max_molecules",) and old[k] != cfg.to_dict().get(k))
        if changed:
            raise InputError(f"{cfg.output} was generated with other settings ({', '.join(changed)}); "
                             "use a new output directory")
    settings.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    t0 = time.perf_counter()
    paths = {name: os.fspath(out / f"{name}.npz") for _, name in molecules}
    todo = [(smiles, name) for smiles, name in molecules if not os.path.exists(paths[name])]
    # MMFF94 dynamics padded per size bucket: a few compiles, not one per molecule
    sizes = mm_term_sizes(molecules, cfg) if todo else None
    tasks = [parallel.Task(parallel.task_key(f"generate-fast-{name}", os.fspath(out), name),
                           _molecule_task, smiles, name, cfg, sizes, paths[name]) for smiles, name in todo]
    done = 0
    for _, name in molecules:
        if progress and os.path.exists(paths[name]):
            done += 1
            progress(name, done, len(molecules))

    def finished(key, result):
        nonlocal done
        done += 1
        if progress:
            progress(result["name"], done, len(molecules))

    if tasks:
        parallel.run_tasks_on(executor, tasks, finished, workers, scheduler)
    frames = calls = 0
    for _, name in molecules:
        with np.load(paths[name]) as d:
            frames += len(d["xtb_energy"])
            calls += int(d["xtb_calls"])
    return {"molecules": len(molecules), "frames": frames, "xtb_calls": calls,
            "seconds": round(time.perf_counter() - t0, 1), "output": os.fspath(cfg.output)}


# ---------------------------------------------------------------------------------------------
# compact committed copy and loading


def compact(directory, out_path, command: str = "", molecules=None, blocks: int = 1) -> dict:
    """Pack every ``directory/*.npz`` molecule file into one compressed ``out_path`` (float32
    positions and forces; energies as float32 offsets from a float64 per-molecule reference, the
    mean xTB or MMFF energy of its frames) and write ``<out_path>.provenance.json``. ``blocks`` = 3:
    the files are triplets (``jkstep.data.triplets``: each molecule's frames in three blocks x₋, x,
    x₊, ``spacing_fs`` apart), recorded in the file as ``blocks`` and ``spacing_fs``."""
    directory, out_path = Path(directory), Path(out_path)
    files = sorted(directory.glob("*.npz"))
    if molecules is not None:
        files = [f for f in files if f.stem in set(molecules)]
    if not files:
        raise InputError(f"{directory} holds no molecule files")
    cols = {k: [] for k in ("numbers", "positions", "xtb_forces", "mmff_forces", "xtb_de", "mmff_de", "source")}
    names, smiles, n_atoms, n_frames, xtb_ref, mm_ref, spacing = [], [], [], [], [], [], set()
    for f in files:
        with np.load(f) as d:
            if blocks > 1:
                spacing.add(float(d["spacing_fs"]) if "spacing_fs" in d.files else None)
            e, me = d["xtb_energy"], d["mmff_energy"]
            names.append(str(d["name"])), smiles.append(str(d["smiles"]))
            n_atoms.append(len(d["numbers"])), n_frames.append(len(e))
            xtb_ref.append(float(np.mean(e))), mm_ref.append(float(np.mean(me)))
            cols["numbers"].append(d["numbers"].astype(np.int8))
            cols["positions"].append(d["positions"].astype(np.float32).reshape(-1, 3))
            cols["xtb_forces"].append(d["xtb_forces"].astype(np.float32).reshape(-1, 3))
            cols["mmff_forces"].append(d["mmff_forces"].astype(np.float32).reshape(-1, 3))
            cols["xtb_de"].append((e - xtb_ref[-1]).astype(np.float32))
            cols["mmff_de"].append((me - mm_ref[-1]).astype(np.float32))
            cols["source"].append(d["source"].astype(np.int8))
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    arrays.update(names=np.array(names), smiles=np.array(smiles), n_atoms=np.array(n_atoms, np.int32),
                  n_frames=np.array(n_frames, np.int32), xtb_ref=np.array(xtb_ref), mmff_ref=np.array(mm_ref))
    if blocks > 1:
        if len(spacing) != 1 or None in spacing or any(n % blocks for n in n_frames):
            raise InputError(f"{directory}: not {blocks} equal blocks of frames one spacing apart in every file")
        arrays.update(blocks=np.array(blocks), spacing_fs=np.array(spacing.pop()))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, out_path)
    cfg_path = directory / "config.json"
    prov = {"command": command, "source_directory": os.fspath(directory),
            "generation_config": json.loads(cfg_path.read_text()) if cfg_path.exists() else None,
            "molecules": len(names), "frames": int(sum(n_frames)), "bytes": out_path.stat().st_size,
            "layout": "flat arrays: numbers (sum n_atoms), positions/forces (sum n_frames*n_atoms, 3) "
                      "float32, Å and eV/Å; energies xtb_de/mmff_de (sum n_frames) float32 eV offsets "
                      "from xtb_ref/mmff_ref (per molecule, float64 eV); source codes " + ", ".join(SOURCES),
            "frames_per_source": {name: int(np.sum(arrays["source"] == code)) for code, name in enumerate(SOURCES)},
            "atoms_per_molecule": {"min": int(min(n_atoms)), "max": int(max(n_atoms)),
                                   "mean": round(float(np.mean(n_atoms)), 2)}}
    if blocks > 1:
        prov["layout"] += (f"; each molecule's frames in {blocks} blocks (x-, x, x+: triplets "
                           f"{float(arrays['spacing_fs']):g} fs apart along a thermal motion)")
    with open(out_path.with_suffix(".provenance.json"), "w") as fh:
        json.dump(prov, fh, indent=2)
        fh.write("\n")
    return prov


def load_frames(path) -> list[dict]:
    """Per-molecule frame sets of a compact file: a list of dicts with ``name``, ``smiles``,
    ``numbers`` (N,), ``positions`` (F, N, 3), ``xtb_energy``/``mmff_energy`` (F,) float64 eV
    (reference + offset), ``xtb_forces``/``mmff_forces`` (F, N, 3), ``source`` (F,) and, in a
    triplet file, ``blocks`` (3) and ``spacing_fs``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"no fast-force frame file {path}: run `jkstep generate-fast` then "
                         "`jkstep generate-fast --compact` (or use the committed data/fast_frames.npz)")
    out = []
    with np.load(path) as d:
        a = {k: d[k] for k in d.files}
    za = ia = fa = 0
    for m, name in enumerate(a["names"]):
        n, f = int(a["n_atoms"][m]), int(a["n_frames"][m])
        rows = slice(ia, ia + f * n)
        out.append({
            "name": str(name), "smiles": str(a["smiles"][m]), "numbers": a["numbers"][za:za + n].astype(np.int32),
            "positions": a["positions"][rows].reshape(f, n, 3).astype(np.float64),
            "xtb_forces": a["xtb_forces"][rows].reshape(f, n, 3).astype(np.float64),
            "mmff_forces": a["mmff_forces"][rows].reshape(f, n, 3).astype(np.float64),
            "xtb_energy": a["xtb_ref"][m] + a["xtb_de"][fa:fa + f].astype(np.float64),
            "mmff_energy": a["mmff_ref"][m] + a["mmff_de"][fa:fa + f].astype(np.float64),
            "source": a["source"][fa:fa + f]})
        if "blocks" in a:
            out[-1].update(blocks=int(a["blocks"]), spacing_fs=float(a["spacing_fs"]))
        za, ia, fa = za + n, ia + f * n, fa + f
    return out
