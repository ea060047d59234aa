"""Jitted rollouts: many integrator steps under one ``lax.scan``, recording frames.

``rollout(apply_fn, state, n_frames, every)`` runs ``n_frames * every`` steps and records the
state after each ``every`` steps. It works on a single state or, with ``jax.vmap``, on a
batch of replicas (see ``batched_rollout``).

``batched_rollout`` runs B replicas from their start positions and velocities. On one device
the batch is vmapped, so each xTB request of the batch is one host callback with B members,
which the potential spreads over the cores. On several devices the batch axis is split with
``jax.shard_map``: each device runs its own scan over B / n_dev replicas and makes its own
callback. (A ``pure_callback`` under plain ``jit`` on a sharded batch would be gathered into
one host call on one device.) Each replica keeps its own xTB restart slot, numbered by its
global replica index, so sharded and unsharded runs give the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jkstep.errors import MAX_STEPS, InputError, is_finite_number
from jkstep.integrate import MDState
from jkstep.potentials.xtb import replica_slots

#: Name of the mesh axis the replicas are split over.
REPLICA_AXIS = "replicas"


@struct.dataclass
class Frames:
    """Recorded frames (leading axis: frame, F; a batched run adds a replica axis before it).
    positions (F, N, 3) Å, velocities (F, N, 3) Å/fs, forces (F, N, 3) eV/Å, energy (F,)
    potential eV, step (F,) base step of each frame, failed (F,) failure flag."""

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    energy: jax.Array
    step: jax.Array
    failed: jax.Array


def frames_of(state: MDState) -> Frames:
    """One frame of an integrator's state: its positions (N, 3) Å, velocities (N, 3) Å/fs, forces
    (N, 3) eV/Å, potential energy () eV, step and failure flag."""
    return Frames(state.positions, state.velocities, state.forces, state.energy, state.step, state.failed)


def check_count(name: str, value) -> int:
    """``value`` as an int ≥ 1 (an integer or a whole float; not a bool); raises InputError otherwise."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and is_finite_number(value)
          and float(value) == math.floor(value) and 1 <= value <= MAX_STEPS)
    if not ok:
        raise InputError(f"{name} must be a whole number ≥ 1 (at most {MAX_STEPS:.0e}), got {value!r}")
    return int(value)


def check_lengths(n_frames, every) -> tuple[int, int]:
    """``n_frames`` and ``every`` (applies per frame) as ints ≥ 1 whose product is ≤ MAX_STEPS."""
    n_frames, every = check_count("n_frames", n_frames), check_count("every", every)
    if n_frames * every > MAX_STEPS:
        raise InputError(f"n_frames · every = {n_frames * every:.3g} applies is more than {MAX_STEPS:.0e}; "
                         f"check the run length")
    return n_frames, every


def rollout(apply_fn, state: MDState, n_frames: int, every: int = 1) -> tuple[MDState, Frames]:
    """Run ``n_frames * every`` steps of ``apply_fn``; return the final state and the frames
    after every ``every`` steps (``Frames`` of leading axis n_frames: positions (n_frames, N, 3)
    Å, ...). Jit it with static ``n_frames`` and ``every`` (see ``runner``); both must be
    integers ≥ 1."""
    n_frames, every = check_lengths(n_frames, every)
    missing = [f.name for f in dataclasses.fields(Frames) if not hasattr(state, f.name)]
    if missing:
        raise InputError(f"rollout needs the integrator's state, the result of init_fn(positions, velocities); "
                         f"got {type(state).__name__} (no {', '.join(missing)})")

    def frame(state, _):
        state = jax.lax.fori_loop(0, every, lambda _, s: apply_fn(s), state)
        return state, frames_of(state)

    return jax.lax.scan(frame, state, None, length=n_frames)


def runner(apply_fn, n_frames: int, every: int = 1, batched: bool = False):
    """A jitted ``state -> (state, frames)`` running ``n_frames * every`` steps; with
    ``batched`` the state has a leading replica axis (vmap) and frames are (replica, frame, ...)."""
    n_frames, every = check_lengths(n_frames, every)
    fn = functools.partial(rollout, apply_fn, n_frames=n_frames, every=every)
    return jax.jit(jax.vmap(fn) if batched else fn)


def run_steps(apply_fn, state, n_steps: int, record_every: int | None = None):
    """``n_steps`` applies of ``apply_fn`` from ``state`` in one jitted run: (state, None), or with
    ``record_every`` (state, Frames of every ``record_every``-th apply) when there is at least one
    such frame (the remainder runs after the last one, unrecorded)."""
    if n_steps <= 0:
        return state, None
    if not record_every or n_steps < record_every:
        return runner(apply_fn, 1, n_steps)(state)[0], None
    state, frames = runner(apply_fn, n_steps // record_every, record_every)(state)
    if n_steps % record_every:
        state, _ = runner(apply_fn, 1, n_steps % record_every)(state)
    return state, frames


def concat(chunks: list[Frames]) -> Frames:
    """Join chunks of frames along the frame axis (the last axis before the per-frame shape)."""
    if not chunks:
        raise InputError("concat needs at least one chunk of Frames, got none")
    axis = chunks[0].energy.ndim - 1
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *chunks)


def batched_rollout(init_fn, apply_fn, positions, velocities, n_frames: int, every: int = 1,
                    devices=None, chunk_frames: int | None = None, keys=None):
    """Run B replicas for ``n_frames * every`` applies of ``apply_fn``, all in step.

    ``init_fn(positions, velocities[, key])`` and ``apply_fn(state)`` are an integrator pair
    (``jkstep.verlet``, the ``kstep`` integrator, ``jkstep.langevin`` with ``keys``).
    ``positions`` and ``velocities`` are (B, N, 3) in Å and Å/fs (either may be (N, 3),
    shared by all replicas); ``keys`` (B, 2), if given, are PRNG keys passed to ``init_fn`` as
    its third argument (Langevin noise, the kstep NVT thermostat). ``every``: applies per
    frame (one apply is one base step of Verlet, one macro-step of k base steps of kstep).

    ``devices``: the devices to split the batch over (default: all local devices); with more
    than one, B must be divisible by their number and each device runs B / n_dev replicas
    under ``jax.shard_map``, making its own xTB callbacks. ``chunk_frames``: frames per jitted
    call (default: all in one); each chunk's frames go to the host before the next starts, so
    chunking bounds the device memory of a long run without changing the trajectory.

    Returns (states, frames): the final state of each replica (leading axis B, on the
    devices; its counters, e.g. ``force_calls``, are per replica) and ``Frames`` on the host
    (numpy) with leading axes (B, n_frames), frame f being the state after (f + 1) · every
    applies (the start is not a frame).
    """
    try:
        x, v = np.broadcast_arrays(np.asarray(positions, np.float64), np.asarray(velocities, np.float64))
    except (TypeError, ValueError):
        raise InputError(f"positions {np.shape(positions)} and velocities {np.shape(velocities)} must both be "
                         f"(B, N, 3) (Å, Å/fs), or one of them (N, 3) shared by all replicas") from None
    if x.ndim != 3 or x.shape[-1] != 3 or len(x) == 0:
        raise InputError(f"positions and velocities must be (B, N, 3) (Å, Å/fs) with B ≥ 1, got {x.shape}")
    if not (np.isfinite(x).all() and np.isfinite(v).all()):
        raise InputError("positions and velocities must be finite (no NaN or inf)")
    n_frames, every = check_lengths(n_frames, every)
    if chunk_frames is not None:
        chunk_frames = check_count("chunk_frames", chunk_frames)
    devices = jax.local_devices() if devices is None else devices
    devices = [devices] if isinstance(devices, jax.Device) else list(devices)
    b = len(x)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise InputError(f"devices must be None (all local devices) or a non-empty list of jax devices, "
                         f"got {devices!r:.80}")
    if b % len(devices):
        raise InputError(f"{b} replicas cannot be split evenly over {len(devices)} devices: "
                         f"use a multiple of {len(devices)} replicas or pass devices=")
    if keys is None:
        _check_no_key_needed(init_fn, x[0], v[0])
    else:
        try:
            keys = jnp.asarray(keys)
        except TypeError:
            keys = jnp.zeros(())
        if keys.ndim == 0 or len(keys) != b:
            raise InputError(f"keys must be one PRNG key per replica ({b}), e.g. "
                             f"jax.random.split(jax.random.PRNGKey(seed), {b}); got shape {keys.shape}")
    replica = np.arange(b, dtype=np.int32)
    start = (x, v) if keys is None else (x, v, keys)
    state = _over_replicas(init_fn, devices)(replica, *start)

    chunk = n_frames if chunk_frames is None else min(int(chunk_frames), n_frames)
    runners, chunks, done = {}, [], 0
    while done < n_frames:
        n = min(chunk, n_frames - done)
        if n not in runners:
            scan = functools.partial(rollout, apply_fn, n_frames=n, every=every)
            runners[n] = _over_replicas(scan, devices)
        state, frames = runners[n](replica, state)
        chunks.append(jax.device_get(frames))
        done += n
    return state, jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *chunks)


def _check_no_key_needed(init_fn, x, v):
    """InputError if ``init_fn`` cannot be called without a key (Langevin)."""
    try:
        signature = inspect.signature(init_fn)
    except (TypeError, ValueError):     # no signature to read: let the call speak
        return
    try:
        signature.bind(x, v)
    except TypeError:
        raise InputError("init_fn needs a PRNG key (a Langevin or NVT integrator): pass keys=, e.g. "
                         "jax.random.split(jax.random.PRNGKey(seed), B)") from None


def _over_replicas(fn, devices):
    """jit of ``(replica, *args) -> fn(*args)`` vmapped over the leading (replica) axis, each
    member's xTB calls tagged with its global replica index (its restart slot). With several
    devices the batch is split over them by ``shard_map``: one callback per device."""

    def tagged(replica, *args):
        with replica_slots(replica):
            return fn(*args)

    batched = jax.vmap(tagged)
    if len(devices) == 1:
        run = jax.jit(batched)
        return lambda *args: run(*jax.device_put(args, devices[0]))
    mesh = jax.sharding.Mesh(np.asarray(devices), (REPLICA_AXIS,))
    spec = jax.sharding.PartitionSpec(REPLICA_AXIS)
    # check_vma=False: the callback's outputs carry no "varies over the mesh axis" type
    return jax.jit(jax.shard_map(batched, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))
