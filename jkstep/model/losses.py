"""The training loss of the k-step jump and its normalisation.

Loss (all masked to real atoms, each term normalised by a scale): MSE of x_{t+k} (Å), of v_{t+k}
(Å/fs), of the auxiliary forces at t+k (eV/Å), and of the bond lengths after the jump (bonded
pairs: distance at t below ``bond_factor`` × the sum of covalent radii), plus the optional
energy terms (``TrainConfig.w_energy``, ``w_energy_bias``). The scales are measured on the first
training batch (RMS of target minus ballistic jump) unless the train config sets them.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from jkstep import units
from jkstep.errors import InputError
from jkstep.kstep import reversal_corrected
from jkstep.model.batches import prepare_batch
from jkstep.model.config import TrainConfig
from jkstep.model.network import KStepNet, ModelConfig, ballistic_baseline


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
    x_b, v_b = ballistic_baseline(b["masses"], mask, b["positions"], b["velocities"], b["forces"], k, dt_fs)
    n3 = 3.0 * jnp.maximum(mask.sum(), 1)
    maskf = mask[..., None]

    def rms(d):
        return jnp.sqrt(jnp.sum(jnp.where(maskf, d, 0.0) ** 2) / n3)

    de = jump_energy_error(b, x_b, v_b)
    return jnp.stack([rms(b["target_positions"] - x_b), rms(b["target_velocities"] - v_b),
                      rms(b["target_forces"] - b["forces"]), jnp.sqrt(jnp.mean(de**2))])


def jump_energy_error(b, pos, vel):
    """Total-energy error (eV) per molecule (B,) of a predicted state (pos Å, vel Å/fs, each
    (B, N, 3)) against the target of the prepared batch ``b``: KE(vel) − KE(v_{t+k}) −
    Σ_i F_{t+k,i}·(pos_i − x_{t+k,i}) (potential to first order)."""
    maskf = b["mask"][..., None].astype(jnp.float64)
    m = jnp.where(b["mask"], b["masses"], 0.0)[..., None]
    dke = 0.5 * jnp.sum(m * (vel**2 - b["target_velocities"] ** 2) * maskf, axis=(-1, -2)) / units.ACCEL
    dpe = -jnp.sum(b["target_forces"] * (pos - b["target_positions"]) * maskf, axis=(-1, -2))
    return dke + dpe


def corrector_velocity(b, vel, frc, model_config: ModelConfig):
    """The velocity the hybrid integrator makes of a prediction (Å/fs): v' + w·ACCEL·(F_{t+k} − F̂')/m,
    w = k·dt/2 fs, with the stored F_{t+k} standing in for the corrector's xTB call. ``vel`` Å/fs
    and ``frc`` (the predicted F̂', eV/Å) are (B, N, 3), as is the result; padding stays v'."""
    m = jnp.where(b["mask"], b["masses"], 1.0)[..., None]
    w = 0.5 * model_config.jump_fs
    return vel + w * units.ACCEL * (b["target_forces"] - frc) / m * b["mask"][..., None]



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
    With ``train_config.jumps`` > 1 every term is the mean over the window's consecutive jumps.
    Returns (total, metrics): scalars; the ``loss_*`` terms are dimensionless (normalised by the
    scales), the ``rmse_*`` metrics in the units their names give (``rmse_x_a`` Å, ``rmse_v``
    Å/fs, ``rmse_force`` eV/Å, ``rmse_bond_a`` Å, ``rmse_energy_ev`` eV)."""
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


def scale_array(scales: Mapping[str, float]):
    """The loss scales as the (4,) array ``compute_losses`` takes: x Å, v Å/fs, force eV/Å, energy eV."""
    # checkpoints from before the energy loss carry no energy scale; its weight was 0 then
    return jnp.asarray([scales["x"], scales["v"], scales["force"], scales.get("energy", 1.0)], jnp.float64)


_scale_array = scale_array   # the name benchmarks/bench_train.py imports
