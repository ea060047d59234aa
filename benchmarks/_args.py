"""argparse types of the benchmark scripts (a count or a length that cannot make a measurement is
refused with a usage line instead of a traceback or a silent empty result), the test and
validation molecules by name, started as ``jkstep evaluate`` starts them, and the NVE figures of
their runs."""

import argparse
import math


def positive_int(text: str) -> int:
    """An integer ≥ 1 (a count: replicas, batches, repeats, steps, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a length in ps, a time step in fs, a bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def existing_dir(text: str) -> str:
    """The path of a directory that exists (a data root, a runs' directory)."""
    import os

    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no directory {text}")
    return text


def qm_smiles(parser: argparse.ArgumentParser, names) -> dict:
    """{name: SMILES} of ``names`` from data/qm_molecules.smi; an unknown name is a usage error."""
    from jkstep.data.generate import read_molecules

    smiles = {name: s for s, name in read_molecules("data/qm_molecules.smi")}
    unknown = [m for m in names if m not in smiles]
    if unknown:
        parser.error(f"not in data/qm_molecules.smi: {unknown}")
    return smiles


def evaluation_start(smiles: str, record: bool = False):
    """A molecule started as ``jkstep evaluate`` starts it (seed 0: a 1 ps Langevin thermalisation at
    300 K, then 4 same-energy replicas): (Molecule, its xTB potential, start positions (4, N, 3) Å,
    velocities (4, N, 3) Å/fs, the thermalisation's frames with ``record`` (every 0.5 fs step:
    positions, energy, forces), else None)."""
    import jkstep
    from jkstep.evaluate.compare import EvalConfig, thermalise

    mol = jkstep.Molecule.from_smiles(smiles)
    pot = jkstep.xtb_potential(mol)
    x, v, frames = thermalise(mol, pot, EvalConfig(n_replicas=4, seed=0), 1 if record else None)
    return mol, pot, x, v, frames


def replica_energies(frames, masses, frame_fs: float):
    """NVE figures of a batch of runs: (total energy (R, T) eV, kinetic + the potential energy of
    ``frames``; its E std per replica, kJ/mol; its drift per replica, kJ/mol/ps), frames
    ``frame_fs`` fs apart (``jkstep.analysis.energy_std`` and ``energy_drift``)."""
    import numpy as np

    from jkstep import analysis

    total = np.asarray(frames.energy) + analysis.kinetic_energy(frames.velocities, masses)
    t = np.arange(total.shape[1]) * frame_fs
    return total, [analysis.energy_std(e) for e in total], [analysis.energy_drift(t, e) for e in total]
