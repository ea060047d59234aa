"""Training throughput of the k-step network: windows per second of one optimiser step.

    python benchmarks/bench_train.py                               # shipped gfn2-k8 settings
    python benchmarks/bench_train.py --batches 32 128 512 --threads 0
    python benchmarks/bench_train.py --model-config configs/model_qm_k8.yaml \
        --train-config configs/ship/gfn2-k8_finetune.yaml

Times the jitted training step of ``jkstep.model.train`` (loss, gradients, AdamW, EMA) with the
model and train configs given, on batches of real MMFF94 k-step windows of alanine dipeptide
(22 atoms, padded to the 24-atom bucket as in training): B replicas with thermal velocities are
run for k steps of 0.25 fs velocity Verlet with the JAX MMFF94 potential, so inputs and targets are
real dynamics. The step's cost depends only on the shapes, not on the values. Each step gets a
numpy batch, so the host-to-device copy is counted, as in ``train``; data loading from disk is not.

Prints ms per step (best and median of the repeats) and windows per second, on whatever device
JAX uses (CPU, or a GPU with the ``cuda`` extra).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_int


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-config", default="configs/model_qm_k8.yaml")
    p.add_argument("--train-config", default="configs/ship/gfn2-k8_finetune.yaml")
    p.add_argument("--batches", type=positive_int, nargs="+", default=[32, 128])
    p.add_argument("--smiles", default="CC(=O)NC(C)C(=O)NC", help="molecule of the windows")
    p.add_argument("--bucket", type=positive_int, default=24, help="padded size (atoms)")
    p.add_argument("--threads", type=int, default=0, help="XLA CPU threads (0: XLA's default)")
    p.add_argument("--steps", type=positive_int, default=10, help="steps per timing repeat")
    p.add_argument("--repeat", type=positive_int, default=5)
    return p.parse_args()


args = parse()
if args.threads:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                               f"intra_op_parallelism_threads={args.threads}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep.model import init_params  # noqa: E402
from jkstep.model.train import (_compile, _scale_array, create_train_state, estimate_loss_scales,  # noqa: E402
                                load_model_config, load_train_config)


def mm_windows(mol, b: int, k: int, dt: float, bucket: int, seed: int = 0) -> dict:
    """B padded k-step windows of MMFF94 velocity-Verlet dynamics (numpy, the keys of BATCH_KEYS)."""
    pot = jkstep.mmff_potential(mol)
    init, apply = jkstep.verlet(pot, mol.masses, dt)
    rng = np.random.default_rng(seed)
    v0 = np.stack([mol.thermal_velocities(300.0, int(s)) for s in rng.integers(0, 2**31, b)])
    x0 = mol.positions + 0.02 * rng.normal(size=(b,) + mol.positions.shape)

    @jax.jit
    @jax.vmap
    def window(x, v):
        s0 = init(x, v)
        s1 = jax.lax.fori_loop(0, k, lambda _, s: apply(s), s0)
        return s0.positions, s0.velocities, s0.forces, s1.positions, s1.velocities, s1.forces

    arrays = [np.asarray(a) for a in window(x0, v0)]
    n, pad = len(mol), bucket - len(mol)
    if pad < 0:
        sys.exit(f"--bucket {bucket} is smaller than the molecule ({n} atoms)")

    def padded(a, fill=0):
        return np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)

    names = ("positions", "velocities", "forces", "target_positions", "target_velocities", "target_forces")
    batch = {name: padded(a) for name, a in zip(names, arrays)}
    batch["numbers"] = padded(np.tile(mol.numbers.astype(np.int32), (b, 1)))
    batch["mask"] = padded(np.ones((b, n), bool), False)
    batch["masses"] = padded(np.tile(mol.masses, (b, 1)), 1.0)
    return batch


def main():
    model_config = load_model_config(args.model_config)
    train_config = load_train_config(args.train_config)
    k, dt = model_config.k, model_config.dt_fs
    mol = jkstep.Molecule.from_smiles(args.smiles, seed=0)
    fns = _compile(model_config, train_config, train_config.learning_rate, ())
    device = jax.devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"training step: {args.model_config} (k = {k}, {model_config.features} features, "
          f"{model_config.layers} layers), {args.train_config} (w_energy {train_config.w_energy}, "
          f"corrector_velocity {train_config.corrector_velocity}); {len(mol)} atoms padded to {args.bucket}; "
          f"{device.platform} {device.device_kind}; load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'batch':>6} {'ms/step':>9} {'(median)':>9} {'windows/s':>10} {'(median)':>9}")
    for b in args.batches:
        batch = mm_windows(mol, b, k, dt, args.bucket)
        scales = _scale_array(estimate_loss_scales(batch, model_config, train_config))
        state = create_train_state(init_params(model_config), fns.tx)
        state, metrics = fns.train_step(state, batch, scales)      # compile
        jax.block_until_ready(metrics)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = fns.train_step(state, batch, scales)
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - t0) / args.steps)
        best, median = min(times), sorted(times)[len(times) // 2]
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            sys.exit(f"non-finite loss at batch {b}: the benchmark's windows are broken")
        print(f"{b:>6} {best * 1e3:>9.1f} {median * 1e3:>9.1f} {b / best:>10.0f} {b / median:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
