"""The training loop of the k-step network: ``train`` (optax AdamW, EMA weights, validation, Orbax
checkpoints, exact resume), ``finetune`` (from a converted MM checkpoint) and ``train_from_config``.

The loop's parts live in their own modules: ``config`` (``TrainConfig``, YAML readers),
``batches`` (the batch dict, ``ArrayBatches``, ``EpochBatches``), ``losses`` (``compute_losses``),
``state`` (``TrainState`` with EMA params, optimiser, jitted steps), ``store`` (``CheckpointStore``)
and ``transfer`` (weight conversion). Their public names are re-exported here.

Checkpoints (Orbax, ``jkstep.model.store``): ``out_dir/latest/<step>`` every ``checkpoint_every``
steps (resume) and ``out_dir/best/<step>`` at each new lowest validation loss of the EMA weights.
Training resumes from ``latest`` exactly: an iterable with ``get_state()`` / ``set_state(state)``
(e.g. ``ArrayBatches``) has its state restored; any other iterable is fast-forwarded by the number
of steps already taken (exact if it is deterministic). Ctrl-C or SIGTERM (in the main thread) lets
the current step finish, saves ``latest`` at it and then interrupts as usual (a second signal
interrupts at once), so no step is lost.

Nothing here prints: progress goes to ``callback(step, metrics)`` (the CLI passes its tqdm bar,
``jkstep.cli.ProgressBar``).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
from collections.abc import Iterator
from typing import Any, Callable, Iterable, Mapping, Sequence

from jkstep.errors import InputError
from jkstep.model.batches import (  # noqa: F401
    BATCH_KEYS, PATH_KEYS, ArrayBatches, EpochBatches, batch_elements, prepare_batch, time_reversed)
from jkstep.model.config import (  # noqa: F401
    TrainConfig, check_max_steps, load_model_config, load_train_config)
from jkstep.model.losses import (  # noqa: F401
    _scale_array, bond_pairs, compute_losses, corrector_velocity, estimate_loss_scales, jump_energy_error,
    scale_array)
from jkstep.model.network import ModelConfig
from jkstep.model.state import (  # noqa: F401
    Compiled, TrainState, _compile, _evaluate, compile_steps, create_train_state, evaluate, frozen_mask,
    make_optimizer, make_schedule, param_paths)
from jkstep.model.store import (  # noqa: F401
    CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointStore, check_resumable, checkpoint_meta, uncommitted)
from jkstep.model.state import model_parts, prepare_for
from jkstep.model.transfer import load_converted_params

#: validation metrics kept in a checkpoint's history (those the model's loss reports)
HISTORY_KEYS = ("loss", "rmse_x_a", "rmse_v", "rmse_force", "rmse_energy_per_atom", "rms_curvature")


def _loss_scales(batch, model_config, train_config) -> dict:
    """Loss normalisation from the first batch (``losses.estimate_loss_scales`` for a k-step model,
    ``potential.estimate_potential_scales`` for an energy network)."""
    from jkstep.model import potential

    if isinstance(model_config, potential.PotentialConfig):
        return potential.estimate_potential_scales(batch, model_config, train_config)
    return estimate_loss_scales(batch, model_config, train_config)

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
    from jkstep.model.potential import PotentialConfig

    if train_config.force_weighting != "uniform" and not isinstance(model_config, PotentialConfig):
        raise InputError(f"train config: force_weighting {train_config.force_weighting!r} applies to a learned "
                         "potential (kind: potential); a k-step model's loss weighs the forces uniformly")
    if train_config.w_curvature > 0 and not isinstance(model_config, PotentialConfig):
        raise InputError("train config: w_curvature applies to a learned potential (kind: potential); "
                         "set it to 0 for a k-step model")
    if train_config.w_curvature > 0 and train_config.scale_curvature is None:
        raise InputError("train config: w_curvature > 0 needs scale_curvature (eV/fs²) > 0 (jkstep train "
                         "measures it from the data section's triplets: file)")
    learning_rate = float(learning_rate or train_config.learning_rate)
    freeze = tuple(freeze)
    fns = compile_steps(model_config, train_config, learning_rate, freeze)
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
            check_resumable(store.restore_meta("latest", resumed), model_config, freeze, out_dir)
        init_fn = model_parts(model_config)[1]
        params0 = init_fn(model_config, seed=train_config.seed) if init_params is None else init_params
        state = create_train_state(params0, fns.tx, fns.model.apply)
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
            scales = _loss_scales(first, model_config, train_config)
        scale_arr = scale_array(scales)

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
                state, metrics = fns.train_step(state, prepare_for(fns.model)(batch), scale_arr)
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
                        history.append({"step": step, **{k: val[k] for k in HISTORY_KEYS if k in val}})
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
                history.append({"step": step, **{k: val[k] for k in HISTORY_KEYS if k in val}})
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


def _jsonable(d):
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


def transfer_state(checkpoint, model_config: ModelConfig, train_config: TrainConfig, *,
                   freeze: Sequence[str] = (), heads: str = "map", rescale: bool = True,
                   which: str = "best") -> TrainState:
    """A fresh QM ``TrainState`` (step 0, EMA = weights, new optimizer state at the fine-tune
    learning rate, frozen layers masked) holding the converted weights of ``checkpoint``
    (``transfer.load_converted_params``)."""
    params, _ = load_converted_params(checkpoint, model_config, heads=heads, rescale=rescale,
                                      seed=train_config.seed, which=which)
    fns = compile_steps(model_config, train_config, float(train_config.finetune_learning_rate), tuple(freeze))
    return create_train_state(params, fns.tx, fns.model.apply)


def finetune(checkpoint, model_config: ModelConfig, train_config: TrainConfig, batches_train: Iterable[Mapping],
             batches_val, out_dir, *, freeze: Sequence[str] = (), heads: str = "map",
             rescale: bool = True, which: str = "best", callback: Callable[[int, dict], Any] | None = None,
             resume: bool = True, max_steps: int | None = None, extra_meta: dict | None = None) -> TrainResult:
    """Fine-tune a QM model from an MM checkpoint: ``train`` from the weights
    ``transfer.load_converted_params`` makes of it (heads "map" or "reinit", ``rescale`` to this
    config's bounds/k/dt), at the fine-tune learning rate, with ``freeze``. The source is recorded
    as ``pretrained_from`` in every checkpoint's metadata."""
    params, info = load_converted_params(checkpoint, model_config, heads=heads, rescale=rescale,
                                         seed=train_config.seed, which=which)
    return train(model_config, train_config, batches_train, batches_val, out_dir,
                 init_params=params, freeze=freeze,
                 learning_rate=train_config.finetune_learning_rate, callback=callback,
                 resume=resume, max_steps=max_steps,
                 extra_meta={**dict(extra_meta or {}), "pretrained_from": info})


def train_from_config(model_config_path, train_config_path, batches_train, batches_val, out_dir, *,
                      pretrained=None, freeze: Sequence[str] = (), heads: str = "map",
                      rescale: bool = True, callback: Callable[[int, dict], Any] | None = None,
                      resume: bool = True, max_steps: int | None = None,
                      extra_meta: dict | None = None) -> TrainResult:
    """Train from the two YAML files into ``out_dir`` (resuming from ``out_dir/latest`` if present).
    ``extra_meta`` is stored in every checkpoint's metadata (the CLI puts the data provenance there,
    as read when training starts).

    With ``pretrained`` (a checkpoint path or shipped name, e.g. an MM run) the model starts from its
    converted weights (``finetune``: heads "map" or "reinit", ``rescale`` to this config's
    bounds/k/dt) at the train config's ``finetune_learning_rate``; ``freeze`` names layers (prefixes
    or globs of parameter names, e.g. "embedding", "interaction_0") kept bitwise fixed.
    """
    check_max_steps(max_steps)
    model_config = load_model_config(model_config_path)
    train_config = load_train_config(train_config_path)
    if pretrained is not None:
        return finetune(pretrained, model_config, train_config, batches_train, batches_val, out_dir,
                        freeze=freeze, heads=heads, rescale=rescale, callback=callback, resume=resume,
                        max_steps=max_steps, extra_meta=extra_meta)
    return train(model_config, train_config, batches_train, batches_val, out_dir, freeze=freeze,
                 callback=callback, resume=resume, max_steps=max_steps, extra_meta=extra_meta)
