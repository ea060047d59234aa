"""k-step window datasets on disk: frames as dense as the k list needs, windows as indices.

``build_dataset(paths, ks, stride, out_dir)`` writes one ``.npz`` file per trajectory (no
pickle: plain arrays and strings). A file holds

- ``numbers`` (N,) int32, ``masses`` (N,) float64 amu, ``name``, ``source`` (the trajectory
  directory), ``meta_json`` (that trajectory's metadata, JSON text);
- the frames at every ``frame_step`` base steps (the greatest common divisor of the stride and
  every k, e.g. 4 steps = 1 fs for k = 4, 8, 16, 32): ``steps`` (F,) int64, ``positions`` Å,
  ``velocities`` Å/fs, ``forces`` eV/Å (F, N, 3), ``energy`` and ``kinetic`` (F,) eV, with the
  centre of mass at the origin and at rest in every frame (the stored NVE runs already have
  zero total momentum, so this only removes a constant offset);
- per k in ``ks``: ``windows_k{k}`` (W, 2) int64, the frame indices of a window's start t and
  its target t + k; starts every ``stride`` base steps;
- ``ks``, ``stride``, ``frame_step``, ``dt_fs`` (base step, fs).

Files are written atomically (temporary file, then rename), so an interrupted build leaves
complete files only and a rerun rebuilds what is missing. ``WindowDataset`` reads these files
as well as trajectory directories.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from jkstep.data.store import TrajectoryStore, atomic_write_bytes
from jkstep.errors import InputError, is_integer

FORMAT = "jkstep-windows"
VERSION = 1


def remove_com(positions, velocities, masses):
    """Positions (F, N, 3) Å and velocities Å/fs with each frame's centre of mass at the origin
    and at rest (mass-weighted means removed)."""
    w = np.asarray(masses, np.float64)[None, :, None] / np.sum(masses)
    return (positions - np.sum(w * positions, axis=1, keepdims=True),
            velocities - np.sum(w * velocities, axis=1, keepdims=True))


def dataset_file_name(store_path: str) -> str:
    """``<molecule>__<run>.npz`` for a trajectory directory ``.../<molecule>/<run>``."""
    path = os.path.normpath(os.fspath(store_path))
    return f"{os.path.basename(os.path.dirname(path))}__{os.path.basename(path)}.npz"


def build_file(store_path, ks: Sequence[int], stride: int, out_path) -> dict:
    """Write the window file of one trajectory; returns a summary (frames, windows per k)."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1 or int(stride) < 1:
        raise InputError(f"k values and the stride must be integers ≥ 1, got ks={ks}, stride={stride}")
    store = TrajectoryStore(store_path)
    if not store.exists:
        raise InputError(f"no trajectory at {store_path} (meta.json missing)")
    meta = store.meta
    spacing = int(meta["frame_spacing"])
    frame_step = math.gcd(int(stride), *ks)
    if frame_step % spacing:
        raise InputError(f"{store_path} stores every {spacing} steps; the stride and every k must be "
                         f"multiples of it (gcd of stride {stride} and ks {list(ks)} is {frame_step})")
    every = frame_step // spacing
    frames = np.arange(0, store.n_frames, every, dtype=np.int64)
    data = store.load(frames=frames, arrays=("positions", "velocities", "forces", "energy", "kinetic", "step"))
    steps = np.asarray(data["step"], np.int64)
    if len(steps) > 1 and not np.all(np.diff(steps) == frame_step):
        raise InputError(f"{store_path} has gaps in its steps; it cannot give windows")
    masses = np.asarray(meta["masses"], np.float64)
    positions, velocities = remove_com(data["positions"], data["velocities"], masses)
    arrays = {
        "format": np.array(FORMAT), "version": np.array(VERSION),
        "numbers": np.asarray(meta["numbers"], np.int32), "masses": masses,
        "name": np.array(meta.get("name") or os.path.basename(os.path.dirname(store.path))),
        "run": np.array(os.path.basename(os.path.normpath(store.path))),
        "source": np.array(os.fspath(store.path)), "meta_json": np.array(json.dumps(meta, default=str)),
        "ks": np.asarray(ks, np.int64), "stride": np.array(int(stride)), "frame_step": np.array(frame_step),
        "dt_fs": np.array(float(meta["dt_fs"])), "steps": steps, "positions": positions,
        "velocities": velocities, "forces": np.asarray(data["forces"]), "energy": np.asarray(data["energy"]),
        "kinetic": np.asarray(data["kinetic"]),
    }
    counts = {}
    for k in ks:
        lag = k // frame_step
        starts = np.arange(0, max(0, len(steps) - lag), int(stride) // frame_step, dtype=np.int64)
        arrays[f"windows_k{k}"] = np.stack([starts, starts + lag], axis=1)
        counts[k] = len(starts)

    def write(f):
        np.savez(f, **arrays)

    atomic_write_bytes(os.fspath(out_path), write)
    return {"file": os.fspath(out_path), "frames": len(steps), "windows": counts}


def check_inputs(paths: Sequence, ks: Sequence[int], stride: int) -> None:
    """InputError, from the trajectories' metadata alone, for k values or a stride that are not
    integers ≥ 1 or not multiples of a trajectory's frame spacing, and for a k longer than every
    trajectory (it would give no window at all)."""
    if not ks or any(not is_integer(v, 1) for v in [*ks, stride]):
        raise InputError(f"k values and the stride must be integers ≥ 1, got k {list(ks)}, stride {stride!r}")
    frame_step = math.gcd(int(stride), *map(int, ks))
    longest, longest_path, dt = 0, None, 0.0
    for path in paths:
        store = TrajectoryStore(path)
        if not store.exists:
            raise InputError(f"no trajectory at {path} (meta.json missing)")
        spacing = int(store.meta["frame_spacing"])
        if frame_step % spacing:
            raise InputError(f"{path} stores every {spacing} steps; the stride and every k must be "
                             f"multiples of it (gcd of stride {stride} and k {list(ks)} is {frame_step})")
        span = (store.n_frames - 1) * spacing  # base steps from the first frame to the last
        if longest_path is None or span > longest:
            longest, longest_path, dt = max(span, 0), store.path, float(store.meta["dt_fs"])
    too_long = sorted(int(k) for k in ks if int(k) > longest)
    if paths and too_long:
        raise InputError(f"k {too_long} is longer than every trajectory, so it would give no window: the longest, "
                         f"{longest_path}, spans {longest} base steps ({longest * dt / 1000:g} ps), so k can be at "
                         f"most {longest}; give a smaller --k or generate longer trajectories")


def build_dataset(paths: Sequence, ks: Sequence[int], stride: int, out_dir, overwrite: bool = False) -> list[dict]:
    """Window files of many trajectories into ``out_dir`` (one per trajectory, see the module
    doc). Existing files are kept unless ``overwrite`` (an interrupted build resumes). Bad input
    (k, stride, an output path that is a file) raises InputError before anything is written."""
    check_inputs(paths, ks, stride)
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"the output {out_dir} is a file; give a directory for the window files "
                         "(an existing one keeps its files unless --overwrite)")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory {out_dir}: {exc.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"the output directory {out_dir} is not writable")
    out = []
    for path in paths:
        target = os.path.join(out_dir, dataset_file_name(path))
        if os.path.exists(target) and not overwrite:
            out.append({"file": target, "skipped": True})
            continue
        out.append(build_file(path, ks, stride, target))
    return out


def read_file(path) -> dict:
    """The arrays of a window file (a dict of numpy arrays; strings as Python str)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"no window file {path}: build it with `jkstep dataset`")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {key: z[key] for key in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable jkstep window file ({e}); rebuild it with `jkstep dataset`")
    if str(data.get("format", "")) != FORMAT:
        raise InputError(f"{path} is not a jkstep window file (format {data.get('format')!r})")
    for key in ("name", "run", "source", "meta_json"):
        data[key] = str(data[key])
    return data
