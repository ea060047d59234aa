"""Optimiser, train state, frozen layers and the jitted training and evaluation steps.

``TrainState`` is Flax's ``train_state.TrainState`` (step, params, optimizer state, ``tx``,
``apply_fn``) with the EMA weights added (``ema_params``: what validation and inference use).
``compile_steps`` returns the jitted ``train_step(state, batch, scales) -> (state, metrics)``
(loss, gradients, AdamW on the warm-up/cosine schedule, frozen leaves kept bitwise, EMA update)
and ``eval_step(params, batch, scales) -> metrics``, cached on what they depend on.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jkstep.errors import InputError
from jkstep.model.batches import prepare_batch
from jkstep.model.config import TrainConfig
from jkstep.model.losses import compute_losses, scale_array
from jkstep.model.network import KStepNet, ModelConfig
from jkstep.model.network import init_params as _init_params


class TrainState(train_state.TrainState):
    """Everything that training changes: ``step``, ``params``, ``opt_state`` (Flax's
    ``TrainState``, with its static ``tx`` and ``apply_fn``) and ``ema_params``, the exponential
    moving average of the weights (float32 like them)."""

    ema_params: Any

    def update_ema(self, decay) -> "TrainState":
        """This state with ``ema_params`` ← decay·ema_params + (1 − decay)·params."""
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, self.ema_params, self.params)
        return self.replace(ema_params=ema)


def param_paths(params) -> list[str]:
    """'/'-joined names of every parameter leaf, e.g. 'interaction_0/message/filter/kernel'."""
    return ["/".join(str(getattr(k, "key", k)) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _matches(path: str, pattern: str) -> bool:
    pattern = pattern.strip("/")
    return (path == pattern or path.startswith(pattern + "/") or fnmatch.fnmatchcase(path, pattern)
            or fnmatch.fnmatchcase(path, pattern + "/*"))


def frozen_mask(params, freeze: Sequence[str]):
    """A tree of Python bools like ``params``: True where the leaf's name matches a freeze pattern
    (a name prefix such as 'embedding' or 'interaction_0/message', or a glob 'interaction_*').
    A pattern that matches nothing raises InputError listing the layer names."""
    paths = param_paths(params)
    for pattern in freeze:
        if not any(_matches(p, pattern) for p in paths):
            layers = sorted({"/".join(p.split("/")[:2]) for p in paths})
            raise InputError(f"freeze: {pattern!r} names no layer; layers are {layers}")
    flags = [any(_matches(p, pat) for pat in freeze) for p in paths]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)


def make_schedule(train_config: TrainConfig, learning_rate: float):
    """Linear warm-up from 0 to ``learning_rate``, cosine decay to ``end_lr_fraction`` of it."""
    warmup = min(train_config.warmup_steps, train_config.total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps=warmup, decay_steps=train_config.total_steps,
        end_value=learning_rate * train_config.end_lr_fraction)


def make_optimizer(train_config: TrainConfig, learning_rate: float, frozen=None):
    """Global-norm clipping + AdamW on the schedule; frozen leaves get ``optax.set_to_zero``."""
    inner = optax.chain(optax.clip_by_global_norm(train_config.clip_norm),
                        optax.adamw(make_schedule(train_config, learning_rate),
                                    weight_decay=train_config.weight_decay))
    if frozen is None or not any(jax.tree.leaves(frozen)):
        return inner
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)


def create_train_state(params, tx, apply_fn=None) -> TrainState:
    """A step-0 state: params, EMA = params, fresh optimizer state of ``tx``."""
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=apply_fn, params=params, tx=tx,
                      ema_params=jax.tree.map(jnp.array, params), opt_state=tx.init(params))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The jitted steps of one (model config, train config, learning rate, frozen layers)."""

    model: KStepNet
    tx: Any
    frozen: Any
    schedule: Callable
    train_step: Callable
    eval_step: Callable


def compile_steps(model_config: ModelConfig, train_config: TrainConfig, learning_rate: float,
                  freeze: tuple[str, ...]) -> Compiled:
    """The jitted steps, cached on what they depend on (not on logging/validation settings)."""
    return _compile_cached(model_config, _step_config(train_config), float(learning_rate), tuple(freeze))


_compile = compile_steps   # the name benchmarks/bench_train.py imports


def _step_config(train_config: TrainConfig) -> TrainConfig:
    return dataclasses.replace(train_config, val_every=1, log_every=1, checkpoint_every=1, keep_latest=1,
                               patience=None, min_delta=0.0, seed=0, data={})


def model_parts(model_config) -> tuple[Any, Callable, Callable]:
    """(Flax module, init_params(config, seed), compute_losses(model, params, batch, scales,
    train_config)) of a model config: ``KStepNet`` for a ``ModelConfig``, the energy network of
    ``jkstep.model.potential`` for a ``PotentialConfig``."""
    from jkstep.model import potential

    if isinstance(model_config, potential.PotentialConfig):
        return potential.EnergyNet(model_config), potential.init_params, potential.compute_potential_losses
    return KStepNet(model_config), _init_params, compute_losses


@functools.lru_cache(maxsize=16)
def _compile_cached(model_config: ModelConfig, train_config: TrainConfig, learning_rate: float,
                    freeze: tuple[str, ...]) -> Compiled:
    model, init_fn, loss_of = model_parts(model_config)
    abstract = jax.eval_shape(lambda: init_fn(model_config))
    frozen = frozen_mask(abstract, freeze)
    tx = make_optimizer(train_config, learning_rate, frozen)
    schedule = make_schedule(train_config, learning_rate)

    def keep_frozen(new, old):
        return jax.tree.map(lambda f, n, o: o if f else n, frozen, new, old)

    def loss_fn(params, batch, scales):
        return loss_of(model, params, batch, scales, train_config)

    @jax.jit
    def train_step(state: TrainState, batch, scales):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, scales)
        new = state.apply_gradients(grads=grads)
        new = new.replace(params=keep_frozen(new.params, state.params))
        t = state.step.astype(jnp.float32)
        decay = jnp.minimum(train_config.ema_decay, (1.0 + t) / (10.0 + t))
        new = new.update_ema(decay)
        new = new.replace(ema_params=keep_frozen(new.ema_params, state.ema_params))
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
        return new, metrics

    return Compiled(model, tx, frozen, schedule, train_step, _eval_step(model_config, train_config))


@functools.lru_cache(maxsize=16)
def _eval_step(model_config: ModelConfig, train_config: TrainConfig) -> Callable:
    model, _, loss_of = model_parts(model_config)

    @jax.jit
    def eval_step(params, batch, scales):
        return loss_of(model, params, batch, scales, train_config)[1]

    return eval_step


def evaluate(model_config: ModelConfig, train_config: TrainConfig, params, batches: Iterable,
             scales: Mapping[str, float]) -> dict[str, float]:
    """Mean metrics of ``params`` over ``batches`` (each batch weighted equally)."""
    fns = compile_steps(model_config, train_config, train_config.learning_rate, ())
    return _evaluate(fns, params, batches, scale_array(scales))


def _evaluate(fns: Compiled, params, batches: Iterable, scales) -> dict[str, float]:
    sums, n = {}, 0
    prepare = prepare_for(fns.model)
    for batch in batches:
        metrics = fns.eval_step(params, prepare(batch), scales)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    return {k: v / n for k, v in sums.items()} if n else {}


def prepare_for(model) -> Callable:
    """The batch conversion of a model: ``prepare_batch`` for ``KStepNet``, the potential's own for
    the energy network."""
    from jkstep.model import potential

    return potential.prepare_potential_batch if isinstance(model, potential.EnergyNet) else prepare_batch
