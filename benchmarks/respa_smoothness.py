"""Is a force field smooth enough to be integrated by impulses? RESPA with pure-JAX forces only.

The slow force S is integrated by half kicks every τ = k·0.25 fs, the fast force F by velocity
Verlet at 0.25 fs, so only S − F meets the impulses. With S = MMFF94 and F = 0.9·MMFF94 the
impulse part is a smooth 10 % of a force field; with S = MMFF94 + network (a learned fast force)
and F = MMFF94 the impulse part is the network alone. A network that is as smooth as a force field
conserves energy as well; one with sharp features at sub-ångström scales drifts. No xTB call is
made. NVE from the conformer with Maxwell–Boltzmann velocities at ``--temperature``.

    python benchmarks/respa_smoothness.py --model outputs/fast_delta --smiles CO CCO CCCO
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep import analysis  # noqa: E402
from jkstep.rollout import runner  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int  # noqa: E402


def scaled(potential, factor: float):
    return lambda x: tuple(factor * y for y in potential(x))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gfn2-fast", help="a learned fast force (name or path)")
    parser.add_argument("--smiles", nargs="+", default=["CO", "CCO", "CCCO"])
    parser.add_argument("--k", nargs="+", type=positive_int, default=[4, 8], help="inner steps per impulse")
    parser.add_argument("--ps", type=positive_float, default=1.0, help="NVE length, ps (1)")
    parser.add_argument("--temperature", type=positive_float, default=800.0,
                        help="K of the initial velocities (half of it after equipartition; default 800)")
    parser.add_argument("--seeds", type=positive_int, default=2, help="velocity seeds 1..N (2)")
    args = parser.parse_args(argv)
    print("| molecule | seed | k | impulse part | E std kJ/mol | drift kJ/mol/ps |")
    print("|---|---|---|---|---|---|")
    for smiles in args.smiles:
        mol = jkstep.Molecule.from_smiles(smiles)
        mm = jkstep.mmff_potential(mol)
        learned = jkstep.learned_potential(args.model, mol)
        if learned.baseline is None:      # a full potential: its difference from MMFF94 meets the impulses
            pairs = [("0.1 MMFF94", mm, scaled(mm, 0.9)), ("network − MMFF94", learned, mm)]
        else:                             # a Δ-potential: the network alone meets the impulses
            pairs = [("0.1 MMFF94", mm, scaled(mm, 0.9)), ("network", learned, mm)]
        for seed in range(1, args.seeds + 1):
            v = mol.thermal_velocities(args.temperature, seed=seed)
            for k in args.k:
                for label, slow, fast in pairs:
                    init, apply = jkstep.respa(fast, slow, mol.masses, k, 0.25)
                    _, frames = runner(apply, int(round(args.ps * 4000 / k)), 1)(init(mol.positions, v))
                    total = np.asarray(frames.energy) + analysis.kinetic_energy(np.asarray(frames.velocities),
                                                                                mol.masses)
                    t = np.arange(len(total)) * k * 0.25
                    print(f"| {smiles} | {seed} | {k} | {label} | {analysis.energy_std(total):.3f} | "
                          f"{analysis.energy_drift(t, total):+.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
