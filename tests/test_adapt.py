"""Adapting a learned fast force to its molecule (jkstep.model.adapt): it learns a reference it
was not trained on, leaves the shipped force untouched, and refuses bad frames with one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jkstep
from jkstep.errors import InputError
from jkstep.model.adapt import AdaptConfig, adapt_potential


def stiffer_co_bond(mol, fast):
    """A reference the fast force does not know: itself plus a stiffer C–O bond (invariant, smooth;
    κ = 4 eV/Å²) in ethanol (atoms 0, 1, 2 are C, C, O). Returns (reference: positions (N, 3) Å →
    (energy eV, forces eV/Å), the C→O unit vector of the start geometry)."""
    x0 = np.asarray(mol.positions)
    i, j = 1, 2
    assert mol.numbers[i] == 6 and mol.numbers[j] == 8
    d0 = float(np.linalg.norm(x0[i] - x0[j]))

    def reference(x):
        e, f = fast(x)
        bond = lambda y: 2.0 * (jnp.linalg.norm(y[i] - y[j]) - d0) ** 2     # eV
        return e + bond(x), f - jax.grad(bond)(x)

    return reference, (x0[j] - x0[i]) / d0


def smooth_path(x0, n: int, amplitude: float, seed: int):
    """(n, N, 3) Å: x0 plus a sine per coordinate (periods 9–30 fs, X–H-like to slower modes,
    random phases), frames 0.5 fs apart."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.5
    return x0 + amplitude * np.sin(2 * np.pi * t[:, None, None] / rng.uniform(9.0, 30.0, x0.shape)
                                   + rng.uniform(0, 2 * np.pi, x0.shape))


@pytest.fixture(scope="module")
def setup():
    mol = jkstep.Molecule.from_smiles("CCO", seed=0)
    fast = jkstep.learned_potential("gfn2-fast", mol)
    reference, _ = stiffer_co_bond(mol, fast)
    rng = np.random.default_rng(0)
    x = np.asarray(mol.positions) + 0.04 * rng.standard_normal((120,) + np.asarray(mol.positions).shape)
    e, f = jax.vmap(reference)(jnp.asarray(x))
    return mol, fast, x, np.asarray(e) - 123.0, np.asarray(f)     # any constant energy offset


def test_adaptation_learns_the_reference_and_keeps_the_shipped_force(setup):
    mol, fast, x, e, f = setup
    params_before = jax.tree.map(np.array, fast.params)
    adapted, report = adapt_potential(fast, x, e, f, AdaptConfig(steps=300, w_curvature=0.0))   # not a path
    assert report["frames"] == 120 and report["train_frames"] == 96 and report["holdout_frames"] == 24
    assert report["steps"] == 300 and report["wall_s"] > 0
    # the held-out force error falls (the extra bond force is about 0.16 eV/Å RMS per component on it)
    assert report["force_rmse_after_ev_a"] < 0.6 * report["force_rmse_before_ev_a"], report
    held = x[96:]
    err_before = np.sqrt(np.mean((np.asarray(fast(held)[1]) - f[96:]) ** 2))
    err_after = np.sqrt(np.mean((np.asarray(adapted(held)[1]) - f[96:]) ** 2))
    np.testing.assert_allclose(err_before, report["force_rmse_before_ev_a"], rtol=1e-5)
    np.testing.assert_allclose(err_after, report["force_rmse_after_ev_a"], rtol=1e-5)
    # the same molecule and MMFF94 baseline, forces still −∂E/∂x; the shipped weights untouched
    assert adapted.n_atoms == fast.n_atoms and adapted.baseline is fast.baseline
    assert adapted.meta["adapted"] == report and "adapted" not in fast.meta
    g = -np.asarray(jax.grad(lambda y: adapted(y)[0])(jnp.asarray(held[0])))
    np.testing.assert_allclose(np.asarray(adapted(held[0])[1]), g, atol=1e-6)
    for a, b in zip(jax.tree.leaves(params_before), jax.tree.leaves(fast.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    # and RESPA with it is still one slow call per macro-step (the adapted force is a plain fast force)
    init, apply = jkstep.respa(adapted, fast, mol.masses, k=4, dt=0.25, inner=fast.baseline, fast_every=2)
    state = apply(init(held[0], mol.thermal_velocities(300.0, seed=0)))
    assert int(state.force_calls) == 2 and np.isfinite(float(state.energy))


def test_bad_frames_are_refused_with_one_line(setup):
    mol, fast, x, e, f = setup
    with pytest.raises(InputError, match=r"positions \(F, 9, 3\)"):
        adapt_potential(fast, x[:, :5], e, f)
    with pytest.raises(InputError, match="must be finite"):
        adapt_potential(fast, x, np.where(np.arange(len(e)) == 3, np.nan, e), f)
    with pytest.raises(InputError, match="at least 10 training frames"):
        adapt_potential(fast, x[:8], e[:8], f[:8])
    with pytest.raises(InputError, match="only a learned fast force can be adapted"):
        adapt_potential(jkstep.mmff_potential(mol), x, e, f)
    with pytest.raises(InputError, match="steps must be a whole number"):
        AdaptConfig(steps=0)
    with pytest.raises(InputError, match="holdout must be a fraction"):
        AdaptConfig(holdout=1.0)


def test_evaluate_config_needs_a_fast_force_and_a_thermalisation():
    from jkstep.evaluate.compare import EvalConfig

    with pytest.raises(InputError, match="adapt .* give one too"):
        EvalConfig(adapt=True)
    with pytest.raises(InputError, match="at least 0.1 ps"):
        EvalConfig(adapt=True, fast="gfn2-fast", equilibrate_ps=0.01)
    assert EvalConfig(adapt=True, fast="gfn2-fast").adapt


def test_energy_error_curvature_is_the_second_time_difference():
    from jkstep.model.potential import energy_error_curvature

    t = np.array([0.0, 1.0, 2.5])                 # three triplet centres, fs
    s = 0.5
    error = lambda t: 0.3 * t**2 - 0.1 * t + 7.0   # eV; d²/dt² = 0.6 eV/fs² everywhere
    blocks = np.concatenate([error(t - s), error(t), error(t + s)])
    np.testing.assert_allclose(np.asarray(energy_error_curvature(jnp.asarray(blocks), s)), 0.6, rtol=1e-9)
    with pytest.raises(InputError, match="triplets"):
        energy_error_curvature(jnp.zeros(4), s)


def test_curvature_term_lowers_the_energy_errors_curvature_along_a_trajectory():
    """On frames of a smooth path 0.5 fs apart, adapting with the curvature term leaves a smaller
    second time difference of the energy error on the held-out end of the path than without it,
    and the report's figures are the direct computation's."""
    mol = jkstep.Molecule.from_smiles("CCO", seed=0)
    fast = jkstep.learned_potential("gfn2-fast", mol)
    reference, _ = stiffer_co_bond(mol, fast)
    x = smooth_path(np.asarray(mol.positions), 240, 0.03, seed=1)
    e, f = jax.vmap(reference)(jnp.asarray(x))
    e, f = np.asarray(e), np.asarray(f)
    reports = {}
    for w in (0.0, 1.0):
        adapted, reports[w] = adapt_potential(fast, x, e, f, AdaptConfig(steps=300, w_curvature=w), spacing_fs=0.5)
    assert reports[1.0]["curvature_rms_after"] < reports[0.0]["curvature_rms_after"] < reports[0.0]["curvature_rms_before"]
    held = x[192:]                                                # the last 20 %: 48 frames, centres 1..46
    err = np.asarray(jax.vmap(lambda y: adapted(y)[0])(jnp.asarray(held))) - e[192:]
    second = (err[:-2] - 2 * err[1:-1] + err[2:]) / 0.5**2
    np.testing.assert_allclose(np.sqrt(np.mean(second**2)), reports[1.0]["curvature_rms_after"], rtol=3e-3)  # float32 net
    assert reports[1.0]["train_frames"] == 192 and reports[1.0]["holdout_frames"] == 48


def test_extra_frames_teach_the_region_the_frames_did_not_reach(setup):
    """Frames of a short path near the start and, as ``extra``, frames with the C–O bond stretched by
    0.15 Å (where the reference's extra bond force is 0.6 eV/Å): adapted with them, the force error on
    other stretched frames is far below the adaptation's without them (with the curvature term:
    batches of plain frames, then triplets); bad extra frames get one line."""
    mol, fast, _, _, _ = setup
    reference, u = stiffer_co_bond(mol, fast)
    x0 = np.asarray(mol.positions)
    x = smooth_path(x0, 120, 0.02, seed=2)
    rng = np.random.default_rng(2)
    stretched = x0.copy()
    stretched[2] += 0.15 * u                                  # the O moved along the C–O bond
    far = stretched + 0.02 * rng.standard_normal((80,) + x0.shape)
    e, f = (np.asarray(a) for a in jax.vmap(reference)(jnp.asarray(x)))
    ef, ff = (np.asarray(a) for a in jax.vmap(reference)(jnp.asarray(far)))
    errors = {}
    for label, more in (("without", None), ("with", (far[:60], ef[:60], ff[:60]))):
        adapted, report = adapt_potential(fast, x, e, f, AdaptConfig(steps=300), spacing_fs=0.5, extra=more)
        errors[label] = np.sqrt(np.mean((np.asarray(jax.vmap(adapted)(jnp.asarray(far[60:]))[1]) - ff[60:]) ** 2))
        assert report["extra_frames"] == (0 if more is None else 60)
    assert errors["with"] < 0.5 * errors["without"], errors
    with pytest.raises(InputError, match=r"extra adaptation frames must be positions \(E, 9, 3\)"):
        adapt_potential(fast, x, e, f, spacing_fs=0.5, extra=(far[:, :5], ef, ff))
    with pytest.raises(InputError, match="extra adaptation frames must be finite"):
        adapt_potential(fast, x, e, f, spacing_fs=0.5, extra=(far, np.where(np.arange(80) == 1, np.nan, ef), ff))


def test_curvature_settings_are_checked():
    with pytest.raises(InputError, match="w_curvature must be >= 0"):
        AdaptConfig(w_curvature=-1.0)
