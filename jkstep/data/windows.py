"""k-step training windows from trajectory stores: (state at t, state at t + k) pairs.

A window starts every ``stride`` base steps (consecutive 0.25 fs frames are highly correlated,
so a stride of several steps loses little) and pairs the frame at step t with the frame at
step t + k. Molecules are padded to a few size buckets so that a jitted model compiles once
per bucket; each batch holds one bucket only. Only the frames a window needs are read, each
once: a window is a pair of indices into them, and batches are assembled from those indices.
A source is a trajectory directory (``TrajectoryStore``) or a window file built by
``jkstep dataset`` (``jkstep.data.dataset``; frames there have their centre of mass at rest at
the origin).

Batch keys (numpy, B windows, N = bucket size): ``numbers`` (B, N) int32 (0 = padding),
``mask`` (B, N) bool, ``masses`` (B, N) float64 amu (1.0 on padding), ``positions`` Å,
``velocities`` Å/fs, ``forces`` eV/Å (B, N, 3) at t, and ``target_positions``,
``target_velocities``, ``target_forces`` (B, N, 3) at t + k; zeros on padding. Windows of
``jumps`` = J > 1 consecutive jumps (for a multi-jump loss) also have ``path_positions``,
``path_velocities``, ``path_forces`` (B, J, N, 3): the frames at t + k, t + 2k, …, t + Jk
(``target_*`` is the first of them).
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Sequence

import numpy as np

from jkstep.data.store import TrajectoryStore
from jkstep.errors import InputError, is_integer

DEFAULT_BUCKETS = (16, 32, 48)
KEYS = ("numbers", "mask", "masses", "positions", "velocities", "forces",
        "target_positions", "target_velocities", "target_forces")
PATH_KEYS = ("path_positions", "path_velocities", "path_forces")


class WindowDataset:
    """k-step windows of one or more trajectories (TrajectoryStore directories).

    Args:
        paths: trajectory directories (e.g. ``data/qm/glycine/production``) or window files
            (``.npz`` from ``jkstep dataset``; they must hold windows of this k).
        k: base steps between a window's input and target frames.
        stride: base steps between consecutive window starts.
        buckets: padded molecule sizes (atoms); each molecule goes to the smallest that fits.
        jumps: consecutive jumps per window (J); > 1 adds the ``path_*`` keys (frames at
            t + k … t + Jk) for a multi-jump loss, and a window then needs J·k steps of trajectory.

    Attributes: ``k``, ``stride``, ``jumps``, ``dt_fs`` (base step, fs), ``elements`` (sorted atomic
    numbers seen), ``buckets``, ``names`` (one per trajectory), ``n_windows``.
    """

    def __init__(self, paths: Sequence, k: int, stride: int = 1, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 jumps: int = 1):
        for what, value in (("k", k), ("stride", stride), ("jumps", jumps)):
            if not is_integer(value, 1):
                raise InputError(f"{what} must be an integer ≥ 1{' (base steps)' if what != 'jumps' else ''}, "
                                 f"got {value!r}")
        buckets = tuple(sorted(int(b) for b in buckets))
        if not buckets or buckets[0] < 1:
            raise InputError(f"buckets must be positive atom counts, got {buckets!r}")
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise InputError("a window dataset needs at least one trajectory")
        self.k, self.stride, self.buckets, self.jumps = int(k), int(stride), buckets, int(jumps)
        self.paths = paths
        self.dt_fs = None
        self._trajs = []
        for path in paths:
            if path.endswith(".npz"):
                self._trajs.append(self._windows_of_file(path))
                continue
            store = TrajectoryStore(path)
            if not store.exists:
                raise InputError(f"no trajectory at {path} (meta.json missing)")
            self._trajs.append(self._windows_of(store))
        self.names = [t["name"] for t in self._trajs]
        self.elements = tuple(sorted({int(z) for t in self._trajs for z in t["numbers"]}))

    @classmethod
    def from_split(cls, root, splits, split: str, k: int, stride: int = 1, runs: Sequence[str] = ("production",),
                   buckets: Sequence[int] = DEFAULT_BUCKETS, jumps: int = 1) -> "WindowDataset":
        """Windows of the molecules of ``split`` ("train", "val" or "test") of the splits JSON
        file ``splits``, read from ``root/<name>/<run>`` for each run in ``runs``."""
        from jkstep.data.generate import read_splits

        names = read_splits(splits)
        if split not in names:
            raise InputError(f"unknown split {split!r}; choose train, val or test")
        if not names[split]:
            raise InputError(f"split {split!r} of {splits} is empty")
        paths = [os.path.join(os.fspath(root), name, run) for name in names[split] for run in runs]
        return cls(paths, k, stride, buckets, jumps)

    def _check_dt(self, dt: float, path: str) -> None:
        if self.dt_fs is None:
            self.dt_fs = dt
        elif not np.isclose(dt, self.dt_fs, rtol=0, atol=1e-12):
            raise InputError(f"{path} has dt {dt} fs, other trajectories {self.dt_fs} fs")

    def _bucket(self, n: int, path: str) -> int:
        fits = [b for b in self.buckets if b >= n]
        if not fits:
            raise InputError(f"{path} has {n} atoms, more than the largest bucket {self.buckets[-1]}; add a larger bucket")
        return fits[0]

    def _windows_of_file(self, path: str) -> dict:
        from jkstep.data.dataset import read_file

        d = read_file(path)
        self._check_dt(float(d["dt_fs"]), path)
        key = f"windows_k{self.k}"
        if key not in d:
            raise InputError(f"{path} holds windows for k = {list(map(int, d['ks']))}, not k = {self.k}; "
                             f"rebuild it with `jkstep dataset --k ... {self.k}`")
        if self.stride % int(d["stride"]):
            raise InputError(f"stride {self.stride} is not a multiple of the file's stride {int(d['stride'])} ({path})")
        index = _chains(np.asarray(d[key], np.int64), self.jumps)[:: self.stride // int(d["stride"])]
        numbers = np.asarray(d["numbers"], np.int32)
        return {"name": f"{d['name']}/{d['run']}", "numbers": numbers, "masses": np.asarray(d["masses"]),
                "bucket": self._bucket(len(numbers), path), "n_windows": len(index), "index": index,
                "frames": {k: d[k] for k in ("positions", "velocities", "forces")}}

    def _windows_of(self, store: TrajectoryStore) -> dict:
        meta = store.meta
        dt, spacing = float(meta["dt_fs"]), int(meta["frame_spacing"])
        self._check_dt(dt, store.path)
        for what, value in (("k", self.k), ("stride", self.stride)):
            if value % spacing:
                raise InputError(f"{what} = {value} steps is not a multiple of the frame spacing "
                                 f"({spacing} steps) of {store.path}")
        numbers = np.asarray(meta["numbers"], np.int32)
        lag, step = self.k // spacing, self.stride // spacing
        starts = np.arange(0, max(0, store.n_frames - self.jumps * lag), step, dtype=np.int64)
        wanted = starts[:, None] + lag * np.arange(self.jumps + 1)      # (windows, J + 1) frames
        frames = np.unique(wanted)                           # each needed frame read once
        data = store.load(frames=frames, arrays=("positions", "velocities", "forces", "step"))
        index = np.searchsorted(frames, wanted)
        if len(starts) and not np.all(np.diff(data["step"][index], axis=1) == self.k):
            raise InputError(f"{store.path} has gaps in its steps; windows would not be k = {self.k} apart")
        name = meta.get("name") or os.path.basename(os.path.dirname(store.path))
        return {"name": f"{name}/{os.path.basename(store.path)}", "numbers": numbers,
                "masses": np.asarray(meta["masses"], np.float64), "bucket": self._bucket(len(numbers), store.path),
                "n_windows": len(starts), "index": index.reshape(-1, self.jumps + 1),
                "frames": {k: data[k] for k in ("positions", "velocities", "forces")}}

    # -- sizes ---------------------------------------------------------------------------

    @property
    def n_windows(self) -> int:
        return sum(t["n_windows"] for t in self._trajs)

    def __len__(self) -> int:
        return self.n_windows

    def bucket_sizes(self) -> dict[int, int]:
        """Windows per bucket (only buckets in use)."""
        out: dict[int, int] = {}
        for t in self._trajs:
            if t["n_windows"]:
                out[t["bucket"]] = out.get(t["bucket"], 0) + t["n_windows"]
        return dict(sorted(out.items()))

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Batches one pass of ``batches(batch_size, drop_last=...)`` yields."""
        sizes = self.bucket_sizes().values()
        return sum(s // batch_size if drop_last else -(-s // batch_size) for s in sizes)

    # -- batches -------------------------------------------------------------------------

    def batches(self, batch_size: int, seed: int = 0, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[dict]:
        """One pass over the windows in padded numpy batches of one bucket each (keys: KEYS, and
        PATH_KEYS where ``jumps`` > 1).

        With ``shuffle`` the windows within each bucket and the order of the batches are
        permuted by ``seed``; without, batches come bucket by bucket in storage order. The last
        batch of a bucket may be smaller unless ``drop_last``."""
        if not is_integer(batch_size, 1):
            raise InputError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
        rng = np.random.default_rng(seed)
        plan = []
        for bucket in self.bucket_sizes():
            index = np.array([(i, j) for i, t in enumerate(self._trajs) if t["bucket"] == bucket
                              for j in range(t["n_windows"])], np.int64).reshape(-1, 2)
            if shuffle:
                index = index[rng.permutation(len(index))]
            for lo in range(0, len(index), batch_size):
                part = index[lo:lo + batch_size]
                if len(part) == batch_size or not drop_last:
                    plan.append((bucket, part))
        order = rng.permutation(len(plan)) if shuffle else range(len(plan))
        for b in order:
            yield self._assemble(*plan[b])

    def _assemble(self, bucket: int, index: np.ndarray) -> dict:
        size = len(index)
        out = {"numbers": np.zeros((size, bucket), np.int32), "mask": np.zeros((size, bucket), bool),
               "masses": np.ones((size, bucket), np.float64)}
        for key in KEYS[3:]:
            out[key] = np.zeros((size, bucket, 3), np.float64)
        if self.jumps > 1:
            for key in PATH_KEYS:
                out[key] = np.zeros((size, self.jumps, bucket, 3), np.float64)
        for i in np.unique(index[:, 0]):                   # one trajectory at a time
            rows = np.flatnonzero(index[:, 0] == i)
            t = self._trajs[i]
            n = len(t["numbers"])
            out["numbers"][rows, :n] = t["numbers"]
            out["mask"][rows, :n] = True
            out["masses"][rows, :n] = t["masses"]
            frames = t["index"][index[rows, 1]]             # (rows, J + 1)
            for key in ("positions", "velocities", "forces"):
                out[key][rows, :n] = t["frames"][key][frames[:, 0]]
                out["target_" + key][rows, :n] = t["frames"][key][frames[:, 1]]
                if self.jumps > 1:
                    out["path_" + key][rows, :, :n] = t["frames"][key][frames[:, 1:]]
        return out


def _chains(pairs: np.ndarray, jumps: int) -> np.ndarray:
    """(windows, jumps + 1) frame indices of a window file's (start, end) pairs chained end to
    start: every window whose jumps − 1 next windows exist (all of them for jumps = 1)."""
    if jumps == 1:
        return pairs
    following = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))
    chains = []
    for a, b in pairs.tolist():
        chain = [a, b]
        while len(chain) <= jumps and chain[-1] in following:
            chain.append(following[chain[-1]])
        if len(chain) == jumps + 1:
            chains.append(chain)
    return np.asarray(chains, np.int64).reshape(-1, jumps + 1)


def datasets_from_config(data: dict, k: int, jumps: int = 1) -> tuple["WindowDataset", "WindowDataset"]:
    """(train, validation) windows from a training config's ``data:`` section.

    Keys: ``dir`` (data root), ``splits`` (JSON with train/val/test names; without it the
    molecules under ``dir`` are split deterministically: every ``val_every``-th molecule, sorted
    by name, validates, default 10), ``runs`` (run directories used per molecule, default
    ``["production"]``; ``all`` for every complete run, e.g. the MM replicas), ``stride`` (base
    steps between window starts, default k: consecutive 0.25 fs windows are highly correlated),
    ``buckets`` (padding sizes), ``windows`` (optional: a directory of window files built by
    ``jkstep dataset`` from ``dir``; read instead of the trajectories). The test split is never read.
    ``jumps``: consecutive jumps per window (``TrainConfig.jumps``; see ``WindowDataset``).
    """
    known = {"dir", "splits", "runs", "stride", "buckets", "batch_size", "val_every", "windows"}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"unknown keys in the data section: {sorted(unknown)}; known: {sorted(known)}")
    if "dir" not in data:
        raise InputError("the data section needs 'dir', the root of the trajectories (e.g. data/qm)")
    root = os.fspath(data["dir"])
    windows = os.fspath(data["windows"]) if data.get("windows") else None
    if windows is not None and not os.path.isdir(windows):
        raise InputError(f"no window directory {windows}: build it with `jkstep dataset --data {root} --out {windows}`")
    if not os.path.isdir(root) and (windows is None or not data.get("splits")):
        raise InputError(f"no data directory {root}: generate it first (jkstep generate / generate-mm)")
    stride = data_setting(data, "stride", k)
    buckets = tuple(data.get("buckets", DEFAULT_BUCKETS))
    runs = data.get("runs", ["production"])
    if data.get("splits"):
        from jkstep.data.generate import read_splits

        names = read_splits(data["splits"])
        split_names = {s: names.get(s, []) for s in ("train", "val")}
    else:
        every = data_setting(data, "val_every", 10)
        molecules = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        split_names = {"train": [m for i, m in enumerate(molecules) if i % every != every - 1],
                       "val": [m for i, m in enumerate(molecules) if i % every == every - 1]}
    out = []
    for split in ("train", "val"):
        paths = []
        for name in split_names[split]:
            directory = os.path.join(root, name)
            if windows is not None:
                paths += _window_files(windows, directory, runs, k)
                continue
            if not os.path.isdir(directory):
                continue  # not generated (yet)
            wanted = sorted(os.listdir(directory)) if runs == "all" else runs
            for run in wanted:
                store = TrajectoryStore(os.path.join(directory, run))
                if store.exists and store.n_frames > jumps * k:
                    paths.append(store.path)
        if not paths:
            span = f"k = {k}" if jumps == 1 else f"{jumps} jumps of k = {k} ({jumps * k})"
            raise InputError(f"no {split} trajectories with more than {span} frames under {root}")
        out.append(WindowDataset(paths, k, stride, buckets, jumps))
    return out[0], out[1]


def data_setting(data: dict, key: str, default: int) -> int:
    """An integer setting ≥ 1 of a data: section (stride, val_every, batch_size); InputError naming it."""
    value = data.get(key, default)
    if not is_integer(value, 1):
        raise InputError(f"data: {key} must be an integer ≥ 1, got {value!r}")
    return int(value)


def _window_files(windows: str, directory: str, runs, k: int) -> list[str]:
    """The window files of one molecule (``directory`` = its trajectories under the data root).
    The window files alone suffice (the trajectories may be absent, e.g. on another machine);
    a trajectory that exists without its window file is an error (the files are stale)."""
    from jkstep.data.dataset import dataset_file_name

    name = os.path.basename(directory)
    if runs == "all":
        stores = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        files = {os.path.join(windows, f) for f in os.listdir(windows) if f.startswith(name + "__") and f.endswith(".npz")}
        wanted = sorted(files | {os.path.join(windows, dataset_file_name(os.path.join(directory, r))) for r in stores})
    else:
        wanted = [os.path.join(windows, dataset_file_name(os.path.join(directory, r))) for r in runs]
    out = []
    for file in wanted:
        run = file[len(os.path.join(windows, name + "__")):-len(".npz")]
        store = TrajectoryStore(os.path.join(directory, run))
        if os.path.exists(file):
            out.append(file)
        elif store.exists and store.n_frames > k:
            raise InputError(f"no window file {file} for {store.path}: run `jkstep dataset` first")
    return out


def provenance(data: dict, k: int, datasets: tuple["WindowDataset", "WindowDataset"] | None = None) -> dict:
    """What a model was trained on: per trajectory of the train and validation windows its
    molecule, SMILES, run, frames, seeds, method and package versions (from the stores' meta).
    ``datasets``: the (train, val) datasets already built from ``data`` (else they are built)."""
    train, val = datasets if datasets is not None else datasets_from_config(data, k)
    out = {"data": dict(data), "k": k}
    for split, dataset in (("train", train), ("val", val)):
        rows = []
        for path in dataset.paths:
            if path.endswith(".npz"):
                from jkstep.data.dataset import read_file

                meta = json.loads(read_file(path)["meta_json"])
            else:
                meta = TrajectoryStore(path).meta
            rows.append({key: meta.get(key) for key in ("name", "smiles", "run", "n_frames", "dt_fs", "method",
                                                         "accuracy", "temperature_k", "seed", "conformer_seed",
                                                         "versions")})
        out[split] = rows
    return out
