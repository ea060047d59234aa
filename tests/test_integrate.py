"""Reference integrators: physics, call counting, jit/scan/vmap, units against ASE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units as ase_units
from ase.md.verlet import VelocityVerlet
from jax_md import energy as jmd_energy
from jax_md import space
from tblite.ase import TBLite

import jkstep
from jkstep import analysis, units
from jkstep.potentials.xtb import DEFAULT_ACCURACY, xtb_potential
from jkstep.rollout import runner


def total_energy(frames, masses):
    return np.asarray(frames.energy) + analysis.kinetic_energy(frames.velocities, masses)


def test_verlet_matches_ase_velocity_verlet(ethanol):
    """Same trajectory as ASE's VelocityVerlet with tblite's ASE calculator: proves the
    Å/fs ↔ ASE time-unit conversion and the force → acceleration factor."""
    v0 = ethanol.thermal_velocities(300.0, seed=2)
    atoms = ethanol.to_atoms(velocities=v0)
    atoms.calc = TBLite(method="GFN2-xTB", accuracy=DEFAULT_ACCURACY, verbosity=0)
    VelocityVerlet(atoms, timestep=0.5 * ase_units.fs).run(10)

    pot = xtb_potential(ethanol)
    init, apply = jkstep.verlet(pot, ethanol.masses, dt=0.5)
    state, _ = runner(apply, 1, 10)(init(ethanol.positions, v0))
    assert np.abs(np.asarray(state.positions) - atoms.positions).max() < 1e-6
    v_ase = units.velocities_from_ase(atoms.get_velocities())
    assert np.abs(np.asarray(state.velocities) - v_ase).max() < 1e-7


def test_one_xtb_call_per_verlet_step_and_energy_conservation(ethanol):
    pot = xtb_potential(ethanol)
    v0 = ethanol.thermal_velocities(300.0, seed=0)

    def run(dt, n):
        init, apply = jkstep.verlet(pot, ethanol.masses, dt=dt)
        calls = pot.calls
        state, frames = runner(apply, n, 1)(init(ethanol.positions, v0))
        assert pot.calls - calls == n + 1 == int(state.force_calls)
        assert int(state.step) == n and not bool(state.failed)
        return total_energy(frames, ethanol.masses) / units.KJ_MOL

    e_fine = run(0.25, 400)  # 0.1 ps
    e_coarse = run(2.0, 50)  # the same 0.1 ps at the k = 8 budget
    t = np.arange(1, 401) * 0.25
    assert np.std(e_fine) < 0.02  # kJ/mol; REFERENCE.md: 0.010 for alanine dipeptide over 2 ps
    assert abs(analysis.energy_drift(t, e_fine * units.KJ_MOL)) < 0.1  # kJ/mol/ps
    assert np.std(e_coarse) > 10 * np.std(e_fine)  # 2 fs Verlet fluctuates far more


@pytest.mark.slow
def test_batched_replicas_equal_single_runs_and_count_exactly(ethanol):
    pot = xtb_potential(ethanol)
    init, apply = jkstep.verlet(pot, ethanol.masses, dt=0.25)
    v0 = np.stack([ethanol.thermal_velocities(300.0, seed=s) for s in range(3)])
    x0 = np.broadcast_to(ethanol.positions, v0.shape)
    states = jax.vmap(init)(x0, v0)
    states, frames = runner(apply, 5, 1, batched=True)(states)
    assert pot.calls == 3 * 6
    assert frames.positions.shape == (3, 5, 9, 3)
    for r in range(3):
        single, _ = runner(apply, 5, 1)(init(ethanol.positions, v0[r]))
        np.testing.assert_allclose(states.positions[r], single.positions, atol=1e-7)
    np.testing.assert_array_equal(states.force_calls, [6, 6, 6])


@pytest.mark.slow
def test_any_jax_energy_works_for_example_jax_md():
    """A 13-atom Lennard-Jones argon cluster from jax-md: energy-only functions get forces by grad."""
    displacement, _ = space.free()
    lj = jmd_energy.lennard_jones_pair(displacement, sigma=3.4, epsilon=0.0104)
    rng = np.random.default_rng(0)
    grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(2)], float)[:13] * 3.8
    masses = np.full(13, 39.948)
    init, apply = jkstep.verlet(lj, masses, dt=2.0)
    state = init(grid, 0.002 * rng.normal(size=(13, 3)))
    state, frames = runner(apply, 500, 1)(state)
    e = total_energy(frames, masses)
    assert np.std(e) < 1e-3 * abs(np.mean(np.asarray(frames.energy)))
    assert int(state.force_calls) == 501


def test_verlet_matches_jax_md_nve_step_for_step():
    """Cross-check against jax-md's own velocity Verlet (``simulate.nve``) on the same LJ cluster:
    jax-md has no units, so its energy is given in amu Å²/fs² (eV × ACCEL) and its dt in fs."""
    from jax_md import simulate

    displacement, shift = space.free()
    lj = jmd_energy.lennard_jones_pair(displacement, sigma=3.4, epsilon=0.0104)
    rng = np.random.default_rng(1)
    grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(2)], float)[:13] * 3.8
    x0 = grid + 0.05 * rng.normal(size=grid.shape)
    v0 = 0.004 * rng.normal(size=(13, 3))
    masses = np.full(13, 39.948)
    init, apply = jkstep.verlet(lj, masses, dt=2.0)
    _, frames = runner(apply, 200, 1)(init(x0, v0))
    jmd_init, jmd_apply = simulate.nve(lambda r: units.ACCEL * lj(r), shift, dt=2.0)
    state = jmd_init(jax.random.PRNGKey(0), jnp.asarray(x0), 0.0, mass=jnp.asarray(masses),
                     momenta=jnp.asarray(masses[:, None] * v0))
    positions = [np.asarray(state.position)]
    for _ in range(200):
        state = jmd_apply(state)
        positions.append(np.asarray(state.position))
    moved = np.abs(np.asarray(frames.positions[-1]) - x0).max()
    assert moved > 0.5          # the atoms move, so agreement is not trivial
    np.testing.assert_allclose(np.asarray(frames.positions), np.stack(positions[1:]), atol=1e-9)  # frames: after each step
    np.testing.assert_allclose(np.asarray(frames.velocities[-1]), np.asarray(state.velocity), atol=1e-10)


@pytest.mark.slow
def test_langevin_reaches_the_right_temperature():
    """BAOAB on independent harmonic wells (cheap JAX energy): <KE> = 3N/2 kT within error."""
    n, temp = 24, 300.0
    masses = jnp.asarray(np.tile([1.008, 12.011, 15.999], n // 3))

    def harmonic(x):
        return 0.5 * 2.0 * jnp.sum(x**2)  # 2 eV/Å² wells

    init, apply = jkstep.langevin(harmonic, masses, dt=0.5, temperature=temp, friction=0.05)
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    states = jax.vmap(init, in_axes=(None, None, 0))(jnp.zeros((n, 3)), jnp.zeros((n, 3)), keys)
    states, _ = runner(apply, 1, 2000, batched=True)(states)  # 1 ps burn-in
    _, frames = runner(apply, 400, 10, batched=True)(states)
    t = analysis.temperature(np.asarray(frames.velocities), np.asarray(masses), dof=3 * n)
    blocks = t.reshape(8, 20, 20).mean(-1).ravel()  # roughly independent 100 fs blocks
    err = blocks.std() / np.sqrt(blocks.size)
    assert abs(t.mean() - temp) < max(4 * err, 0.02 * temp), (t.mean(), err)
    # the same seed gives the same trajectory
    again, _ = runner(apply, 1, 2000, batched=True)(
        jax.vmap(init, in_axes=(None, None, 0))(jnp.zeros((n, 3)), jnp.zeros((n, 3)), keys))
    np.testing.assert_array_equal(again.positions, states.positions)


def test_langevin_with_xtb_makes_one_call_per_step(ethanol):
    pot = xtb_potential(ethanol)
    init, apply = jkstep.langevin(pot, ethanol.masses, dt=0.5, temperature=300.0)
    state, _ = runner(apply, 1, 20)(init(ethanol.positions, np.zeros((9, 3)), jax.random.PRNGKey(1)))
    assert pot.calls == 21 == int(state.force_calls)
    assert float(analysis.temperature(np.asarray(state.velocities), ethanol.masses)) > 10.0


def test_a_failed_trajectory_freezes_and_counts_no_phantom_calls(ethanol, monkeypatch):
    from tblite.exceptions import TBLiteRuntimeError
    from tblite.interface import Calculator

    pot = xtb_potential(ethanol)
    init, apply = jkstep.verlet(pot, ethanol.masses, dt=0.25)
    state = init(ethanol.positions, ethanol.thermal_velocities(300.0, 0))
    state, _ = runner(apply, 1, 2)(state)
    good_positions = np.asarray(state.positions)

    def broken(calc, res=None, copy=False):
        raise TBLiteRuntimeError("SCF not converged (injected)")

    monkeypatch.setattr(Calculator, "singlepoint", broken)
    state, _ = runner(apply, 1, 6)(state)
    assert bool(state.failed) and int(state.step) == 3
    assert int(state.force_calls) == 4  # three good calls and the failed request; none after it
    assert pot.failed == 1 and pot.calls == 3 + 2  # the failed request: first try + fresh-guess retry
    assert np.all(np.isfinite(good_positions))
    frozen = np.asarray(state.positions)
    state, _ = runner(apply, 1, 2)(state)  # frozen: no move, no call
    np.testing.assert_array_equal(np.asarray(state.positions), frozen)
    assert np.all(np.isfinite(frozen)) and int(state.force_calls) == 4 and pot.calls == 5


@pytest.mark.parametrize("make, match", [
    (lambda pot, m: jkstep.verlet(pot, m, dt=0.0), "dt \\(fs\\) must be a finite value > 0, got 0.0"),
    (lambda pot, m: jkstep.verlet(pot, m, dt=float("nan")), "dt \\(fs\\) must be a finite value > 0"),
    (lambda pot, m: jkstep.langevin(pot, m, dt=-0.25), "dt \\(fs\\) must be a finite value > 0"),
    (lambda pot, m: jkstep.langevin(pot, m, temperature=-1.0), "temperature \\(K\\) must be a finite value ≥ 0"),
    (lambda pot, m: jkstep.langevin(pot, m, friction=-0.01), "friction \\(1/fs\\) must be a finite value ≥ 0"),
    (lambda pot, m: jkstep.verlet(pot, m, dt="a"), "dt \\(fs\\) must be a number, got 'a'"),
    (lambda pot, m: jkstep.verlet(pot, -m, dt=0.25), "masses must be a 1-D array of positive finite values"),
    (lambda pot, m: jkstep.langevin(pot, 0 * m), "masses must be a 1-D array of positive finite values"),
    (lambda pot, m: jkstep.verlet(None, m), "the potential must be a function of positions"),
])
def test_integrator_settings_are_checked(make, match):
    mol = jkstep.Molecule.from_smiles("O")
    with pytest.raises(jkstep.InputError, match=match):
        make(jkstep.mmff_potential(mol), mol.masses)


def test_init_refuses_positions_that_do_not_fit_the_masses():
    mol, other = jkstep.Molecule.from_smiles("CCO"), jkstep.Molecule.from_smiles("CO")
    init, _ = jkstep.verlet(jkstep.mmff_potential(mol), other.masses)
    with pytest.raises(jkstep.InputError, match=r"positions must have shape \(6, 3\) for the 6 masses"):
        init(mol.positions, mol.thermal_velocities(300.0))


def test_init_refuses_velocities_that_are_not_finite():
    mol = jkstep.Molecule.from_smiles("O")
    init, _ = jkstep.verlet(jkstep.mmff_potential(mol), mol.masses)
    with pytest.raises(jkstep.InputError, match="velocities contain NaN"):
        init(mol.positions, np.full((3, 3), np.nan))
