"""Orbax checkpoints of a training run: ``out_dir/latest/<step>`` and ``out_dir/best/<step>``.

Each step holds the items ``train`` (params, optimizer state, step), ``ema`` (EMA params: what
inference uses) and ``meta`` (JSON: model config, k, dt, units, elements seen, loss scales,
best-so-far, data-iterator state), so a checkpoint loads without any YAML.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jkstep.errors import InputError
from jkstep.model.network import UNITS, ModelConfig
from jkstep.model.state import TrainState

CHECKPOINT_FORMAT = "jkstep-kstep-model"
CHECKPOINT_VERSION = 1


def _train_item(state: TrainState) -> dict:
    leaves = jax.tree.leaves(state.opt_state)
    return {"step": state.step, "params": state.params,
            "opt_state": {f"{i:04d}": leaf for i, leaf in enumerate(leaves)}}


class CheckpointStore:
    """Orbax checkpoints of one training run: ``directory/latest`` and ``directory/best``.

    ``latest`` keeps the newest ``keep_latest`` steps; ``best`` keeps the one step with the lowest
    ``val_loss`` (``best_fn``). Items per step: ``train``, ``ema``, ``meta`` (see module doc).
    """

    def __init__(self, directory, keep_latest: int = 2, read_only: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        common = dict(create=not read_only, read_only=read_only, enable_async_checkpointing=False)
        self.latest = ocp.CheckpointManager(
            os.path.join(self.directory, "latest"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep_latest, **common))
        self.best = ocp.CheckpointManager(
            os.path.join(self.directory, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["val_loss"],
                                                 best_mode="min", **common))

    def save(self, which: str, state: TrainState, meta: dict, val_loss: float | None = None) -> None:
        """Save ``state`` at its step into ``which`` ("latest" or "best"), replacing a checkpoint
        of the same step; ``val_loss`` ranks the "best" ones."""
        manager = getattr(self, which)
        step = int(state.step)
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(
            train=ocp.args.StandardSave(_train_item(state)),
            ema=ocp.args.StandardSave(state.ema_params),
            meta=ocp.args.JsonSave(meta)),
            metrics=None if val_loss is None else {"val_loss": float(val_loss)}, force=True)
        manager.wait_until_finished()

    def restore_state(self, which: str, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """The state saved at ``step`` (shaped like ``like``) and its metadata."""
        manager = getattr(self, which)
        out = manager.restore(step, args=ocp.args.Composite(
            train=ocp.args.StandardRestore(_train_item(like)),
            ema=ocp.args.StandardRestore(like.ema_params),
            meta=ocp.args.JsonRestore()))
        train_item = out["train"]
        leaves = [train_item["opt_state"][k] for k in sorted(train_item["opt_state"])]
        opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like.opt_state), leaves)
        state = like.replace(step=jnp.asarray(train_item["step"], jnp.int32), params=train_item["params"],
                             ema_params=out["ema"], opt_state=opt_state)
        return uncommitted(state), dict(out["meta"])

    def restore_meta(self, which: str, step: int) -> dict:
        """The JSON metadata saved at ``step`` of ``which``."""
        manager = getattr(self, which)
        return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def drop_after(self, step: int) -> None:
        """Delete checkpoints newer than ``step`` (left by a run that is being resumed from ``step``)."""
        for manager in (self.latest, self.best):
            for s in manager.all_steps():
                if s > step:
                    manager.delete(s)

    def close(self) -> None:
        """Close both Orbax managers."""
        self.latest.close()
        self.best.close()


def uncommitted(tree):
    """Restored arrays come back committed to a device, which makes ``jit`` compile anew for them;
    copy them to ordinary (uncommitted) arrays, values unchanged."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), tree)


def checkpoint_meta(model_config: ModelConfig, **extra) -> dict:
    """The JSON metadata every checkpoint carries (config, k, dt, units, ...); for a learned
    potential (``PotentialConfig``) its config under ``potential_config`` and ``kind``."""
    from jkstep.model import potential

    if isinstance(model_config, potential.PotentialConfig):
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                **potential.checkpoint_meta(model_config), **extra}
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_config": model_config.to_dict(), "k": model_config.k, "dt_fs": model_config.dt_fs,
            "units": dict(UNITS), **extra}



def check_resumable(meta: dict, model_config: ModelConfig, freeze: tuple, out_dir) -> None:
    """InputError unless the checkpoint ``meta`` of ``out_dir/latest`` is a jkstep model run of
    this model config with the same frozen layers (so training can continue it)."""
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{out_dir}/latest is not a jkstep model checkpoint")
    from jkstep.model import potential

    key = "potential_config" if isinstance(model_config, potential.PotentialConfig) else "model_config"
    if key not in meta or type(model_config).from_dict(meta[key]) != model_config:
        raise InputError(f"{out_dir} holds a run of another model config ({meta.get(key)}); "
                         "train into a fresh directory")
    if tuple(meta.get("freeze", ())) != freeze:
        raise InputError(f"{out_dir} holds a run with frozen layers {meta.get('freeze')}, not {list(freeze)}")
