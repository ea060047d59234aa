"""RESPA with MMFF94 against RESPA with a learned fast force, from the same starts, NVE.

For each molecule: ``jkstep evaluate``'s starting states (seed 0: a 1 ps Langevin thermalisation at
300 K, 4 same-energy replicas), then RESPA at each k with MMFF94 (``mmff_respa``) and with the
learned fast force, 4 replicas × ``--ps`` ps, the same xTB calls. Prints each run's energy
fluctuation and drift per replica, mean kinetic temperature and fallbacks. (The distributions, the
X–H band and the reference are what ``jkstep evaluate --fast NAME`` adds, at about 3× the cost.)

    python benchmarks/respa_fast_compare.py --fast outputs/fast_delta_smooth --molecules 1-propanol cytosine
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep import analysis  # noqa: E402
from jkstep.data.generate import read_molecules  # noqa: E402
from jkstep.evaluate.compare import EvalConfig, run_contender, thermalised_starts  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", required=True, help="a learned fast force: shipped name or checkpoint path")
    parser.add_argument("--molecules", nargs="+", default=["1-propanol", "cytosine"],
                        help="names of data/qm_molecules.smi (default: validation molecules)")
    parser.add_argument("--k", nargs="+", type=positive_int, default=[8])
    parser.add_argument("--ps", type=positive_float, default=2.0, help="NVE length per replica, ps (2)")
    args = parser.parse_args(argv)
    smiles = {name: s for s, name in read_molecules("data/qm_molecules.smi")}
    unknown = [m for m in args.molecules if m not in smiles]
    if unknown:
        parser.error(f"not in data/qm_molecules.smi: {unknown}")
    print("| molecule | k | fast force | E std kJ/mol (mean; per replica) | drift kJ/mol/ps (mean; per replica) "
          "| mean T K | fallbacks |")
    print("|---|---|---|---|---|---|---|")
    for name in args.molecules:
        mol = jkstep.Molecule.from_smiles(smiles[name])
        pot = jkstep.xtb_potential(mol)
        starts = thermalised_starts(mol, pot, EvalConfig(k=8, dt=0.25, ps=args.ps, n_replicas=4, seed=0))
        fasts = {"MMFF94": jkstep.mmff_potential(mol), args.fast: jkstep.learned_potential(args.fast, mol)}
        for k in args.k:
            cfg = EvalConfig(k=k, dt=0.25, ps=args.ps, n_replicas=4, seed=0)
            for label, fast in fasts.items():
                init, apply = jkstep.respa(fast, pot, mol.masses, k, 0.25)
                run = run_contender(lambda x, v: init(x, v), apply, 1, starts, cfg, lambda: pot.calls)
                frames = run["frames"]
                total = np.asarray(frames.energy) + analysis.kinetic_energy(frames.velocities, mol.masses)
                t = np.arange(total.shape[1]) * k * 0.25
                std = [analysis.energy_std(e) for e in total]
                drift = [analysis.energy_drift(t, e) for e in total]
                temp = float(np.mean(analysis.temperature(frames.velocities, mol.masses)))
                print(f"| {name} | {k} | {label} | {np.mean(std):.3f}; {' '.join(f'{x:.3f}' for x in std)} | "
                      f"{np.mean(drift):+.3f}; {' '.join(f'{x:+.3f}' for x in drift)} | {temp:.1f} | "
                      f"{int(np.sum(run['state'].fallbacks))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
