import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jkstep  # noqa: E402,F401  (enables float64 before any test touches JAX)
import pytest  # noqa: E402


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
