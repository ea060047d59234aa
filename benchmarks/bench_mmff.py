"""JAX MMFF94 energy + forces per call against RDKit's ``CalcGrad``, in one run.

    python benchmarks/bench_mmff.py [--smiles "CC(=O)NC(C)C(=O)NC"] [--batch 256] [--repeat 5]

For one molecule (default alanine dipeptide): RDKit's MMFF94 force field ``CalcEnergy`` +
``CalcGrad`` per call (all fragment interactions on, as jkstep uses it), the jitted JAX
``mmff_potential`` for one geometry, and the same vmapped over ``--batch`` geometries (per
geometry). Prints ms per call (median of repeats, after a warm-up) and the ratios. Also checks
that both give the same forces at the benchmark geometry.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from rdkit import Chem
from rdkit.Chem import rdForceFieldHelpers

import jkstep
from jkstep.potentials.mmff import KCAL_MOL

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_int  # noqa: E402


def timed(fn, repeat: int, min_time: float = 0.2) -> float:
    """Median seconds per call of ``fn()`` over ``repeat`` blocks of at least ``min_time`` s."""
    fn()
    out = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if time.perf_counter() - t0 >= min_time:
                break
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smiles", default="CC(=O)NC(C)C(=O)NC")
    p.add_argument("--batch", type=positive_int, default=256)
    p.add_argument("--repeat", type=positive_int, default=5)
    args = p.parse_args()

    mol = jkstep.Molecule.from_smiles(args.smiles, seed=0)
    rng = np.random.default_rng(0)
    x = mol.positions + 0.03 * rng.normal(size=mol.positions.shape)
    rd = Chem.MolFromMolBlock(mol.mol_block, removeHs=False)
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(rd)
    ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(rd, props, nonBondedThresh=1e9,
                                                       ignoreInterfragInteractions=False)
    flat = x.ravel().tolist()

    def rdkit_call():
        return ff.CalcEnergy(flat), ff.CalcGrad(flat)

    pot = jkstep.mmff_potential(mol)
    single = jax.jit(pot)
    batched = jax.jit(jax.vmap(pot))
    xb = x[None] + 0.02 * rng.normal(size=(args.batch, *x.shape))
    e, f = single(x)
    forces_rd = -np.reshape(rdkit_call()[1], (-1, 3)) * KCAL_MOL
    print(f"max |F_jax − F_rdkit| = {np.abs(np.asarray(f) - forces_rd).max():.2e} eV/Å "
          f"(largest force {np.abs(forces_rd).max():.2f} eV/Å)")

    t_rd = timed(rdkit_call, args.repeat)
    t_single = timed(lambda: jax.block_until_ready(single(x)), args.repeat)
    t_batch = timed(lambda: jax.block_until_ready(batched(xb)), args.repeat) / args.batch
    print(f"{args.smiles}: {len(mol)} atoms, MMFF94, energy + forces per call (median of {args.repeat})")
    print(f"  RDKit CalcEnergy + CalcGrad      {t_rd * 1e3:8.3f} ms")
    print(f"  JAX jitted, one geometry         {t_single * 1e3:8.3f} ms   ({t_rd / t_single:.2f}x RDKit's speed)")
    print(f"  JAX jitted, vmap over {args.batch:4d}       {t_batch * 1e3:8.3f} ms per geometry   "
          f"({t_rd / t_batch:.2f}x RDKit's speed)")


if __name__ == "__main__":
    main()
