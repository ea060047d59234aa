"""One-jump errors of a model against Verlet at k·dt, on held-out trajectories (MM or xTB).

    python benchmarks/bench_onejump.py --model outputs/mm_k8s --data data/mm_small          # MM model, MM data
    python benchmarks/bench_onejump.py --model gfn2-k8 --data data/qm --molecules 1-propanol cytosine

For each molecule (default: the held-out ones, every 10th by name as in the training split
without a splits file) it takes ``--windows`` windows (x_t, v_t, F_t) → x_{t+k} from the
``production`` run, ``--stride`` base steps apart, and prints the RMS errors of positions (Å),
bond lengths (Å), angles (°), dihedrals (°) and forces (eV/Å) of:

- ``model``: the network's jump as the integrator uses it (reversal correction α = 0.5);
- ``model α=0``: the network's jump without the reversal correction;
- ``verlet k·dt``: the ballistic jump x + v·τ + ½aτ², which is where velocity Verlet at k·dt
  puts the atoms (the equal-cost baseline), with F_t as its "force prediction".

Bonds, angles and dihedrals come from covalent radii at the first frame. The mean over molecules
is printed last.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

import jkstep
from jkstep.data.store import TrajectoryStore
from jkstep.evaluate import metrics
from jkstep.kstep import ballistic_jump, model_jump

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import existing_dir, positive_int  # noqa: E402

KEYS = ("position_rmse_a", "bond_rmse_a", "angle_rmse_deg", "dihedral_rmse_deg", "force_rmse_ev_a")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="shipped name or checkpoint directory")
    ap.add_argument("--data", type=existing_dir, required=True, help="trajectory root (data/mm_small, data/qm, ...)")
    ap.add_argument("--molecules", nargs="*", default=None, help="default: every 10th molecule by name")
    ap.add_argument("--windows", type=positive_int, default=200, help="windows per molecule")
    ap.add_argument("--stride", type=positive_int, default=40, help="base steps between window starts")
    args = ap.parse_args()
    bundle = jkstep.load_pretrained(args.model)
    k = bundle.k
    names = args.molecules or [m for i, m in enumerate(sorted(os.listdir(args.data))) if i % 10 == 9]
    rows = {c: [] for c in ("model", "model α=0", "verlet k·dt")}
    print(f"{args.model}: k = {k}, {args.windows} windows per molecule, {args.stride} steps apart")
    print(f"{'molecule':<22} {'contender':<12} " + " ".join(f"{key:>18}" for key in KEYS))
    for name in names:
        store = TrajectoryStore(os.path.join(args.data, name, "production"))
        if not store.exists:
            print(f"{name}: no production run, skipped")
            continue
        meta = store.meta
        numbers, masses = np.asarray(meta["numbers"]), np.asarray(meta["masses"], np.float64)
        if set(numbers.tolist()) - set(bundle.elements):
            print(f"{name}: elements the model never saw, skipped")
            continue
        starts = np.arange(args.windows) * args.stride
        starts = starts[starts + k < store.n_frames * int(meta["frame_spacing"])] // int(meta["frame_spacing"])
        lag = k // int(meta["frame_spacing"])
        frames = store.load(frames=np.union1d(starts, starts + lag), arrays=("positions", "velocities", "forces"))
        index = {f: i for i, f in enumerate(np.union1d(starts, starts + lag))}
        a, b = [index[s] for s in starts], [index[s + lag] for s in starts]
        x, v, f = (frames[key][a] for key in ("positions", "velocities", "forces"))
        tx, tf = frames["positions"][b], frames["forces"][b]
        terms = metrics.internal_coordinates(numbers, x[0])
        jumps = {"model": model_jump(bundle, numbers, masses),
                 "model α=0": model_jump(bundle, numbers, masses, reversal_correction=0.0),
                 "verlet k·dt": ballistic_jump(masses, k, bundle.dt)}
        for contender, fn in jumps.items():
            px, _, pf = jax.jit(jax.vmap(fn))(x, v, f)
            err = metrics.one_jump_errors(np.asarray(px), tx, np.asarray(pf), tf, *terms)
            rows[contender].append(err)
            print(f"{name:<22} {contender:<12} " + " ".join(
                f"{err[key]:>18.4g}" if err[key] is not None else f"{'null':>18}" for key in KEYS), flush=True)
    for contender, errs in rows.items():
        mean = [np.mean([e[key] for e in errs if e[key] is not None]) for key in KEYS]
        print(f"{'mean':<22} {contender:<12} " + " ".join(f"{m:>18.4g}" for m in mean))


if __name__ == "__main__":
    main()
