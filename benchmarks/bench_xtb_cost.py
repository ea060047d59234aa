"""Cost of one GFN2-xTB energy-and-forces call (tblite through jkstep) against molecule size,
with and without restarting from the previous wavefunction, and the throughput of a vmap'd
batch on 1 vs 2 worker threads.

    .venv/bin/python benchmarks/bench_xtb_cost.py [--repeats 40] [--batch 8]

Geometries follow a short 0.25 fs Verlet path, as in MD. Prints ms per call; run it on a
quiet machine (other processes on the cores distort the figures).
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep.rollout import runner  # noqa: E402

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_int  # noqa: E402

MOLECULES = [("ethanol", "CCO"), ("glycine", "NCC(=O)O"), ("benzene", "c1ccccc1"),
             ("alanine dipeptide", "CC(=O)NC(C)C(=O)NC"), ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C")]


def md_path(mol, n):
    """n geometries 0.25 fs apart on a Verlet trajectory (Å)."""
    pot = jkstep.xtb_potential(mol)
    init, apply = jkstep.verlet(pot, mol.masses, dt=0.25)
    _, frames = runner(apply, n, 1)(init(mol.positions, mol.thermal_velocities(300.0, 0)))
    return np.asarray(frames.positions)


def per_call_ms(pot, path):
    f = jax.jit(pot)
    jax.block_until_ready(f(path[0]))
    calls = pot.calls
    t = time.perf_counter()
    for x in path:
        jax.block_until_ready(f(x))
    return 1e3 * (time.perf_counter() - t) / (pot.calls - calls)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=positive_int, default=40)
    ap.add_argument("--batch", type=positive_int, default=8)
    args = ap.parse_args()
    print(f"cores available: {len(os.sched_getaffinity(0))}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"{'molecule':20s} {'atoms':>5s} {'restart ms':>11s} {'fresh ms':>9s} "
          f"{'batch/1 thr ms':>15s} {'batch/2 thr ms':>15s} {'speed-up':>8s}")
    for name, smiles in MOLECULES:
        mol = jkstep.Molecule.from_smiles(smiles, seed=0)
        path = md_path(mol, args.repeats)
        restart = per_call_ms(jkstep.xtb_potential(mol, restart=True), path)
        fresh = per_call_ms(jkstep.xtb_potential(mol, restart=False), path)
        batch = jnp.asarray(path[: args.batch])
        per_batch = []
        for workers in (1, 2):
            pot = jkstep.xtb_potential(mol, workers=workers)
            f = jax.jit(jax.vmap(pot))
            jax.block_until_ready(f(batch))
            reps = max(1, args.repeats // args.batch)
            t = time.perf_counter()
            for _ in range(reps):
                jax.block_until_ready(f(batch))
            per_batch.append(1e3 * (time.perf_counter() - t) / (reps * args.batch))
        print(f"{name:20s} {len(mol):5d} {restart:11.2f} {fresh:9.2f} {per_batch[0]:15.2f} "
              f"{per_batch[1]:15.2f} {per_batch[0] / per_batch[1]:7.2f}x")


if __name__ == "__main__":
    main()
