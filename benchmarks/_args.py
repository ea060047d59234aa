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


def qm_smiles(parser: argparse.ArgumentParser, names) -> dict:
    """{name: SMILES} of ``names`` from data/qm_molecules.smi; an unknown name is a usage error."""
    from jkstep.data.generate import read_molecules

    smiles = {name: s for s, name in read_molecules("data/qm_molecules.smi")}
    unknown = [m for m in names if m not in smiles]
    if unknown:
        parser.error(f"not in data/qm_molecules.smi: {unknown}")
    return smiles
