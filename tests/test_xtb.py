"""The xTB potential against tblite itself, under jit/vmap/scan/grad, with exact call counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tblite.ase import TBLite
from tblite.exceptions import TBLiteRuntimeError
from tblite.interface import Calculator

import jkstep
from jkstep import InputError, Molecule, units
from jkstep.potentials.xtb import DEFAULT_ACCURACY, xtb_potential

MOLECULES = ["CCO", "NCC(=O)O", "c1ccccc1", "C[NH3+]"]


def tblite_direct(mol, positions, method="GFN2-xTB", accuracy=DEFAULT_ACCURACY):
    calc = Calculator(method, mol.numbers, positions / units.BOHR, charge=float(mol.charge), uhf=mol.spin)
    calc.set("verbosity", 0)
    calc.set("accuracy", accuracy)
    res = calc.singlepoint()
    return res.get("energy") * units.HARTREE, -res.get("gradient") * units.HARTREE / units.BOHR


@pytest.fixture(scope="module", params=MOLECULES)
def mol(request):
    return Molecule.from_smiles(request.param, seed=0)


def geometries(mol, n, scale=0.03, seed=0):
    rng = np.random.default_rng(seed)
    return mol.positions + scale * rng.normal(size=(n, *mol.positions.shape))


def test_equals_tblite_and_its_ase_calculator(mol):
    pot = xtb_potential(mol, restart=False)
    for x in geometries(mol, 2):
        e, f = pot(x)
        e_ref, f_ref = tblite_direct(mol, x)
        assert abs(float(e) - e_ref) < 1e-8
        assert np.abs(np.asarray(f) - f_ref).max() < 1e-8
        atoms = mol.to_atoms(positions=x)
        atoms.calc = TBLite(method="GFN2-xTB", accuracy=DEFAULT_ACCURACY, charge=mol.charge,
                            multiplicity=mol.spin + 1, verbosity=0)
        assert abs(float(e) - atoms.get_potential_energy()) < 1e-8
        assert np.abs(np.asarray(f) - atoms.get_forces()).max() < 1e-8
    assert pot.calls == 2


def test_restart_agrees_with_fresh_scf(ethanol):
    pot = xtb_potential(ethanol, restart=True)
    for x in geometries(ethanol, 4, scale=0.01):
        e, f = pot(x)
        e_ref, f_ref = tblite_direct(ethanol, x)
        assert abs(float(e) - e_ref) < 1e-5
        assert np.abs(np.asarray(f) - f_ref).max() < 1e-5


def test_forces_are_minus_the_energy_gradient_by_finite_differences(ethanol):
    pot = xtb_potential(ethanol, restart=False, accuracy=1e-4)
    x0 = geometries(ethanol, 1, seed=5)[0]
    _, f = pot(x0)
    h = 1e-4
    for atom, axis in [(0, 0), (2, 1), (8, 2)]:
        dx = np.zeros_like(x0)
        dx[atom, axis] = h
        fd = -(float(pot(x0 + dx)[0]) - float(pot(x0 - dx)[0])) / (2 * h)
        assert abs(fd - float(f[atom, axis])) < 2e-5


def test_jit_vmap_scan_grad_give_the_same_numbers_with_exact_call_counts(ethanol):
    pot = xtb_potential(ethanol, restart=False)
    xs = jnp.asarray(geometries(ethanol, 3))
    e0, f0 = zip(*[pot(x) for x in xs])
    e0, f0 = np.array(e0), np.array(f0)
    assert pot.calls == 3

    e, f = jax.jit(pot)(xs[0])
    np.testing.assert_allclose(e, e0[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(f, f0[0], rtol=0, atol=1e-10)
    assert pot.calls == 4

    e, f = jax.vmap(pot)(xs)
    np.testing.assert_allclose(e, e0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(f, f0, rtol=0, atol=1e-10)
    assert pot.calls == 7

    e, f = jax.jit(jax.vmap(pot))(xs)
    np.testing.assert_allclose(e, e0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(f, f0, rtol=0, atol=1e-10)
    assert pot.calls == 10

    _, (e, f) = jax.lax.scan(lambda c, x: (c, pot(x)), 0.0, xs)
    np.testing.assert_allclose(e, e0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(f, f0, rtol=0, atol=1e-10)
    assert pot.calls == 13

    g = jax.grad(pot.energy)(xs[0])  # one call, not two
    np.testing.assert_allclose(-g, f0[0], rtol=0, atol=1e-10)
    assert pot.calls == 14

    g = jax.jit(jax.vmap(jax.grad(pot.energy)))(xs)
    np.testing.assert_allclose(-g, f0, rtol=0, atol=1e-10)
    assert pot.calls == 17


def test_inactive_batch_members_cost_no_call(ethanol):
    pot = xtb_potential(ethanol, restart=False)
    xs = jnp.asarray(geometries(ethanol, 4))
    active = jnp.array([True, False, False, True])
    e, f, ok = jax.jit(jax.vmap(pot.evaluate))(xs, active)
    assert pot.calls == 2
    assert np.all(np.asarray(ok))
    assert float(e[1]) == 0.0 and np.all(np.asarray(f[2]) == 0.0)
    np.testing.assert_allclose(e[3], tblite_direct(ethanol, np.asarray(xs[3]))[0], atol=1e-8)


def test_batch_is_spread_over_threads(ethanol):
    """Two threads give each batch member the energy and forces of a serial evaluation, in order."""
    xs = jnp.asarray(geometries(ethanol, 4))
    pot = xtb_potential(ethanol, workers=2, restart=False)
    e, f = jax.vmap(pot)(xs)
    assert pot._pool is not None and pot.calls == 4
    serial = xtb_potential(ethanol, workers=1, restart=False)
    for i in range(4):
        e_i, f_i = serial(xs[i])
        assert abs(float(e[i]) - float(e_i)) < 1e-10 and np.abs(np.asarray(f[i]) - np.asarray(f_i)).max() < 1e-10
    assert len({round(float(x), 6) for x in e}) == 4  # four different geometries, not one repeated


@pytest.mark.parametrize("method", ["GFN1-xTB", "IPEA1-xTB"])
def test_other_methods(ethanol, method):
    pot = xtb_potential(ethanol, method=method, restart=False)
    e, f = pot(ethanol.positions)
    e_ref, f_ref = tblite_direct(ethanol, ethanol.positions, method=method)
    assert abs(float(e) - e_ref) < 1e-8 and np.abs(np.asarray(f) - f_ref).max() < 1e-8


def test_charge_and_spin_are_honoured():
    cation = Molecule.from_smiles("C[NH3+]")
    neutral_geom = Molecule(cation.numbers, cation.positions, charge=0, spin=1)
    e_cat = float(xtb_potential(cation)(cation.positions)[0])
    e_rad = float(xtb_potential(neutral_geom)(cation.positions)[0])
    assert e_rad < e_cat - 1.0  # adding the electron back lowers the energy by eV, not meV
    radical = Molecule.from_smiles("[CH3]")
    e, _ = tblite_direct(radical, radical.positions)
    assert abs(float(xtb_potential(radical)(radical.positions)[0]) - e) < 1e-8


def test_bad_input_errors(ethanol):
    with pytest.raises(InputError, match="unknown xTB method 'GFN-FF'"):
        xtb_potential(ethanol, method="GFN-FF")
    francium = Molecule([87, 9], [[0, 0, 0], [0, 0, 2.3]])
    with pytest.raises(InputError, match="no parameters for atomic number"):
        xtb_potential(francium)
    pot = xtb_potential(ethanol)
    with pytest.raises(InputError, match=r"shape \(N, 3\)"):
        pot(np.zeros((9, 2)))
    with pytest.raises(InputError, match="8 atoms but the molecule has 9"):
        pot(np.zeros((8, 3)))
    with pytest.raises(InputError, match="NaN"):
        pot(np.full((9, 3), np.nan))
    with pytest.raises(InputError, match=r"shape \(9, 3\)"):
        jax.jit(pot)(jnp.zeros((8, 3)))
    assert pot.calls == 0
    with pytest.raises(InputError, match="accuracy"):
        xtb_potential(ethanol, accuracy=0)


def test_nan_positions_inside_jit_fail_cleanly(ethanol):
    pot = xtb_potential(ethanol)
    e, f, ok = jax.jit(pot.evaluate)(jnp.full((9, 3), jnp.nan))
    assert np.isnan(float(e)) and not bool(ok)
    assert pot.failed == 1 and pot.calls == 0


def FlakySinglePoint(n):
    """A Calculator.singlepoint whose first ``n`` calls raise as a failed SCF does."""
    original = Calculator.singlepoint
    left = [n]

    def singlepoint(calc, res=None, copy=False):
        if left[0] > 0:
            left[0] -= 1
            raise TBLiteRuntimeError("SCF not converged (injected)")
        return original(calc, res, copy)

    return singlepoint


def test_injected_scf_failure_is_retried_and_counted(ethanol, monkeypatch):
    pot = xtb_potential(ethanol)
    pot(ethanol.positions)
    monkeypatch.setattr(Calculator, "singlepoint", FlakySinglePoint(1))
    e, f = pot(ethanol.positions)
    assert np.isfinite(float(e))
    assert abs(float(e) - tblite_direct(ethanol, ethanol.positions)[0]) < 1e-6
    assert pot.counters() == {"calls": 3, "scf_failures": 1, "retries": 1, "fallbacks": 0, "failed": 0}


def test_fallback_method_after_two_failures(ethanol, monkeypatch):
    pot = xtb_potential(ethanol, fallback_method="GFN1-xTB")
    monkeypatch.setattr(Calculator, "singlepoint", FlakySinglePoint(2))
    e, _ = pot(ethanol.positions)
    assert abs(float(e) - tblite_direct(ethanol, ethanol.positions, "GFN1-xTB")[0]) < 1e-6
    assert pot.counters() == {"calls": 3, "scf_failures": 1, "retries": 1, "fallbacks": 1, "failed": 0}


def test_real_scf_failure_gives_nan_and_a_flag_the_integrator_sees(ethanol):
    pot = xtb_potential(ethanol, max_iter=2)  # cannot converge in two iterations
    e, f, ok = pot.evaluate(ethanol.positions)
    assert np.isnan(float(e)) and np.all(np.isnan(np.asarray(f))) and not bool(ok)
    assert pot.scf_failures == 1 and pot.retries == 1 and pot.failed == 1
    init, _ = jkstep.verlet(pot, ethanol.masses, dt=0.25)
    state = init(ethanol.positions, np.zeros((9, 3)))
    assert bool(state.failed)


def test_second_derivatives_raise_a_clear_error(ethanol):
    pot = xtb_potential(ethanol)
    x = jnp.asarray(ethanol.positions)
    with pytest.raises(InputError, match="first derivatives only"):
        jax.hessian(pot.energy)(x)
    # derivatives of the forces themselves are NaN, never a silent zero
    assert np.all(np.isnan(np.asarray(jax.jacfwd(lambda y: pot(y)[1])(x))))
    assert np.all(np.isnan(np.asarray(jax.grad(lambda y: jnp.sum(pot(y)[1]))(x))))
    init, apply = jkstep.verlet(pot, ethanol.masses, dt=0.25)
    through_md = jax.grad(lambda y: apply(apply(init(y, jnp.zeros_like(y)))).energy)(x)
    assert np.all(np.isnan(np.asarray(through_md)))
    # first derivatives still work, batched and jitted, with one call each
    calls = pot.calls
    g = jax.jit(jax.vmap(jax.grad(pot.energy)))(jnp.stack([x, x + 0.01]))
    assert pot.calls - calls == 2 and np.all(np.isfinite(np.asarray(g)))


def test_grad_of_float32_positions(ethanol):
    """A float32 geometry is evaluated in float64; its gradient comes back in float32."""
    pot = xtb_potential(ethanol)
    grad = jax.grad(pot.energy)(jnp.asarray(ethanol.positions, jnp.float32))
    assert grad.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(grad), -np.asarray(pot(ethanol.positions)[1]), atol=2e-3)
