"""The k-step network: a PaiNN-class, exactly E(3)-equivariant message-passing model in Flax linen.

One call maps the state at time t to the state k base steps later::

    x_{t+k} = x_t + v_t·T + ½ a_t T² + δx        T = k·dt (fs), a_t = ACCEL·(F_t − F̄_t)/m
    v_{t+k} = v_t + a_t T + δv

The ballistic part is computed in float64 with the net force removed; the network only predicts the
corrections δx (Å) and δv (Å/fs), plus an auxiliary force at t+k (eV/Å). Each correction is
bounded per atom by a smooth tanh of its vector norm, its mass-weighted mean is subtracted (so
Σ m δx = Σ m δv = 0 exactly: total momentum is conserved by construction), and a common factor
(1 unless the projection pushed some atom past the bound) keeps every |δx_i| ≤ max_correction_a.

The network sees only relative vectors x_j − x_i (cutoff-limited, all pairs within a molecule),
and v, F as vector features, scalars built from invariants: rotations, reflections, translations
and permutations of the inputs act on the outputs in the same way, up to float32 rounding.
Batched inputs are padded: ``mask`` False marks padding, which changes nothing for real atoms.

Units: Å, fs, eV, amu; velocities Å/fs, forces eV/Å.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jkstep import units
from jkstep.config import from_mapping
from jkstep.errors import InputError

#: Units of every array the model reads and writes (recorded in checkpoints).
UNITS = {"length": "Å", "time": "fs", "energy": "eV", "mass": "amu", "velocity": "Å/fs",
         "force": "eV/Å"}

#: Rows of the atomic-number embedding table (Z = 0 … 118; 0 is padding).
N_ELEMENTS = 119


def default_max_correction(k: int, dt_fs: float) -> float:
    """Default bound (Å) on the per-atom position correction for a jump of k·dt fs.

    Sized from xTB jumps at dt = 0.25 fs, whose largest atom displacement is about 0.07, 0.16 and
    0.24 Å at k = 8, 16, 32: 0.1 Å at k·dt ≤ 2 fs, then + 0.1 Å per doubling (0.2 at 4 fs, 0.3 at 8).
    """
    return round(0.1 * max(1.0, 1.0 + math.log2(k * dt_fs / 2.0)), 6)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters and physical constants of a k-step model (JSON-serialisable, hashable).

    Attributes:
        features: channels of the scalar and vector features.
        layers: message-passing (interaction) blocks.
        cutoff: radial cutoff in Å (smooth cosine envelope).
        n_rbf: Gaussian radial basis functions on [0, cutoff].
        k: base steps per jump.   dt_fs: base time step in fs.
        max_correction_a: bound on each atom's |δx| in Å (None: ``default_max_correction(k, dt)``).
        max_velocity_correction: bound on each atom's |δv| in Å/fs (None: max_correction_a / (k·dt)).
        force_scale_ev_a: scale of the auxiliary force head's correction F_{t+k} − F_t, eV/Å.
        elements: atomic numbers the model is meant for.
    """

    features: int = 64
    layers: int = 3
    cutoff: float = 5.0
    n_rbf: int = 16
    k: int = 8
    dt_fs: float = 0.25
    max_correction_a: float | None = None
    max_velocity_correction: float | None = None
    force_scale_ev_a: float = 1.0
    elements: tuple[int, ...] = (1, 6, 7, 8)

    def __post_init__(self):
        def positive(name, value, kind=float):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InputError(f"model config: {name} must be a positive number, got {value!r}")
            if kind is int and int(value) != value:
                raise InputError(f"model config: {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, kind(value))

        for name in ("features", "layers", "n_rbf", "k"):
            positive(name, getattr(self, name), int)
        for name in ("cutoff", "dt_fs", "force_scale_ev_a"):
            positive(name, getattr(self, name))
        if self.max_correction_a is None:
            object.__setattr__(self, "max_correction_a", default_max_correction(self.k, self.dt_fs))
        positive("max_correction_a", self.max_correction_a)
        if self.max_velocity_correction is None:
            object.__setattr__(self, "max_velocity_correction",
                               round(self.max_correction_a / (self.k * self.dt_fs), 9))
        positive("max_velocity_correction", self.max_velocity_correction)
        try:
            elements = tuple(sorted({int(z) for z in self.elements}))
        except (TypeError, ValueError):
            raise InputError(f"model config: elements must be atomic numbers, got {self.elements!r}") from None
        if not elements or elements[0] < 1 or elements[-1] >= N_ELEMENTS:
            raise InputError(f"model config: elements must be atomic numbers 1-118, got {self.elements!r}")
        object.__setattr__(self, "elements", elements)

    @property
    def jump_fs(self) -> float:
        """Length of one jump, k·dt, in fs."""
        return self.k * self.dt_fs

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["elements"] = list(self.elements)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return from_mapping(cls, d, "model config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Physics pieces shared with training (float64)


def remove_net_force(forces, mask):
    """Forces (B, N, 3) eV/Å minus their mean over real atoms, so that Σ_i F_i = 0 (padding stays 0)."""
    maskf = mask.astype(forces.dtype)[..., None]
    n = jnp.maximum(maskf.sum(axis=-2, keepdims=True), 1.0)
    net = (forces * maskf).sum(axis=-2, keepdims=True) / n
    return (forces - net) * maskf


def ballistic_baseline(masses, mask, positions, velocities, forces, k: int, dt_fs: float):
    """The network-free baseline of a padded batch over T = k·dt fs: the arrays (positions Å,
    velocities Å/fs), float64, that the network's correction is measured against (not a jump
    function: that is ``jkstep.kstep.ballistic_jump``, which keeps the net force).

    x + v T + ½ a T², v + a T with a = ACCEL·(F − F̄)/m (net force removed, so total momentum is
    conserved exactly). Shapes (B, N) / (B, N, 3); padding (mask False) comes back as zeros.
    """
    f64 = jnp.float64
    mask = jnp.asarray(mask, bool)
    maskf = mask.astype(f64)[..., None]
    m = jnp.where(mask, masses, 1.0).astype(f64)[..., None]
    x = jnp.asarray(positions, f64) * maskf
    v = jnp.asarray(velocities, f64) * maskf
    acc = units.ACCEL * remove_net_force(jnp.asarray(forces, f64), mask) / m
    t = k * dt_fs
    return x + v * t + 0.5 * acc * t**2, v + acc * t


def _safe_norm(v, axis=-1, keepdims=False, eps=1e-12):
    return jnp.sqrt(jnp.sum(v * v, axis=axis, keepdims=keepdims) + eps)


def _norm(v, axis=-1):
    """|v| with the same values as ``jnp.linalg.norm`` and a zero (not NaN) gradient at v = 0:
    padded atoms have zero vectors, and a jump back from a predicted state differentiates
    through them (``TrainConfig.reversal_correction``)."""
    nonzero = jnp.any(v != 0, axis=axis)
    safe = jnp.where(jnp.expand_dims(nonzero, axis), v, 1.0)
    return jnp.where(nonzero, jnp.linalg.norm(safe, axis=axis), 0.0)


def bounded_momentum_free(u, bound, masses, mask):
    """Map raw vectors u (B, N, 3) to corrections with |d_i| ≤ bound and Σ_i m_i d_i = 0 (float64).

    Smooth per-atom bound d = bound·tanh(|u|)·u/|u|, then the mass-weighted mean over real atoms
    is subtracted, then all atoms share one factor min(1, bound / max_i |d_i|) (a common scalar:
    momentum stays zero, equivariance is kept).
    """
    f64 = jnp.float64
    u = u.astype(f64)
    maskf = mask.astype(f64)[..., None]
    m = jnp.where(mask, masses, 0.0).astype(f64)[..., None]
    r = _safe_norm(u, keepdims=True, eps=1e-24)
    d = bound * u * (jnp.tanh(r) / r) * maskf
    mean = (m * d).sum(axis=-2, keepdims=True) / jnp.maximum(m.sum(axis=-2, keepdims=True), 1e-30)
    d = (d - mean) * maskf
    rmax = jnp.max(_safe_norm(d, eps=1e-30), axis=-1)[..., None, None]
    return d * (bound / jnp.maximum(rmax, bound))


# ---------------------------------------------------------------------------------------------
# Network blocks (float32). Shapes: scalars s (B, N, F), vectors V (B, N, 3, F).


def pair_features(x, mask, cutoff: float, n_rbf: int):
    """Edge features of all pairs of real atoms within ``cutoff`` Å: (rbf (B, N, N, n_rbf),
    envelope (B, N, N), unit vectors x̂_j − x̂_i (B, N, N, 3)), float32 from float64 positions
    x (B, N, 3). The cosine envelope ½(cos(πr/r_c) + 1) and its slope vanish at the cutoff, so
    anything it multiplies is continuous with a continuous gradient there (shared by ``KStepNet``
    and the energy network of ``jkstep.model.potential``)."""
    f32 = jnp.float32
    n = x.shape[-2]
    rij = (x[:, None, :, :] - x[:, :, None, :])                            # x_j − x_i (B,N,N,3)
    r2 = jnp.sum(rij * rij, axis=-1)
    pair = mask[:, :, None] & mask[:, None, :] & ~jnp.eye(n, dtype=bool)[None]
    pair = pair & (r2 < cutoff**2)
    r = jnp.sqrt(jnp.where(pair, r2, 1.0))
    unit = jnp.where(pair[..., None], rij / r[..., None], 0.0).astype(f32)
    r32 = r.astype(f32)
    envelope = jnp.where(pair, 0.5 * (jnp.cos(jnp.pi * r32 / cutoff) + 1.0), 0.0)
    centers = jnp.linspace(0.0, cutoff, n_rbf, dtype=f32)
    width = cutoff / max(n_rbf - 1, 1)
    rbf = jnp.exp(-((r32[..., None] - centers) / width) ** 2)
    return rbf, envelope, unit


class Message(nn.Module):
    """PaiNN message block: filters from the radial basis, messages from neighbours j to atom i.

    ``einsum``: contract over neighbours with einsum (cheaper under ``jax.grad``, as the energy
    network of ``jkstep.model.potential`` needs; the broadcast sum is faster forward only)."""

    features: int
    einsum: bool = False

    @nn.compact
    def __call__(self, s, V, rbf, envelope, unit):
        f = self.features
        phi = nn.Dense(3 * f, name="phi_out")(nn.silu(nn.Dense(f, name="phi_hidden")(s)))
        w = nn.Dense(3 * f, name="filter")(rbf) * envelope[..., None]          # (B, N, N, 3F)
        x = phi[:, None, :, :] * w                                             # j on axis 2
        xs, xvv, xvr = jnp.split(x, 3, axis=-1)
        ds = xs.sum(axis=2)
        # Σ_j (xvv_ij V_j + xvr_ij r̂_ij) as a broadcast product and sum: XLA fuses it (an einsum
        # here lowers to transposed batched dots and ran twice as slow on CPU)
        if self.einsum:
            dV = jnp.einsum("bijf,bjdf->bidf", xvv, V) + jnp.einsum("bijf,bijd->bidf", xvr, unit)
        else:
            dV = (xvv[:, :, :, None, :] * V[:, None, :, :, :] + xvr[:, :, :, None, :] * unit[..., None]).sum(axis=2)
        return s + ds, V + dV


class Update(nn.Module):
    """PaiNN update block: mixes vector channels and couples scalars to vector norms / products.

    ``norm_eps``: the vector norms are sqrt(|v|² + norm_eps). With a tiny value (1e-8, the k-step
    model's) the norm has a near-cusp where a channel passes through zero, which makes an energy
    built on it rough at sub-femtosecond scales (docs/results.md, "A smooth norm"); a potential
    that is integrated by impulses needs a larger one."""

    features: int
    norm_eps: float = 1e-8

    @nn.compact
    def __call__(self, s, V):
        f = self.features
        uV = nn.Dense(f, use_bias=False, name="vec_u")(V)
        vV = nn.Dense(f, use_bias=False, name="vec_v")(V)
        norm = _safe_norm(vV, axis=-2, eps=self.norm_eps)
        a = nn.Dense(3 * f, name="a_out")(
            nn.silu(nn.Dense(f, name="a_hidden")(jnp.concatenate([s, norm], axis=-1))))
        avv, asv, ass = jnp.split(a, 3, axis=-1)
        return s + asv * jnp.sum(uV * vV, axis=-2) + ass, V + avv[..., None, :] * uV


class Interaction(nn.Module):
    features: int
    einsum: bool = False
    norm_eps: float = 1e-8

    @nn.compact
    def __call__(self, s, V, rbf, envelope, unit, atom_mask):
        s, V = Message(self.features, self.einsum, name="message")(s, V, rbf, envelope, unit)
        s, V = s * atom_mask, V * atom_mask[..., None]
        s, V = Update(self.features, self.norm_eps, name="update")(s, V)
        return s * atom_mask, V * atom_mask[..., None]


class VectorHead(nn.Module):
    """Gated equivariant readout: one vector per atom, (B, N, 3). The last gate layer starts at zero,
    so an untrained model outputs zero (the ballistic jump)."""

    features: int

    @nn.compact
    def __call__(self, s, V):
        mixed = nn.Dense(self.features, use_bias=False, name="vec_mix")(V)
        norm = _safe_norm(mixed, axis=-2, eps=1e-8)
        g = nn.silu(nn.Dense(self.features, name="gate_hidden")(jnp.concatenate([s, norm], axis=-1)))
        g = nn.Dense(1, name="gate_out", kernel_init=nn.initializers.zeros)(g)   # (B, N, 1)
        out = nn.Dense(1, use_bias=False, name="vec_out")(mixed)[..., 0]          # (B, N, 3)
        return out * g


class KStepNet(nn.Module):
    """(numbers, mask, masses, positions, velocities, forces) at t → (positions, velocities, forces) at t+k.

    Inputs (B, N) / (B, N, 3), or one molecule (N,) / (N, 3): ``numbers`` int (0 on padding),
    ``mask`` bool (None: all atoms real), ``masses`` amu, positions Å, velocities Å/fs, forces eV/Å.
    Returns float64 positions (Å), velocities (Å/fs) and the auxiliary forces (eV/Å) at t+k, zero
    on padding. Parameters are float32; the ballistic part and the conservation steps are float64.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, numbers, mask, masses, positions, velocities, forces):
        cfg = self.config
        single = jnp.ndim(numbers) == 1
        if single:
            numbers, masses, positions, velocities, forces = (
                a[None] for a in (numbers, masses, positions, velocities, forces))
            mask = None if mask is None else jnp.asarray(mask)[None]
        numbers = jnp.asarray(numbers, jnp.int32)
        mask = numbers > 0 if mask is None else jnp.asarray(mask, bool)
        numbers = jnp.where(mask, numbers, 0)
        f64, f32 = jnp.float64, jnp.float32
        maskf = mask.astype(f64)[..., None]
        m = jnp.where(mask, masses, 1.0).astype(f64)
        x = jnp.asarray(positions, f64) * maskf
        v = jnp.asarray(velocities, f64) * maskf
        forces = jnp.asarray(forces, f64) * maskf
        t = cfg.jump_fs
        b, bv = cfg.max_correction_a, cfg.max_velocity_correction
        acc = units.ACCEL * remove_net_force(forces, mask) / m[..., None]      # Å/fs²

        # Vector inputs in units of the bound (dimensionless): the two ballistic displacements.
        vin = (v * t / b).astype(f32)
        fin = (0.5 * acc * t**2 / b).astype(f32)
        V = nn.Dense(cfg.features, use_bias=False, name="vector_in")(jnp.stack([vin, fin], axis=-1))
        invariants = jnp.stack([
            _norm(vin), _norm(fin),
            jnp.sum(vin * fin, axis=-1), jnp.log(m).astype(f32)], axis=-1)
        s = nn.Embed(N_ELEMENTS, cfg.features, name="embedding")(numbers)
        s = s + nn.Dense(cfg.features, name="scalar_in")(invariants)
        atom_mask = mask.astype(f32)[..., None]
        s, V = s * atom_mask, V * atom_mask[..., None]

        rbf, envelope, unit = pair_features(x, mask, cfg.cutoff, cfg.n_rbf)

        for i in range(cfg.layers):
            s, V = Interaction(cfg.features, name=f"interaction_{i}")(s, V, rbf, envelope, unit, atom_mask)

        u_x = VectorHead(cfg.features, name="head_dx")(s, V)
        u_v = VectorHead(cfg.features, name="head_dv")(s, V)
        u_f = VectorHead(cfg.features, name="head_force")(s, V)

        dx = bounded_momentum_free(u_x, b, m, mask)
        dv = bounded_momentum_free(u_v, bv, m, mask)
        pos_k = x + ((v * t + 0.5 * acc * t**2) + dx) * maskf
        vel_k = v + (acc * t + dv) * maskf
        f_k = remove_net_force(forces + cfg.force_scale_ev_a * u_f.astype(f64), mask)
        if single:
            return pos_k[0], vel_k[0], f_k[0]
        return pos_k, vel_k, f_k


def init_params(config: ModelConfig, seed: int = 0):
    """Fresh float32 parameters of ``KStepNet(config)`` (a nested dict; the last layer of each
    output head is zero, so the fresh model is exactly the ballistic jump)."""
    return _jitted_init(config)(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=32)
def _jitted_init(config: ModelConfig):
    model = KStepNet(config)
    z = np.ones((1, 3), np.int32)
    x = np.arange(9, dtype=np.float64).reshape(1, 3, 3)
    return jax.jit(lambda key: model.init(key, z, z > 0, np.ones((1, 3)), x, x, x)["params"])
