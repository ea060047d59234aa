"""Reading YAML configs: one reader for every pipeline stage, with one clear error per problem."""

from __future__ import annotations

import dataclasses
import os

from jkstep.errors import InputError


def read_yaml(path) -> dict:
    """The mapping in a YAML file; InputError if the file is missing, unreadable, not YAML or
    not a mapping."""
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"no such config file: {path}")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise InputError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def check_types(cls, data: dict, where: str) -> dict:
    """``data`` with every setting checked against its field's plain type (int, float, bool, str,
    or one of them or None): InputError names ``learning_rate: abc`` here, not deep in a run.
    An int passes for a float, and so does a number YAML reads as a string (PyYAML reads ``1e-4``,
    without a dot, as text); a bool passes only for a bool. Other annotations are not checked."""
    import typing

    hints = typing.get_type_hints(cls)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    out = dict(data)
    for key, value in data.items():
        args = typing.get_args(hints.get(key)) or (hints.get(key),)
        plain = [a for a in args if a in names]
        if not plain or any(a not in names and a is not type(None) for a in args):
            continue
        if value is None and type(None) in args:
            continue
        if any(isinstance(value, a) and (a is bool) == isinstance(value, bool) for a in plain):
            continue
        if float in plain and not isinstance(value, bool):
            try:
                out[key] = float(value)
                continue
            except (TypeError, ValueError):
                pass
        want = " or ".join(names[a] for a in plain) + (" or null" if type(None) in args else "")
        raise InputError(f"{where}: {key} must be {want}, got {value!r}")
    return out


def from_mapping(cls, data, where: str):
    """``cls(**data)``, where every key must be one of ``cls``'s fields and every value passes
    ``check_types``; InputError names ``where`` (a file, or e.g. "model config")."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, data)) - set(known))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)} in {where}; known keys: {', '.join(known)}")
    return cls(**check_types(cls, dict(data), where))


def load_dataclass(cls, path, **overrides):
    """``cls(**settings)`` from a YAML file whose keys must be ``cls``'s fields; ``overrides``
    that are not None replace file values."""
    data = read_yaml(path)
    return from_mapping(cls, {**data, **{k: v for k, v in overrides.items() if v is not None}}, os.fspath(path))
