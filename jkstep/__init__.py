"""jkstep: learned k-step molecular dynamics in JAX, corrected by one GFN-xTB call per jump.

Importing jkstep enables JAX's float64 mode (``jax_enable_x64``): positions, velocities,
energies and forces are float64 in the potentials and integrators.
"""

import jax

jax.config.update("jax_enable_x64", True)

from jkstep.errors import InputError  # noqa: E402
from jkstep.integrate import MDState, langevin, verlet  # noqa: E402
from jkstep.molecule import Molecule  # noqa: E402
from jkstep.potentials.xtb import xtb_potential  # noqa: E402

__all__ = ["InputError", "MDState", "Molecule", "langevin", "verlet", "xtb_potential"]
