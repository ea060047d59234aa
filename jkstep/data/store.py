"""The on-disk trajectory format shared by xTB and MM data (docs/data_format.md).

One directory per trajectory holds ``meta.json`` and ``chunk_00000.npz``, ``chunk_00001.npz``,
... Each chunk holds float64 ``positions`` (F, N, 3) Å, ``velocities`` (F, N, 3) Å/fs,
``forces`` (F, N, 3) eV/Å, ``energy`` (F,) potential eV, ``kinetic`` (F,) eV and int64 ``step``
(F,), the global base-step index of each frame.

Every write is atomic: a temporary file in the same directory is written, fsynced and moved
over its target with ``os.replace``; ``meta.json`` is rewritten (atomically) after each chunk
and is the record of which chunks are complete, so a chunk file that a crash left behind
without its meta update is simply written again. No pickle: arrays are read with
``allow_pickle=False`` and meta is JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from jkstep.errors import InputError

FORMAT = "jkstep-trajectory"
FORMAT_VERSION = 1
#: Per-frame arrays of a chunk: name → dtype (positions, velocities, forces are (F, N, 3); the rest (F,)).
ARRAYS = {"positions": np.float64, "velocities": np.float64, "forces": np.float64,
          "energy": np.float64, "kinetic": np.float64, "step": np.int64}
#: Meta keys a store needs from its creator.
REQUIRED_META = ("numbers", "masses", "dt_fs", "frame_spacing")
#: Meta keys the store itself owns.
STORE_KEYS = ("format", "format_version", "n_frames", "n_chunks", "chunks", "last_step", "updated")


def chunk_name(index: int) -> str:
    return f"chunk_{index:05d}.npz"


def atomic_write_bytes(path: str, write) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then ``os.replace``
    it onto ``path`` (and fsync the directory). Nothing is left behind if ``write`` fails."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode()
    atomic_write_bytes(path, lambda fh: fh.write(text))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class TrajectoryStore:
    """Reader and writer of one trajectory directory.

    ``TrajectoryStore(path)`` opens a directory (it need not exist yet); ``create(meta)``
    starts it; ``append(frames)`` adds one chunk; ``last_state()`` gives the last stored frame
    to continue from; ``load()`` reads everything back. ``meta`` is the parsed meta.json.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._meta: dict | None = None
        self._swept = False

    def __repr__(self):
        return f"TrajectoryStore({self.path!r}, n_frames={self.n_frames})"

    # -- meta ----------------------------------------------------------------------------

    @property
    def meta_path(self) -> str:
        return os.path.join(self.path, "meta.json")

    @property
    def exists(self) -> bool:
        return os.path.isfile(self.meta_path)

    @property
    def meta(self) -> dict:
        """meta.json as a dict (re-read from disk the first time; kept in sync by writes)."""
        if self._meta is None:
            self._meta = self._read_meta()
        return self._meta

    def _read_meta(self) -> dict:
        if not self.exists:
            raise InputError(f"no trajectory at {self.path} (meta.json missing)")
        try:
            with open(self.meta_path) as fh:
                meta = json.load(fh)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {self.meta_path}: {exc}") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{self.meta_path} is not a {FORMAT} v{FORMAT_VERSION} meta file")
        return meta

    def reload(self) -> "TrajectoryStore":
        """Forget the cached meta (another process may have written)."""
        self._meta = None
        return self

    def create(self, meta: dict) -> "TrajectoryStore":
        """Start a new, empty trajectory with ``meta`` (must hold numbers, masses amu, dt_fs
        and frame_spacing; anything else JSON-able is kept). Refuses to overwrite frames."""
        if self.exists and self.n_frames > 0:
            raise InputError(f"{self.path} already holds {self.n_frames} frames; open it to resume "
                             f"or delete the directory to start again")
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise InputError(f"trajectory meta needs {', '.join(missing)}")
        numbers = np.asarray(meta["numbers"])
        masses = np.asarray(meta["masses"], np.float64)
        if numbers.ndim != 1 or masses.shape != numbers.shape:
            raise InputError("meta numbers and masses must be 1-D and of equal length")
        if not int(meta["frame_spacing"]) >= 1 or not float(meta["dt_fs"]) > 0:
            raise InputError("meta frame_spacing must be ≥ 1 and dt_fs > 0")
        os.makedirs(self.path, exist_ok=True)
        self._sweep()
        full = {k: v for k, v in _jsonable(meta).items() if k not in STORE_KEYS}
        full.update(format=FORMAT, format_version=FORMAT_VERSION, n_frames=0, n_chunks=0,
                    chunks=[], last_step=None, created=_now())
        self._write_meta(full)
        return self

    def update_meta(self, **changes) -> dict:
        """Merge ``changes`` into meta.json (atomically); store-owned keys cannot be changed."""
        bad = [k for k in changes if k in STORE_KEYS]
        if bad:
            raise ValueError(f"meta keys {bad} are managed by the store")
        meta = dict(self.meta)
        meta.update(_jsonable(changes))
        self._write_meta(meta)
        return meta

    def _sweep(self) -> None:
        """Remove temporary files a killed writer left behind (once per writer; one writer per
        trajectory at a time)."""
        if self._swept:
            return
        for name in os.listdir(self.path):
            if name.startswith(".tmp-"):
                try:
                    os.remove(os.path.join(self.path, name))
                except OSError:
                    pass
        self._swept = True

    def _write_meta(self, meta: dict) -> None:
        meta["updated"] = _now()
        write_json(self.meta_path, meta)
        self._meta = meta

    # -- frames --------------------------------------------------------------------------

    @property
    def n_atoms(self) -> int:
        return len(self.meta["numbers"])

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"]) if self.exists else 0

    @property
    def n_chunks(self) -> int:
        """Complete chunks (those recorded in meta.json)."""
        return int(self.meta["n_chunks"]) if self.exists else 0

    def append(self, frames: dict, **meta_changes) -> int:
        """Write ``frames`` (the six arrays of ARRAYS, F ≥ 1 frames) as the next chunk, then
        record it in meta.json together with ``meta_changes``. Steps must continue the stored
        ones (strictly increasing by frame_spacing). Returns the chunk index."""
        arrays = self._check_frames(frames)
        self._sweep()
        index = self.n_chunks
        path = os.path.join(self.path, chunk_name(index))
        atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))
        meta = dict(self.meta)
        meta.update(_jsonable(meta_changes))
        steps = arrays["step"]
        meta["chunks"] = list(meta["chunks"]) + [
            {"file": chunk_name(index), "n_frames": int(len(steps)),
             "first_step": int(steps[0]), "last_step": int(steps[-1])}]
        meta["n_chunks"] = index + 1
        meta["n_frames"] = int(meta["n_frames"]) + len(steps)
        meta["last_step"] = int(steps[-1])
        self._write_meta(meta)
        return index

    def _check_frames(self, frames: dict) -> dict:
        missing = [k for k in ARRAYS if k not in frames]
        if missing:
            raise InputError(f"frames need {', '.join(missing)}")
        n = self.n_atoms
        arrays = {k: np.asarray(frames[k], dtype) for k, dtype in ARRAYS.items()}
        f = len(arrays["step"])
        if f == 0:
            raise InputError("a chunk needs at least one frame")
        for k in ("positions", "velocities", "forces"):
            if arrays[k].shape != (f, n, 3):
                raise InputError(f"{k} must have shape ({f}, {n}, 3), got {arrays[k].shape}")
        for k in ("energy", "kinetic", "step"):
            if arrays[k].shape != (f,):
                raise InputError(f"{k} must have shape ({f},), got {arrays[k].shape}")
        for k, a in arrays.items():
            if not np.all(np.isfinite(a)):
                raise InputError(f"{k} contains NaN or infinite values; refusing to store them")
        spacing = int(self.meta["frame_spacing"])
        first = 0 if self.meta["last_step"] is None else int(self.meta["last_step"]) + spacing
        expected = first + spacing * np.arange(f)
        if self.meta["last_step"] is not None and not np.array_equal(arrays["step"], expected):
            raise InputError(f"steps must continue from {self.meta['last_step']} every {spacing}: "
                             f"got {arrays['step'][:3].tolist()}...")
        if self.meta["last_step"] is None and np.any(np.diff(arrays["step"]) != spacing):
            raise InputError(f"steps must increase by frame_spacing {spacing}")
        return arrays

    def read_chunk(self, index: int) -> dict:
        """The arrays of complete chunk ``index``."""
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} not in 0..{self.n_chunks - 1}")
        path = os.path.join(self.path, self.meta["chunks"][index]["file"])
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in ARRAYS}

    def frame(self, index: int) -> dict:
        """One frame (index ≥ 0 or negative from the end) as a dict of arrays."""
        index = index + self.n_frames if index < 0 else index
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} not in 0..{self.n_frames - 1}")
        for c, info in enumerate(self.meta["chunks"]):
            if index < info["n_frames"]:
                chunk = self.read_chunk(c)
                return {k: v[index] for k, v in chunk.items()}
            index -= info["n_frames"]
        raise AssertionError("meta.json chunk sizes do not add up")

    def last_state(self):
        """(positions (N, 3) Å, velocities (N, 3) Å/fs, step) of the last stored frame, to
        continue from; None if there are no frames."""
        if self.n_frames == 0:
            return None
        fr = self.frame(-1)
        return fr["positions"], fr["velocities"], int(fr["step"])

    def load(self, frames=None, arrays=tuple(ARRAYS)) -> dict:
        """All frames concatenated, or only the frame indices ``frames`` (in that order; only
        the chunks holding them are read), of the named ``arrays``; plus ``numbers``,
        ``masses`` and ``meta``."""
        meta = self.meta
        n = self.n_atoms
        sizes = [int(c["n_frames"]) for c in meta["chunks"]]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if frames is None:
            wanted = np.arange(starts[-1])
        else:
            wanted = np.asarray(frames, np.int64).reshape(-1)
            if wanted.size and (wanted.min() < 0 or wanted.max() >= starts[-1]):
                raise IndexError(f"frame indices must lie in 0..{starts[-1] - 1}")
        unique, inverse = np.unique(wanted, return_inverse=True)
        parts = {k: [] for k in arrays}
        for c in range(len(sizes)):
            local = unique[(unique >= starts[c]) & (unique < starts[c + 1])] - starts[c]
            if local.size == 0:
                continue
            chunk = self.read_chunk(c)
            for k in arrays:
                parts[k].append(chunk[k][local])
        out = {}
        for k in arrays:
            shape = (0, n, 3) if k in ("positions", "velocities", "forces") else (0,)
            joined = np.concatenate(parts[k]) if parts[k] else np.zeros(shape, ARRAYS[k])
            out[k] = joined[inverse.reshape(-1)] if joined.shape[0] else joined
        out["numbers"] = np.asarray(meta["numbers"], np.int64)
        out["masses"] = np.asarray(meta["masses"], np.float64)
        out["meta"] = meta
        return out


def load(path) -> dict:
    """Read a trajectory directory: dict of arrays (positions, velocities, forces, energy,
    kinetic, step, numbers, masses) and ``meta`` (the parsed meta.json)."""
    return TrajectoryStore(path).load()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
