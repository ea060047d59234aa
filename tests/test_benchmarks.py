"""Every benchmark script starts: its imports resolve and ``--help`` prints its usage, and every
shell script parses. The benchmarks are too long for the suite, so this is what catches a change
to the package that breaks one of them before the next measurement does."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process for all scripts (one jax import): each is run as `python SCRIPT --help` would run it.
_HELP_ALL = r"""
import contextlib, io, os, runpy, sys
bad = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            bad.append(f"{path}: --help exited with {exc.code}")
        elif "usage:" not in out.getvalue():
            bad.append(f"{path}: --help printed no usage")
    except Exception as exc:
        bad.append(f"{path}: {type(exc).__name__}: {exc}")
    else:
        bad.append(f"{path}: --help ran without exiting (no argparse?)")
print("\n".join(bad) or "all ok")
"""


def _scripts(pattern):
    found = sorted(glob.glob(os.path.join(REPO, "benchmarks", pattern)))
    assert found, f"no benchmarks/{pattern} found"
    return found


@pytest.mark.slow
def test_every_benchmark_script_imports_and_prints_its_usage():
    scripts = [p for p in _scripts("*.py") if not os.path.basename(p).startswith("_")]
    result = subprocess.run([sys.executable, "-c", _HELP_ALL, *scripts], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "all ok", result.stdout[-3000:]


def test_every_benchmark_shell_script_parses():
    for path in _scripts("*.sh"):
        result = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{path}: {result.stderr}"
