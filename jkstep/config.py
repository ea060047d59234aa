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


def load_dataclass(cls, path, **overrides):
    """``cls(**settings)`` from a YAML file whose keys must be ``cls``'s fields; ``overrides``
    that are not None replace file values."""
    data = read_yaml(path)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, data)) - set(known))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)} in {os.fspath(path)}; "
                         f"known keys: {', '.join(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**data)
