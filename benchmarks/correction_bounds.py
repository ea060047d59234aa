"""How large the network's corrections must be: per k, the per-atom deviation of the xTB state
k steps later from the constant-force ballistic jump (the part the network does not predict).

    .venv/bin/python benchmarks/correction_bounds.py [--data data/qm] [--split train] [--ks 8 16 32]
        [--ps 5] [--every 40] [--model-configs configs/model_qm_k8.yaml ...]

For each k it prints the largest, the 99.9th and the 99th percentile of |δx| (Å) and |δv| (Å/fs)
over every atom of windows starting every ``--every`` base steps in the first ``--ps`` ps of each
production run, and the element whose atoms need the most. A model's ``max_correction_a`` and
``max_velocity_correction`` (``jkstep.model.network.ModelConfig``) below these clip the targets:
the network then cannot represent the jump, however long it trains. With ``--model-configs`` the
bounds of those YAML files are printed beside the figures of their k.

δx = x_{t+k} − (x_t + v_t T + ½ a_t T²),  δv = v_{t+k} − (v_t + a_t T),  T = k·dt,
a_t = ACCEL·(F_t − F̄_t)/m (net force removed): ``jkstep.model.network.ballistic_baseline`` itself.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import yaml
from ase.data import chemical_symbols

from jkstep.data.store import TrajectoryStore
from jkstep.model.network import ballistic_baseline

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import existing_dir, positive_float, positive_int  # noqa: E402


def deviations(store: TrajectoryStore, k: int, every: int, n_frames: int):
    """(|δx| (W, N) Å, |δv| (W, N) Å/fs, numbers (N,)) of windows t = 0, every, ... < n_frames − k."""
    spacing = int(store.meta.get("frame_spacing", 1))      # base steps between stored frames
    if k % spacing:
        raise SystemExit(f"k = {k} is not a multiple of the stored frame spacing {spacing} ({store.path})")
    steps = k // spacing
    starts = np.arange(0, min(n_frames, store.n_frames) - steps, every)
    a = store.load(starts)
    b = store.load(starts + steps, arrays=("positions", "velocities"))
    w, n = len(starts), len(a["numbers"])
    x, v = ballistic_baseline(np.broadcast_to(a["masses"], (w, n)), np.ones((w, n), bool), a["positions"],
                          a["velocities"], a["forces"], k, float(store.meta["dt_fs"]))
    dx, dv = b["positions"] - np.asarray(x), b["velocities"] - np.asarray(v)
    return np.linalg.norm(dx, axis=-1), np.linalg.norm(dv, axis=-1), a["numbers"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=existing_dir, default="data/qm")
    ap.add_argument("--splits", default="data/qm_splits.json")
    ap.add_argument("--split", default="train", help="train, val or all")
    ap.add_argument("--ks", type=positive_int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--ps", type=positive_float, default=5.0, help="first ps of each production run")
    ap.add_argument("--every", type=positive_int, default=40, help="base steps between window starts")
    ap.add_argument("--model-configs", nargs="*", default=[], help="model YAML files whose bounds to show")
    args = ap.parse_args()
    splits = json.load(open(args.splits))
    names = splits["train"] + splits["val"] if args.split == "all" else splits[args.split]
    stores = [TrajectoryStore(os.path.join(args.data, n, "production")) for n in names]
    stores = [s for s in stores if s.exists]
    bounds = {}
    for path in args.model_configs:
        cfg = yaml.safe_load(open(path))
        bx = cfg.get("max_correction_a")
        bv = cfg.get("max_velocity_correction") or (bx / (cfg["k"] * cfg["dt_fs"]) if bx else None)
        bounds[int(cfg["k"])] = (bx, bv, path)
    print(f"{len(stores)} production runs ({args.split}), first {args.ps} ps, a window every {args.every} steps")
    print(f"{'k':>3} {'|δx| max':>9} {'p99.9':>7} {'p99':>7} {'|δv| max':>9} {'p99.9':>7} {'p99':>7}  "
          "worst element  bounds")
    for k in args.ks:
        xs, vs, worst = [], [], {}
        for s in stores:
            n_frames = int(round(args.ps * 1000.0 / float(s.meta["dt_fs"]) / int(s.meta.get("frame_spacing", 1))))
            dx, dv, numbers = deviations(s, k, args.every, n_frames)
            xs.append(dx.ravel())
            vs.append(dv.ravel())
            for z in np.unique(numbers):
                worst[z] = max(worst.get(z, 0.0), float(dx[:, numbers == z].max()))
        x, v = np.concatenate(xs), np.concatenate(vs)
        z = max(worst, key=worst.get)
        b = bounds.get(k)
        shown = f"{b[0]} Å, {b[1]:.3g} Å/fs ({b[2]})" if b else ""
        print(f"{k:>3} {x.max():9.3f} {np.quantile(x, 0.999):7.3f} {np.quantile(x, 0.99):7.3f} "
              f"{v.max():9.4f} {np.quantile(v, 0.999):7.4f} {np.quantile(v, 0.99):7.4f}  "
              f"{chemical_symbols[int(z)]:>13}  {shown}", flush=True)


if __name__ == "__main__":
    main()
