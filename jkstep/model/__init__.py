"""The learned k-step jump: network, training, checkpoints, pretrained models and MM → QM transfer.

``network`` (the Flax model and its config), ``train`` (optax loop, EMA, validation, Orbax
checkpoints), ``pretrained`` (``load_pretrained``), ``transfer`` (MM → QM weights, freezing).
Units: Å, fs, eV, amu (velocities Å/fs, forces eV/Å).
"""

from jkstep.model.network import (  # noqa: F401
    UNITS, KStepNet, ModelConfig, ballistic_baseline, default_max_correction, init_params)

_LAZY = {"ModelBundle", "load_pretrained", "shipped_names"}  # pull in Orbax only when used


def __getattr__(name):
    if name in _LAZY:
        from jkstep.model import pretrained
        return getattr(pretrained, name)
    raise AttributeError(f"module 'jkstep.model' has no attribute {name!r}")


__all__ = ["UNITS", "KStepNet", "ModelBundle", "ModelConfig", "ballistic_baseline",
           "default_max_correction", "init_params", "load_pretrained", "shipped_names"]
