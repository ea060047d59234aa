"""Fine-tune a learned fast force on one molecule's own reference frames (per-run adaptation).

A shipped fast force has never seen the molecule it runs on; its error there (force RMSE 0.2–0.6
eV/Å against GFN2-xTB on the test molecules) is what RESPA's energy fluctuation is made of: to
leading order (τ²/12)·RMS(d²e/dt²), e the fast force's energy error along the motion. Every run
that starts from a thermalised state has already made the xTB calls of that thermalisation: its
frames (positions, energy, forces) are labelled data for exactly this molecule in exactly the
region of configuration space the production run visits. ``adapt_potential`` fine-tunes the
network on them (energy-and-force matching, the training loss of ``jkstep.model.potential``, plus
the curvature term ``TrainConfig.w_curvature`` over consecutive frames, from the shipped weights)
and returns a new fast force for the same molecule. It makes no xTB call; its cost is CPU time
(25–60 s for 2000 steps on a 2-core CPU), reported as ``wall_s``.

The adapted force is fixed before the production run starts, so RESPA with it stays symplectic
and time-reversible. The last ``holdout`` fraction of the frames (the end of the thermalisation
in time) is not trained on: the force RMSE and the curvature there, before and after, are the
report's check.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jkstep.errors import InputError, is_integer
from jkstep.model.config import TrainConfig
from jkstep.model.losses import scale_array
from jkstep.model.potential import (LearnedPotential, energy_and_forces, energy_error_curvature,
                                    estimate_potential_scales)
from jkstep.model.state import compile_steps, create_train_state

ADAPT_EVERY_FS = 2.0     # without the curvature term, a frame every 2 fs is a training frame
MIN_FRAMES = 10
MIN_ADAPT_PS = 0.1       # the shortest thermalisation a run or an evaluation adapts on (50 frames)


def check_adapt(equilibrate_ps, steps) -> None:
    """InputError unless a thermalisation of ``equilibrate_ps`` ps is long enough to adapt on and
    ``steps`` (a run's or an evaluation's ``adapt_steps``) is a whole number ≥ 1."""
    if not equilibrate_ps >= MIN_ADAPT_PS:
        raise InputError(f"adapt (--adapt) trains on the Langevin thermalisation's frames (one every "
                         f"{ADAPT_EVERY_FS:g} fs): give equilibrate_ps (--equilibrate-ps) of at least "
                         f"{MIN_ADAPT_PS:g} ps, got {equilibrate_ps!r}")
    try:
        AdaptConfig(steps=steps)
    except InputError as exc:     # the same check, named as the run's and the command line's setting
        raise InputError(f"adapt_steps (--adapt-steps): {exc}") from None


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Settings of ``adapt_potential`` (chosen on the validation molecules, docs/results.md).

    steps: optimiser steps.   batch_size: frames per step.   learning_rate: peak AdamW rate (linear
    warm-up over the first tenth, cosine decay to 2 %).   ema_decay: of the weights, which are
    what is returned.   w_energy: weight of the energy term (energies are matched up to a constant).
    holdout: fraction of the frames (the last ones) kept out of training for the report.
    seed: batch order.   w_curvature: weight of the energy error's curvature along the frames
    (``TrainConfig.w_curvature``; batches are then ``batch_size`` triplets of frames
    ``curvature_spacing_fs`` fs apart, scaled by the reference's own curvature RMS), 0 = off."""

    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    ema_decay: float = 0.99
    w_energy: float = 0.05
    holdout: float = 0.2
    seed: int = 0
    w_curvature: float = 1.0
    curvature_spacing_fs: float = 0.5

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if not is_integer(getattr(self, name), 1):
                raise InputError(f"adaptation {name} must be a whole number ≥ 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise InputError(f"adaptation holdout must be a fraction in [0, 1), got {self.holdout!r}")
        if not (self.w_curvature >= 0 and self.curvature_spacing_fs > 0):
            raise InputError(f"adaptation w_curvature must be >= 0 and curvature_spacing_fs > 0, got "
                             f"{self.w_curvature!r} and {self.curvature_spacing_fs!r}")
        if not self.learning_rate > 0:
            raise InputError(f"adaptation learning_rate must be > 0, got {self.learning_rate!r}")

    def train_config(self, scale_curvature: float | None = None, spacing_fs: float | None = None,
                     curvature_triplets: int | None = None) -> TrainConfig:
        """The ``TrainConfig`` of these settings; ``scale_curvature`` (eV/fs²) and ``spacing_fs`` (fs,
        default ``curvature_spacing_fs``): the curvature term's scale and its triplets' spacing;
        ``curvature_triplets``: the triplets at the end of each batch (None: the whole batch)."""
        return TrainConfig(learning_rate=self.learning_rate, warmup_steps=max(1, self.steps // 10),
                           total_steps=self.steps, end_lr_fraction=0.02, weight_decay=0.0, clip_norm=10.0,
                           ema_decay=self.ema_decay, w_force=1.0, w_energy=self.w_energy,
                           w_curvature=self.w_curvature, curvature_spacing_fs=spacing_fs or self.curvature_spacing_fs,
                           scale_curvature=scale_curvature if self.w_curvature else None,
                           curvature_triplets=curvature_triplets if self.w_curvature else None)


def adapt_potential(fast: LearnedPotential, positions, energies, forces, config: AdaptConfig = AdaptConfig(),
                    spacing_fs: float = ADAPT_EVERY_FS, extra=None) -> tuple[LearnedPotential, dict]:
    """Fine-tune ``fast`` on reference frames of its own molecule.

    Args:
        fast: a ``LearnedPotential`` (``jkstep.learned_potential(name, mol)``); a Δ-potential on
            MMFF94 learns the reference minus its MMFF94, as in training.
        positions: (F, N, 3) Å; energies: (F,) eV (absolute, any constant offset); forces:
            (F, N, 3) eV/Å: the reference potential's (GFN2-xTB's) at those positions, frames of
            one trajectory (e.g. a Langevin thermalisation) in time order, ``spacing_fs`` apart.
        config: ``AdaptConfig``.
        spacing_fs: time between consecutive frames, fs. With the curvature term
            (``config.w_curvature`` > 0) each batch is ``batch_size`` triplets of frames about
            ``config.curvature_spacing_fs`` apart (a whole number of frames, at least one) centred
            on any training frame, and the force and energy terms see all their frames; without it,
            a batch is ``batch_size`` of the frames every ``ADAPT_EVERY_FS``. At least
            ``MIN_FRAMES`` frames ``ADAPT_EVERY_FS`` apart must precede the holdout.
        extra: None, or (positions (E, N, 3) Å, energies (E,) eV, forces (E, N, 3) eV/Å) of more
            reference frames of the same molecule in any order, on the same energy scale (e.g. the
            macro-step xTB frames a RESPA run has made so far: benchmarks/respa_online_adapt.py).
            They join the force and energy terms; with the curvature term each batch is then
            ``batch_size`` frames drawn from the training frames and these, followed by
            ``batch_size`` triplets.

    Returns (the adapted ``LearnedPotential`` for the same molecule, report): ``frames``,
    ``train_frames``, ``holdout_frames``, ``steps``, ``force_rmse_before_ev_a`` and
    ``force_rmse_after_ev_a`` (eV/Å, full fast force against the reference on the held-out frames,
    one every ``ADAPT_EVERY_FS``), ``curvature_rms_before`` and ``curvature_rms_after`` (eV/fs²,
    RMS second time difference of the energy error over the held-out frames: RESPA at macro-step τ
    fluctuates in energy by about τ²/12 times it), None without a holdout, and ``wall_s``.
    """
    t0 = time.perf_counter()
    if not isinstance(fast, LearnedPotential):
        raise InputError(f"only a learned fast force can be adapted (jkstep.learned_potential), got "
                         f"{type(fast).__name__}")
    x = np.asarray(positions, np.float64)
    e = np.asarray(energies, np.float64)
    f = np.asarray(forces, np.float64)
    n = fast.n_atoms
    if x.ndim != 3 or x.shape[1:] != (n, 3) or f.shape != x.shape or e.shape != x.shape[:1]:
        raise InputError(f"adaptation frames must be positions (F, {n}, 3) Å, energies (F,) eV and forces "
                         f"(F, {n}, 3) eV/Å; got {x.shape}, {e.shape}, {f.shape}")
    if not (np.isfinite(x).all() and np.isfinite(e).all() and np.isfinite(f).all()):
        raise InputError("adaptation frames must be finite (a frame of a failed SCF?)")
    if not (isinstance(spacing_fs, (int, float)) and spacing_fs > 0):
        raise InputError(f"adaptation frame spacing_fs must be a time in fs > 0, got {spacing_fs!r}")
    n_extra = 0
    if extra is not None:
        xe, ee, fe = (np.asarray(a, np.float64) for a in extra)
        if xe.ndim != 3 or xe.shape[1:] != (n, 3) or fe.shape != xe.shape or ee.shape != xe.shape[:1]:
            raise InputError(f"extra adaptation frames must be positions (E, {n}, 3) Å, energies (E,) eV and "
                             f"forces (E, {n}, 3) eV/Å; got {xe.shape}, {ee.shape}, {fe.shape}")
        if not (np.isfinite(xe).all() and np.isfinite(ee).all() and np.isfinite(fe).all()):
            raise InputError("extra adaptation frames must be finite (a frame of a failed SCF?)")
        n_extra = xe.shape[0]
    stride = max(1, round(ADAPT_EVERY_FS / spacing_fs))              # frames of the force and energy terms
    gap = max(1, round(config.curvature_spacing_fs / spacing_fs))    # triplets of the curvature term
    s_fs = gap * spacing_fs
    n_frames = x.shape[0]
    n_train = n_frames - int(round(config.holdout * n_frames))
    train_idx = np.arange(0, n_train, stride)
    if len(train_idx) < MIN_FRAMES:
        raise InputError(f"adaptation needs at least {MIN_FRAMES} training frames ({ADAPT_EVERY_FS:g} fs apart), got "
                         f"{len(train_idx)} of {n_frames} frames {spacing_fs:g} fs apart: thermalise longer")

    plain_idx = train_idx
    if n_extra:     # appended after the frames, so every index of the frames stays what it was
        plain_idx = np.concatenate([train_idx, n_frames + np.arange(n_extra)])
        x, e, f = np.concatenate([x, xe]), np.concatenate([e, ee]), np.concatenate([f, fe])
    if fast.baseline is not None:       # a Δ-potential learns the reference minus its baseline
        e_b, f_b = jax.vmap(fast.baseline)(jnp.asarray(x))
        e, f = e - np.asarray(e_b), f - np.asarray(f_b)
    model = fast.model
    z = np.broadcast_to(fast.numbers, x.shape[:2]).astype(np.int32)
    e_net = np.asarray(energy_and_forces(model, fast.params, jnp.asarray(z[plain_idx]), None,
                                         jnp.asarray(x[plain_idx]))[0])
    e = e - e[plain_idx].mean() + e_net.mean()    # energies are matched up to a constant

    def batch(idx):
        return {"numbers": jnp.asarray(z[idx]), "mask": jnp.asarray(z[idx] > 0), "positions": jnp.asarray(x[idx]),
                "energy": jnp.asarray(e[idx]), "forces": jnp.asarray(f[idx])}

    scales = scale_array(estimate_potential_scales(
        {"numbers": z[plain_idx], "mask": z[plain_idx] > 0, "energy": e[plain_idx], "forces": f[plain_idx]},
        fast.config, None))
    scale_curvature = None
    if config.w_curvature:     # the scale: the labels' own curvature (the network's error at zero)
        centres = np.arange(gap, n_train - gap)
        scale_curvature = max(_rms(energy_error_curvature(-e[triplets_of(centres, gap)], s_fs)), 1e-6)
    with_plain = bool(n_extra and config.w_curvature)     # batches: plain frames, then triplets
    n_trip = min(config.batch_size, len(centres)) if config.w_curvature else 0
    train_config = config.train_config(scale_curvature, s_fs, n_trip if with_plain else None)
    fns = compile_steps(fast.config, train_config, config.learning_rate, ())
    state = create_train_state(fast.params, fns.tx, fns.model.apply)
    rng = np.random.default_rng(config.seed)
    for _ in range(config.steps):
        if config.w_curvature:
            idx = triplets_of(rng.choice(centres, n_trip, replace=False), gap)
            if with_plain:
                few = len(plain_idx) < config.batch_size
                idx = np.concatenate([rng.choice(plain_idx, config.batch_size, replace=few), idx])
        else:
            idx = rng.choice(plain_idx, min(config.batch_size, len(plain_idx)), replace=False)
        state, _ = fns.train_step(state, batch(idx), scales)
    params = state.ema_params

    report = {"frames": int(n_frames), "train_frames": int(n_train), "holdout_frames": int(n_frames - n_train),
              "extra_frames": int(n_extra),
              "steps": int(config.steps), "force_rmse_before_ev_a": None, "force_rmse_after_ev_a": None,
              "curvature_rms_before": None, "curvature_rms_after": None}
    if n_train < n_frames:     # held-out errors (the network's against the labels: the full force's too)
        held = np.arange(n_train, n_frames, stride)
        held_centres = np.arange(n_train + gap, n_frames - gap)
        idx = triplets_of(held_centres, gap)
        for when, p in (("before", fast.params), ("after", params)):
            frc = energy_and_forces(model, p, jnp.asarray(z[held]), None, jnp.asarray(x[held]))[1]
            report[f"force_rmse_{when}_ev_a"] = _rms(np.asarray(frc) - f[held])
            if len(held_centres):
                energy = energy_and_forces(model, p, jnp.asarray(z[idx]), None, jnp.asarray(x[idx]))[0]
                report[f"curvature_rms_{when}"] = _rms(energy_error_curvature(np.asarray(energy) - e[idx], s_fs))
    report["wall_s"] = time.perf_counter() - t0
    meta = dict(fast.meta, adapted=report)
    adapted = LearnedPotential(params, fast.config, fast.numbers, meta, name=f"{fast.name} (adapted)",
                               baseline=fast.baseline)
    return adapted, report


def triplets_of(centres, gap: int):
    """Frame indices (3G,) of G triplets in three blocks: all at t − gap, all at t, all at t + gap."""
    return np.concatenate([centres - gap, centres, centres + gap])


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(a)))))
