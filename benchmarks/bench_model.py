"""Cost of one learned k-step jump per molecule (jitted, after warm-up), single and batched.

    python benchmarks/bench_model.py                 # 9 atoms (ethanol), 22 (alanine dipeptide)
    python benchmarks/bench_model.py --threads 0      # let XLA use every core
    python benchmarks/bench_model.py --features 64 --layers 3 --batches 1 8 64

Prints ms per molecule-jump (best and median of repeats) beside the measured cost of one GFN2-xTB call
(REFERENCE.md: ethanol ~0.75-0.8 ms, alanine dipeptide ~4 ms), and the resulting wall-clock
ceiling at k = 8: k·t_xtb / (t_xtb + t_ml). A random network with non-zero heads is timed: the
cost does not depend on the weights. Single = one molecule, unbatched (N,) inputs, one jitted call
per jump; scan = one molecule, 100 jumps chained in one jitted ``lax.scan`` (ms/call is per scan).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=3)
    p.add_argument("--cutoff", type=positive_float, default=5.0)
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8, 64])
    p.add_argument("--threads", type=int, default=1, help="XLA CPU threads (0: XLA's default)")
    p.add_argument("--repeat", type=positive_int, default=7)
    p.add_argument("--min-time", type=positive_float, default=0.2, help="seconds per timing repeat, at least")
    return p.parse_args()


args = parse()
if args.threads:
    # must be set before JAX starts its backend
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                               f"intra_op_parallelism_threads={args.threads}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402,F401  (float64 mode)
from jkstep.model import KStepNet, ModelConfig, init_params  # noqa: E402
from jkstep.molecule import Molecule  # noqa: E402

XTB_MS = {"ethanol": 0.8, "alanine dipeptide": 4.3}   # REFERENCE.md, one GFN2-xTB call
MOLECULES = [("ethanol", "CCO"), ("alanine dipeptide", "CC(=O)NC(C)C(=O)NC")]


def timed(fn, *a):
    """(best, median) seconds per call of fn(*a) over the repeats (blocked until ready), after a
    warm-up call. On a shared machine the best repeat is the better estimate of the cost."""
    jax.block_until_ready(fn(*a))
    n, t = 1, 0.0
    while True:                      # calls per repeat so that one repeat takes >= min_time
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn(*a)
        jax.block_until_ready(out)
        t = time.perf_counter() - t0
        if t >= args.min_time:
            break
        n *= 2
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn(*a)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / n)
    return float(np.min(times)), float(np.median(times))


def main():
    cfg = ModelConfig(features=args.features, layers=args.layers, cutoff=args.cutoff)
    params = init_params(cfg)
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for head in ("head_dx", "head_dv", "head_force"):
        params[head]["gate_out"]["kernel"] = params[head]["gate_out"]["kernel"] + 0.1
    model = KStepNet(cfg)
    apply = jax.jit(lambda p, *x: model.apply({"params": p}, *x))

    @jax.jit
    def scan100(p, z, mask, m, x, v, f):
        def body(carry, _):
            x, v = carry
            x, v, _ = model.apply({"params": p}, z, mask, m, x, v, f)
            return (x, v), None

        return jax.lax.scan(body, (x, v), None, length=100)[0]
    print(f"jkstep k-step network: {cfg.features} features, {cfg.layers} layers, cutoff {cfg.cutoff} Å, "
          f"all pairs; XLA CPU threads: {args.threads or 'default'}; {jax.devices()[0].device_kind}; "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'molecule':<18} {'atoms':>5} {'batch':>6} {'ms/call':>9} {'ms/jump':>9} {'(median)':>9} "
          f"{'vs xTB':>7} {'k=8 ceiling':>11}")
    for name, smiles in MOLECULES:
        mol = Molecule.from_smiles(smiles, seed=0)
        n = len(mol.numbers)
        z, m = mol.numbers.astype(np.int32), mol.masses
        for b in args.batches:
            x = mol.positions + 0.01 * rng.normal(size=(b, n, 3))
            v = 0.01 * rng.normal(size=(b, n, 3))
            f = rng.normal(size=(b, n, 3))
            if b == 1:      # one molecule, unbatched inputs
                inputs = (z, np.ones(n, bool), m, x[0], v[0], f[0])
            else:
                inputs = (np.tile(z, (b, 1)), np.ones((b, n), bool), np.tile(m, (b, 1)), x, v, f)
            best, median = timed(apply, params, *inputs)
            t, per, per_median = best * 1e3, best * 1e3 / b, median * 1e3 / b
            xtb = XTB_MS[name]
            print(f"{name:<18} {n:>5} {('single' if b == 1 else b):>6} {t:>9.3f} {per:>9.4f} {per_median:>9.4f} "
                  f"{per / xtb:>6.1%} {8 * xtb / (xtb + per):>10.2f}x", flush=True)
        # one molecule, 100 jumps chained inside one jitted lax.scan (how a rollout calls it):
        # no per-call dispatch and executable start-up
        inputs = (z, np.ones(n, bool), m, mol.positions, 0.01 * rng.normal(size=(n, 3)), rng.normal(size=(n, 3)))
        best, median = timed(scan100, params, *inputs)
        per, per_median = best * 10, median * 10     # ms per jump
        print(f"{name:<18} {n:>5} {'scan':>6} {best * 1e3:>9.3f} {per:>9.4f} {per_median:>9.4f} "
              f"{per / xtb:>6.1%} {8 * xtb / (xtb + per):>10.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
