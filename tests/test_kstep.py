"""The hybrid integrator: corrector physics, guards, retries, fallback and exact call counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tblite.exceptions import TBLiteRuntimeError
from tblite.interface import Calculator

import jkstep
from jkstep import InputError, analysis, load_pretrained
from jkstep.kstep import Guards, KStepOptions, ballistic_jump, fallback_step_count, kstep_integrator
from jkstep.rollout import runner

K, DT = 8, 0.25
NF = fallback_step_count(K, DT)   # calls of a fallback macro-step by default (4 × 0.5 fs)


@pytest.mark.slow
def test_corrector_only_is_velocity_verlet_at_k_dt(ethanol):
    """Ballistic jump + corrector = Verlet at k·dt, one xTB call per macro-step."""
    v0 = ethanol.thermal_velocities(300.0, seed=0)
    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(ballistic_jump(ethanol.masses, K, DT), pot, ethanol.numbers,
                                   ethanol.masses, K, DT)
    state, frames = runner(apply, 40, 1)(init(ethanol.positions, v0))
    assert pot.calls == 41 == int(state.force_calls)
    assert (int(state.accepted), int(state.rejected), int(state.fallbacks)) == (40, 0, 0)
    assert int(state.step) == 40 * K

    ref_pot = jkstep.xtb_potential(ethanol)
    vinit, vapply = jkstep.verlet(ref_pot, ethanol.masses, dt=K * DT)
    ref, _ = runner(vapply, 40, 1)(vinit(ethanol.positions, v0))
    np.testing.assert_allclose(state.positions, ref.positions, atol=1e-9)
    np.testing.assert_allclose(state.velocities, ref.velocities, atol=1e-10)


def noisy_jump(masses, scale, seed=0):
    """A 'model' whose learned correction is random: displaces atoms by ~scale Å."""
    base = ballistic_jump(masses, K, DT)
    noise = scale * jax.random.normal(jax.random.PRNGKey(seed), (len(masses), 3))

    def jump(x, v, f):
        bx, bv, bf = base(x, v, f)
        return bx + noise, bv, bf

    return jump


def test_rejected_jumps_retry_then_fall_back_to_verlet(ethanol):
    """A jump beyond the displacement bound is rejected before any call, retried at half
    and quarter scale, then the macro-step is plain Verlet over k·dt, by default in steps of
    0.5 fs (4 calls at k = 8, dt = 0.25 fs)."""
    assert NF == 4
    v0 = ethanol.thermal_velocities(300.0, seed=1)
    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(noisy_jump(ethanol.masses, 2.0), pot, ethanol.numbers, ethanol.masses,
                                   K, DT, guards=Guards(max_displacement=0.2, max_attempts=3))
    state, _ = runner(apply, 3, 1)(init(ethanol.positions, v0))
    assert (int(state.accepted), int(state.rejected), int(state.fallbacks)) == (0, 9, 3)
    assert pot.calls == 1 + 3 * NF == int(state.force_calls) and int(state.step) == 3 * K

    ref_pot = jkstep.xtb_potential(ethanol)
    vinit, vapply = jkstep.verlet(ref_pot, ethanol.masses, dt=0.5)
    ref, _ = runner(vapply, 1, 3 * NF)(vinit(ethanol.positions, v0))
    np.testing.assert_allclose(state.positions, ref.positions, atol=1e-8)


@pytest.mark.parametrize("n", [K, 2, 1])
def test_fallback_steps_make_verlet_at_k_dt_over_n(ethanol, n):
    """``fallback_steps=n``: every failed macro-step is n Verlet steps of k·dt/n (n calls;
    n = k: steps of the base dt)."""
    v0 = ethanol.thermal_velocities(300.0, seed=1)
    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(noisy_jump(ethanol.masses, 2.0), pot, ethanol.numbers, ethanol.masses,
                                   K, DT, guards=Guards(max_displacement=0.2, max_attempts=3), fallback_steps=n)
    state, _ = runner(apply, 3, 1)(init(ethanol.positions, v0))
    assert (int(state.accepted), int(state.rejected), int(state.fallbacks)) == (0, 9, 3)
    assert pot.calls == 1 + 3 * n == int(state.force_calls) and int(state.step) == 3 * K

    ref_pot = jkstep.xtb_potential(ethanol)
    vinit, vapply = jkstep.verlet(ref_pot, ethanol.masses, dt=K * DT / n)
    ref, _ = runner(vapply, 1, 3 * n)(vinit(ethanol.positions, v0))
    np.testing.assert_allclose(state.positions, ref.positions, atol=1e-8)
    np.testing.assert_allclose(state.velocities, ref.velocities, atol=1e-9)


def test_default_fallback_step_count():
    """Steps of at most 0.5 fs that span k·dt; an explicit count wins."""
    assert [fallback_step_count(k, 0.25) for k in (1, 2, 4, 8, 16, 32)] == [1, 1, 2, 4, 8, 16]
    assert fallback_step_count(8, 0.5) == 8 and fallback_step_count(8, 0.25, 8) == 8


@pytest.mark.parametrize("n", [0, 2.5, -1])
def test_bad_fallback_steps(n):
    with pytest.raises(InputError, match="fallback_steps"):
        kstep_integrator(ballistic_jump(np.ones(2), K, DT), harmonic, [1, 1], np.ones(2), K, DT, fallback_steps=n)

def test_a_smaller_delta_scale_can_be_accepted(ethanol):
    """Noise of ~0.1 Å fails the 0.2 Å bound on some atom at full scale, passes at a smaller one."""
    pot = jkstep.xtb_potential(ethanol)
    guards = Guards(max_displacement=0.2, max_energy_rise=10.0, max_kinetic_rise=10.0, clash_ratio=0.0,
                    max_energy_drift=None)
    init, apply = kstep_integrator(noisy_jump(ethanol.masses, 0.12, seed=3), pot, ethanol.numbers,
                                   ethanol.masses, K, DT, guards=guards)
    state = apply(init(ethanol.positions, np.zeros((9, 3))))
    assert int(state.accepted) == 1 and int(state.fallbacks) == 0 and int(state.rejected) >= 1
    assert pot.calls == int(state.force_calls) == 2  # rejected by geometry: no call wasted


@pytest.mark.parametrize("rescale", [False, True])
def test_heating_jump_is_rejected_after_its_call(ethanol, rescale):
    """A jump that triples the velocities passes the geometry guards, costs its xTB call,
    and is rejected by the kinetic-energy guard, also when the energy rescale is on (the guards
    judge the jump before the rescale would hide its error)."""
    base = ballistic_jump(ethanol.masses, K, DT)

    def heating(x, v, f):
        bx, bv, bf = base(x, v, f)
        return bx, 3.0 * bv, bf

    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(heating, pot, ethanol.numbers, ethanol.masses, K, DT,
                                   guards=Guards(max_kinetic_rise=0.05, max_energy_rise=0.05, max_attempts=2),
                                   energy_rescale=rescale)
    state = apply(init(ethanol.positions, ethanol.thermal_velocities(600.0, seed=2)))
    assert int(state.rejected) == 2 and int(state.fallbacks) == 1
    assert pot.calls == int(state.force_calls) == 1 + 2 + NF


def test_clash_is_rejected_without_a_call(ethanol):
    base = ballistic_jump(ethanol.masses, K, DT)

    def clash(x, v, f):
        bx, bv, bf = base(x, v, f)
        return bx.at[3].set(bx[4] + 0.05), bv, bf  # two hydrogens 0.09 Å apart

    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(clash, pot, ethanol.numbers, ethanol.masses, K, DT,
                                   guards=Guards(max_displacement=100.0, max_attempts=1))
    state = apply(init(ethanol.positions, np.zeros((9, 3))))
    assert int(state.fallbacks) == 1 and pot.calls == 1 + NF


def test_scf_failure_rejects_the_jump(ethanol, monkeypatch):
    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(ballistic_jump(ethanol.masses, K, DT), pot, ethanol.numbers,
                                   ethanol.masses, K, DT, guards=Guards(max_attempts=1))
    state = init(ethanol.positions, np.zeros((9, 3)))
    original, left = Calculator.singlepoint, [2]

    def flaky(calc, res=None, copy=False):  # the jump's call and its fresh-guess retry fail
        if left[0] > 0:
            left[0] -= 1
            raise TBLiteRuntimeError("SCF not converged (injected)")
        return original(calc, res, copy)

    monkeypatch.setattr(Calculator, "singlepoint", flaky)
    state = apply(state)
    assert int(state.fallbacks) == 1 and not bool(state.failed)
    assert pot.scf_failures == 1 and pot.failed == 1
    assert int(state.force_calls) == 1 + 1 + NF  # the failed request counts once in the state
    assert pot.calls == 1 + 2 + NF             # ... and as two tblite runs on the host


@pytest.mark.slow
def test_vmap_batch_makes_exactly_the_calls_of_single_runs(ethanol):
    """Members accept, retry and fall back at different macro-steps; masked calls cost nothing."""
    v0 = np.stack([ethanol.thermal_velocities(600.0, seed=s) for s in range(4)])
    guards = Guards(max_displacement=0.12)

    def build():
        pot = jkstep.xtb_potential(ethanol)
        return pot, kstep_integrator(ballistic_jump(ethanol.masses, K, DT), pot, ethanol.numbers,
                                     ethanol.masses, K, DT, guards=guards)

    pot_b, (init, apply) = build()
    states = jax.vmap(init)(np.broadcast_to(ethanol.positions, v0.shape), v0)
    states, _ = runner(apply, 12, 1, batched=True)(states)
    pot_s, (init_s, apply_s) = build()
    singles = [runner(apply_s, 12, 1)(init_s(ethanol.positions, v))[0] for v in v0]
    assert pot_b.calls == pot_s.calls == int(states.force_calls.sum())
    assert int(states.accepted.sum()) > 0 and len(set(np.asarray(states.fallbacks).tolist())) > 1
    for r, single in enumerate(singles):
        np.testing.assert_allclose(states.positions[r], single.positions, atol=1e-6)
        assert int(states.force_calls[r]) == int(single.force_calls)
        assert int(states.fallbacks[r]) == int(single.fallbacks)
    # the state carries the energy and forces of its own positions (the next jump's F_t)
    check = jkstep.xtb_potential(ethanol, restart=False)
    for r in range(4):
        e, f = check(states.positions[r])
        assert abs(float(e) - float(states.energy[r])) < 1e-5
        np.testing.assert_allclose(states.forces[r], f, atol=1e-4)


def harmonic(x):
    return 0.5 * 5.0 * jnp.sum((x - jnp.round(x)) ** 2)  # stiff wells at lattice points, eV/Å²


@pytest.mark.slow
def test_energy_rescale_restores_the_total_energy():
    masses = np.full(6, 12.0)
    x0 = np.arange(18, dtype=float).reshape(6, 3) * 3.0 + 0.05
    init, apply = kstep_integrator(ballistic_jump(masses, K, DT), harmonic, np.full(6, 6), masses, K, DT,
                                   energy_rescale=True)
    state = init(x0, 0.01 * np.ones((6, 3)))
    e0 = float(state.reference_energy)
    state, frames = runner(apply, 30, 1)(state)
    e = np.asarray(frames.energy) + analysis.kinetic_energy(frames.velocities, masses)
    np.testing.assert_allclose(e, e0, atol=1e-10)


LATTICE_MASSES = np.full(6, 12.0)
LATTICE_X0 = np.arange(18, dtype=float).reshape(6, 3) * 3.0 + 0.05   # atoms near the wells of ``harmonic``
LATTICE_V0 = 0.01 * np.ones((6, 3))
LATTICE_E0 = float(harmonic(LATTICE_X0) + analysis.kinetic_energy(LATTICE_V0, LATTICE_MASSES))


def one_lattice_step(**options):
    """One macro-step of the zero network on ``harmonic`` without the excursion guard: the state
    and its total energy (eV)."""
    masses = LATTICE_MASSES
    init, apply = kstep_integrator(ballistic_jump(masses, K, DT), harmonic, np.full(6, 6), masses, K, DT,
                                   guards=Guards(max_energy_drift=None), **options)
    state = apply(init(LATTICE_X0, LATTICE_V0))
    return state, float(state.energy + analysis.kinetic_energy(state.velocities, masses))


@pytest.mark.slow
def test_energy_relaxation_takes_back_its_share_of_the_excursion():
    """Weak coupling: after an accepted jump the total energy's distance from its start shrinks
    by exactly kΔt/τ_E; positions are untouched; τ_E ≤ kΔt is the full rescale."""
    tau, e0, one_step = K * DT, LATTICE_E0, one_lattice_step
    free, e_free = one_step()
    assert abs(e_free - e0) > 1e-4                              # Verlet at 2 fs errs on this well
    relaxed, e_relaxed = one_step(energy_relaxation=4 * tau)
    np.testing.assert_allclose(relaxed.positions, free.positions, atol=1e-12)
    assert e_relaxed - e0 == pytest.approx(0.75 * (e_free - e0), rel=1e-9)
    full, e_full = one_step(energy_relaxation=tau)
    rescaled, _ = one_step(energy_rescale=True)
    assert e_full == pytest.approx(e0, abs=1e-12)
    np.testing.assert_allclose(full.velocities, rescaled.velocities, atol=1e-14)


@pytest.mark.slow
def test_energy_window_rescales_only_outside_the_window():
    """After an accepted jump whose total energy lies more than W from its start, the velocities
    bring it back to the window's edge; inside the window nothing changes."""
    e0, one_step = LATTICE_E0, one_lattice_step
    free, e_free = one_step()
    error = e_free - e0
    assert abs(error) > 1e-4
    inside, _ = one_step(energy_window=2 * abs(error))
    np.testing.assert_array_equal(inside.velocities, free.velocities)
    edge, e_edge = one_step(energy_window=0.5 * abs(error))
    np.testing.assert_allclose(edge.positions, free.positions, atol=1e-12)
    assert e_edge - e0 == pytest.approx(0.5 * error, rel=1e-9)


@pytest.mark.parametrize("options, match", [(dict(energy_window=0.0), "must be > 0"),
                                            (dict(energy_window=0.05, energy_rescale=True), "not with"),
                                            (dict(energy_window=0.05, ensemble="nvt"), "not with"),
                                            (dict(energy_relaxation=0.0), "time constant"),
                                            (dict(energy_relaxation=100.0, ensemble="nvt"), "NVE only"),
                                            (dict(energy_relaxation=100.0, energy_rescale=True), "one of them")])
def test_energy_relaxation_bad_input(options, match):
    with pytest.raises(InputError, match=match):
        kstep_integrator(ballistic_jump(np.ones(2), K, DT), harmonic, [1, 1], np.ones(2), K, DT, **options)


@pytest.mark.slow
def test_nvt_thermalises():
    masses = np.full(30, 12.0)
    x0 = np.arange(90, dtype=float).reshape(30, 3) * 3.0
    init, apply = kstep_integrator(ballistic_jump(masses, K, DT), harmonic, np.full(30, 6), masses, K, DT,
                                   ensemble="nvt", temperature=300.0, friction=0.02)
    state, _ = runner(apply, 1, 400)(init(x0, np.zeros((30, 3)), jax.random.PRNGKey(0)))
    _, frames = runner(apply, 400, 2)(state)
    t = analysis.temperature(np.asarray(frames.velocities), masses, dof=90).mean()
    assert 270.0 < t < 330.0


def test_bad_ensemble():
    with pytest.raises(InputError, match="ensemble"):
        kstep_integrator(ballistic_jump(np.ones(2), K, DT), harmonic, [1, 1], np.ones(2), K, DT, ensemble="npt")


def test_bad_k_and_dt():
    for k, dt in ((0, 0.25), (8, 0.0), (2.5, 0.25)):
        with pytest.raises(InputError, match="k must be an integer"):
            kstep_integrator(ballistic_jump(np.ones(2), 1, DT), harmonic, [1, 1], np.ones(2), k, dt)


@pytest.mark.parametrize("options, match", [(dict(delta_scale=0.0), r"delta_scale must be in \(0, 1\]"),
                                            (dict(delta_scale=float("nan")), "delta_scale"),
                                            (dict(temperature=-1.0), "temperature must be a finite value"),
                                            (dict(friction=float("inf")), "friction must be a finite value"),
                                            (dict(fallback_steps=0), "fallback_steps must be an integer"),
                                            (dict(kick_weight="half"), "kick_weight"),
                                            (dict(guards=dict(max_attempts=2)), "guards must be a jkstep.kstep.Guards")])
def test_kstep_options_refuse_bad_values(options, match):
    with pytest.raises(InputError, match=match):
        KStepOptions(**options)


def test_kstep_options_merge_changes_and_name_unknown_ones():
    base = KStepOptions(fallback_steps=2)
    merged = KStepOptions.of(base, "here", ensemble="nvt")
    assert (merged.fallback_steps, merged.ensemble, base.ensemble) == (2, "nvt", "nve")
    assert KStepOptions.of() == KStepOptions()
    with pytest.raises(InputError, match=r"unknown option\(s\) \['bogus'\]: here takes"):
        KStepOptions.of(base, "here", bogus=1)
    with pytest.raises(InputError, match="options must be a jkstep.kstep.KStepOptions"):
        KStepOptions.of({"ensemble": "nvt"}, "here")
    # kstep_integrator takes the dataclass, keyword changes of it, or both; a bad change is refused
    jump = ballistic_jump(np.ones(2), K, DT)
    kstep_integrator(jump, harmonic, [1, 1], np.ones(2), K, DT, base)
    kstep_integrator(jump, harmonic, [1, 1], np.ones(2), K, DT, base, ensemble="nvt")
    with pytest.raises(InputError, match="energy_relaxation pulls the total energy back"):
        kstep_integrator(jump, harmonic, [1, 1], np.ones(2), K, DT, KStepOptions(ensemble="nvt"),
                         energy_relaxation=100.0)


def test_cli_defaults_are_the_dataclasses():
    """``jkstep run`` with no kstep flag builds exactly ``KStepOptions()``: the defaults are written once."""
    from jkstep.cli import _kstep_options, build_parser

    assert _kstep_options(build_parser().parse_args(["run"])) == KStepOptions()
    args = build_parser().parse_args(["run", "--max-energy-drift", "-1", "--max-attempts", "2", "--delta-scale", "0.5"])
    assert _kstep_options(args) == KStepOptions(guards=Guards(max_energy_drift=None, max_attempts=2), delta_scale=0.5)


@pytest.mark.parametrize("options, match", [
    (dict(max_displacement=float("nan")), "max_displacement must be > 0"),
    (dict(max_displacement=-0.1), "max_displacement must be > 0"),
    (dict(max_energy_rise=float("nan")), "max_energy_rise must be > 0"),
    (dict(max_kinetic_rise=0.0), "max_kinetic_rise must be > 0"),
    (dict(max_energy_drift=float("nan")), "max_energy_drift must be > 0"),
    (dict(max_force_error="a"), "max_force_error must be > 0"),
    (dict(clash_ratio=float("nan")), r"clash_ratio must be in \[0, 1\)"),
    (dict(clash_ratio=1.5), r"clash_ratio must be in \[0, 1\)"),
    (dict(max_attempts=0), "max_attempts must be an integer ≥ 1"),
    (dict(max_attempts=2.5), "max_attempts must be an integer ≥ 1"),
])
def test_guards_that_would_reject_every_jump_are_refused(options, match):
    with pytest.raises(InputError, match=match):
        Guards(**options)
    Guards(max_energy_rise=float("inf"), max_energy_drift=None, clash_ratio=0.0)  # bounds off: allowed


@pytest.mark.slow
def test_kstep_names_what_it_needs(ethanol):
    bundle, pot = load_pretrained("gfn2-k8"), jkstep.mmff_potential(ethanol)
    with pytest.raises(InputError, match="kstep needs a loaded model"):
        jkstep.kstep("gfn2-k8", pot, ethanol)
    with pytest.raises(InputError, match="kstep needs a jkstep.Molecule"):
        jkstep.kstep(bundle, pot, "CCO")
    with pytest.raises(InputError, match=r"unknown option\(s\) \['bogus'\]: kstep takes the options of "
                                         r"jkstep.kstep.KStepOptions \(guards, delta_scale"):
        jkstep.kstep(bundle, pot, ethanol, bogus=1)


def verlet_jump(energy, masses, k, dt):
    """A 'model' that predicts exactly what k plain Verlet steps give (cheap JAX potential)."""
    init, apply = jkstep.verlet(energy, masses, dt=dt)

    def jump(x, v, f):
        s = jax.lax.fori_loop(0, k, lambda _, s: apply(s), init(x, v))
        return s.positions, s.velocities, s.forces

    return jump


@pytest.mark.slow
def test_exact_verlet_model_reproduces_verlet():
    masses = np.array([12.0, 1.0, 16.0, 1.0])
    x0 = np.array([[0.0, 0, 0], [1.1, 0, 0], [4.0, 0.3, 0], [5.0, 0.1, 0.2]])
    v0 = 0.01 * np.random.default_rng(0).normal(size=(4, 3))
    # wells fixed in space exert a net torque: angular momentum is not conserved here
    init, apply = kstep_integrator(verlet_jump(harmonic, masses, K, DT), harmonic, [6, 1, 8, 1], masses, K, DT,
                                   guards=Guards(max_force_error=1e-9), conserve_angular_momentum=False)
    state, _ = runner(apply, 25, 1)(init(x0, v0))
    vinit, vapply = jkstep.verlet(harmonic, masses, dt=DT)
    ref, _ = runner(vapply, 25, K)(vinit(x0, v0))
    np.testing.assert_allclose(state.positions, ref.positions, atol=1e-12)
    np.testing.assert_allclose(state.velocities, ref.velocities, atol=1e-13)
    assert int(state.accepted) == 25 and int(state.escalations) == 0


def test_force_disagreement_escalates_to_real_steps(ethanol):
    """The ballistic jump's force estimate (F_t) disagrees with the corrector's F' by more
    than 0.01 eV/Å: every macro-step skips its retries and takes the Verlet fallback."""
    pot = jkstep.xtb_potential(ethanol)
    init, apply = kstep_integrator(ballistic_jump(ethanol.masses, K, DT), pot, ethanol.numbers, ethanol.masses,
                                   K, DT, guards=Guards(max_force_error=0.01))
    state, _ = runner(apply, 2, 1)(init(ethanol.positions, ethanol.thermal_velocities(300.0, 0)))
    assert int(state.escalations) == 2 == int(state.fallbacks) and int(state.rejected) == 2
    assert pot.calls == int(state.force_calls) == 1 + 2 * (1 + NF)


@pytest.mark.slow
def test_learned_jumps_conserve_angular_momentum(ethanol):
    """A jump that adds a spurious rotation is given back the angular momentum it started with
    (and its linear momentum is untouched); with the option off the spin-up shows."""
    from jkstep.integrate import angular_momentum

    v0 = ethanol.thermal_velocities(300.0, seed=0)
    base = ballistic_jump(ethanol.masses, K, DT)
    m = jnp.asarray(ethanol.masses)

    def spinning(x, v, f):             # ballistic plus a small rigid rotation about z of the velocities
        px, pv, pf = base(x, v, f)
        r = px - jnp.sum(m[:, None] * px, 0) / jnp.sum(m)
        return px, pv + jnp.cross(jnp.array([0.0, 0.0, 2e-4]), r), pf

    out = {}
    for conserve in (True, False):
        init, apply = kstep_integrator(spinning, jkstep.xtb_potential(ethanol), ethanol.numbers, ethanol.masses,
                                       K, DT, guards=Guards(max_energy_drift=None, max_energy_rise=10.0,
                                                            max_kinetic_rise=10.0), conserve_angular_momentum=conserve)
        s0 = init(ethanol.positions, v0)
        s, _ = runner(apply, 5, 1)(s0)
        assert int(s.accepted) == 5
        out[conserve] = (np.asarray(angular_momentum(s0.positions, s0.velocities, m)),
                         np.asarray(angular_momentum(s.positions, s.velocities, m)),
                         np.asarray(jnp.sum(m[:, None] * s.velocities, 0)))
    l0, l_kept, p_kept = out[True]
    np.testing.assert_allclose(l_kept, l0, atol=1e-5 * np.linalg.norm(l0) + 1e-9)
    np.testing.assert_allclose(p_kept, np.sum(ethanol.masses[:, None] * v0, 0), atol=1e-10)
    assert np.linalg.norm(out[False][1] - l0) > 10 * np.linalg.norm(l_kept - l0) + 1e-3


def test_reversal_correction_removes_an_even_error_and_keeps_an_exact_jump():
    """An exact (reversible) jump is left as it is; a jump that shrinks the motion (an error that
    is the same forwards and backwards) loses most of its error; α outside [0, 1] is refused."""
    from jkstep.kstep import reversal_corrected

    masses = np.array([12.0, 1.0, 16.0, 1.0])
    x0 = np.array([[0.1, 0, 0], [1.1, 0.2, 0], [4.0, 0.3, 0], [5.0, 0.1, 0.2]])
    v0 = 0.01 * np.random.default_rng(0).normal(size=(4, 3))
    f0 = -jax.grad(harmonic)(jnp.asarray(x0))
    exact = verlet_jump(harmonic, masses, K, DT)
    ex, ev, _ = exact(x0, v0, f0)
    cx, cv, _ = reversal_corrected(exact)(x0, v0, f0)
    np.testing.assert_allclose(cx, ex, atol=1e-12)
    np.testing.assert_allclose(cv, ev, atol=1e-12)

    def shrinking(x, v, f):                       # 5 % regression towards the wells' centres
        px, pv, pf = exact(x, v, f)
        return jnp.round(px) + 0.95 * (px - jnp.round(px)), 0.95 * pv, pf

    sx, sv, _ = shrinking(x0, v0, f0)
    hx, hv, _ = reversal_corrected(shrinking)(x0, v0, f0)
    # measured: position error 0.0159 -> 0.0013 Å, velocity error 1.18e-3 -> 0.94e-3 Å/fs
    assert np.abs(hx - ex).max() < 0.2 * np.abs(sx - ex).max()
    assert np.abs(hv - ev).max() < 0.9 * np.abs(sv - ev).max()
    with pytest.raises(InputError, match="reversal correction"):
        reversal_corrected(exact, 1.5)


def springs(x):
    """Harmonic springs between every pair (rotation invariant: no net torque), eV."""
    d = jnp.linalg.norm(x[:, None] - x[None, :] + jnp.eye(len(x))[..., None], axis=-1)
    return 0.5 * 2.0 * jnp.sum(jnp.triu((d - 1.5) ** 2, 1))


@pytest.mark.slow
def test_exact_verlet_model_reproduces_verlet_with_default_options():
    """With a rotation-invariant potential the angular-momentum restore (on by default) changes
    an exact Verlet model's trajectory only at round-off."""
    masses = np.array([12.0, 1.0, 16.0, 1.0])
    x0 = np.array([[0.0, 0, 0], [1.4, 0, 0], [0.2, 1.5, 0], [0.1, 0.3, 1.4]])
    v0 = 0.01 * np.random.default_rng(1).normal(size=(4, 3))
    init, apply = kstep_integrator(verlet_jump(springs, masses, K, DT), springs, [6, 1, 8, 1], masses, K, DT)
    state, _ = runner(apply, 25, 1)(init(x0, v0))
    vinit, vapply = jkstep.verlet(springs, masses, dt=DT)
    ref, _ = runner(vapply, 25, K)(vinit(x0, v0))
    assert int(state.accepted) == 25
    np.testing.assert_allclose(state.positions, ref.positions, atol=1e-11)
    np.testing.assert_allclose(state.velocities, ref.velocities, atol=1e-12)


@pytest.mark.slow
def test_run_summary_timeline_counts_every_call(ethanol):
    """``run_md`` records [fs, calls, fallbacks] after every chunk of a kstep run; the last point
    is the run's own count, and ``call_rates`` reads calls per ps off it."""
    from jkstep.md import RunConfig, call_rates, run_md

    pot = jkstep.xtb_potential(ethanol)
    config = RunConfig(integrator="kstep", dt=DT, ps=0.1, save_every=K, chunk_frames=10,
                       kstep_options=KStepOptions(guards=Guards(max_displacement=0.2)))
    summary, _ = run_md(ethanol, pot, config, jump=noisy_jump(ethanol.masses, 0.08), k=K,
                        calls=lambda: pot.calls)
    timeline = np.array(summary["timeline"])
    np.testing.assert_allclose(timeline[:, 0], [0, 20, 40, 60, 80, 100])
    assert timeline[0, 1] == 1 and timeline[-1, 1] == summary["integrator_force_calls"] == summary["xtb_calls"]
    assert timeline[-1, 2] == summary["fallbacks"] > 0      # this noisy 'model' is rejected now and then
    assert np.all(np.diff(timeline[:, 1]) >= 10)           # at least one call per macro-step
    first, last = call_rates(summary["timeline"])
    assert first == pytest.approx(1000 * (timeline[1, 1] - 1) / 20)
    assert last == pytest.approx(1000 * (timeline[-1, 1] - timeline[-2, 1]) / 20)


def test_an_interrupted_run_keeps_its_finished_chunks(ethanol):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same) during production returns the
    chunks finished before it, marked ``interrupted``, instead of losing the run."""
    from jkstep.md import RunConfig, run_md

    pot = jkstep.xtb_potential(ethanol)
    config = RunConfig(integrator="kstep", dt=DT, ps=0.2, save_every=K, chunk_frames=10)
    seen = []

    def progress(n):
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    summary, frames = run_md(ethanol, pot, config, jump=ballistic_jump(ethanol.masses, K, DT), k=K,
                             progress=progress, calls=lambda: pot.calls)
    assert summary["interrupted"] is True
    assert summary["simulated_fs"] == 40.0 and frames.energy.shape[0] == 1 + 20  # two chunks of 10 jumps
    assert summary["xtb_calls"] == summary["integrator_force_calls"] == 1 + 20
    assert summary["timeline"][-1][0] == 40.0


@pytest.mark.slow
def test_run_md_starts_from_given_velocities(ethanol):
    """``velocities=`` replaces the thermal start (frame 0 holds them); a wrong shape or NaN is
    one InputError before any call."""
    from jkstep.md import RunConfig, run_md

    pot = jkstep.mmff_potential(ethanol)
    config = RunConfig(integrator="verlet", dt=0.5, ps=0.002, save_every=1)
    v0 = np.full(ethanol.positions.shape, 0.001)
    _, frames = run_md(ethanol, pot, config, velocities=v0)
    np.testing.assert_array_equal(np.asarray(frames.velocities[0]), v0)
    for bad in (v0[:-1], np.full_like(v0, np.nan)):
        with pytest.raises(InputError, match="start velocities must be finite and shaped like"):
            run_md(ethanol, pot, config, velocities=bad)


def test_an_interrupt_inside_a_host_callback_is_recognised():
    """Ctrl-C during an xTB call reaches Python through XLA as a runtime error, not as a
    KeyboardInterrupt; it must still count as an interrupt (and other errors must not)."""
    from jkstep.errors import is_interrupt

    def host(x):
        raise KeyboardInterrupt

    f = jax.jit(lambda x: jax.pure_callback(host, jax.ShapeDtypeStruct((), jnp.float64), x))
    with pytest.raises(Exception) as exc:
        f(1.0).block_until_ready()
    assert not isinstance(exc.value, KeyboardInterrupt) and is_interrupt(exc.value)
    assert is_interrupt(KeyboardInterrupt()) and not is_interrupt(RuntimeError("CpuCallback error: ValueError"))
