"""batched_rollout: one host callback per step for the whole batch, and with several devices one
callback per shard (shard_map), with the same numbers and the same xTB call count."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jkstep
from jkstep import InputError
from jkstep.kstep import Guards, ballistic_jump, kstep_integrator
from jkstep.potentials.xtb import XTBPotential
from jkstep.rollout import batched_rollout, concat, rollout, runner

K, DT = 8, 0.25


@pytest.fixture
def callbacks(monkeypatch):
    """Record (batch shape, replica indices) of every host callback of potentials built after."""
    seen = []
    host = XTBPotential._host

    def recording(self, positions, active, replica):
        seen.append((np.shape(positions)[:-2], tuple(np.ravel(replica).tolist())))
        return host(self, positions, active, replica)

    monkeypatch.setattr(XTBPotential, "_host", recording)
    return seen


def velocities(mol, b, temperature=300.0):
    return np.stack([mol.thermal_velocities(temperature, seed=s) for s in range(b)])


def test_verlet_batch_is_one_callback_per_step_with_all_members(ethanol, callbacks):
    b, n_frames, every = 3, 2, 2
    v0 = velocities(ethanol, b)
    pot = jkstep.xtb_potential(ethanol, restart=False)
    states, frames = batched_rollout(*jkstep.verlet(pot, ethanol.masses, 0.5), ethanol.positions, v0,
                                     n_frames, every, chunk_frames=1)
    steps = n_frames * every
    assert callbacks == [((b,), (0, 1, 2))] * (1 + steps)  # init + one per step, all B members
    assert pot.calls == b * (1 + steps) == int(states.force_calls.sum())
    assert frames.positions.shape == (b, n_frames, len(ethanol), 3)
    np.testing.assert_array_equal(frames.step, [[2, 4]] * b)

    init, apply = jkstep.verlet(jkstep.xtb_potential(ethanol, restart=False), ethanol.masses, 0.5)
    for r in range(b):
        single, single_frames = runner(apply, n_frames, every)(init(ethanol.positions, v0[r]))
        np.testing.assert_allclose(frames.positions[r], single_frames.positions, atol=1e-10)
        np.testing.assert_allclose(states.velocities[r], single.velocities, atol=1e-10)


@pytest.mark.slow
def test_kstep_batch_makes_the_calls_of_single_runs(ethanol, callbacks):
    """Members accept and fall back at different macro-steps; every callback carries the batch."""
    b = 4
    v0 = velocities(ethanol, b, 600.0)

    def integrator():
        pot = jkstep.xtb_potential(ethanol, restart=False)
        return pot, kstep_integrator(ballistic_jump(ethanol.masses, K, DT), pot, ethanol.numbers,
                                     ethanol.masses, K, DT, guards=Guards(max_displacement=0.12))

    pot, (init, apply) = integrator()
    states, frames = batched_rollout(init, apply, ethanol.positions, v0, 6)
    assert {shape for shape, _ in callbacks} == {(b,)}
    pot_s, (init_s, apply_s) = integrator()
    singles = [runner(apply_s, 6)(init_s(ethanol.positions, v)) for v in v0]
    assert pot.calls == pot_s.calls == int(states.force_calls.sum())
    assert int(states.fallbacks.sum()) > 0 and int(states.accepted.sum()) > 0
    for r, (single, single_frames) in enumerate(singles):
        np.testing.assert_allclose(frames.positions[r], single_frames.positions, atol=1e-8)
        assert int(states.force_calls[r]) == int(single.force_calls)
        assert int(states.fallbacks[r]) == int(single.fallbacks)


@pytest.mark.slow
def test_keys_reach_a_stochastic_init():
    masses = np.full(4, 12.0)
    x0 = np.arange(12, dtype=float).reshape(4, 3) * 3.0
    init, apply = jkstep.langevin(lambda x: jnp.sum((x - x0) ** 2), masses, 0.5)
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    _, frames = batched_rollout(init, apply, x0, np.zeros((2, 4, 3)), 3, keys=keys)
    _, ref_frames = runner(apply, 3, batched=True)(jax.vmap(init)(np.stack([x0, x0]), np.zeros((2, 4, 3)), keys))
    np.testing.assert_allclose(frames.positions, ref_frames.positions, atol=1e-14)
    assert np.abs(frames.positions[0] - frames.positions[1]).max() > 1e-6  # different noise


def test_bad_inputs():
    init, apply = jkstep.verlet(lambda x: jnp.sum(x**2), np.ones(2))
    x = np.zeros((3, 2, 3))
    with pytest.raises(InputError, match="split evenly over 2 devices"):
        batched_rollout(init, apply, x, x, 1, devices=[jax.devices()[0]] * 2)
    with pytest.raises(InputError, match=r"\(B, N, 3\)"):
        batched_rollout(init, apply, x[0, :, :2], x[0, :, :2], 1)
    with pytest.raises(InputError, match="≥ 1"):
        batched_rollout(init, apply, x, x, 0)
    for n in (None, float("nan"), float("inf"), 2.5, True, -1):
        with pytest.raises(InputError, match="n_frames must be a whole number"):
            batched_rollout(init, apply, x, x, n)
    with pytest.raises(InputError, match="every must be"):
        batched_rollout(init, apply, x, x, 1, every=0)
    with pytest.raises(InputError, match="velocities"):
        batched_rollout(init, apply, x, np.zeros((2, 2, 3)), 1)
    with pytest.raises(InputError, match="B ≥ 1"):
        batched_rollout(init, apply, x[:0], x[:0], 1)
    with pytest.raises(InputError, match="finite"):
        batched_rollout(init, apply, np.full_like(x, np.nan), x, 1)
    with pytest.raises(InputError, match="one PRNG key per replica"):
        batched_rollout(init, apply, x, x, 1, keys=jax.random.split(jax.random.PRNGKey(0), 2))
    with pytest.raises(InputError, match="the result of init_fn.*got ndarray"):
        rollout(apply, x[0], 2)   # positions where the integrator's state belongs
    lang_init, lang_apply = jkstep.langevin(lambda x: jnp.sum(x**2), np.ones(2), 0.5, 300.0, 0.01)
    with pytest.raises(InputError, match="needs a PRNG key"):
        batched_rollout(lang_init, lang_apply, x, x, 1)
    with pytest.raises(InputError, match="at least one chunk"):
        concat([])
    state = init(x[0], x[0])
    for n_frames, every in ((0, 1), (-1, 1), (2.5, 1), (2, 0), (2, -3)):
        with pytest.raises(InputError, match="must be a whole number"):
            rollout(apply, state, n_frames, every)
        with pytest.raises(InputError, match="must be a whole number"):
            runner(apply, n_frames, every)


SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before JAX is imported
    import jax, numpy as np
    import jkstep
    from jkstep.kstep import Guards, ballistic_jump, kstep_integrator
    from jkstep.potentials.xtb import XTBPotential
    from jkstep.rollout import batched_rollout, concat, rollout, runner

    assert jax.device_count() == 2, jax.devices()
    seen = []
    host = XTBPotential._host
    def recording(self, positions, active, replica):
        seen.append((np.shape(positions)[:-2], tuple(np.ravel(replica).tolist())))
        return host(self, positions, active, replica)
    XTBPotential._host = recording

    mol = jkstep.Molecule.from_smiles("CCO", seed=0)
    v0 = np.stack([mol.thermal_velocities(600.0, seed=s) for s in range(4)])
    guards = Guards(max_displacement=0.12)
    K, DT, N = 8, 0.25, 5

    def run(restart, devices=None):
        pot = jkstep.xtb_potential(mol, restart=restart)
        init, apply = kstep_integrator(ballistic_jump(mol.masses, K, DT), pot, mol.numbers, mol.masses, K, DT,
                                       guards=guards)
        seen.clear()
        states, frames = batched_rollout(init, apply, mol.positions, v0, N, devices=devices)
        return pot, states, frames, list(seen)

    for restart in (False, True):
        pot2, s2, f2, seen2 = run(restart)
        pot1, s1, f1, seen1 = run(restart, devices=jax.devices()[:1])
        # one callback per shard: 2 members each, replicas 0-1 on one device and 2-3 on the other
        assert {shape for shape, _ in seen2} == {(2,)}, seen2
        assert {rep for _, rep in seen2} == {(0, 1), (2, 3)}, seen2
        assert {shape for shape, _ in seen1} == {(4,)}, seen1
        assert pot2.calls == pot1.calls == int(s2.force_calls.sum()), (pot2.calls, pot1.calls)
        np.testing.assert_array_equal(s2.force_calls, s1.force_calls)
        for name in ("positions", "velocities", "energy"):
            np.testing.assert_allclose(getattr(f2, name), getattr(f1, name), rtol=0, atol=1e-8)
        assert int(s2.fallbacks.sum()) > 0 and int(s2.accepted.sum()) > 0
        # every replica restarts from its own slot: four slots, each used
        assert len(pot2._slots) == 4 and all(s.result is not None for s in pot2._slots)

    # the four single runs make the same calls
    pot = jkstep.xtb_potential(mol, restart=False)
    init, apply = kstep_integrator(ballistic_jump(mol.masses, K, DT), pot, mol.numbers, mol.masses, K, DT,
                                   guards=guards)
    for v in v0:
        runner(apply, N)(init(mol.positions, v))
    assert pot.calls == pot2.calls, (pot.calls, pot2.calls)

    # a plain verlet batch: twice per step (one callback per device), two members each
    pot = jkstep.xtb_potential(mol)
    seen.clear()
    batched_rollout(*jkstep.verlet(pot, mol.masses, 0.5), mol.positions, v0, 3)
    assert sorted(seen) == sorted([((2,), (0, 1)), ((2,), (2, 3))] * 4), seen
    try:
        batched_rollout(*jkstep.verlet(pot, mol.masses, 0.5), mol.positions, v0[:3], 1)
    except jkstep.InputError as e:
        assert "split evenly over 2 devices" in str(e)
    else:
        raise AssertionError("3 replicas on 2 devices did not raise")
    print("SHARDED OK", pot2.calls)
""")


@pytest.mark.slow
def test_sharded_batch_makes_one_callback_per_device():
    """In a fresh process with 2 fake CPU devices (the flag must precede the JAX import)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SHARDED OK" in out.stdout
