"""A learned energy network as a conservative fast force: ``learned_potential(name_or_path, mol)``.

``EnergyNet`` is an E(3)-invariant PaiNN-class network (the message-passing body of ``KStepNet``:
``network.pair_features`` and ``network.Interaction``) that maps (numbers, mask, positions) to a
potential energy. Forces are −∂E/∂x by ``jax.grad`` (one forward and one backward pass), so the
force field is conservative and ``jkstep.respa`` stays symplectic with it.

The energy is Σ_i [e_Z(i) + scale·ε_i], with fixed per-element offsets e_Z (eV, fitted to the
training energies, stored in the config) and per-atom terms ε_i of the network's last scalar
features. The network computes in float32; positions come in and energies and forces go out in
float64. Pairs interact within a cosine envelope that vanishes with its slope at the cutoff, so
energy and forces are continuous as atoms cross it. Padded batches (``mask`` False) contribute
nothing.

Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_masses

from jkstep.config import from_mapping
from jkstep.errors import InputError
from jkstep.model.network import N_ELEMENTS, Interaction, pair_features

#: Units of every array the model reads and writes (recorded in checkpoints).
UNITS = {"length": "Å", "energy": "eV", "force": "eV/Å"}

#: Metadata key that marks a checkpoint as a learned potential (not a k-step jump).
KIND = "potential"


#: What the network adds to: nothing, or MMFF94 (a Δ-potential).
BASELINES = ("none", "mmff")


@dataclasses.dataclass(frozen=True)
class PotentialConfig:
    """Hyper-parameters of an energy network (JSON-serialisable, hashable).

    Attributes:
        features: channels of the scalar and vector features.   layers: interaction blocks.
        cutoff: radial cutoff in Å (smooth cosine envelope).   n_rbf: Gaussian radial functions.
        elements: atomic numbers the model is meant for (ascending).
        element_energies: per-atom energy offset e_Z in eV of each of ``elements`` (same order).
        energy_scale: eV per unit of the network's per-atom output.
        baseline: "none" (the network is the whole potential) or "mmff" (a Δ-potential: the
            potential is the molecule's MMFF94, ``jkstep.mmff_potential(mol)``, plus the network,
            which is trained on the labels minus MMFF94's energies and forces).
        norm_eps: ε of the vector norms sqrt(|v|² + ε) in the update blocks. The default 1e-8
            (as the k-step model) leaves near-cusps that make the energy rough at sub-fs scales;
            a fast force for RESPA needs a smooth one (1e-2: docs/results.md, "A smooth norm").
    """

    features: int = 16
    layers: int = 2
    cutoff: float = 4.0
    n_rbf: int = 8
    elements: tuple[int, ...] = (1, 6, 7, 8, 16)
    element_energies: tuple[float, ...] | None = None
    energy_scale: float = 1.0
    baseline: str = "none"
    norm_eps: float = 1e-8

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise InputError(f"potential config: baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        for name in ("features", "layers", "n_rbf"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
                raise InputError(f"potential config: {name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("cutoff", "energy_scale", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise InputError(f"potential config: {name} must be a positive number, got {value!r}")
            object.__setattr__(self, name, float(value))
        try:
            elements = tuple(int(z) for z in self.elements)
        except (TypeError, ValueError):
            raise InputError(f"potential config: elements must be atomic numbers, got {self.elements!r}") from None
        if not elements or list(elements) != sorted(set(elements)) or elements[0] < 1 or elements[-1] >= N_ELEMENTS:
            raise InputError("potential config: elements must be distinct ascending atomic numbers 1-118, "
                             f"got {self.elements!r}")
        object.__setattr__(self, "elements", elements)
        offsets = self.element_energies
        if offsets is None:
            offsets = (0.0,) * len(elements)
        try:
            offsets = tuple(float(e) for e in offsets)
        except (TypeError, ValueError):
            raise InputError(f"potential config: element_energies must be numbers, got {offsets!r}") from None
        if len(offsets) != len(elements) or not all(np.isfinite(offsets)):
            raise InputError(f"potential config: element_energies needs one finite eV value per element "
                             f"({len(elements)}), got {self.element_energies!r}")
        object.__setattr__(self, "element_energies", offsets)

    def offset_table(self) -> np.ndarray:
        """(N_ELEMENTS,) float64 per-element energies in eV (0 for padding and unknown Z)."""
        table = np.zeros(N_ELEMENTS)
        table[list(self.elements)] = self.element_energies
        return table

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["elements"], d["element_energies"] = list(self.elements), list(self.element_energies)
        return d

    @classmethod
    def from_dict(cls, d) -> "PotentialConfig":
        return from_mapping(cls, d, "potential config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def fit_element_energies(numbers_per_molecule, energies, elements) -> tuple[float, ...]:
    """Least-squares per-element energies (eV per atom) with Σ_i e_Z(i) ≈ E for each molecule:
    ``numbers_per_molecule`` a list of (N_m,) atomic-number arrays, ``energies`` (M,) eV (e.g. each
    molecule's mean energy). A small ridge keeps elements that always appear together defined."""
    elements = [int(z) for z in elements]
    counts = np.array([[np.sum(np.asarray(z) == e) for e in elements] for z in numbers_per_molecule], float)
    energies = np.asarray(energies, np.float64)
    lam = 1e-9 * max(1.0, float(np.mean(counts.sum(1)) ** 2))
    a = counts.T @ counts + lam * np.eye(len(elements))
    return tuple(float(e) for e in np.linalg.solve(a, counts.T @ energies))


class EnergyNet(nn.Module):
    """(numbers, mask, positions) → potential energy in eV (float64).

    Batched (B, N) / (B, N, 3) with ``mask`` (None: numbers > 0 are real) → (B,), or one molecule
    (N,) / (N, 3) → a scalar. Invariant under rotations, reflections, translations and permutations
    (up to float32 rounding)."""

    config: PotentialConfig

    @nn.compact
    def __call__(self, numbers, mask, positions):
        cfg = self.config
        single = jnp.ndim(numbers) == 1
        if single:
            numbers, positions = numbers[None], positions[None]
            mask = None if mask is None else jnp.asarray(mask)[None]
        numbers = jnp.asarray(numbers, jnp.int32)
        mask = numbers > 0 if mask is None else jnp.asarray(mask, bool)
        numbers = jnp.where(mask, numbers, 0)
        f32, f64 = jnp.float32, jnp.float64
        x = jnp.where(mask[..., None], jnp.asarray(positions, f64), 0.0)
        rbf, envelope, unit = pair_features(x, mask, cfg.cutoff, cfg.n_rbf)
        atom_mask = mask.astype(f32)[..., None]
        s = nn.Embed(N_ELEMENTS, cfg.features, name="embedding")(numbers) * atom_mask
        V = jnp.zeros(s.shape[:-1] + (3, cfg.features), f32)
        for i in range(cfg.layers):
            s, V = Interaction(cfg.features, einsum=True, norm_eps=cfg.norm_eps, name=f"interaction_{i}")(
                s, V, rbf, envelope, unit, atom_mask)
        h = nn.silu(nn.Dense(cfg.features, name="energy_hidden")(s))
        eps = nn.Dense(1, name="energy_out")(h)[..., 0] * atom_mask[..., 0]          # (B, N) float32
        offsets = jnp.asarray(cfg.offset_table())[numbers] * mask                    # float64
        energy = jnp.sum(offsets, axis=-1) + cfg.energy_scale * jnp.sum(eps.astype(f64), axis=-1)
        return energy[0] if single else energy


def init_params(config: PotentialConfig, seed: int = 0):
    """Fresh float32 parameters of ``EnergyNet(config)``."""
    return _jitted_init(config)(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=16)
def _jitted_init(config: PotentialConfig):
    model = EnergyNet(config)
    z = np.array([[6, 1, 1]], np.int32)
    x = np.array([[[0.0, 0, 0], [1.1, 0, 0], [0, 1.1, 0]]])
    return jax.jit(lambda key: model.init(key, z, z > 0, x)["params"])


def energy_and_forces(model: EnergyNet, params, numbers, mask, positions):
    """(energy eV, forces eV/Å) of a batch (B, N, 3) or one molecule (N, 3): forces = −∂E/∂x,
    one forward and one backward pass (zero on padding)."""
    def total(x):
        e = model.apply({"params": params}, numbers, mask, x)
        return jnp.sum(e), e

    grad, energy = jax.grad(total, has_aux=True)(jnp.asarray(positions, jnp.float64))
    return energy, -grad


# ---------------------------------------------------------------------------------------------
# Checkpoints and loading


def checkpoint_meta(config: PotentialConfig, **extra) -> dict:
    """The JSON metadata of a potential checkpoint: everything ``learned_potential`` needs."""
    meta = {"kind": KIND, "potential_config": config.to_dict(), "units": UNITS,
            "elements": list(config.elements)}
    meta.update(extra)
    return meta


def read_potential_checkpoint(name_or_path, which: str = "best") -> tuple[Any, dict, PotentialConfig]:
    """(EMA params, metadata, config) of a potential checkpoint: a shipped name, a training run's
    directory (best/ or latest/), a manager directory or one step directory."""
    from jkstep.model import pretrained as pt
    import orbax.checkpoint as ocp

    directory, step = pt.resolve_checkpoint(name_or_path, which)
    step_dir = directory / str(step)
    meta = dict(pt._restore(step_dir, meta=ocp.args.JsonRestore())["meta"])
    if meta.get("kind") != KIND or "potential_config" not in meta:
        raise InputError(f"{step_dir} is not a learned potential (a k-step jump model? load it with "
                         "jkstep.load_pretrained); a fast force checkpoint has kind 'potential' in its metadata")
    config = PotentialConfig.from_dict(meta["potential_config"])
    target = init_params(config)
    pt._check_weight_shapes(step_dir, target)
    params = pt._restore(step_dir, ema=ocp.args.StandardRestore(target))["ema"]
    params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), params)
    meta["path"] = os.fspath(step_dir)
    return params, meta, config


def save_potential(directory, params, config: PotentialConfig, step: int = 0, **extra) -> Path:
    """Write ``params`` as a potential checkpoint ``directory/<step>/`` (ema + meta), readable by
    ``learned_potential(directory, mol)``. Returns the step directory."""
    import orbax.checkpoint as ocp

    step_dir = Path(directory).resolve() / str(int(step))
    step_dir.parent.mkdir(parents=True, exist_ok=True)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(os.fspath(step_dir), args=ocp.args.Composite(
            ema=ocp.args.StandardSave(jax.tree.map(np.asarray, params)),
            meta=ocp.args.JsonSave(checkpoint_meta(config, step=int(step), **extra))), force=True)
    return step_dir


class LearnedPotential:
    """A trained energy network bound to one molecule: ``energy, forces = pot(positions)`` with
    positions (N, 3) Å (or a batch (..., N, 3)), energy eV and forces eV/Å, float64; a pure JAX
    function of the positions (jit, vmap, grad and lax.scan all work).

    Attributes: ``numbers`` (N,), ``n_atoms``, ``config``, ``params``, ``meta`` (checkpoint
    metadata with ``path``), ``name``."""

    _jkstep_energy_and_forces = True

    def __init__(self, params, config: PotentialConfig, numbers, meta: dict | None = None, name: str = "",
                 baseline=None):
        if (config.baseline == "mmff") != (baseline is not None):
            raise InputError(f"a potential with baseline {config.baseline!r} needs "
                             + ("the molecule's MMFF94 (jkstep.mmff_potential(mol)) as baseline"
                                if config.baseline == "mmff" else "no baseline function"))
        self.baseline = baseline
        self.params, self.config = params, config
        self.numbers = np.asarray(numbers, np.int32)
        self.n_atoms = int(self.numbers.shape[0])
        self.meta = dict(meta or {})
        self.name = name
        self.model = EnergyNet(config)
        # jitted here, so that a direct call costs milliseconds (not seconds op by op); inside
        # the caller's jit, vmap or grad it is traced like any other JAX function
        self._evaluate = jax.jit(self._energy_and_forces)

    def _energy_and_forces(self, params, numbers, positions):
        """(energy (B,) eV, forces (B, N, 3) eV/Å) of positions (B, N, 3) Å: the network's, plus
        the baseline's where there is one."""
        energy, forces = energy_and_forces(self.model, params, numbers, None, positions)
        if self.baseline is not None:
            e_b, f_b = jax.vmap(self.baseline)(positions)
            energy, forces = energy + e_b, forces + f_b
        return energy, forces

    def energy(self, positions):
        """Potential energy in eV of positions (N, 3) or (..., N, 3) Å."""
        return self(positions)[0]

    def __call__(self, positions):
        positions = jnp.asarray(positions, jnp.float64)
        if positions.shape[-2:] != (self.n_atoms, 3):
            raise InputError(f"the learned potential {self.name or ''} is for {self.n_atoms} atoms; "
                             f"got positions of shape {tuple(positions.shape)}")
        lead = positions.shape[:-2]
        x = positions.reshape((-1, self.n_atoms, 3))
        z = jnp.broadcast_to(jnp.asarray(self.numbers), (x.shape[0], self.n_atoms))
        energy, forces = self._evaluate(self.params, z, x)
        return energy.reshape(lead), forces.reshape(positions.shape)

    def __repr__(self):
        return f"LearnedPotential({self.name or self.meta.get('path', '')!r}, n_atoms={self.n_atoms})"


def check_elements(numbers, config: PotentialConfig, label: str = "") -> None:
    """InputError naming the first atom whose element the potential does not know."""
    from ase.data import chemical_symbols

    known = set(config.elements)
    for i, z in enumerate(np.asarray(numbers).tolist()):
        if int(z) not in known:
            names = ", ".join(chemical_symbols[e] for e in config.elements)
            raise InputError(f"the learned potential {label} does not know atom {i} ({chemical_symbols[int(z)]}, "
                             f"Z={int(z)}); it knows {names}")


def learned_potential(name_or_path, mol) -> LearnedPotential:
    """A trained fast force for ``mol``: a shipped name (e.g. ``"gfn2-fast"``) or the path of a
    potential checkpoint directory. Returns ``LearnedPotential``: (energy eV, forces eV/Å) of
    positions (N, 3) Å under jit and vmap, forces = −∂E/∂x.

    Raises InputError for an unknown name or path, a checkpoint that is not a potential, or an
    element of ``mol`` that the potential was not trained on (naming the atom)."""
    from jkstep.molecule import Molecule

    if not isinstance(mol, Molecule):
        raise InputError(f"learned_potential needs a jkstep.Molecule, got {type(mol).__name__}")
    params, meta, config = read_potential_checkpoint(name_or_path)
    label = os.fspath(name_or_path)
    check_elements(mol.numbers, config, label)
    baseline = None
    if config.baseline == "mmff":
        from jkstep.potentials.mmff import mmff_potential

        baseline = mmff_potential(mol)   # the same force field the labels were taken from
    return LearnedPotential(params, config, mol.numbers, meta, name=label, baseline=baseline)


# ---------------------------------------------------------------------------------------------
# Training: energy-and-force matching through the package's training loop (jkstep.model.train)
#
# A potential batch is a dict of padded numpy arrays: ``numbers`` (B, N) int (0 on padding),
# ``mask`` (B, N) bool, ``positions`` (B, N, 3) Å, ``energy`` (B,) eV (float64, absolute) and
# ``forces`` (B, N, 3) eV/Å. ``jkstep train`` builds them from the frame file named in the train
# config's ``data:`` section (``potential_batches``).

POTENTIAL_BATCH_KEYS = ("numbers", "mask", "positions", "energy", "forces")


def prepare_potential_batch(batch) -> dict:
    """A potential batch as JAX arrays (int32 / bool / float64)."""
    missing = [k for k in POTENTIAL_BATCH_KEYS if k not in batch]
    if missing:
        raise InputError(f"potential batch lacks key(s) {missing}; it needs {list(POTENTIAL_BATCH_KEYS)}")
    return {"numbers": jnp.asarray(batch["numbers"], jnp.int32), "mask": jnp.asarray(batch["mask"], bool),
            **{k: jnp.asarray(batch[k], jnp.float64) for k in ("positions", "energy", "forces")}}


def compute_potential_losses(model: EnergyNet, params, batch, scales, train_config):
    """(total loss, metrics) of energy-and-force matching: ``w_force`` × MSE of the force components
    over real atoms / scale_force² (each atom weighted by 1/m, mean 1, with ``force_weighting:
    inverse_mass``) + ``w_energy`` × MSE of the energy per atom / scale_energy². ``scales`` is the
    (4,) array of ``losses.scale_array`` (x, v, force, energy). Metrics: loss, rmse_force (eV/Å,
    unweighted), rmse_energy_per_atom (eV), mae_force (eV/Å)."""
    mask = batch["mask"]
    energy, forces = energy_and_forces(model, params, batch["numbers"], mask, batch["positions"])
    n_atoms = jnp.maximum(mask.sum(axis=-1), 1).astype(jnp.float64)
    maskf = mask.astype(jnp.float64)[..., None]
    df = (forces - batch["forces"]) * maskf
    n3 = 3.0 * jnp.maximum(mask.sum(), 1)
    mse_f = jnp.sum(df**2) / n3
    weighted_f = mse_f
    if train_config.force_weighting == "inverse_mass":
        inv_m = jnp.where(mask, 1.0 / jnp.asarray(atomic_masses)[batch["numbers"]], 0.0)
        weight = inv_m * jnp.maximum(mask.sum(), 1) / jnp.sum(inv_m)    # mean 1 over real atoms
        weighted_f = jnp.sum(weight[..., None] * df**2) / n3
    de = (energy - batch["energy"]) / n_atoms
    mse_e = jnp.mean(de**2)
    loss = train_config.w_force * weighted_f / scales[2] ** 2 + train_config.w_energy * mse_e / scales[3] ** 2
    metrics = {"loss": loss, "rmse_force": jnp.sqrt(mse_f), "rmse_energy_per_atom": jnp.sqrt(mse_e),
               "mae_force": jnp.sum(jnp.abs(df)) / n3}
    if train_config.w_curvature > 0:
        error = energy - batch["energy"]
        if train_config.curvature_triplets is not None:     # the triplets follow the batch's plain frames
            error = error[error.shape[0] - 3 * int(train_config.curvature_triplets):]
        curvature = energy_error_curvature(error, train_config.curvature_spacing_fs)
        mse_c = jnp.mean(curvature**2)
        loss = loss + train_config.w_curvature * mse_c / train_config.scale_curvature**2
        metrics.update(loss=loss, rms_curvature=jnp.sqrt(mse_c))
    return loss, metrics


def energy_error_curvature(error, spacing_fs: float):
    """Second time difference (G,) eV/fs² of an energy error (3G,) eV over a batch of G frame
    triplets laid out as three blocks (all frames at t − s, all at t, all at t + s; s = ``spacing_fs``).
    Impulse RESPA's energy fluctuates by about τ²/12 times its RMS (``TrainConfig.w_curvature``)."""
    if error.shape[0] % 3:
        raise InputError(f"the curvature term needs a batch of frame triplets (3G frames), got {error.shape[0]}")
    before, centre, after = error.reshape(3, -1)
    return (before - 2.0 * centre + after) / spacing_fs**2


def estimate_potential_scales(batch, config: PotentialConfig, train_config=None) -> dict[str, float]:
    """Loss normalisation from one batch: RMS force component (eV/Å) and RMS of the energy per atom
    after the per-element offsets (eV); config values (scale_force, scale_energy_ev) override."""
    b = {k: np.asarray(v) for k, v in batch.items()}
    mask = b["mask"].astype(bool)
    f_rms = float(np.sqrt(np.mean(b["forces"][mask] ** 2)))
    offsets = config.offset_table()[np.where(mask, b["numbers"], 0)].sum(-1)
    resid = (b["energy"] - offsets) / np.maximum(mask.sum(-1), 1)
    scales = {"x": 1.0, "v": 1.0, "force": max(f_rms, 1e-3), "energy": max(float(np.std(resid)), 1e-3)}
    if train_config is not None:
        for key, name in (("force", "scale_force"), ("energy", "scale_energy_ev")):
            if getattr(train_config, name) is not None:
                scales[key] = float(getattr(train_config, name))
    return scales


def split_molecules(names, data: dict) -> tuple[list[str], list[str]]:
    """(train, validation) molecule names of a frame file: ``data["val_molecules"]`` if given,
    else every ``val_every_nth``-th molecule (default 8) of the sorted names, from ``val_offset``."""
    names = sorted(names)
    if data.get("val_molecules"):
        val = [n for n in names if n in set(data["val_molecules"])]
    else:
        every, offset = int(data.get("val_every_nth", 8)), int(data.get("val_offset", 3))
        val = names[offset::every]
    return [n for n in names if n not in set(val)], val


def padded_rows(m: dict, labels: str, width: int, frames=slice(None)) -> dict:
    """The batch rows of one molecule's ``frames`` (a slice of its frame dict ``m``), its atoms
    zero-padded to ``width``: numbers (F, width) int32, mask, positions and ``labels`` forces
    (F, width, 3), energies (F,)."""
    n = len(m["numbers"])
    x = m["positions"][frames]
    z = np.zeros((len(x), width), np.int32)
    z[:, :n] = m["numbers"]
    pos, frc = np.zeros((len(x), width, 3)), np.zeros((len(x), width, 3))
    pos[:, :n], frc[:, :n] = x, m[f"{labels}_forces"][frames]
    return {"numbers": z, "mask": z > 0, "positions": pos, "forces": frc, "energy": m[f"{labels}_energy"][frames]}


class PotentialBatches:
    """Shuffled padded batches of labelled frames, one size bucket per batch, resumable
    (``get_state`` / ``set_state``, as ``jkstep.model.train.train`` uses).

    ``molecules``: per-molecule dicts of ``fastforce.load_frames``; ``labels`` "xtb", "mmff" or
    "delta" (xtb minus mmff: a Δ-potential's, added by ``potential_data``)."""

    def __init__(self, molecules, labels: str, batch_size: int, buckets=(12, 20, 30), seed: int = 0,
                 shuffle: bool = True, max_frames_per_molecule: int | None = None):
        if labels not in ("xtb", "mmff", "delta"):
            raise InputError(f"data: labels must be 'xtb' or 'mmff', got {labels!r}")
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.buckets = tuple(sorted(int(b) for b in buckets))
        self.arrays = {}
        for b in self.buckets:
            rows = {k: [] for k in POTENTIAL_BATCH_KEYS}
            for m in molecules:
                n = len(m["numbers"])
                lower = max([c for c in self.buckets if c < b], default=0)
                if not (lower < n <= b):
                    continue
                f = len(m["positions"]) if max_frames_per_molecule is None else min(len(m["positions"]),
                                                                                 int(max_frames_per_molecule))
                for k, v in padded_rows(m, labels, b, slice(f)).items():
                    rows[k].append(v)
            if rows["numbers"]:
                self.arrays[b] = {k: np.concatenate(v) for k, v in rows.items()}
        too_big = [m["name"] for m in molecules if len(m["numbers"]) > self.buckets[-1]]
        if too_big:
            raise InputError(f"molecules larger than the largest bucket {self.buckets[-1]}: {too_big[:5]}")
        self.n_frames = sum(len(a["energy"]) for a in self.arrays.values())
        if self.n_frames == 0:
            raise InputError("no frames to batch")
        self._rng = np.random.default_rng(seed)
        self._new_epoch()

    def _new_epoch(self):
        self._epoch_rng_state = self._rng.bit_generator.state
        order = []
        for b, a in self.arrays.items():
            n = len(a["energy"])
            perm = self._rng.permutation(n) if self.shuffle else np.arange(n)
            stop = n - n % self.batch_size if self.shuffle else n
            order += [(b, perm[i:i + self.batch_size]) for i in range(0, stop, self.batch_size)]
        if self.shuffle:
            order = [order[i] for i in self._rng.permutation(len(order))]
        self._order, self._pos = order, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._pos >= len(self._order):
            if not self.shuffle:
                self._new_epoch()
                raise StopIteration
            self._new_epoch()
        b, idx = self._order[self._pos]
        self._pos += 1
        return {k: v[idx] for k, v in self.arrays[b].items()}

    def get_state(self) -> dict:
        return {"epoch_rng_state": self._epoch_rng_state, "pos": int(self._pos)}

    def set_state(self, state) -> None:
        self._rng.bit_generator.state = state["epoch_rng_state"]
        self._new_epoch()
        self._pos = int(state["pos"])

    def once(self):
        """One ordered pass (validation): a fresh unshuffled iterator."""
        return list(PotentialBatches.__new__(PotentialBatches)._from(self))

    def _from(self, other):
        for b, a in other.arrays.items():
            n = len(a["energy"])
            for i in range(0, n, other.batch_size):
                yield {k: v[i:i + other.batch_size] for k, v in a.items()}


class TripletBatches:
    """Frame triplets of a triplet file (``jkstep.data.triplets``) by size bucket: ``take(bucket)``
    gives ``per_batch`` triplets of molecules in that bucket as one batch of 3G frames in three
    blocks (x₋, x, x₊), cycling through a shuffled order per bucket (in file order with
    ``shuffle=False``); resumable (``get_state`` / ``set_state``)."""

    def __init__(self, molecules, labels: str, per_batch: int, buckets=(12, 20, 30), seed: int = 0,
                 shuffle: bool = True):
        self.per_batch, self.shuffle = int(per_batch), bool(shuffle)
        self.arrays = {}
        for b in sorted(buckets):
            lower = max([c for c in buckets if c < b], default=0)
            rows = {k: [] for k in POTENTIAL_BATCH_KEYS}
            for m in molecules:
                n = len(m["numbers"])
                if not (lower < n <= b):
                    continue
                for k, v in padded_rows(m, labels, b).items():      # (3T, ...) → (3, T, ...): the blocks
                    rows[k].append(v.reshape(3, -1, *v.shape[1:]))
            if rows["numbers"]:
                self.arrays[b] = {k: np.concatenate(v, axis=1) for k, v in rows.items()}
        self.n_triplets = sum(a["energy"].shape[1] for a in self.arrays.values())
        self._rngs = {b: np.random.default_rng([seed, b]) for b in self.arrays}   # one stream per bucket
        self._order, self._drawn_from, self._pos = {}, {}, {}
        for b in self.arrays:
            self._new_order(b)

    def _new_order(self, b):
        self._drawn_from[b] = self._rngs[b].bit_generator.state
        n = self.arrays[b]["energy"].shape[1]
        self._order[b] = self._rngs[b].permutation(n) if self.shuffle else np.arange(n)
        self._pos[b] = 0

    def take(self, bucket: int) -> dict:
        if bucket not in self.arrays:
            raise InputError(f"the triplets: file has no molecule of the size bucket of {bucket} atoms")
        idx = []
        while len(idx) < self.per_batch:
            order, pos = self._order[bucket], self._pos[bucket]
            more = order[pos:pos + self.per_batch - len(idx)]
            idx.extend(more)
            self._pos[bucket] = pos + len(more)
            if self._pos[bucket] >= len(order):
                self._new_order(bucket)
        idx = np.asarray(idx)
        return {k: v[:, idx].reshape(-1, *v.shape[2:]) for k, v in self.arrays[bucket].items()}

    def get_state(self) -> dict:
        return {str(b): {"drawn_from": self._drawn_from[b], "pos": int(self._pos[b])} for b in self.arrays}

    def set_state(self, state) -> None:
        for b in self.arrays:
            self._rngs[b].bit_generator.state = state[str(b)]["drawn_from"]
            self._new_order(b)
            self._pos[b] = int(state[str(b)]["pos"])


class WithTriplets:
    """Training batches of plain frames, each followed by triplets of its size bucket (the batch
    layout ``TrainConfig.curvature_triplets`` expects); resumable like its two parts."""

    def __init__(self, frames: PotentialBatches, triplets: TripletBatches):
        self.frames, self.triplets = frames, triplets
        self.n_frames = frames.n_frames

    def __iter__(self):
        return self

    def __next__(self):
        return join_triplets(next(self.frames), self.triplets)

    def get_state(self) -> dict:
        return {"frames": self.frames.get_state(), "triplets": self.triplets.get_state()}

    def set_state(self, state) -> None:
        self.frames.set_state(state["frames"])
        self.triplets.set_state(state["triplets"])


def join_triplets(batch: dict, triplets: TripletBatches) -> dict:
    """``batch`` with ``triplets.per_batch`` triplets of its size bucket appended (3G frames)."""
    more = triplets.take(batch["numbers"].shape[1])
    return {k: np.concatenate([batch[k], more[k]]) for k in POTENTIAL_BATCH_KEYS}


#: the per-frame arrays of a molecule's frame dict (``load_frames``, plus a Δ-potential's labels)
FRAME_ARRAYS = ("positions", "xtb_forces", "mmff_forces", "xtb_energy", "mmff_energy", "source",
                "delta_forces", "delta_energy")


def potential_data(config: PotentialConfig, data: dict, seed: int = 0, triplets_per_batch: int | None = None):
    """(config with per-element energies fitted to the training molecules, train batches,
    validation batch list, provenance) from a train config's ``data:`` section: ``frames`` (the
    compact frame file), ``labels`` (xtb | mmff), ``batch_size``, optional ``val_molecules`` /
    ``val_every_nth``, ``max_frames_per_molecule``, ``max_label_force`` (eV/Å), ``sources``
    (the kinds of frames kept, names of ``jkstep.data.fastforce.SOURCES``; default all) and
    ``triplets`` (a triplet file of ``jkstep.data.triplets``, split by the same molecules: each
    batch is then followed by ``triplets_per_batch`` triplets of its size bucket, and the
    provenance gives ``triplet_spacing_fs`` and ``triplet_label_curvature_rms`` (eV/fs²), the
    training labels' own RMS second time difference, the curvature term's scale)."""
    from jkstep.data.fastforce import SOURCES, load_frames

    if "frames" not in data:
        raise InputError("data: a potential's train config needs frames: (e.g. data/fast_frames.npz)")
    labels = data.get("labels", "xtb")
    if bool(data.get("triplets")) != (triplets_per_batch is not None):
        raise InputError("data: triplets: (a triplet file) and the train config's w_curvature > 0 go together: "
                         "give both or neither")
    molecules = load_frames(data["frames"])
    if data.get("triplets") and not os.path.isfile(data["triplets"]):
        raise InputError(f"data: no triplet file {data['triplets']}: make it with `jkstep generate-fast --config "
                         "configs/fast/triplets.yaml --triplets`, then the same command with --compact "
                         f"{data['triplets']}")
    triplets = load_frames(data["triplets"]) if data.get("triplets") else []
    if any(m.get("blocks") != 3 for m in triplets):
        raise InputError(f"data: triplets: {data['triplets']} is not a triplet file (jkstep generate-fast --triplets)")
    if config.baseline == "mmff":
        # a Δ-potential learns the labels minus MMFF94 (the baseline it is added to at run time)
        if labels != "xtb":
            raise InputError(f"data: a Δ-potential on MMFF94 (baseline: mmff) learns xtb minus mmff labels; "
                             f"labels: {labels} has nothing to learn")
        for m in molecules + triplets:
            m["delta_forces"] = m["xtb_forces"] - m["mmff_forces"]
            m["delta_energy"] = m["xtb_energy"] - m["mmff_energy"]
        labels = "delta"
    # frames where the labels themselves are wild (MMFF94 on a gas-phase zwitterion after xTB moved
    # its proton: forces of 100+ eV/Å) teach a fast force nothing: drop them, counted
    cap_force = float(data.get("max_label_force", 20.0))
    sources = data.get("sources", list(SOURCES))
    if isinstance(sources, str) or not sources or any(name not in SOURCES for name in sources):
        raise InputError(f"data: sources must be a list of frame kinds from {', '.join(SOURCES)}, got {sources!r}")
    codes = [SOURCES.index(name) for name in sources]
    dropped = left_out = 0
    for m in molecules:
        wild = np.max(np.abs(m[f"{labels}_forces"]), axis=(1, 2)) > cap_force
        other_kind = ~np.isin(m["source"], codes)
        dropped, left_out = dropped + int(wild.sum()), left_out + int((other_kind & ~wild).sum())
        keep = ~wild & ~other_kind
        for key in FRAME_ARRAYS:
            if key in m:
                m[key] = m[key][keep]
    molecules = [m for m in molecules if len(m["positions"])]
    train_names, val_names = split_molecules([m["name"] for m in molecules], data)
    train_mols = [m for m in molecules if m["name"] in set(train_names)]
    val_mols = [m for m in molecules if m["name"] in set(val_names)]
    if not train_mols or not val_mols:
        raise InputError("data: the molecule split leaves no training or no validation molecules")
    offsets = fit_element_energies([m["numbers"] for m in train_mols],
                                   [float(np.mean(m[f"{labels}_energy"])) for m in train_mols], config.elements)
    config = dataclasses.replace(config, element_energies=tuple(round(e, 6) for e in offsets))
    batch = int(data.get("batch_size", 16))
    cap = data.get("max_frames_per_molecule")
    train = PotentialBatches(train_mols, labels, batch, seed=seed, max_frames_per_molecule=cap)
    val = PotentialBatches(val_mols, labels, batch, shuffle=False).once()
    val_frames = int(sum(len(b["energy"]) for b in val))
    trip_prov = {}
    if triplets:
        for m in triplets:      # a triplet goes if any of its three frames has wild labels
            t = len(m["positions"]) // 3
            wild = np.max(np.abs(m[f"{labels}_forces"]), axis=(1, 2)).reshape(3, t).max(0) > cap_force
            for key in FRAME_ARRAYS:
                if key in m:
                    m[key] = np.concatenate([block[~wild] for block in np.split(m[key], 3)])
        train_trip = [m for m in triplets if m["name"] in set(train_names) and len(m["positions"])]
        val_trip = [m for m in triplets if m["name"] in set(val_names) and len(m["positions"])]
        if not train_trip or not val_trip:
            raise InputError(f"data: triplets: {data['triplets']} has no triplets of the training or of the "
                             "validation molecules of the frame file")
        spacing = triplets[0]["spacing_fs"]
        # the labels' own curvature: the energy error of a network that is zero
        second = np.concatenate([energy_error_curvature(-m[f"{labels}_energy"], spacing) for m in train_trip])
        train = WithTriplets(train, TripletBatches(train_trip, labels, triplets_per_batch, seed=seed + 1))
        val_t = TripletBatches(val_trip, labels, triplets_per_batch, shuffle=False)
        val = [join_triplets(b, val_t) for b in val]
        trip_prov = {"triplets": os.fspath(data["triplets"]), "triplet_spacing_fs": spacing,
                     "train_triplets": int(sum(len(m["positions"]) // 3 for m in train_trip)),
                     "val_triplets": int(sum(len(m["positions"]) // 3 for m in val_trip)),
                     "triplet_label_curvature_rms": float(np.sqrt(np.mean(second**2)))}
    # the force error of the other labels (for a Δ-potential: of MMFF94 alone) on the same frames
    other, mine = ("mmff", "xtb") if labels in ("xtb", "delta") else ("xtb", "mmff")
    diff = np.concatenate([(m[f"{other}_forces"] - m[f"{mine}_forces"]).ravel() for m in val_mols])
    per_molecule = {m["name"]: float(np.sqrt(np.mean((m[f"{other}_forces"] - m[f"{mine}_forces"]) ** 2)))
                    for m in val_mols}
    prov = {"frames": os.fspath(data["frames"]), "labels": labels, "train_molecules": len(train_mols),
            "val_molecules": val_names, "train_frames": train.n_frames,
            "val_frames": val_frames,
            "dropped_frames_label_force_above": {"ev_a": cap_force, "frames": dropped},
            "sources": list(sources), "frames_of_other_sources_left_out": left_out,
            f"val_force_rmse_of_{other}_labels_ev_a": float(np.sqrt(np.mean(diff**2))),
            f"val_force_rmse_of_{other}_labels_per_molecule_ev_a": per_molecule, **trip_prov}
    return config, train, val, prov
