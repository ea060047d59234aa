"""Training of the k-step network: optax AdamW, EMA weights, validation, Orbax checkpoints.

Batches are dicts of padded numpy arrays with exactly the keys of ``BATCH_KEYS``: ``numbers``
(B, N) int (0 on padding), ``mask`` (B, N) bool, ``masses`` (B, N) amu, ``positions`` Å,
``velocities`` Å/fs, ``forces`` eV/Å at t and ``target_positions``, ``target_velocities``,
``target_forces`` at t+k, all (B, N, 3); for a multi-jump loss (``TrainConfig.jumps`` = J > 1)
also ``path_positions``, ``path_velocities``, ``path_forces`` (B, J, N, 3) at t+k … t+Jk.
``train`` takes already-built iterables of such dicts, so it does not depend on how they are loaded.

Loss (all masked to real atoms, each term normalised by a scale): MSE of x_{t+k} (Å), of v_{t+k}
(Å/fs), of the auxiliary forces at t+k (eV/Å), and of the bond lengths after the jump (bonded
pairs: distance at t below ``bond_factor`` × the sum of covalent radii). The scales are measured on
the first training batch (RMS of target minus ballistic jump) unless the train config sets them.

Checkpoints (Orbax): ``out_dir/latest/<step>`` every ``checkpoint_every`` steps (resume) and
``out_dir/best/<step>`` at each new lowest validation loss of the EMA weights. Each holds the items
``train`` (params, optimizer state, step), ``ema`` (EMA params: what inference uses) and ``meta``
(JSON: model config, k, dt, units, elements seen, loss scales, best-so-far, data-iterator state),
so a checkpoint loads without any YAML. Training resumes from ``latest`` exactly: an iterable with
``get_state()`` / ``set_state(state)`` (e.g. ``ArrayBatches``) has its state restored; any other
iterable is fast-forwarded by the number of steps already taken (exact if it is deterministic).
Ctrl-C or SIGTERM (in the main thread) lets the current step finish, saves ``latest`` at it and
then interrupts as usual (a second signal interrupts at once), so no step is lost.

Nothing here prints; pass ``callback=ProgressBar(total)`` (or any ``callback(step, metrics)``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from ase.data import covalent_radii
from flax import struct

from jkstep import units
from jkstep.config import from_mapping, read_yaml
from jkstep.errors import InputError, is_integer
from jkstep.kstep import reversal_corrected
from jkstep.model.network import UNITS, KStepNet, ModelConfig, ballistic_jump
from jkstep.model.network import init_params as _init_params

BATCH_KEYS = ("numbers", "mask", "masses", "positions", "velocities", "forces",
              "target_positions", "target_velocities", "target_forces")
PATH_KEYS = ("path_positions", "path_velocities", "path_forces")   # multi-jump windows only
CHECKPOINT_FORMAT = "jkstep-kstep-model"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (hashable; ``data`` is free-form, for the loader, and ignored here).

    Attributes:
        learning_rate: peak AdamW learning rate (linear warm-up, then cosine decay to
            ``end_lr_fraction`` × peak at ``total_steps``).
        finetune_learning_rate: peak learning rate when starting from pretrained (MM) weights.
        weight_decay: AdamW decoupled weight decay.   clip_norm: global gradient-norm clip.
        ema_decay: EMA decay of the weights (ramped up as min(decay, (1+t)/(10+t))).
        w_x, w_v, w_force, w_bond: loss weights.   bond_factor: bonded if d < factor·(r_i + r_j).
        w_energy: weight of the jump's total-energy error per molecule, KE(v') − KE(v_{t+k}) −
            Σ F_{t+k}·(x' − x_{t+k}) (exact in KE, first order in the potential). A learned
            jump's random errors heat a rollout (unbiased velocity noise adds kinetic energy on
            average), so this term targets what NVE rollouts need beyond small MSEs.
        w_energy_bias: weight of the squared batch mean of that energy error. A jump's energy
            errors add up over a run: their random part as √N, a bias as N, so a bias far below
            the errors' RMS (which the ``w_energy`` term hardly sees) still heats or cools a long run.
        corrector_velocity: train the velocity that the hybrid integrator actually uses, the
            network's v' plus the corrector kick w·(F_{t+k} − F̂')/m with w = k·dt/2 (the real
            F_{t+k} stands in for the corrector's call); False trains v' and F̂' separately.
        time_reversal: every second batch is time-reversed, (x_{t+k}, −v_{t+k}, F_{t+k}) →
            (x_t, −v_t, F_t): exact augmentation for NVE (deterministic, reversible) data.
        reversal_correction: α of ``jkstep.kstep.reversal_corrected``; > 0 trains the jump the
            hybrid integrator makes by default (α = 0.5: the forward jump corrected by α times the
            error of a jump back; one more network call per window), 0 (default) the bare forward jump.
        jumps: J consecutive jumps per window (multi-jump loss; windows need the ``path_*`` keys,
            ``WindowDataset(jumps=J)``). Each jump after the first starts where the previous one
            landed, with the integrator's corrector velocity and the stored real force standing in
            for the corrector's xTB call; every term is averaged over the J jumps, the energy term
            included, whose error after jump j is the error accumulated over j jumps (exact
            dynamics conserve energy). So the loss sees how errors add up over a rollout, which a
            one-jump loss cannot. J = 1 (default) is the one-jump loss; the cost grows with J.
        scale_x_a (Å), scale_v (Å/fs), scale_force (eV/Å), scale_energy_ev (eV): loss
            normalisation; None = measured on the first training batch (RMS of target − ballistic
            jump; of F_{t+k} − F_t for forces; of the ballistic jump's energy error).
        val_every, log_every, checkpoint_every: in steps.   keep_latest: latest checkpoints kept.
        patience: validations without improvement (by more than ``min_delta``) before training
            stops early; None never stops.   seed: parameter initialisation.
    """

    learning_rate: float = 1e-3
    finetune_learning_rate: float = 2e-4
    warmup_steps: int = 500
    total_steps: int = 20000
    end_lr_fraction: float = 0.01
    weight_decay: float = 1e-5
    clip_norm: float = 1.0
    ema_decay: float = 0.999
    w_x: float = 1.0
    w_v: float = 1.0
    w_force: float = 0.1
    w_bond: float = 1.0
    w_energy: float = 0.0
    w_energy_bias: float = 0.0
    corrector_velocity: bool = False
    time_reversal: bool = False
    reversal_correction: float = 0.0
    jumps: int = 1
    bond_factor: float = 1.25
    scale_x_a: float | None = None
    scale_v: float | None = None
    scale_force: float | None = None
    scale_energy_ev: float | None = None
    val_every: int = 250
    log_every: int = 25
    checkpoint_every: int = 500
    keep_latest: int = 2
    patience: int | None = 20
    min_delta: float = 0.0
    seed: int = 0
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for name in ("warmup_steps",):
            if int(getattr(self, name)) < 0:
                raise InputError(f"train config: {name} must be >= 0")
        for name in ("total_steps", "val_every", "log_every", "checkpoint_every", "keep_latest", "jumps"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"train config: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.patience is not None and int(self.patience) < 1:
            raise InputError("train config: patience must be >= 1 or null")
        for name in ("learning_rate", "finetune_learning_rate", "clip_norm", "bond_factor"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"train config: {name} must be positive")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise InputError("train config: ema_decay must be in [0, 1)")
        if not 0.0 <= float(self.reversal_correction) <= 1.0:
            raise InputError(f"train config: reversal_correction must be in [0, 1] (0 = off, 0.5 = the "
                             f"integrator's default), got {self.reversal_correction!r}")
        if self.data is not None and not isinstance(self.data, Mapping):
            raise InputError(f"train config: data must be a mapping (the data: section with dir, splits, "
                             f"stride, batch_size, ...), got {self.data!r}")
        object.__setattr__(self, "data", dict(self.data or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return from_mapping(cls, d, "train config")


def load_model_config(path) -> ModelConfig:
    """A ``ModelConfig`` from a YAML file (flat keys, or nested under ``model:``)."""
    d = read_yaml(path)
    return ModelConfig.from_dict(d.get("model", d) if set(d) == {"model"} else d)


def load_train_config(path) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file (flat keys, or nested under ``train:``)."""
    d = read_yaml(path)
    return TrainConfig.from_dict(d.get("train", d) if set(d) == {"train"} else d)


# ---------------------------------------------------------------------------------------------
# Batches


def prepare_batch(batch: Mapping[str, Any], config: ModelConfig | None = None) -> dict[str, jax.Array]:
    """Check a batch dict and convert it to JAX arrays (int32 / bool / float64); the ``PATH_KEYS``
    of multi-jump windows are kept where present."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise InputError(f"batch lacks key(s) {missing}; a batch needs exactly {list(BATCH_KEYS)}")
    out = {"numbers": jnp.asarray(batch["numbers"], jnp.int32), "mask": jnp.asarray(batch["mask"], bool)}
    for k in BATCH_KEYS[2:] + tuple(k for k in PATH_KEYS if k in batch):
        out[k] = jnp.asarray(batch[k], jnp.float64)
    return out


def batch_elements(batch: Mapping[str, Any]) -> set[int]:
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
        return {"epoch_rng_state": self._epoch_rng_state, "pos": int(self._pos)}

    def set_state(self, state: Mapping) -> None:
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
        return {"epoch": self._epoch, "taken": self._taken}

    def set_state(self, state: Mapping) -> None:
        self._start(int(state["epoch"]))
        for _ in range(int(state["taken"])):
            next(self._it)
        self._taken = int(state["taken"])


# ---------------------------------------------------------------------------------------------
# Losses


def estimate_loss_scales(batch: Mapping[str, Any], model_config: ModelConfig,
                         train_config: TrainConfig | None = None) -> dict[str, float]:
    """Loss normalisation from one batch: RMS per component (real atoms) of target − ballistic
    jump for x (Å) and v (Å/fs), of F_{t+k} − F_t for forces (eV/Å), of the ballistic jump's
    total-energy error per molecule (eV); config values override."""
    rms = np.asarray(_residual_rms(prepare_batch(batch), model_config.k, model_config.dt_fs))
    scales = {"x": max(float(rms[0]), 1e-4), "v": max(float(rms[1]), 1e-4),
              "force": max(float(rms[2]), 1e-3), "energy": max(float(rms[3]), 1e-4)}
    if train_config is not None:
        for key, name in (("x", "scale_x_a"), ("v", "scale_v"), ("force", "scale_force"),
                          ("energy", "scale_energy_ev")):
            if getattr(train_config, name) is not None:
                scales[key] = float(getattr(train_config, name))
    return scales


@functools.partial(jax.jit, static_argnums=(1, 2))
def _residual_rms(b, k, dt_fs):
    mask = b["mask"]
    x_b, v_b = ballistic_jump(b["masses"], mask, b["positions"], b["velocities"], b["forces"], k, dt_fs)
    n3 = 3.0 * jnp.maximum(mask.sum(), 1)
    maskf = mask[..., None]

    def rms(d):
        return jnp.sqrt(jnp.sum(jnp.where(maskf, d, 0.0) ** 2) / n3)

    de = jump_energy_error(b, x_b, v_b)
    return jnp.stack([rms(b["target_positions"] - x_b), rms(b["target_velocities"] - v_b),
                      rms(b["target_forces"] - b["forces"]), jnp.sqrt(jnp.mean(de**2))])


def jump_energy_error(b, pos, vel):
    """Total-energy error (eV) per molecule (B,) of a predicted state (pos Å, vel Å/fs) against the
    target: KE(vel) − KE(v_{t+k}) − Σ_i F_{t+k,i}·(pos_i − x_{t+k,i}) (potential to first order)."""
    maskf = b["mask"][..., None].astype(jnp.float64)
    m = jnp.where(b["mask"], b["masses"], 0.0)[..., None]
    dke = 0.5 * jnp.sum(m * (vel**2 - b["target_velocities"] ** 2) * maskf, axis=(-1, -2)) / units.ACCEL
    dpe = -jnp.sum(b["target_forces"] * (pos - b["target_positions"]) * maskf, axis=(-1, -2))
    return dke + dpe


def corrector_velocity(b, vel, frc, model_config: ModelConfig):
    """The velocity the hybrid integrator makes of a prediction (Å/fs): v' + w·ACCEL·(F_{t+k} − F̂')/m,
    w = k·dt/2 fs, with the stored F_{t+k} standing in for the corrector's xTB call."""
    m = jnp.where(b["mask"], b["masses"], 1.0)[..., None]
    w = 0.5 * model_config.jump_fs
    return vel + w * units.ACCEL * (b["target_forces"] - frc) / m * b["mask"][..., None]


def time_reversed(batch: Mapping[str, Any]) -> dict:
    """The time-reversed windows of a batch: (x_{t+k}, −v_{t+k}, F_{t+k}) → (x_t, −v_t, F_t); a
    multi-jump window runs from its last frame back through the path to its first."""
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


_COVALENT = np.asarray(covalent_radii, np.float64)


def bond_pairs(numbers, mask, positions, factor: float = 1.25):
    """(B, N, N) bool: i < j real atoms closer than ``factor`` × (covalent radius sum) at t."""
    radii = jnp.asarray(_COVALENT)[jnp.clip(numbers, 0, len(_COVALENT) - 1)]
    d = jnp.linalg.norm(positions[:, :, None, :] - positions[:, None, :, :], axis=-1)
    n = numbers.shape[-1]
    upper = jnp.triu(jnp.ones((n, n), bool), k=1)[None]
    return upper & mask[:, :, None] & mask[:, None, :] & (d < factor * (radii[:, :, None] + radii[:, None, :]))


def _pair_dist(x, pairs):
    rij = x[:, :, None, :] - x[:, None, :, :]
    return jnp.sqrt(jnp.where(pairs, jnp.sum(rij * rij, axis=-1), 1.0))


def _targets(batch, jumps: int) -> list[dict]:
    """Per jump of a window, the batch with that jump's frame as its ``target_*``."""
    if jumps == 1:
        return [batch]
    if "path_positions" not in batch or batch["path_positions"].shape[1] != jumps:
        raise InputError(f"the multi-jump loss (jumps = {jumps}) needs windows of {jumps} jumps "
                         f"(the path_* keys of WindowDataset(..., jumps={jumps}))")
    return [dict(batch, **{"target_" + key: batch["path_" + key][:, j] for key in ("positions", "velocities", "forces")})
            for j in range(jumps)]


def compute_losses(model: KStepNet, params, batch, scales, train_config: TrainConfig):
    """Total loss and metrics of one prepared batch. ``scales``: array (x Å, v Å/fs, force eV/Å, energy eV).
    With ``train_config.jumps`` > 1 every term is the mean over the window's consecutive jumps."""
    def jump(x, v, f):
        return model.apply({"params": params}, batch["numbers"], batch["mask"], batch["masses"], x, v, f)

    step = reversal_corrected(jump, train_config.reversal_correction)
    mask = batch["mask"]
    maskf = mask[..., None].astype(jnp.float64)
    n3 = 3.0 * jnp.maximum(mask.sum(), 1)
    pairs = bond_pairs(batch["numbers"], mask, batch["positions"], train_config.bond_factor)
    n_bonds = jnp.maximum(pairs.sum(), 1)

    def mse(pred, target):
        return jnp.sum(((pred - target) * maskf) ** 2) / n3

    x, v, f = batch["positions"], batch["velocities"], batch["forces"]
    parts = []
    for b in _targets(batch, train_config.jumps):
        pos, vel, frc = step(x, v, f)
        kicked = corrector_velocity(b, vel, frc, model.config)
        if train_config.corrector_velocity:
            vel = kicked
        energy_error = jump_energy_error(b, pos, vel)
        bond_err = jnp.where(pairs, _pair_dist(pos, pairs) - _pair_dist(b["target_positions"], pairs), 0.0)
        parts.append(jnp.stack([mse(pos, b["target_positions"]), mse(vel, b["target_velocities"]),
                                jnp.mean(energy_error**2), jnp.mean(energy_error), mse(frc, b["target_forces"]),
                                jnp.sum(bond_err**2) / n_bonds]))
        # the next jump starts where the integrator would: the corrector's velocity, and the real
        # force there (the stored one at the true positions stands in for the xTB call)
        x, v, f = pos, kicked, b["target_forces"]
    mse_x, mse_v, mse_e, bias_e, mse_f, mse_b = jnp.mean(jnp.stack(parts), axis=0)
    sx, sv, sf, se = scales[0], scales[1], scales[2], scales[3]
    terms = {"loss_x": mse_x / sx**2, "loss_v": mse_v / sv**2, "loss_force": mse_f / sf**2,
             "loss_bond": mse_b / sx**2, "loss_energy": mse_e / se**2, "loss_energy_bias": bias_e**2 / se**2}
    total = (train_config.w_x * terms["loss_x"] + train_config.w_v * terms["loss_v"]
             + train_config.w_force * terms["loss_force"] + train_config.w_bond * terms["loss_bond"]
             + train_config.w_energy * terms["loss_energy"] + train_config.w_energy_bias * terms["loss_energy_bias"])
    metrics = {"loss": total, **terms, "rmse_x_a": jnp.sqrt(mse_x), "rmse_v": jnp.sqrt(mse_v),
               "rmse_force": jnp.sqrt(mse_f), "rmse_bond_a": jnp.sqrt(mse_b),
               "rmse_energy_ev": jnp.sqrt(mse_e), "mean_energy_error_ev": bias_e}
    if train_config.jumps > 1:
        metrics["rmse_energy_last_jump_ev"] = jnp.sqrt(parts[-1][2])
    return total, metrics


# ---------------------------------------------------------------------------------------------
# Optimiser, state, freezing


@struct.dataclass
class TrainState:
    """Everything that training changes: step, params, EMA params (float32) and optimizer state."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


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


def create_train_state(params, tx) -> TrainState:
    """A step-0 state: params, EMA = params, fresh optimizer state."""
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.array, params), opt_state=tx.init(params))


@dataclasses.dataclass(frozen=True)
class _Compiled:
    model: KStepNet
    tx: Any
    frozen: Any
    schedule: Callable
    train_step: Callable
    eval_step: Callable


def _compile(model_config: ModelConfig, train_config: TrainConfig, learning_rate: float,
             freeze: tuple[str, ...]) -> _Compiled:
    """The jitted steps, cached on what they depend on (not on logging/validation settings)."""
    return _compile_cached(model_config, _step_config(train_config), float(learning_rate), tuple(freeze))


def _step_config(train_config: TrainConfig) -> TrainConfig:
    return dataclasses.replace(train_config, val_every=1, log_every=1, checkpoint_every=1, keep_latest=1,
                               patience=None, min_delta=0.0, seed=0, data={})


@functools.lru_cache(maxsize=16)
def _compile_cached(model_config: ModelConfig, train_config: TrainConfig, learning_rate: float,
                    freeze: tuple[str, ...]) -> _Compiled:
    model = KStepNet(model_config)
    abstract = jax.eval_shape(lambda: _init_params(model_config))
    frozen = frozen_mask(abstract, freeze)
    tx = make_optimizer(train_config, learning_rate, frozen)
    schedule = make_schedule(train_config, learning_rate)

    def keep_frozen(new, old):
        return jax.tree.map(lambda f, n, o: o if f else n, frozen, new, old)

    def loss_fn(params, batch, scales):
        return compute_losses(model, params, batch, scales, train_config)

    @jax.jit
    def train_step(state: TrainState, batch, scales):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, scales)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = keep_frozen(optax.apply_updates(state.params, updates), state.params)
        t = state.step.astype(jnp.float32)
        decay = jnp.minimum(train_config.ema_decay, (1.0 + t) / (10.0 + t))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        ema = keep_frozen(ema, state.ema_params)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
        return state.replace(step=state.step + 1, params=params, ema_params=ema,
                             opt_state=opt_state), metrics

    return _Compiled(model, tx, frozen, schedule, train_step, _eval_step(model_config, train_config))


@functools.lru_cache(maxsize=16)
def _eval_step(model_config: ModelConfig, train_config: TrainConfig) -> Callable:
    model = KStepNet(model_config)

    @jax.jit
    def eval_step(params, batch, scales):
        return compute_losses(model, params, batch, scales, train_config)[1]

    return eval_step


def evaluate(model_config: ModelConfig, train_config: TrainConfig, params, batches: Iterable,
             scales: Mapping[str, float]) -> dict[str, float]:
    """Mean metrics of ``params`` over ``batches`` (each batch weighted equally)."""
    fns = _compile(model_config, train_config, train_config.learning_rate, ())
    return _evaluate(fns, params, batches, _scale_array(scales))


def _evaluate(fns: _Compiled, params, batches: Iterable, scales) -> dict[str, float]:
    sums, n = {}, 0
    for batch in batches:
        metrics = fns.eval_step(params, prepare_batch(batch), scales)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    return {k: v / n for k, v in sums.items()} if n else {}


def _scale_array(scales: Mapping[str, float]):
    # checkpoints from before the energy loss carry no energy scale; its weight was 0 then
    return jnp.asarray([scales["x"], scales["v"], scales["force"], scales.get("energy", 1.0)], jnp.float64)


# ---------------------------------------------------------------------------------------------
# Orbax checkpoints


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
        state = TrainState(step=jnp.asarray(train_item["step"], jnp.int32), params=train_item["params"],
                           ema_params=out["ema"], opt_state=opt_state)
        return uncommitted(state), dict(out["meta"])

    def restore_meta(self, which: str, step: int) -> dict:
        manager = getattr(self, which)
        return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def drop_after(self, step: int) -> None:
        """Delete checkpoints newer than ``step`` (left by a run that is being resumed from ``step``)."""
        for manager in (self.latest, self.best):
            for s in manager.all_steps():
                if s > step:
                    manager.delete(s)

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def uncommitted(tree):
    """Restored arrays come back committed to a device, which makes ``jit`` compile anew for them;
    copy them to ordinary (uncommitted) arrays, values unchanged."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), tree)


def checkpoint_meta(model_config: ModelConfig, **extra) -> dict:
    """The JSON metadata every checkpoint carries (config, k, dt, units, ...)."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_config": model_config.to_dict(), "k": model_config.k, "dt_fs": model_config.dt_fs,
            "units": dict(UNITS), **extra}


# ---------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns. ``state.ema_params`` are the final EMA weights; the best ones are in
    ``out_dir/best`` (``load_pretrained(out_dir)``)."""

    state: TrainState
    out_dir: str
    steps: int
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool
    history: list[dict]
    loss_scales: dict[str, float]
    elements: tuple[int, ...]


class _HeldSignals:
    """Holds Ctrl-C and SIGTERM back until the training loop reaches a step boundary.

    ``pending`` is the signal number received (None if none); ``deliver()`` puts the handlers back
    and re-raises it, so it then acts as it would have (Ctrl-C: KeyboardInterrupt). A second signal
    acts at once. Only in the main thread (where Python runs signal handlers); signals that are
    ignored (SIG_IGN, e.g. SIGINT of a background job) stay ignored.
    """

    def __init__(self):
        self.pending = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                current = signal.getsignal(signum)
                if current is not None and current != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._hold)
        return self

    def _hold(self, signum, frame):
        again = self.pending is not None
        self.pending = signum
        if again:  # the second one: act now
            self.deliver()

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def deliver(self):
        self._restore()
        signal.raise_signal(self.pending)

    def __exit__(self, *exc):
        self._restore()
        return False


def train(model_config: ModelConfig, train_config: TrainConfig, batches_train: Iterable[Mapping],
          batches_val: Iterable[Mapping] | Callable[[], Iterable[Mapping]] | None, out_dir, *,
          init_params=None, freeze: Sequence[str] = (), learning_rate: float | None = None,
          callback: Callable[[int, dict], Any] | None = None, resume: bool = True,
          max_steps: int | None = None, extra_meta: Mapping[str, Any] | None = None) -> TrainResult:
    """Train (or resume training) a k-step model; checkpoints go to ``out_dir``.

    Args:
        batches_train: iterable of batch dicts (consumed once; endless or not; training ends at
            ``total_steps`` or when it is exhausted). With ``get_state``/``set_state`` it resumes
            exactly; otherwise it is fast-forwarded on resume.
        batches_val: held-out batches: a re-iterable (list) or a function returning an iterable,
            evaluated with the EMA weights every ``val_every`` steps (None: no validation).
        init_params: starting weights (e.g. from ``transfer``); default: random (``seed``).
        freeze: parameter-name patterns kept bitwise unchanged (see ``frozen_mask``).
        learning_rate: peak learning rate (default ``train_config.learning_rate``).
        callback: ``callback(step, metrics)`` every ``log_every`` steps with the training metrics
            and after each validation with ``val_*`` metrics (floats).
        resume: continue from ``out_dir/latest`` if it holds a checkpoint.
        max_steps: stop after this step (the schedule still runs to ``total_steps``).
        extra_meta: JSON-able entries added to every checkpoint's metadata.

    Ctrl-C or SIGTERM ends training after the current step (and validation) with ``latest`` saved
    at it; the KeyboardInterrupt (or the SIGTERM's own handling) then follows as usual.
    """
    check_max_steps(max_steps)
    learning_rate = float(learning_rate or train_config.learning_rate)
    freeze = tuple(freeze)
    fns = _compile(model_config, train_config, learning_rate, freeze)
    if isinstance(batches_val, Iterator):
        batches_val = list(batches_val)
    store = CheckpointStore(out_dir, keep_latest=train_config.keep_latest)
    end = train_config.total_steps if max_steps is None else min(int(max_steps), train_config.total_steps)
    best_val, best_step, bad, history, elements = math.inf, None, 0, [], set()
    stopped_early = False
    try:
        resumed = store.latest.latest_step() if resume else None
        if resumed is None and (store.latest.all_steps() or store.best.all_steps()):
            raise InputError(f"{out_dir} already holds checkpoints: resume, or train into a fresh directory")
        if resumed is not None:
            _check_resumable(store.restore_meta("latest", resumed), model_config, freeze, out_dir)
        params0 = _init_params(model_config, seed=train_config.seed) if init_params is None else init_params
        state = create_train_state(params0, fns.tx)
        if resumed is not None:
            state, meta = store.restore_state("latest", resumed, state)
            scales = meta["loss_scales"]
            best_val = math.inf if meta.get("best_val_loss") is None else meta["best_val_loss"]
            best_step, bad = meta.get("best_step"), int(meta.get("bad_validations", 0))
            history, elements = list(meta.get("history", [])), set(meta.get("elements", []))
            stopped_early = bool(meta.get("stopped_early", False))   # an early stop stays stopped
            store.drop_after(resumed)
            if meta.get("data_state") is not None and hasattr(batches_train, "set_state"):
                batches_train.set_state(meta["data_state"])
                stream = iter(batches_train)
            else:
                stream = iter(batches_train)
                for _ in range(resumed):
                    next(stream)
            first = None
        else:
            stream = iter(batches_train)
            first = next(stream, None)
            if first is None:
                raise InputError("batches_train yielded no batch")
            scales = estimate_loss_scales(first, model_config, train_config)
        scale_arr = _scale_array(scales)

        def meta_now(step, val_loss=None):
            data_state = batches_train.get_state() if hasattr(batches_train, "get_state") else None
            return checkpoint_meta(
                model_config, step=step, elements=sorted(elements), loss_scales=scales,
                val_loss=val_loss, best_val_loss=None if best_step is None else best_val,
                best_step=best_step, bad_validations=bad, stopped_early=stopped_early,
                history=history, freeze=list(freeze),
                learning_rate=learning_rate, train_config=_jsonable(train_config.to_dict()),
                data_state=data_state, **dict(extra_meta or {}))

        step = int(state.step)
        last_saved = step if resumed is not None else None
        last_val = step if resumed is not None else None
        with _HeldSignals() as held:
            while step < end and not stopped_early:
                batch = first if first is not None else next(stream, None)
                first = None
                if batch is None:
                    break
                seen = batch_elements(batch)
                unknown = seen - set(model_config.elements)
                if unknown:
                    raise InputError(f"training data has element(s) {sorted(unknown)} that the model config "
                                     f"does not list (elements: {list(model_config.elements)})")
                elements |= seen
                if train_config.time_reversal and step % 2 == 1:
                    batch = time_reversed(batch)
                state, metrics = fns.train_step(state, prepare_batch(batch), scale_arr)
                step += 1
                if callback is not None and (step % train_config.log_every == 0 or step == end):
                    callback(step, {k: float(v) for k, v in metrics.items()})
                val_loss = None
                if batches_val is not None and (step % train_config.val_every == 0 or step == end):
                    val = _evaluate(fns, state.ema_params, batches_val() if callable(batches_val) else batches_val,
                                    scale_arr)
                    last_val = step
                    if val:
                        val_loss = val["loss"]
                        history.append({"step": step, **{k: val[k] for k in ("loss", "rmse_x_a", "rmse_v")}})
                        if val_loss < best_val - train_config.min_delta:
                            best_val, best_step, bad = val_loss, step, 0
                            store.save("best", state, meta_now(step, val_loss), val_loss=val_loss)
                        else:
                            bad += 1
                        if callback is not None:
                            callback(step, {f"val_{k}": v for k, v in val.items()} | {"best_val_loss": best_val})
                        if train_config.patience is not None and bad >= train_config.patience:
                            stopped_early = True
                if step % train_config.checkpoint_every == 0 or step == end or stopped_early:
                    store.save("latest", state, meta_now(step, val_loss))
                    last_saved = step
                if stopped_early:
                    break
                if held.pending is not None:  # a Ctrl-C / SIGTERM during this step: save, then act on it
                    if last_saved != step:
                        store.save("latest", state, meta_now(step, val_loss))
                    held.deliver()
        if batches_val is not None and last_val != step and step > 0:
            val = _evaluate(fns, state.ema_params, batches_val() if callable(batches_val) else batches_val,
                            scale_arr)
            if val:
                history.append({"step": step, **{k: val[k] for k in ("loss", "rmse_x_a", "rmse_v")}})
            if val and val["loss"] < best_val - train_config.min_delta:
                best_val, best_step, bad = val["loss"], step, 0
                store.save("best", state, meta_now(step, val["loss"]), val_loss=val["loss"])
        if last_saved != step:
            store.save("latest", state, meta_now(step))
        if held.pending is not None:  # it came during the last step: act on it now that all is saved
            held.deliver()
    finally:
        store.close()
    return TrainResult(state=state, out_dir=store.directory, steps=step,
                       best_val_loss=None if best_step is None else best_val, best_step=best_step,
                       stopped_early=stopped_early, history=history, loss_scales=scales,
                       elements=tuple(sorted(elements)))


def check_max_steps(max_steps, flag: str = "max_steps") -> None:
    """InputError unless ``max_steps`` is None or an integer ≥ 1 (0 would save an untrained checkpoint)."""
    if max_steps is None:
        return
    if not is_integer(max_steps, 1):
        raise InputError(f"{flag} must be an integer ≥ 1 (leave it out to train total_steps), got {max_steps!r}")


def _check_resumable(meta: dict, model_config: ModelConfig, freeze: tuple, out_dir) -> None:
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{out_dir}/latest is not a jkstep model checkpoint")
    if ModelConfig.from_dict(meta["model_config"]) != model_config:
        raise InputError(f"{out_dir} holds a run of another model config ({meta['model_config']}); "
                         "train into a fresh directory")
    if tuple(meta.get("freeze", ())) != freeze:
        raise InputError(f"{out_dir} holds a run with frozen layers {meta.get('freeze')}, not {list(freeze)}")


def _jsonable(d):
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------------------------
# Entry point for the CLI


def train_from_config(model_config_path, train_config_path, batches_train, batches_val, out_dir, *,
                      pretrained=None, freeze: Sequence[str] = (), heads: str = "map",
                      rescale: bool = True, callback: Callable[[int, dict], Any] | None = None,
                      resume: bool = True, max_steps: int | None = None,
                      extra_meta: dict | None = None) -> TrainResult:
    """Train from the two YAML files into ``out_dir`` (resuming from ``out_dir/latest`` if present).
    ``extra_meta`` is stored in every checkpoint's metadata (the CLI puts the data provenance there,
    as read when training starts).

    With ``pretrained`` (a checkpoint path or shipped name, e.g. an MM run) the model starts from its
    converted weights (``transfer.finetune``: heads "map" or "reinit", ``rescale`` to this config's
    bounds/k/dt) at the train config's ``finetune_learning_rate``; ``freeze`` names layers (prefixes
    or globs of parameter names, e.g. "embedding", "interaction_0") kept bitwise fixed.
    """
    check_max_steps(max_steps)
    model_config = load_model_config(model_config_path)
    train_config = load_train_config(train_config_path)
    if pretrained is not None:
        from jkstep.model.transfer import finetune

        return finetune(pretrained, model_config, train_config, batches_train, batches_val, out_dir,
                        freeze=freeze, heads=heads, rescale=rescale, callback=callback, resume=resume,
                        max_steps=max_steps, extra_meta=extra_meta)
    return train(model_config, train_config, batches_train, batches_val, out_dir, freeze=freeze,
                 callback=callback, resume=resume, max_steps=max_steps, extra_meta=extra_meta)


class ProgressBar:
    """A tqdm bar for ``train(callback=...)``: steps, loss and the best validation loss so far."""

    def __init__(self, total: int, initial: int = 0, **tqdm_kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, **tqdm_kwargs)
        self.postfix: dict[str, str] = {}

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        for key in ("loss", "rmse_x_a", "val_loss", "best_val_loss"):
            if key in metrics:
                self.postfix[key] = f"{metrics[key]:.4g}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
