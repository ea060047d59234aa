import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jkstep  # noqa: E402,F401  (enables float64 before any test touches JAX)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ethanol():
    return jkstep.Molecule.from_smiles("CCO", seed=0)
