"""Compact k = 8/16 window files of the train and validation molecules, for a GPU machine.

    python benchmarks/pack_windows.py [--ps 15] [--out gpuw]

The device machine takes at most 64 MiB of files, so the GPU training of the shipped models read
these instead of the full ``jkstep dataset`` files: frames every 2 fs (window stride 8 base
steps; k = 8 and 16 pair frames 1 and 2 apart), the first ``--ps`` ps of each production run,
positions, velocities and forces stored as float32 (the network is float32; the batches are
float64 again when assembled). About 48 MB for 10 x 15 ps + 4 validation runs. The test split is
never read. Train with ``data: {windows: gpuw, ...}`` (configs/ship/gfn2-k8_gpu.yaml).

The files are written into ``<out>.partial`` and that folder is renamed to ``<out>`` only when
every molecule is packed, so an existing ``<out>`` is always complete (the make_*.sh scripts skip
the pack when it exists). An interrupted pack leaves ``<out>.partial``, which the next run
replaces. An existing ``<out>`` is never overwritten: delete it to pack again.
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np

from jkstep.data.dataset import build_file, dataset_file_name

import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import existing_dir, positive_float  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=existing_dir, default="data/qm")
    ap.add_argument("--splits", default="data/qm_splits.json")
    ap.add_argument("--ps", type=positive_float, default=15.0, help="first ps of each run to keep")
    ap.add_argument("--out", default="gpuw")
    args = ap.parse_args()
    out_dir = os.path.normpath(args.out)
    if os.path.exists(out_dir):
        sys.exit(f"pack_windows: {out_dir} already exists and is never overwritten; delete it to "
                 "pack again, or choose another --out")
    splits = json.load(open(args.splits))
    partial = out_dir + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    total = 0
    for name in splits["train"] + splits["val"]:
        store = os.path.join(args.data, name, "production")
        if not os.path.exists(os.path.join(store, "meta.json")):
            print(f"{name}: no data, skipped")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            full = os.path.join(tmp, "w.npz")
            build_file(store, [8, 16], 8, full)
            d = dict(np.load(full, allow_pickle=False))
        n = int(args.ps * 1000 / (8 * float(d["dt_fs"]))) + 1
        for key in ("steps", "positions", "velocities", "forces", "energy", "kinetic"):
            d[key] = d[key][:n]
        for key in ("positions", "velocities", "forces"):
            d[key] = d[key].astype(np.float32)
        for k in (8, 16):
            w = d[f"windows_k{k}"]
            d[f"windows_k{k}"] = w[w[:, 1] < n]
        out = os.path.join(partial, dataset_file_name(store))
        np.savez(out, **d)
        total += os.path.getsize(out)
        print(f"{name}: {len(d['steps'])} frames, {os.path.getsize(out) / 1e6:.1f} MB")
    os.rename(partial, out_dir)
    print(f"total {total / 1e6:.1f} MB in {out_dir}")


if __name__ == "__main__":
    main()
