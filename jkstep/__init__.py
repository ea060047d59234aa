"""jkstep: learned k-step molecular dynamics in JAX, corrected by one GFN-xTB call per jump.

Importing jkstep enables JAX's float64 mode (``jax_enable_x64``): positions, velocities,
energies and forces are float64 in the potentials and integrators.
"""

import jax

jax.config.update("jax_enable_x64", True)

from jkstep.errors import InputError  # noqa: E402
from jkstep.integrate import MDState, langevin, verlet  # noqa: E402
from jkstep.kstep import kstep  # noqa: E402
from jkstep.molecule import Molecule  # noqa: E402
from jkstep.potentials.mmff import mmff_potential  # noqa: E402
from jkstep.potentials.xtb import xtb_potential  # noqa: E402
from jkstep.respa import respa  # noqa: E402

__all__ = ["InputError", "MDState", "Molecule", "kstep", "langevin", "learned_potential", "load_pretrained",
           "mmff_potential", "respa", "verlet", "xtb_potential"]


def __getattr__(name):
    # the model stack (flax, orbax) loads only when a model is asked for
    if name == "load_pretrained":
        from jkstep.model.pretrained import load_pretrained

        return load_pretrained
    if name == "learned_potential":
        from jkstep.model.potential import learned_potential

        return learned_potential
    raise AttributeError(f"module 'jkstep' has no attribute {name!r}")
