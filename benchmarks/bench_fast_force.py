"""Cost of the learned fast force per RESPA inner step, against one GFN2-xTB call.

For a 10-, 20- and 30-atom molecule: the learned potential's energy and forces (one forward and
one backward pass) inside a jitted ``lax.fori_loop`` of velocity-Verlet-like updates (what RESPA's
inner loop does), single and vmapped over 64 replicas (per replica), MMFF94 the same way, and
one xTB call (tblite, accuracy 0.01, restart from the previous wavefunction, one thread) on a
slightly moved geometry each time. Prints ms per step and the fraction of an xTB call, and the
resulting RESPA wall-clock ceiling over Verlet at 0.25 fs for k = 8 and 16:
k·t_xtb / (t_xtb + k·t_fast).

    OMP_NUM_THREADS=1 python benchmarks/bench_fast_force.py [--model gfn2-fast|PATH] [--fast-every 2] [--json out.json]

``--fast-every N`` times three-level RESPA's inner steps instead: MMFF94 every step and the fast
force (MMFF94 + network) every N-th, per inner step.

Without a trained model the config of configs/fast/model.yaml is timed with random weights (the
cost does not depend on the weights). On a shared machine the numbers move with the load: the
script takes the best of three repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402

MOLECULES = [("NCC(=O)O", "glycine"), ("CCCCCC(=O)O", "hexanoic acid"), ("CCCCCCCCCO", "nonan-1-ol")]


def fast_force(model, mol):
    from jkstep.model.config import load_model_config
    from jkstep.model.potential import LearnedPotential, init_params

    if model:
        return jkstep.learned_potential(model, mol)
    cfg = load_model_config(os.path.join(os.path.dirname(__file__), "..", "configs", "fast", "model.yaml"))
    return LearnedPotential(init_params(cfg), cfg, mol.numbers, name="untrained configs/fast/model.yaml")


def per_step(pot, mol, replicas: int, steps: int, inner=None, every: int = 1) -> float:
    """ms per inner step (per replica when vmapped), best of three. With ``inner`` (three levels):
    ``inner`` every step and ``pot`` once every ``every`` steps, as ``jkstep.respa`` does."""
    steps = steps // every * every   # whole blocks: the time is divided by the steps made
    inv_m = jnp.asarray(1e-4 / mol.masses)[:, None]

    def update(force, c):
        x, v = c
        _, f = force(x)
        v = v + f * inv_m
        return x + 0.01 * v, v

    def one(x, v):
        if inner is None:
            return jax.lax.fori_loop(0, steps, lambda _, c: update(pot, c), (x, v))

        def block(_, c):
            c = jax.lax.fori_loop(0, every, lambda _, c: update(inner, c), c)
            x, v = c
            return x, v + pot(x)[1] * inv_m
        return jax.lax.fori_loop(0, steps // every, block, (x, v))

    x0 = jnp.asarray(mol.positions)
    if replicas > 1:
        x0 = x0 + 1e-3 * jax.random.normal(jax.random.PRNGKey(0), (replicas,) + x0.shape)
        run = jax.jit(jax.vmap(one))
    else:
        run = jax.jit(one)
    v0 = jnp.zeros_like(x0)
    jax.block_until_ready(run(x0, v0))
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(run(x0, v0))
        best = min(best, (time.perf_counter() - t) / steps / replicas * 1e3)
    return best


def xtb_call(mol, calls: int = 40) -> float:
    pot = jkstep.xtb_potential(mol, workers=1)
    fn = jax.jit(pot)
    rng = np.random.default_rng(0)
    x = np.asarray(mol.positions)
    jax.block_until_ready(fn(x))
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(calls):
            x = x + 0.002 * rng.standard_normal(x.shape)   # about one 0.25 fs step of motion
            jax.block_until_ready(fn(x))
        best = min(best, (time.perf_counter() - t) / calls * 1e3)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a fast force name or path (default: untrained config)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--fast-every", type=int, default=1,
                        help="three levels: MMFF94 every inner step and the fast force every N (default 1)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    for smiles, name in MOLECULES:
        mol = jkstep.Molecule.from_smiles(smiles, seed=0)
        pot = fast_force(args.model, mol)
        mm = jkstep.mmff_potential(mol)
        split = {} if args.fast_every == 1 else {"inner": mm, "every": args.fast_every}
        row = {"molecule": name, "atoms": len(mol), "xtb_ms": xtb_call(mol),
               "fast_ms": per_step(pot, mol, 1, args.steps, **split),
               "fast_vmap_ms": per_step(pot, mol, args.replicas, max(args.steps // 10, 20), **split),
               "mmff_ms": per_step(mm, mol, 1, args.steps)}
        row["fast_fraction_of_xtb"] = row["fast_ms"] / row["xtb_ms"]
        row["fast_vmap_fraction_of_xtb"] = row["fast_vmap_ms"] / row["xtb_ms"]
        for k in (8, 16):
            row[f"respa_ceiling_k{k}"] = k * row["xtb_ms"] / (row["xtb_ms"] + k * row["fast_ms"])
        rows.append(row)
        print(f"{name} ({row['atoms']} atoms): xTB call {row['xtb_ms']:.2f} ms; fast force {row['fast_ms']:.3f} ms "
              f"per step ({100 * row['fast_fraction_of_xtb']:.1f} % of an xTB call), vmapped x{args.replicas} "
              f"{row['fast_vmap_ms']:.3f} ms per replica-step ({100 * row['fast_vmap_fraction_of_xtb']:.1f} %); "
              f"MMFF94 {row['mmff_ms']:.3f} ms; RESPA ceiling over Verlet 0.25 fs: k=8 {row['respa_ceiling_k8']:.1f}x, "
              f"k=16 {row['respa_ceiling_k16']:.1f}x", flush=True)
    out = {"model": args.model or "untrained configs/fast/model.yaml", "fast_every": args.fast_every,
           "device": jax.devices()[0].platform,
           "replicas": args.replicas, "rows": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
