import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jkstep  # noqa: E402,F401  (enables float64 before any test touches JAX)
import pytest  # noqa: E402

from jkstep.parallel import compilation_cache_dir, enable_compilation_cache  # noqa: E402

# JAX's persistent compilation cache, apart from the runs' (JKSTEP_JAX_CACHE=off turns both off):
# a repeated inner loop (pytest -m "not slow") skips most XLA compilations; results do not change
enable_compilation_cache(compilation_cache_dir() + "-tests" if compilation_cache_dir().lower() != "off" else "off")


@pytest.fixture(scope="session")
def ethanol():
    return jkstep.Molecule.from_smiles("CCO", seed=0)


@pytest.fixture
def ctrl_c_possible():
    """SIGINT raises KeyboardInterrupt during the test, as in a terminal, also where pytest was
    started with SIGINT ignored (a background job of a non-interactive shell); restored after."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
