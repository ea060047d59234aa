"""MM → QM transfer: start a QM k-step model from an MM checkpoint of the same backbone.

The backbone (embedding, input layers, interaction blocks) is copied as it is. The three output
heads (``head_dx``, ``head_dv``, ``head_force``) are mapped (copied) or re-initialised
(``heads="reinit"``). With ``rescale=True`` every weight whose meaning depends on the
displacement bound, k or dt is rescaled so that the converted network maps the same physical
inputs to the same physical outputs:

- the input layers see ballistic displacements in units of the bound b (v·T/b, ½aT²/b, T = k·dt):
  their kernel rows for v (``vector_in`` and the |v| row of ``scalar_in``) are multiplied by
  (b'/b)/(T'/T), those for a by (b'/b)/(T'/T)², the v·a row by the product — exact, as these
  layers are linear in those inputs, also when k or dt differ (a k = 8 model can start a k = 16
  one; its heads then still predict a 2 fs-shaped correction, which fine-tuning must relearn);
- the heads' last gate layer (their output is linear in it) is multiplied by old/new output
  scale: b for δx (Å), the velocity bound for δv (Å/fs), ``force_scale_ev_a`` for forces — exact
  while the corrections are small against the bounds (the tanh bound itself is not linear).

With equal k, dt and bounds the conversion is the identity. This module only converts weights;
fine-tuning from them is ``jkstep.model.train.finetune`` (at the train config's
``finetune_learning_rate``, optionally with named layers frozen: ``state.frozen_mask``,
``optax.multi_transform`` with ``set_to_zero``; frozen weights and their EMA stay bitwise fixed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jkstep.errors import InputError
from jkstep.model.network import ModelConfig, init_params
from jkstep.model.pretrained import read_checkpoint

HEADS = ("head_dx", "head_dv", "head_force")
#: Config fields that must agree between source and target (they fix the parameter shapes).
BACKBONE_FIELDS = ("features", "layers", "n_rbf")


def _output_scale(config: ModelConfig, head: str) -> float:
    return {"head_dx": config.max_correction_a, "head_dv": config.max_velocity_correction,
            "head_force": config.force_scale_ev_a}[head]


def convert_params(src_params, src_config: ModelConfig, dst_config: ModelConfig, *,
                   heads: str = "map", rescale: bool = True, seed: int = 0):
    """Weights of a ``src_config`` model converted for ``dst_config`` (a new nested dict, float32).

    ``heads``: "map" copies the output heads, "reinit" takes them from a fresh ``dst_config``
    initialisation (``seed``). ``rescale``: see the module doc.
    """
    if heads not in ("map", "reinit"):
        raise InputError(f"heads must be 'map' or 'reinit', got {heads!r}")
    diff = [f"{f}: {getattr(src_config, f)} vs {getattr(dst_config, f)}" for f in BACKBONE_FIELDS
            if getattr(src_config, f) != getattr(dst_config, f)]
    if diff:
        raise InputError("pretrained model has another backbone (" + "; ".join(diff) + "); "
                         "use a model config with the same features, layers and n_rbf")
    fresh = init_params(dst_config, seed=seed)
    params = jax.tree.map(lambda a: jnp.array(a, jnp.float32), dict(src_params))   # new arrays
    if jax.tree.structure(params) != jax.tree.structure(fresh):
        raise InputError("pretrained weights do not have the structure of a jkstep KStepNet")
    for name in HEADS:
        if heads == "reinit":
            params[name] = fresh[name]
        elif rescale:
            ratio = _output_scale(src_config, name) / _output_scale(dst_config, name)
            gate = dict(params[name]["gate_out"])
            params[name] = dict(params[name], gate_out={k: v * ratio for k, v in gate.items()})
    if rescale:
        # the inputs are v·T/b and ½aT²/b: a kernel row times (b'/b)/(T'/T)^p keeps the same
        # pre-activation for the same physical v and a (p = 1 for v, 2 for a)
        r = dst_config.max_correction_a / src_config.max_correction_a
        tv = dst_config.jump_fs / src_config.jump_fs
        sv, sf = r / tv, r / tv**2
        params["vector_in"] = {"kernel": params["vector_in"]["kernel"] * jnp.asarray([sv, sf], jnp.float32)[:, None]}
        row_scale = jnp.asarray([sv, sf, sv * sf, 1.0], jnp.float32)[:, None]
        params["scalar_in"] = dict(params["scalar_in"], kernel=params["scalar_in"]["kernel"] * row_scale)
    return params


def load_converted_params(checkpoint, model_config: ModelConfig, *, heads: str = "map",
                          rescale: bool = True, seed: int = 0, which: str = "best"):
    """Read an (MM) checkpoint's EMA weights through Orbax and convert them for ``model_config``.

    Returns (params, info) where info is a JSON-able record of the source (path, its config,
    heads, rescale, the data section it was trained on and its own ``pretrained_from``, so a chain
    of transfers, e.g. MM -> xTB -> xTB, stays readable) for the new checkpoints' metadata.
    """
    src_params, meta, src_config = read_checkpoint(checkpoint, which)
    params = convert_params(src_params, src_config, model_config, heads=heads, rescale=rescale, seed=seed)
    info = {"path": meta["path"], "model_config": src_config.to_dict(), "heads": heads,
            "rescale": bool(rescale), "elements": list(meta.get("elements", [])),
            "data": (meta.get("data_provenance") or {}).get("data"),
            "pretrained_from": meta.get("pretrained_from")}
    return params, info
