"""Load a trained k-step model: a shipped name (``jkstep/pretrained/<name>/``) or a checkpoint path.

A checkpoint path may be a training run's directory (``out_dir`` with ``best/`` and ``latest/``:
the best step is used, else the latest), one manager directory (``out_dir/best``: its newest step)
or one step directory (``out_dir/best/1200``). Everything needed is in the checkpoint's JSON
metadata (model config, k, dt, units, elements seen in training): no YAML is read.

Units: Å, fs, eV, amu (velocities Å/fs, forces eV/Å).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from ase.data import chemical_symbols

from jkstep.errors import InputError
from jkstep.model.network import KStepNet, ModelConfig, init_params

#: Where shipped checkpoints live: ``jkstep/pretrained/<name>/``.
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"


def _shipped_dirs() -> list[Path]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p for p in PRETRAINED_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _is_fast_force(directory: Path) -> bool:
    """Whether a shipped directory holds a learned fast force (its record says kind: potential)."""
    import json

    try:
        with open(directory / "provenance.json") as fh:
            return json.load(fh).get("kind") == "potential"
    except (OSError, ValueError, AttributeError):
        return False


def shipped_names() -> list[str]:
    """Names of the k-step models shipped in ``jkstep/pretrained/`` (the learned fast forces
    shipped beside them: ``shipped_fast_forces``)."""
    return [p.name for p in _shipped_dirs() if not _is_fast_force(p)]


def shipped_fast_forces() -> list[str]:
    """Names of the learned fast forces (potentials for ``jkstep.respa``) shipped in ``jkstep/pretrained/``."""
    return [p.name for p in _shipped_dirs() if _is_fast_force(p)]


def shipped_record(name: str) -> dict:
    """The record beside a shipped model, ``jkstep/pretrained/<name>/provenance.json`` (its
    metadata without the training history: configs, data provenance, evaluations, notes)."""
    import json

    if name not in shipped_names():
        raise InputError(f"no shipped model is named {name!r}; shipped: {', '.join(shipped_names()) or 'none'}")
    path = PRETRAINED_DIR / name / "provenance.json"
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"the record of the shipped model {name} ({path}) cannot be read ({exc}): "
                         "reinstall jkstep") from None


def checkpoint_steps(directory) -> list[int]:
    """The saved steps of one Orbax checkpoint manager directory (e.g. ``OUT/latest``), ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()
                  and (p / "meta").exists())


def resolve_checkpoint(name_or_path, which: str = "best") -> tuple[Path, int]:
    """(manager directory, step) of a shipped name or a checkpoint path (see module doc).

    ``which``: ``"best"`` or ``"latest"`` where a run directory holds both.
    """
    if which not in ("best", "latest"):
        raise InputError(f"which must be 'best' or 'latest', got {which!r}")
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
        raise InputError(f"a model is named by a shipped name ({', '.join(shipped_names()) or 'none yet'}) "
                         f"or a checkpoint path, got {name_or_path!r}")
    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if not path.exists():
        names = shipped_names()
        looks_like_path = os.sep in raw or raw.startswith(".") or raw.startswith("~")
        if not looks_like_path and (PRETRAINED_DIR / raw).is_dir():
            path = PRETRAINED_DIR / raw
        else:
            shipped = ", ".join(names) if names else "none yet"
            raise InputError(f"no pretrained model {raw!r}: shipped models: {shipped}; the path of a "
                             "checkpoint directory (a training run's out_dir, or its best/ or latest/) "
                             "works too")
    path = path.resolve()
    if (path / "meta").exists() and path.name.isdigit():
        return path.parent, int(path.name)
    order = (which, "latest" if which == "best" else "best")
    for sub in order:
        steps = checkpoint_steps(path / sub)
        if steps:
            return path / sub, steps[-1]
    steps = checkpoint_steps(path)
    if steps:
        return path, steps[-1]
    raise InputError(f"{path} holds no jkstep checkpoint (expected best/ or latest/ with numbered steps, "
                     "as written by jkstep.model.train)")


def _damaged(step_dir: Path, what: str) -> InputError:
    """The one error for a checkpoint that cannot be read, with how to get a good copy."""
    shipped = PRETRAINED_DIR.resolve() in Path(step_dir).resolve().parents
    fix = ("reinstall jkstep (or git checkout its jkstep/pretrained/)" if shipped
           else "restore it from a backup, or train or `jkstep export` it again")
    return InputError(f"the checkpoint {step_dir} is incomplete or corrupt ({what}); {fix}")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _restore(step_dir: Path, **items):
    """Restore the named items of one step directory (read-only: no manager, nothing written)."""
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            return checkpointer.restore(os.fspath(step_dir), args=ocp.args.Composite(**items))
    except Exception as exc:  # noqa: BLE001 - TensorStore reports damaged weight files as a bare Exception
        raise _damaged(step_dir, f"{', '.join(items)}: {_first_line(exc)}") from None


def _shapes(tree) -> dict:
    """{leaf path: shape} of a parameter tree, or of Orbax's metadata of one."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def _check_weight_shapes(step_dir: Path, target) -> None:
    """InputError unless the stored EMA weights have the shapes of ``target``; checked from Orbax's
    metadata, as a failed strict restore leaves asyncio noise ("Event loop is closed") on stderr."""
    try:
        stored = _shapes(ocp.StandardCheckpointHandler().metadata(step_dir / "ema").tree)
    except Exception as exc:  # noqa: BLE001 - as in _restore
        raise _damaged(step_dir, f"ema: {_first_line(exc)}") from None
    wanted = _shapes(target)
    if stored != wanted:
        diff = next(k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k))
        raise _damaged(step_dir, f"ema: the weights do not fit the model config in its metadata: {diff} is "
                                 f"{stored.get(diff, 'missing')} stored, {wanted.get(diff, 'absent')} in the config")


def read_meta(name_or_path, which: str = "best") -> dict:
    """The JSON metadata of a checkpoint."""
    directory, step = resolve_checkpoint(name_or_path, which)
    return dict(_restore(directory / str(step), meta=ocp.args.JsonRestore())["meta"])


def read_checkpoint(name_or_path, which: str = "best") -> tuple[Any, dict, ModelConfig]:
    """(EMA params, metadata, model config) of a checkpoint, restored through Orbax into the
    shapes of the config recorded in its metadata."""
    directory, step = resolve_checkpoint(name_or_path, which)
    step_dir = directory / str(step)
    meta = dict(_restore(step_dir, meta=ocp.args.JsonRestore())["meta"])
    if meta.get("kind") == "potential":
        raise InputError(f"{step_dir} is a learned fast force (a potential), not a k-step model: use it with "
                         "jkstep.learned_potential(name, mol) or --integrator respa --fast NAME")
    if "model_config" not in meta:
        raise InputError(f"{step_dir} has no model config in its metadata")
    config = ModelConfig.from_dict(meta["model_config"])
    target = init_params(config)
    _check_weight_shapes(step_dir, target)
    params = _restore(step_dir, ema=ocp.args.StandardRestore(target))["ema"]
    params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), params)   # uncommitted: no re-jit
    meta["path"] = os.fspath(step_dir)
    return params, meta, config


def _read_any(name_or_path, which: str = "best"):
    """(EMA params, metadata) of any checkpoint: a k-step model through ``read_checkpoint``, a
    learned fast force (kind "potential") with its weights as stored, for copying them (loading
    one for use is ``jkstep.learned_potential``, which checks them against its config)."""
    directory, step = resolve_checkpoint(name_or_path, which)
    step_dir = directory / str(step)
    meta = dict(_restore(step_dir, meta=ocp.args.JsonRestore())["meta"])
    if meta.get("kind") != "potential":
        return read_checkpoint(name_or_path, which)[:2]
    params = _restore(step_dir, ema=ocp.args.StandardRestore())["ema"]
    meta["path"] = os.fspath(step_dir)
    return params, meta


@dataclasses.dataclass(frozen=True, eq=False)
class ModelBundle:
    """A loaded k-step model.

    Attributes:
        model: the Flax module (``KStepNet``).   params: its EMA weights (float32).
        config: ``ModelConfig``.   k: base steps per jump.   dt: base time step (fs).
        elements: atomic numbers seen in training.   units: units of every array.
        meta: the checkpoint's full metadata (includes ``path``).

    ``bundle.apply(params, numbers, mask, masses, positions, velocities, forces)`` is a pure,
    jittable function (params None: the bundle's own) returning (positions Å, velocities Å/fs,
    forces eV/Å) at t+k, float64; ``bundle.predict(...)`` is the jitted one with the bundle's
    params. Inputs batched (B, N) / (B, N, 3) with a padding mask, or one molecule (N,) / (N, 3)
    (mask may be None).
    """

    model: KStepNet
    params: Any
    config: ModelConfig
    k: int
    dt: float
    elements: tuple[int, ...]
    units: dict
    meta: dict

    def apply(self, params, numbers, mask, masses, positions, velocities, forces):
        """The jump of ``KStepNet`` with ``params`` (None: the bundle's): numbers (B, N) int,
        mask (B, N) bool, masses (B, N) amu, positions Å, velocities Å/fs, forces eV/Å (B, N, 3)
        at t → (positions, velocities, forces) at t + k·dt, each (B, N, 3), same units (one
        molecule: (N,) / (N, 3) in and out)."""
        params = self.params if params is None else params
        return self.model.apply({"params": params}, numbers, mask, masses, positions, velocities, forces)

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self.apply)

    def predict(self, numbers, mask, masses, positions, velocities, forces):
        """``apply`` with the bundle's params, jitted."""
        return self._jitted(self.params, numbers, mask, masses, positions, velocities, forces)

    def check_elements(self, numbers) -> None:
        """Raise InputError if ``numbers`` (any shape; 0 = padding) holds an element the model never saw."""
        z = {int(e) for e in np.unique(np.asarray(numbers)) if int(e) > 0}
        unseen = sorted(z - set(self.elements))
        if unseen:
            def names(zs):
                return ", ".join(f"{chemical_symbols[e]} (Z={e})" for e in zs)
            raise InputError(f"the model {self.meta.get('path', '')} never saw {names(unseen)} in training; "
                             f"it knows {names(self.elements)}")


def load_pretrained(name_or_path, which: str = "best") -> ModelBundle:
    """Load a shipped model by name, or a checkpoint directory by path, as a ``ModelBundle``.

    Raises InputError for an unknown name (listing the shipped ones) or a directory that holds no
    checkpoint.
    """
    params, meta, config = read_checkpoint(name_or_path, which)
    elements = tuple(int(z) for z in meta.get("elements") or config.elements)
    return ModelBundle(model=KStepNet(config), params=params, config=config, k=config.k,
                       dt=config.dt_fs, elements=elements, units=dict(meta.get("units", {})), meta=meta)


def _same_weights(step_dir: Path, params) -> bool:
    """Whether ``step_dir`` holds a checkpoint whose EMA weights equal ``params`` bit for bit."""
    if not (step_dir / "ema").is_dir():
        return False
    try:
        old = _read_any(step_dir)[0]
    except InputError:
        return False
    a, b = jax.tree.leaves(old), jax.tree.leaves(params)
    return len(a) == len(b) and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
                                    for x, y in zip(a, b))


def is_model_directory(path) -> bool:
    """Whether ``path`` is a directory written by ``export_checkpoint`` (provenance.json and
    numbered step directories, nothing else)."""
    path = Path(path)
    if not (path / "provenance.json").is_file():
        return False
    others = [p for p in path.iterdir() if p.name != "provenance.json"]
    return bool(others) and all(p.is_dir() and p.name.isdigit() for p in others)


def check_export_destination(destination) -> None:
    """InputError unless ``destination`` is free, an empty directory or an exported model (which
    an export replaces): anything else there would be deleted."""
    path = Path(destination)
    if not path.exists():
        return
    if not path.is_dir():
        raise InputError(f"{path} is a file; an export writes a model directory: give a new path")
    if any(path.iterdir()) and not is_model_directory(path):
        raise InputError(f"{path} exists and is not an exported jkstep model (provenance.json and "
                         "numbered steps); an export replaces its target whole, so give a new or empty directory")


def export_checkpoint(name_or_path, destination, extra_meta: dict | None = None, which: str = "best") -> Path:
    """Write a slim copy of a checkpoint (EMA weights + metadata, no optimizer state) to
    ``destination/<step>/``, and its metadata without the training history to
    ``destination/provenance.json``, as shipped in ``jkstep/pretrained/<name>/``. ``extra_meta``
    (data provenance, evaluations, notes) is added to the metadata. Returns the step directory.

    The copy is written beside ``destination`` and swapped in whole, so an interrupted export
    leaves the previous one intact; the source may be ``destination`` itself (re-recording a
    shipped model: where the weights are unchanged their files are kept as they were)."""
    import json
    import shutil

    check_export_destination(destination)
    params, meta = _read_any(name_or_path, which)
    meta.pop("path", None)
    meta.update(extra_meta or {})
    step = int(meta.get("step", resolve_checkpoint(name_or_path, which)[1]))
    destination = Path(destination).resolve()
    tmp, old = (destination.with_name(f".{destination.name}.{suffix}") for suffix in ("tmp", "old"))
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(os.fspath(tmp / str(step)), args=ocp.args.Composite(
            ema=ocp.args.StandardSave(jax.tree.map(np.asarray, params)), meta=ocp.args.JsonSave(meta)))
    if _same_weights(destination / str(step), params):
        # re-recording a shipped model: its weight files stay byte for byte (Orbax names them anew)
        shutil.rmtree(tmp / str(step) / "ema")
        shutil.copytree(destination / str(step) / "ema", tmp / str(step) / "ema")
    with open(tmp / "provenance.json", "w") as fh:
        json.dump({k: v for k, v in meta.items() if k not in ("history", "data_state")}, fh, indent=2)
        fh.write("\n")
    if destination.exists():
        destination.rename(old)
    tmp.rename(destination)
    shutil.rmtree(old, ignore_errors=True)
    return destination / str(step)
