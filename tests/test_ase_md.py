"""The ASE front gives the JAX integrator's trajectory; velocities cross the boundary correctly."""

import numpy as np
import pytest
from ase import units as ase_units
from ase.io import read

import jkstep
from jkstep.ase_md import KStepMD
from jkstep.kstep import Guards, ballistic_jump, kstep_integrator
from jkstep.rollout import runner


@pytest.mark.slow
def test_ase_front_matches_jax_integrator(ethanol, tmp_path):
    v0 = ethanol.thermal_velocities(300.0, seed=4)
    atoms = ethanol.to_atoms(velocities=v0)
    guards = Guards(max_energy_drift=None)  # every jump accepted: the comparison is of the plumbing
    dyn = KStepMD(atoms, jump=ballistic_jump(ethanol.masses, 8, 0.25), k=8, dt=0.25,
                  trajectory=str(tmp_path / "md.traj"), guards=guards)
    assert abs(dyn.dt / ase_units.fs - 2.0) < 1e-12  # ASE's timestep is one macro-step, 2 fs
    dyn.run(6)

    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(ballistic_jump(ethanol.masses, 8, 0.25), pot, ethanol.numbers,
                                   ethanol.masses, 8, 0.25, guards=guards)
    ref, _ = runner(apply, 6, 1)(init(ethanol.positions, v0))
    np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-9)
    np.testing.assert_allclose(atoms.get_velocities() * ase_units.fs, ref.velocities, atol=1e-11)
    assert dyn.potential.calls == 7 == int(dyn.state.force_calls) and int(dyn.state.accepted) == 6

    frames = read(tmp_path / "md.traj", index=":")
    assert len(frames) == 7
    np.testing.assert_allclose(frames[-1].get_potential_energy(), float(ref.energy), atol=1e-9)
    # kinetic energy through ASE equals ours: the velocity unit is right
    ke = 0.5 * np.sum(ethanol.masses[:, None] * np.asarray(ref.velocities) ** 2) / ase_units.fs**2
    np.testing.assert_allclose(frames[-1].get_kinetic_energy(), ke, rtol=1e-10)


def test_ase_front_rejects_what_it_cannot_honour(tmp_path):
    import pytest
    from ase.build import molecule
    from ase.constraints import FixAtoms

    jump = dict(jump=ballistic_jump(np.ones(3), 8, 0.25), k=8, dt=0.25, potential=lambda x: 0.0 * x.sum())
    fixed = molecule("H2O")
    fixed.set_constraint(FixAtoms([0]))
    with pytest.raises(jkstep.InputError, match="constraints"):
        KStepMD(fixed, **jump)
    periodic = molecule("H2O", cell=[5, 5, 5], pbc=True)
    with pytest.raises(jkstep.InputError, match="pbc"):
        KStepMD(periodic, **jump)
    nan = molecule("H2O")
    nan.set_velocities(np.full((3, 3), np.nan))
    with pytest.raises(jkstep.InputError, match="NaN"):
        KStepMD(nan, **jump)
    with pytest.raises(jkstep.InputError, match="loaded model"):
        KStepMD(molecule("H2O"), "gfn2-k8")
    with pytest.raises(jkstep.InputError, match="unknown option.*bogus"):
        KStepMD(molecule("H2O"), bogus=1, **jump)
    with pytest.raises(jkstep.InputError, match="trajectory=.* is a directory"):
        KStepMD(molecule("H2O"), trajectory=tmp_path, **jump)
    with pytest.raises(jkstep.InputError, match="logfile=.* does not exist"):
        KStepMD(molecule("H2O"), logfile=tmp_path / "no" / "md.log", **jump)
