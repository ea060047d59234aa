"""An ASE front for the hybrid integrator, for people who live in ASE.

``KStepMD(atoms, bundle)`` is an ``ase.md.md.MolecularDynamics``: ``dyn.run(n)`` makes n
macro-steps (k base steps each), keeps ``atoms`` positions and velocities up to date (velocities
converted to ASE's time unit, ≈ 10.18 fs, at this boundary only), attaches a
``SinglePointCalculator`` with the xTB energy and forces of each frame, and writes ordinary
ASE trajectory files and logs through the usual ``trajectory=`` / ``logfile=`` arguments.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.md import MolecularDynamics

from jkstep import units
from jkstep.errors import InputError, SimulationError
from jkstep.kstep import KStepOptions, check_model, kstep_integrator, model_jump
from jkstep.molecule import Molecule
from jkstep.potentials.xtb import xtb_potential


class KStepMD(MolecularDynamics):
    """Hybrid k-step MD of an ASE ``Atoms``.

    Args:
        atoms: the system (its velocities are the start; ``atoms.info['charge'|'spin']`` honoured);
            an isolated molecule: no constraints, no periodic boundary conditions.
        bundle: a loaded model (``jkstep.load_pretrained``); k and dt come from it. Without a
            bundle give ``jump``, ``k`` and ``dt`` (fs), e.g. ``jkstep.kstep.ballistic_jump``.
        potential: energy-and-forces function; default GFN2-xTB of the atoms.
        trajectory, logfile, loginterval: as for every ASE MD class.
        options, changes: a ``jkstep.kstep.KStepOptions`` and keyword changes of its fields
            (guards, ensemble, ...).

    ``dyn.state`` is the integrator's ``KStepState`` (counters included).
    """

    def __init__(self, atoms, bundle=None, *, potential=None, jump=None, k: int | None = None,
                 dt: float | None = None, trajectory=None, logfile=None, loginterval: int = 1,
                 options: KStepOptions | None = None, **changes):
        molecule = Molecule.from_atoms(atoms)
        if atoms.constraints:
            raise InputError("KStepMD cannot honour ASE constraints (FixAtoms, ...): the learned jump moves "
                             "every atom; remove them (del atoms.constraints) or use an ASE integrator")
        if any(atoms.pbc):
            raise InputError("KStepMD runs isolated molecules: set atoms.pbc = False (no periodic cell)")
        if atoms.has("momenta") and not np.isfinite(atoms.get_momenta()).all():
            raise InputError("atoms has NaN or inf velocities: set finite ones (e.g. "
                             "MaxwellBoltzmannDistribution) or none (start at rest)")
        if bundle is not None:
            check_model(bundle, "KStepMD")
            jump, k, dt = model_jump(bundle, molecule.numbers, molecule.masses), bundle.k, bundle.dt
        elif jump is None or k is None or dt is None:
            raise InputError("KStepMD needs a model bundle, or a jump function with its k and dt")
        options = KStepOptions.of(options, "KStepMD", **changes)
        _check_file_argument("trajectory", trajectory)
        _check_file_argument("logfile", logfile)
        self.potential = xtb_potential(molecule) if potential is None else potential
        init, apply = kstep_integrator(jump, self.potential, molecule.numbers, molecule.masses, k, dt, options)
        self._init, self._apply = jax.jit(init), jax.jit(apply)
        self.k, self.base_dt = k, dt
        super().__init__(atoms, timestep=k * dt / units.ASE_TIME_FS, trajectory=trajectory, logfile=logfile,
                         loginterval=loginterval)
        self.state = None
        self._sync()

    def _sync(self):
        """(Re)start the JAX state from the atoms if they were changed from outside."""
        x = self.atoms.get_positions()
        v = units.velocities_from_ase(self.atoms.get_velocities())
        # velocities pass through ASE's momenta (m·v), so compare to round-off, not bitwise
        if self.state is None or not (np.allclose(x, self.state.positions, rtol=0, atol=1e-12)
                                      and np.allclose(v, self.state.velocities, rtol=1e-12, atol=1e-15)):
            self.state = self._init(x, v)
            self._publish()

    def _publish(self):
        s = self.state
        self.atoms.set_positions(np.asarray(s.positions))
        self.atoms.set_velocities(units.velocities_to_ase(np.asarray(s.velocities)))
        self.atoms.calc = SinglePointCalculator(self.atoms, energy=float(s.energy), forces=np.asarray(s.forces))

    def step(self):
        self._sync()
        self.state = self._apply(self.state)
        if bool(self.state.failed):
            raise SimulationError("an xTB force call failed for good (SCF); see the potential's counters()")
        self._publish()


def _check_file_argument(name: str, value) -> None:
    """InputError if a ``trajectory``/``logfile`` path names a directory or lies in a missing one
    (ASE would fail on it only after the integrator was built). Open files, ASE writers and
    ``'-'`` (stdout, for logfile) pass."""
    if not isinstance(value, (str, os.PathLike)) or os.fspath(value) == "-":
        return
    path = os.fspath(value)
    if os.path.isdir(path):
        raise InputError(f"{name}={path!r} is a directory; give a file name (e.g. md.traj)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{name}={path!r}: the directory {parent} does not exist; create it first")
