"""How RESPA's energy error depends on the fast force: fast = MMFF94 + a·(X − MMFF94), X = xTB or
a learned fast force, k = 8, NVE, 4 replicas from ``jkstep evaluate``'s starts (seed 0).

With X = xTB the inner loop calls xTB too (a separate potential, not counted as the slow calls):
a diagnostic of how close a fast force must be, not a way to save calls. a = 0 is mmff_respa;
with X = xTB, a = 1 would be Verlet at 0.25 fs.

    python benchmarks/respa_fast_force_mix.py 1-propanol --xtb 0 0.5 0.9 --learned outputs/fast_delta 0.5 1
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep.data.generate import read_molecules  # noqa: E402
from jkstep.evaluate.compare import EvalConfig, run_contender, thermalised_starts  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, replica_energies  # noqa: E402


def mixed(mm, other, a: float):
    """(energy, forces) of MMFF94 + a·(other − MMFF94)."""
    def fast(x):
        e1, f1 = mm(x)
        e2, f2 = other(x)
        return (1 - a) * e1 + a * e2, (1 - a) * f1 + a * f2

    return fast


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("molecule", help="a name of data/qm_molecules.smi (validation molecules for choices)")
    parser.add_argument("--xtb", nargs="*", type=float, default=[0.0, 0.5, 0.9], help="shares a of xTB")
    parser.add_argument("--learned", nargs="*", default=[], metavar="MODEL A",
                        help="a learned fast force (name or path) and then its shares a")
    parser.add_argument("--ps", type=positive_float, default=1.0, help="NVE length per replica, ps (1)")
    args = parser.parse_args(argv)
    smiles = {name: s for s, name in read_molecules("data/qm_molecules.smi")}
    if args.molecule not in smiles:
        parser.error(f"{args.molecule!r} is not in data/qm_molecules.smi")
    mol = jkstep.Molecule.from_smiles(smiles[args.molecule])
    pot, mm = jkstep.xtb_potential(mol), jkstep.mmff_potential(mol)
    cfg = EvalConfig(k=8, dt=0.25, ps=args.ps, n_replicas=4, seed=0)
    starts = thermalised_starts(mol, pot, cfg)
    runs = [(f"xTB a={a:g}", mixed(mm, jkstep.xtb_potential(mol), a)) for a in args.xtb]
    if args.learned:
        model = args.learned[0]
        runs += [(f"{model} a={float(a):g}", mixed(mm, jkstep.learned_potential(model, mol), float(a)))
                 for a in args.learned[1:]]
    print("| fast force | E std per replica kJ/mol | mean | drift per replica kJ/mol/ps |")
    print("|---|---|---|---|")
    for label, fast in runs:
        init, apply = jkstep.respa(fast, pot, mol.masses, 8, 0.25)
        run = run_contender(lambda x, v: init(x, v), apply, 1, starts, cfg, lambda: pot.calls)
        frames = run["frames"]
        _, std, drift = replica_energies(frames, mol.masses, 2.0)
        print(f"| {label} | {' '.join(f'{s:.3f}' for s in std)} | {np.mean(std):.3f} | "
              f"{' '.join(f'{d:+.3f}' for d in drift)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
