"""Jitted rollouts: many integrator steps under one ``lax.scan``, recording frames.

``rollout(apply_fn, state, n_frames, every)`` runs ``n_frames * every`` steps and records the
state after each ``every`` steps. It works on a single state or, with ``jax.vmap``, on a
batch of replicas (see ``batched_rollout``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jkstep.integrate import MDState


@struct.dataclass
class Frames:
    """Recorded frames (leading axis: frame). positions Å, velocities Å/fs, forces eV/Å,
    energy (potential) eV, step: base step of each frame, failed: failure flag."""

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    energy: jax.Array
    step: jax.Array
    failed: jax.Array


def frames_of(state: MDState) -> Frames:
    return Frames(state.positions, state.velocities, state.forces, state.energy, state.step, state.failed)


def rollout(apply_fn, state: MDState, n_frames: int, every: int = 1) -> tuple[MDState, Frames]:
    """Run ``n_frames * every`` steps of ``apply_fn``; return the final state and the frames
    after every ``every`` steps. Jit it with static ``n_frames`` and ``every`` (see ``runner``)."""

    def frame(state, _):
        state = jax.lax.fori_loop(0, every, lambda _, s: apply_fn(s), state)
        return state, frames_of(state)

    return jax.lax.scan(frame, state, None, length=n_frames)


def runner(apply_fn, n_frames: int, every: int = 1, batched: bool = False):
    """A jitted ``state -> (state, frames)`` running ``n_frames * every`` steps; with
    ``batched`` the state has a leading replica axis (vmap) and frames are (replica, frame, ...)."""
    fn = functools.partial(rollout, apply_fn, n_frames=n_frames, every=every)
    return jax.jit(jax.vmap(fn) if batched else fn)


def concat(chunks: list[Frames]) -> Frames:
    """Join chunks of frames along the frame axis (the last axis before the per-frame shape)."""
    axis = chunks[0].energy.ndim - 1
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *chunks)
