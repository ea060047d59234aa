"""The equal-cost baseline: plain velocity Verlet with GFN2-xTB at dt = 0.25, 0.5, 1, 2 fs.

Alanine dipeptide (default), thermalised with Langevin at 300 K, then NVE from the same state
for every dt. Prints the total-energy drift (linear fit, kJ/mol/ps), its fluctuation (std,
kJ/mol), the mean kinetic temperature and the xTB calls of each run. A k-step model with base
step 0.25 fs is worth using only where it beats Verlet at k x 0.25 fs with the same calls.

    .venv/bin/python benchmarks/bench_verlet_baseline.py [--ps 2] [--smiles ...] [--dts 0.25 0.5 1 2]
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep import analysis  # noqa: E402
from jkstep.rollout import runner  # noqa: E402

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smiles", default="CC(=O)NC(C)C(=O)NC")
    ap.add_argument("--ps", type=positive_float, default=2.0, help="NVE length per dt (ps)")
    ap.add_argument("--equilibrate-ps", type=float, default=1.0)
    ap.add_argument("--dts", type=positive_float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--accuracy", type=positive_float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    mol = jkstep.Molecule.from_smiles(args.smiles, seed=args.seed)
    pot = jkstep.xtb_potential(mol, accuracy=args.accuracy)
    init, apply = jkstep.langevin(pot, mol.masses, dt=0.5, temperature=300.0, friction=0.01)
    n_eq = int(args.equilibrate_ps * 2000)
    start, _ = runner(apply, 1, n_eq)(init(mol.positions, mol.thermal_velocities(300.0, args.seed),
                                            jax.random.PRNGKey(args.seed)))
    print(f"{args.smiles} ({len(mol)} atoms), GFN2-xTB accuracy {args.accuracy}, "
          f"{args.equilibrate_ps} ps Langevin at 300 K, then {args.ps} ps NVE from the same state")
    print(f"{'dt fs':>6s} {'xTB calls':>9s} {'drift kJ/mol/ps':>16s} {'E std kJ/mol':>13s} "
          f"{'mean T K':>9s} {'wall s':>7s}")
    for dt in args.dts:
        init, apply = jkstep.verlet(pot, mol.masses, dt=dt)
        n_steps = int(round(args.ps * 1000 / dt))
        every = max(1, int(round(2.0 / dt)))  # a frame every 2 fs for every dt
        calls = pot.calls
        t = time.perf_counter()
        state, frames = runner(apply, n_steps // every, every)(init(start.positions, start.velocities))
        jax.block_until_ready(state.positions)
        wall = time.perf_counter() - t
        e = np.asarray(frames.energy) + analysis.kinetic_energy(frames.velocities, mol.masses)
        times = np.asarray(frames.step) * dt
        temp = analysis.temperature(frames.velocities, mol.masses).mean()
        flag = "  FAILED" if bool(state.failed) else ""
        print(f"{dt:6.2f} {pot.calls - calls:9d} {analysis.energy_drift(times, e):16.4f} "
              f"{analysis.energy_std(e):13.4f} {temp:9.1f} {wall:7.1f}{flag}")


if __name__ == "__main__":
    main()
