"""jkstep.respa: exactness, time reversibility, symplecticity, momenta, call counts, faults, NVT, mollifier,
three levels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import jkstep
from jkstep.errors import InputError
from jkstep.integrate import angular_momentum, fallback_step_count, temperature, verlet, verlet_span
from jkstep.respa import xh_mollifier
from jkstep.rollout import rollout


@pytest.fixture(scope="module")
def ethanol():
    return jkstep.Molecule.from_smiles("CCO", seed=0)


@pytest.fixture(scope="module")
def mm(ethanol):
    return jkstep.mmff_potential(ethanol)


def scaled(potential, factor):
    """A pure-JAX 'slow' potential: a scaled copy of ``potential``."""

    def ef(x):
        e, f = potential(x)
        return factor * e, factor * f

    return ef


def run(apply, state, n):
    return jax.lax.fori_loop(0, n, lambda _, s: apply(s), state)


def test_zero_fast_force_is_verlet_at_k_dt(ethanol, mm):
    v = ethanol.thermal_velocities(300.0, seed=1)
    k, dt = 8, 0.25
    init, apply = jkstep.respa(lambda x: jnp.zeros(()), mm, ethanol.masses, k=k, dt=dt)
    vinit, vapply = verlet(mm, ethanol.masses, dt=k * dt)
    s = jax.jit(lambda s: run(apply, s, 50))(init(ethanol.positions, v))
    r = jax.jit(lambda s: run(vapply, s, 50))(vinit(ethanol.positions, v))
    np.testing.assert_allclose(s.positions, r.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(s.velocities, r.velocities, rtol=0, atol=1e-12)
    assert int(s.force_calls) == int(r.force_calls) == 51 and int(s.step) == 50 * k


def test_inner_force_felt_every_step_is_two_level_respa(ethanol, mm):
    """inner + (fast − inner) kicks every dt compose to Verlet steps on fast: two-level RESPA."""
    v = ethanol.thermal_velocities(300.0, seed=1)
    slow = scaled(mm, 1.2)
    init2, apply2 = jkstep.respa(mm, slow, ethanol.masses, k=8, dt=0.25)
    init3, apply3 = jkstep.respa(mm, slow, ethanol.masses, k=8, dt=0.25, inner=scaled(mm, 0.6), fast_every=1)
    s2 = jax.jit(lambda s: run(apply2, s, 30))(init2(ethanol.positions, v))
    s3 = jax.jit(lambda s: run(apply3, s, 30))(init3(ethanol.positions, v))
    np.testing.assert_allclose(s3.positions, s2.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(s3.velocities, s2.velocities, rtol=0, atol=1e-11)
    np.testing.assert_allclose(s3.inner_forces, 0.6 * s3.fast_forces, rtol=0, atol=1e-10)
    assert int(s3.force_calls) == int(s2.force_calls) == 31


@pytest.fixture(params=["impulse", pytest.param("mollified", marks=pytest.mark.slow), "three-level"])
def variant(request, ethanol, mm):
    """respa's keyword arguments: impulse RESPA, mollified on X–H, or three levels (an inner force
    every dt, the fast kicks every 2·dt)."""
    return {"impulse": {}, "mollified": {"mollifier": xh_mollifier(ethanol)},
            "three-level": {"inner": scaled(mm, 0.7), "fast_every": 2}}[request.param]


def test_time_reversible(ethanol, mm, variant):
    v = ethanol.thermal_velocities(300.0, seed=2)
    init, apply = jkstep.respa(mm, scaled(mm, 1.3), ethanol.masses, k=8, dt=0.25, **variant)
    go = jax.jit(lambda s: run(apply, s, 40))
    s = go(init(ethanol.positions, v))
    assert float(jnp.max(jnp.abs(s.positions - ethanol.positions))) > 0.05   # it moved
    back = go(init(s.positions, -s.velocities))
    np.testing.assert_allclose(back.positions, ethanol.positions, rtol=0, atol=1e-9)
    np.testing.assert_allclose(-back.velocities, v, rtol=0, atol=1e-11)


def test_symplectic(ethanol, mm, variant):
    m = jnp.asarray(ethanol.masses)[:, None]
    slow = mm if not variant else scaled(mm, 1.3)   # mm − mm ≡ 0 would leave A(x) or the split unused
    init, apply = jkstep.respa(mm, slow, ethanol.masses, k=4, dt=0.5, **variant)
    n = len(ethanol) * 3

    def step(z):  # (x, p = m·v) → (x', p') of one macro-step
        x, p = z[:n].reshape(-1, 3), z[n:].reshape(-1, 3)
        s = apply(init(x, p / m))
        return jnp.concatenate([s.positions.ravel(), (s.velocities * m).ravel()])

    z = jnp.concatenate([jnp.asarray(ethanol.positions).ravel(),
                         (jnp.asarray(ethanol.thermal_velocities(300.0, seed=3)) * m).ravel()])
    J = jax.jit(jax.jacfwd(step))(z)
    omega = jnp.block([[jnp.zeros((n, n)), jnp.eye(n)], [-jnp.eye(n), jnp.zeros((n, n))]])
    err = jnp.max(jnp.abs(J.T @ omega @ J - omega)) / jnp.max(jnp.abs(omega))
    assert float(jnp.max(jnp.abs(J - jnp.eye(2 * n)))) > 1e-3      # a real map, not the identity
    assert float(err) < 1e-10


def test_momenta_conserved(ethanol, mm, variant):
    v = ethanol.thermal_velocities(300.0, seed=4)
    masses = jnp.asarray(ethanol.masses)
    init, apply = jkstep.respa(mm, scaled(mm, 0.8), ethanol.masses, k=8, dt=0.25, **variant)
    s0 = init(ethanol.positions, v)
    s = jax.jit(lambda s: run(apply, s, 100))(s0)
    p0, p = (jnp.sum(masses[:, None] * x.velocities, 0) for x in (s0, s))
    np.testing.assert_allclose(p, p0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(angular_momentum(s.positions, s.velocities, masses),
                               angular_momentum(s0.positions, s0.velocities, masses), rtol=0, atol=1e-10)


@pytest.mark.slow
def test_energy_conserved_better_than_verlet_at_tau(ethanol, mm):
    """A stiff fast part inside (MMFF) and a soft slow difference: RESPA at τ = 2 fs holds the
    energy of the slow potential far better than Verlet at 2 fs."""
    v = ethanol.thermal_velocities(300.0, seed=5)
    masses = jnp.asarray(ethanol.masses)
    slow = scaled(mm, 1.1)
    out = {}
    for name, (init, apply) in {"respa": jkstep.respa(mm, slow, ethanol.masses, k=8, dt=0.25),
                                "verlet": verlet(slow, ethanol.masses, dt=2.0)}.items():
        _, fr = jax.jit(lambda s: rollout(apply, s, 250))(init(ethanol.positions, v))
        e = np.asarray(fr.energy) + np.asarray(jkstep.integrate.kinetic_energy(fr.velocities, masses))
        out[name] = e.std()
    assert out["respa"] < 0.3 * out["verlet"]


@pytest.mark.slow
def test_calls_counted_single_and_batched(ethanol):
    pot = jkstep.xtb_potential(ethanol)
    mm = jkstep.mmff_potential(ethanol)
    init, apply = jkstep.respa(mm, pot, ethanol.masses, k=8, dt=0.25)
    s = init(ethanol.positions, ethanol.thermal_velocities(300.0, seed=0))
    before = pot.calls
    s, _ = jax.jit(lambda s: rollout(apply, s, 5))(s)
    assert pot.calls - before == 5 and int(s.force_calls) == 6 and int(s.fallbacks) == 0

    v = jnp.stack([ethanol.thermal_velocities(300.0, seed=i) for i in range(3)])
    x = jnp.broadcast_to(jnp.asarray(ethanol.positions), v.shape)
    before = pot.calls
    sb = jax.vmap(init)(x, v)
    sb, _ = jax.jit(jax.vmap(lambda s: rollout(apply, s, 4)))(sb)
    assert pot.calls - before == 3 * 5
    assert np.asarray(sb.force_calls).tolist() == [5, 5, 5]


def test_non_finite_fast_force_falls_back_to_verlet(ethanol, mm):
    v = ethanol.thermal_velocities(300.0, seed=6)
    k, dt = 8, 0.25
    nan_fast = lambda x: (jnp.nan, jnp.full_like(x, jnp.nan))   # noqa: E731
    init, apply = jkstep.respa(nan_fast, mm, ethanol.masses, k=k, dt=dt)
    s = jax.jit(lambda s: run(apply, s, 3))(init(ethanol.positions, v))
    nf = fallback_step_count(k, dt)
    assert int(s.fallbacks) == 3 and int(s.force_calls) == 1 + 3 * nf and not bool(s.failed)
    # the same as plain Verlet over 3 τ in steps of τ / nf
    from jkstep.integrate import evaluator, inverse_mass
    e0, f0 = mm(jnp.asarray(ethanol.positions))
    x, vv, f, e = jnp.asarray(ethanol.positions), jnp.asarray(v), f0, e0
    span = jax.jit(lambda x, vv, f, e: verlet_span(evaluator(mm), x, vv, f, e, inverse_mass(ethanol.masses),
                                                   k * dt, nf, True))
    for _ in range(3):
        x, vv, f, e, _ = span(x, vv, f, e)
    np.testing.assert_allclose(s.positions, x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.velocities, vv, rtol=0, atol=1e-12)


def test_mollified_non_finite_fast_force_fails_the_run(ethanol, mm):
    """With a mollifier the slow potential is U_f + (U_s − U_f)∘A: a non-finite fast force makes
    it non-finite, so the run fails (at the start here) and makes no more calls."""
    v = ethanol.thermal_velocities(300.0, seed=9)
    nan_fast = lambda x: (jnp.nan, jnp.full_like(x, jnp.nan))   # noqa: E731
    init, apply = jkstep.respa(nan_fast, mm, ethanol.masses, k=8, dt=0.25, mollifier=xh_mollifier(ethanol))
    s0 = init(ethanol.positions, v)
    s = jax.jit(lambda s: run(apply, s, 3))(s0)
    assert bool(s0.failed) and bool(s.failed) and int(s.force_calls) == 1 and int(s.fallbacks) == 0


def test_failed_slow_call_freezes_state_without_more_calls(ethanol, mm):
    calls = []

    def slow(x):  # the slow force fails everywhere but at the start geometry
        e, f = mm(x)
        bad = jnp.max(jnp.abs(x - jnp.asarray(ethanol.positions))) > 1e-6
        return jnp.where(bad, jnp.nan, e), jnp.where(bad, jnp.nan, f)

    init, apply = jkstep.respa(mm, slow, ethanol.masses, k=8, dt=0.25)
    s = jax.jit(lambda s: run(apply, s, 4))(init(ethanol.positions, ethanol.thermal_velocities(300.0, seed=7)))
    assert bool(s.failed) and int(s.fallbacks) == 1
    assert int(s.force_calls) == 1 + 1 + fallback_step_count(8, 0.25) and not calls


@pytest.mark.slow
@pytest.mark.parametrize("thermostat", ["macro", "inner"])
def test_nvt_holds_the_temperature(ethanol, mm, thermostat):
    masses = jnp.asarray(ethanol.masses)
    init, apply = jkstep.respa(mm, scaled(mm, 1.05), ethanol.masses, k=8, dt=0.25, ensemble="nvt",
                               temperature=400.0, friction=0.05, thermostat=thermostat)
    s = init(ethanol.positions, ethanol.thermal_velocities(100.0, seed=8), jax.random.PRNGKey(1))
    s, fr = jax.jit(lambda s: rollout(apply, s, 2500))(s)
    t = np.asarray(temperature(fr.velocities[500:], masses, dof=3 * len(ethanol)))
    assert abs(t.mean() - 400.0) < 0.08 * 400.0
    # seeded: the same key gives the same run
    s2, _ = jax.jit(lambda s: rollout(apply, s, 5))(init(ethanol.positions, ethanol.thermal_velocities(100.0, seed=8),
                                                         jax.random.PRNGKey(1)))
    s3, _ = jax.jit(lambda s: rollout(apply, s, 5))(init(ethanol.positions, ethanol.thermal_velocities(100.0, seed=8),
                                                         jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(s2.velocities, s3.velocities)


def test_xh_mollifier_projects_the_xh_bonds(ethanol):
    a_of = jax.jit(xh_mollifier(ethanol))
    h, partner = ethanol.hydrogen_partners()
    x0 = jnp.asarray(ethanol.positions)
    np.testing.assert_allclose(a_of(x0), x0, rtol=0, atol=1e-12)        # the start is on the manifold
    x = x0 + 0.03 * jax.random.normal(jax.random.PRNGKey(0), x0.shape, jnp.float64)
    a = a_of(x)
    np.testing.assert_allclose(jnp.linalg.norm(a[h] - a[partner], axis=-1),
                               jnp.linalg.norm(x0[h] - x0[partner], axis=-1), rtol=0, atol=1e-5)
    m = jnp.asarray(ethanol.masses)
    np.testing.assert_allclose(m @ a, m @ x, rtol=0, atol=1e-10)        # centre of mass kept
    rot = jnp.asarray(Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix())
    np.testing.assert_allclose(a_of(x @ rot.T + 1.5), a @ rot.T + 1.5, rtol=0, atol=1e-10)
    # a pure O–H stretch (the pair's centre of mass fixed) maps to the same A(x)
    o, hy = int(partner[-1]), int(h[-1])
    assert ethanol.symbols[o] == "O"
    u = (x[hy] - x[o]) / jnp.linalg.norm(x[hy] - x[o])
    mo, mh = m[o], m[hy]
    stretched = x.at[hy].add(0.05 * mo / (mo + mh) * u).at[o].add(-0.05 * mh / (mo + mh) * u)
    np.testing.assert_allclose(a_of(stretched), a, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_mollifier_tames_the_stretch_resonance(ethanol, mm):
    """A slow difference that is mostly the X–H stretches (MMFF94 ×1.1 against MMFF94) at
    τ = 4 fs: impulse RESPA pumps the stretches, the mollified one conserves its energy."""
    v = ethanol.thermal_velocities(300.0, seed=6)
    masses = jnp.asarray(ethanol.masses)
    spread = {}
    for name, moll in (("impulse", None), ("mollified", xh_mollifier(ethanol))):
        init, apply = jkstep.respa(mm, scaled(mm, 1.1), ethanol.masses, k=16, dt=0.25, mollifier=moll)
        _, fr = jax.jit(lambda s: rollout(apply, s, 250))(init(ethanol.positions, v))
        e = np.asarray(fr.energy) + np.asarray(jkstep.integrate.kinetic_energy(fr.velocities, masses))
        spread[name] = e.std()
    assert spread["mollified"] < 0.1 * spread["impulse"]


def test_bad_input(ethanol, mm):
    for k in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must be an integer"):
            jkstep.respa(mm, mm, ethanol.masses, k=k)
    for dt in (0.0, -0.25, float("nan")):
        with pytest.raises(InputError, match="dt"):
            jkstep.respa(mm, mm, ethanol.masses, dt=dt)
    other = jkstep.mmff_potential(jkstep.Molecule.from_smiles("CCCO", seed=0))
    init, _ = jkstep.respa(other, mm, ethanol.masses)
    with pytest.raises(InputError, match="fast force"):
        init(ethanol.positions, ethanol.thermal_velocities(300.0, seed=0))
    init, _ = jkstep.respa(lambda x: (0.0, jnp.zeros((3, 3))), mm, ethanol.masses)
    with pytest.raises(InputError, match=r"shape \(3, 3\)"):
        init(ethanol.positions, ethanol.thermal_velocities(300.0, seed=0))
    with pytest.raises(InputError, match="ensemble"):
        jkstep.respa(mm, mm, ethanol.masses, ensemble="npt")
    with pytest.raises(InputError, match="mollifier must be a function"):
        jkstep.respa(mm, mm, ethanol.masses, mollifier="xh")
    with pytest.raises(InputError, match="needs an inner force"):
        jkstep.respa(mm, mm, ethanol.masses, fast_every=2)
    with pytest.raises(InputError, match="must divide k = 8"):
        jkstep.respa(mm, mm, ethanol.masses, k=8, inner=mm, fast_every=3)
    for bad in (0, 1.5, True):
        with pytest.raises(InputError, match="fast_every must be an integer"):
            jkstep.respa(mm, mm, ethanol.masses, inner=mm, fast_every=bad)
    with pytest.raises(InputError, match="inner force must be a function"):
        jkstep.respa(mm, mm, ethanol.masses, inner="mmff", fast_every=2)
    init, _ = jkstep.respa(mm, mm, ethanol.masses, inner=other, fast_every=2)
    with pytest.raises(InputError, match="inner force"):
        init(ethanol.positions, ethanol.thermal_velocities(300.0, seed=0))
    for bad in ("CCO", ethanol.positions):
        with pytest.raises(InputError, match="xh_mollifier needs a jkstep.Molecule"):
            xh_mollifier(bad)
    with pytest.raises(InputError, match="sweeps"):
        xh_mollifier(ethanol, sweeps=0)
    with pytest.raises(InputError, match=r"Se \(atom 1\)"):
        jkstep.mmff_potential(jkstep.Molecule.from_smiles("C[Se]C", seed=0))


@pytest.mark.slow
def test_mmff_inner_step_is_cheap_against_xtb():
    """The classical fast force per inner step costs a small fraction of one xTB call
    (benchmarks/bench_respa.py prints the ratios; here only a loose bound on a 22-atom molecule)."""
    import time

    mol = jkstep.Molecule.from_smiles("CC(=O)NC(C)C(=O)NC", seed=0)
    mm, pot = jkstep.mmff_potential(mol), jkstep.xtb_potential(mol)
    x = jnp.asarray(mol.positions)
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, 200, lambda _, y: y + 1e-6 * mm(y)[1], x))
    loop(x).block_until_ready()
    t0 = time.perf_counter()
    loop(x).block_until_ready()
    per_step = (time.perf_counter() - t0) / 200
    pot(x)
    t0 = time.perf_counter()
    for _ in range(5):
        pot(x + 1e-4)
    per_call = (time.perf_counter() - t0) / 5
    assert per_step < 0.2 * per_call
