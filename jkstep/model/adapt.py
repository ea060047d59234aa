"""Fine-tune a learned fast force on one molecule's own reference frames (per-run adaptation).

A shipped fast force has never seen the molecule it runs on; its force error there (0.2–0.45 eV/Å
against GFN2-xTB on the test molecules) is what RESPA's energy fluctuation is made of. Every run
that starts from a thermalised state has already made the xTB calls of that thermalisation: its
frames (positions, energy, forces) are labelled data for exactly this molecule in exactly the
region of configuration space the production run visits. ``adapt_potential`` fine-tunes the
network on them (energy-and-force matching, the training loss of ``jkstep.model.potential``, from
the shipped weights) and returns a new fast force for the same molecule. It makes no xTB call;
its cost is CPU time (26–58 s for 2000 steps on a 2-core CPU), reported as ``wall_s``.

The adapted force is fixed before the production run starts, so RESPA with it stays symplectic
and time-reversible. The last ``holdout`` fraction of the frames (the end of the thermalisation
in time) is not trained on: the force RMSE there, before and after, is the report's check.
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
from jkstep.model.potential import LearnedPotential, energy_and_forces, estimate_potential_scales
from jkstep.model.state import compile_steps, create_train_state

ADAPT_EVERY_FS = 2.0     # a thermalisation frame every 2 fs is a training frame
MIN_FRAMES = 10
MIN_ADAPT_PS = 0.1       # the shortest thermalisation a run or an evaluation adapts on (50 frames)


def check_adapt_length(equilibrate_ps) -> None:
    """InputError unless a thermalisation of ``equilibrate_ps`` ps is long enough to adapt on."""
    if not equilibrate_ps >= MIN_ADAPT_PS:
        raise InputError(f"adapt (--adapt) trains on the Langevin thermalisation's frames (one every "
                         f"{ADAPT_EVERY_FS:g} fs): give equilibrate_ps (--equilibrate-ps) of at least "
                         f"{MIN_ADAPT_PS:g} ps, got {equilibrate_ps!r}")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Settings of ``adapt_potential`` (chosen on the validation molecules, docs/results.md).

    steps: optimiser steps.   batch_size: frames per step.   learning_rate: peak AdamW rate (linear
    warm-up over the first tenth, cosine decay to 2 %).   ema_decay: of the weights, which are
    what is returned.   w_energy: weight of the energy term (energies are matched up to a constant).
    holdout: fraction of the frames (the last ones) kept out of training for the report.
    seed: batch order."""

    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    ema_decay: float = 0.99
    w_energy: float = 0.05
    holdout: float = 0.2
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if not is_integer(getattr(self, name), 1):
                raise InputError(f"adaptation {name} must be a whole number ≥ 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise InputError(f"adaptation holdout must be a fraction in [0, 1), got {self.holdout!r}")
        if not self.learning_rate > 0:
            raise InputError(f"adaptation learning_rate must be > 0, got {self.learning_rate!r}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(learning_rate=self.learning_rate, warmup_steps=max(1, self.steps // 10),
                           total_steps=self.steps, end_lr_fraction=0.02, weight_decay=0.0, clip_norm=10.0,
                           ema_decay=self.ema_decay, w_force=1.0, w_energy=self.w_energy)


def adapt_potential(fast: LearnedPotential, positions, energies, forces,
                    config: AdaptConfig = AdaptConfig()) -> tuple[LearnedPotential, dict]:
    """Fine-tune ``fast`` on reference frames of its own molecule.

    Args:
        fast: a ``LearnedPotential`` (``jkstep.learned_potential(name, mol)``); a Δ-potential on
            MMFF94 learns the reference minus its MMFF94, as in training.
        positions: (F, N, 3) Å; energies: (F,) eV (absolute, any constant offset); forces:
            (F, N, 3) eV/Å: the reference potential's (GFN2-xTB's) at those positions, e.g. the
            frames of a Langevin thermalisation in time order.
        config: ``AdaptConfig``.

    Returns (the adapted ``LearnedPotential`` for the same molecule, report): ``frames``,
    ``train_frames``, ``holdout_frames``, ``steps``, ``force_rmse_before_ev_a`` and
    ``force_rmse_after_ev_a`` (full fast force against the reference on the held-out frames;
    None without a holdout) and ``wall_s``.
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
    n_frames = x.shape[0]
    n_train = n_frames - int(round(config.holdout * n_frames))
    if n_train < MIN_FRAMES:
        raise InputError(f"adaptation needs at least {MIN_FRAMES} training frames, got {n_train} of {n_frames}: "
                         "thermalise longer")

    if fast.baseline is not None:       # a Δ-potential learns the reference minus its baseline
        e_b, f_b = jax.vmap(fast.baseline)(jnp.asarray(x))
        e, f = e - np.asarray(e_b), f - np.asarray(f_b)
    model = fast.model
    z = np.broadcast_to(fast.numbers, x.shape[:2]).astype(np.int32)
    e_net = np.asarray(energy_and_forces(model, fast.params, jnp.asarray(z[:n_train]), None,
                                         jnp.asarray(x[:n_train]))[0])
    e = e - e[:n_train].mean() + e_net.mean()    # energies are matched up to a constant

    def batch(idx):
        return {"numbers": jnp.asarray(z[idx]), "mask": jnp.asarray(z[idx] > 0), "positions": jnp.asarray(x[idx]),
                "energy": jnp.asarray(e[idx]), "forces": jnp.asarray(f[idx])}

    train_config = config.train_config()
    fns = compile_steps(fast.config, train_config, config.learning_rate, ())
    train_idx = np.arange(n_train)
    scales = scale_array(estimate_potential_scales(
        {"numbers": z[train_idx], "mask": z[train_idx] > 0, "energy": e[train_idx], "forces": f[train_idx]},
        fast.config, train_config))
    state = create_train_state(fast.params, fns.tx, fns.model.apply)
    rng = np.random.default_rng(config.seed)
    size = min(config.batch_size, n_train)
    for _ in range(config.steps):
        state, _ = fns.train_step(state, batch(rng.choice(n_train, size, replace=False)), scales)
    params = state.ema_params

    before = after = None
    if n_train < n_frames:
        held = batch(np.arange(n_train, n_frames))
        before = float(fns.eval_step(fast.params, held, scales)["rmse_force"])
        after = float(fns.eval_step(params, held, scales)["rmse_force"])
    report = {"frames": int(n_frames), "train_frames": int(n_train), "holdout_frames": int(n_frames - n_train),
              "steps": int(config.steps), "force_rmse_before_ev_a": before, "force_rmse_after_ev_a": after,
              "wall_s": time.perf_counter() - t0}
    meta = dict(fast.meta, adapted=report)
    adapted = LearnedPotential(params, fast.config, fast.numbers, meta, name=f"{fast.name} (adapted)",
                               baseline=fast.baseline)
    return adapted, report
