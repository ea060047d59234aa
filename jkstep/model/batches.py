"""Training batches: the batch dict's keys, its conversion to JAX arrays, and two resumable streams.

A batch is a dict of padded numpy arrays with exactly the keys of ``BATCH_KEYS``: ``numbers``
(B, N) int (0 on padding), ``mask`` (B, N) bool, ``masses`` (B, N) amu, ``positions`` Å,
``velocities`` Å/fs, ``forces`` eV/Å at t and ``target_positions``, ``target_velocities``,
``target_forces`` at t+k, all (B, N, 3); for a multi-jump loss (``TrainConfig.jumps`` = J > 1)
also ``path_positions``, ``path_velocities``, ``path_forces`` (B, J, N, 3) at t+k … t+Jk.
A stream with ``get_state()`` / ``set_state(state)`` (``ArrayBatches``, ``EpochBatches``) is
resumed exactly by ``jkstep.model.train.train``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jkstep.errors import InputError
from jkstep.model.network import ModelConfig

BATCH_KEYS = ("numbers", "mask", "masses", "positions", "velocities", "forces",
              "target_positions", "target_velocities", "target_forces")
PATH_KEYS = ("path_positions", "path_velocities", "path_forces")   # multi-jump windows only


def prepare_batch(batch: Mapping[str, Any], config: ModelConfig | None = None) -> dict[str, jax.Array]:
    """Check a batch dict and convert it to JAX arrays (int32 / bool / float64), shapes and units
    unchanged (module doc); the ``PATH_KEYS`` of multi-jump windows are kept where present."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise InputError(f"batch lacks key(s) {missing}; a batch needs exactly {list(BATCH_KEYS)}")
    out = {"numbers": jnp.asarray(batch["numbers"], jnp.int32), "mask": jnp.asarray(batch["mask"], bool)}
    for k in BATCH_KEYS[2:] + tuple(k for k in PATH_KEYS if k in batch):
        out[k] = jnp.asarray(batch[k], jnp.float64)
    return out


def batch_elements(batch: Mapping[str, Any]) -> set[int]:
    """The atomic numbers of the real atoms (``mask`` True) of a batch."""
    z = np.asarray(batch["numbers"])[np.asarray(batch["mask"], bool)]
    return {int(e) for e in np.unique(z)}


class ArrayBatches:
    """Endless shuffled batches drawn from stacked window arrays, with a resumable state.

    ``arrays``: a dict of the ``BATCH_KEYS`` arrays with a leading window axis (M, ...). Each
    epoch is a fresh permutation (``numpy.random.default_rng(seed)``); ``get_state()`` returns a
    JSON-able dict and ``set_state`` puts the stream back exactly there (the protocol ``train``
    uses to resume a data stream). With ``shuffle=False`` the windows come in order.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.n = len(next(iter(self.arrays.values())))
        if batch_size < 1 or batch_size > self.n:
            raise InputError(f"batch_size must be between 1 and the {self.n} windows, got {batch_size}")
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self._rng = np.random.default_rng(seed)
        self._new_epoch()

    def _new_epoch(self):
        self._epoch_rng_state = self._rng.bit_generator.state
        self._perm = self._rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        self._pos = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._pos + self.batch_size > self.n:
            self._new_epoch()
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return {k: v[idx] for k, v in self.arrays.items()}

    def get_state(self) -> dict:
        """The stream's position, JSON-able: the epoch's RNG state and the windows taken in it."""
        return {"epoch_rng_state": self._epoch_rng_state, "pos": int(self._pos)}

    def set_state(self, state: Mapping) -> None:
        """Put the stream back where ``get_state`` was called."""
        self._rng.bit_generator.state = state["epoch_rng_state"]
        self._new_epoch()
        self._pos = int(state["pos"])


class EpochBatches:
    """Endless batches from a one-pass source, with a resumable state.

    ``make_epoch(epoch)`` returns one pass of batches, e.g.
    ``lambda e: dataset.batches(32, seed=seed + e, drop_last=True)`` (a fixed batch shape avoids
    recompiling). ``get_state()`` is (epoch, batches taken in it); ``set_state`` replays the epoch
    up to there, so a resumed stream continues with the same batches.
    """

    def __init__(self, make_epoch: Callable[[int], Iterable[Mapping]]):
        self.make_epoch = make_epoch
        self._start(0)

    def _start(self, epoch: int) -> None:
        self._epoch, self._taken, self._it = epoch, 0, iter(self.make_epoch(epoch))

    def __iter__(self):
        return self

    def __next__(self):
        for _ in range(2):
            batch = next(self._it, None)
            if batch is not None:
                self._taken += 1
                return batch
            self._start(self._epoch + 1)
        raise InputError(f"epoch {self._epoch} of the batch source yielded no batch: with drop_last, a batch "
                         "size above the windows of every size bucket gives none; lower the batch size")

    def get_state(self) -> dict:
        """The stream's position, JSON-able: the epoch and the batches taken in it."""
        return {"epoch": self._epoch, "taken": self._taken}

    def set_state(self, state: Mapping) -> None:
        """Put the stream back where ``get_state`` was called (replays that epoch up to there)."""
        self._start(int(state["epoch"]))
        for _ in range(int(state["taken"])):
            next(self._it)
        self._taken = int(state["taken"])



def time_reversed(batch: Mapping[str, Any]) -> dict:
    """The time-reversed windows of a batch: (x_{t+k}, −v_{t+k}, F_{t+k}) → (x_t, −v_t, F_t); a
    multi-jump window runs from its last frame back through the path to its first. Same keys,
    shapes and units as ``batch``."""
    out = dict(batch)
    if "path_positions" not in batch:
        out["positions"], out["target_positions"] = batch["target_positions"], batch["positions"]
        out["velocities"], out["target_velocities"] = -np.asarray(batch["target_velocities"]), -np.asarray(batch["velocities"])
        out["forces"], out["target_forces"] = batch["target_forces"], batch["forces"]
        return out
    for key, sign in (("positions", 1.0), ("velocities", -1.0), ("forces", 1.0)):
        frames = np.concatenate([np.asarray(batch[key])[:, None], np.asarray(batch["path_" + key])], axis=1)
        frames = sign * frames[:, ::-1]                      # t+Jk, …, t
        out[key], out["target_" + key], out["path_" + key] = frames[:, 0], frames[:, 1], frames[:, 1:]
    return out

