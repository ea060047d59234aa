"""argparse types of the benchmark scripts: a count or a length that cannot make a measurement is
refused with a usage line instead of a traceback or a silent empty result."""

import argparse
import math


def positive_int(text: str) -> int:
    """An integer ≥ 1 (a count: replicas, batches, repeats, steps, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a length in ps, a time step in fs, a bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def existing_dir(text: str) -> str:
    """The path of a directory that exists (a data root, a runs' directory)."""
    import os

    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no directory {text}")
    return text
