"""Training configuration: ``TrainConfig`` (hyper-parameters) and the YAML readers of the model and
train configs. Units of the loss scales: Å, Å/fs, eV/Å, eV."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jkstep.config import from_mapping, read_yaml
from jkstep.errors import InputError, is_integer
from jkstep.model.network import ModelConfig


#: ``TrainConfig.force_weighting`` choices (the force loss of a learned potential)
FORCE_WEIGHTINGS = ("uniform", "inverse_mass")


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
        force_weighting: how a learned potential's force loss weighs the atoms: "uniform"
            (default: the MSE of the force components) or "inverse_mass" (each atom's squared
            error times 1/m, normalised to mean 1 over the batch's atoms: a RESPA kick changes v
            by τΔF/m and the energy by about τ²ΔF²/m, so this weighs the errors as the fast force's
            energy error does; a hydrogen counts 12× a carbon).
        w_curvature: weight of the energy error's curvature along the motion (a learned potential).
            Impulse RESPA at macro-step τ conserves H + (τ²/12)·d²ΔV/dt² to leading order (ΔV: slow
            minus fast potential), so its energy fluctuates by about (τ²/12)·RMS(d²ΔV/dt²): this term
            is the mean of (e₋ − 2e₀ + e₊)²/s⁴ (e: energy error, eV; s = ``curvature_spacing_fs``) over
            ``scale_curvature`` (eV/fs²)², on frame triplets: the last 3·``curvature_triplets``
            frames of each batch in three blocks (x₋, x, x₊; None: the whole batch). ``jkstep
            train`` takes them from the data section's ``triplets:`` file (``jkstep.data.triplets``)
            and measures ``scale_curvature`` (None) as its labels' own RMS; ``jkstep.model.adapt``
            from the thermalisation. docs/results.md, "The energy error's curvature".
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
    force_weighting: str = "uniform"
    w_curvature: float = 0.0
    curvature_spacing_fs: float = 0.5
    scale_curvature: float | None = None
    curvature_triplets: int | None = None
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
        if self.force_weighting not in FORCE_WEIGHTINGS:
            raise InputError(f"train config: force_weighting must be one of {', '.join(FORCE_WEIGHTINGS)}, "
                             f"got {self.force_weighting!r}")
        if float(self.w_curvature) < 0 or not float(self.curvature_spacing_fs) > 0:
            raise InputError(f"train config: w_curvature must be >= 0 and curvature_spacing_fs > 0, got "
                             f"{self.w_curvature!r} and {self.curvature_spacing_fs!r}")
        if self.scale_curvature is not None and not self.scale_curvature > 0:
            raise InputError(f"train config: scale_curvature must be > 0 eV/fs² (or null: measured), "
                             f"got {self.scale_curvature!r}")
        if self.curvature_triplets is not None and int(self.curvature_triplets) < 1:
            raise InputError(f"train config: curvature_triplets must be >= 1 (or null: the whole batch), "
                             f"got {self.curvature_triplets!r}")
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
    d = d.get("model", d) if set(d) == {"model"} else d
    if d.get("kind") == "potential":   # a learned fast force (jkstep.model.potential)
        from jkstep.model.potential import PotentialConfig

        return PotentialConfig.from_dict({k: v for k, v in d.items() if k != "kind"})
    return ModelConfig.from_dict(d)


def load_train_config(path) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file (flat keys, or nested under ``train:``)."""
    d = read_yaml(path)
    return TrainConfig.from_dict(d.get("train", d) if set(d) == {"train"} else d)


def check_max_steps(max_steps, flag: str = "max_steps") -> None:
    """InputError unless ``max_steps`` is None or an integer ≥ 1 (0 would save an untrained checkpoint)."""
    if max_steps is None:
        return
    if not is_integer(max_steps, 1):
        raise InputError(f"{flag} must be an integer ≥ 1 (leave it out to train total_steps), got {max_steps!r}")

