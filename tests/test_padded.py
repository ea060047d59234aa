"""Different molecules in one padded batch: each member's trajectory and xTB calls equal its single run's."""

import jax
import numpy as np
import pytest

import jkstep
from jkstep import InputError
from jkstep.kstep import Guards
from jkstep.padded import pad, padded_kstep, padded_xtb_potential, unpad
from jkstep.rollout import batched_rollout, runner


@pytest.fixture(scope="module")
def molecules():
    return [jkstep.Molecule.from_smiles(s, seed=0) for s in ("CCO", "O", "C=O")]


def test_padded_batch_equals_single_runs(molecules):
    bundle = jkstep.load_pretrained("gfn2-k8")
    # a tight energy window: some members fall back to Verlet while others accept (measured: 2, 0, 2)
    options = dict(guards=Guards(max_energy_drift=0.001))
    batch = pad(molecules)
    assert batch.positions.shape == (3, 9, 3) and list(batch.n_atoms) == [9, 3, 4]
    velocities = [m.thermal_velocities(300.0, seed=i) for i, m in enumerate(molecules)]
    pot = padded_xtb_potential(molecules, workers=2)
    init_fn, apply_fn = padded_kstep(bundle, pot, batch, **options)
    states, frames = batched_rollout(init_fn, apply_fn, batch.positions, batch.pad_array(velocities), 4)
    positions = unpad(frames.positions, batch)
    calls = 0
    for i, m in enumerate(molecules):
        single_pot = jkstep.xtb_potential(m)
        init1, apply1 = jkstep.kstep(bundle, single_pot, m, **options)
        state = init1(m.positions, velocities[i])
        state, ref = runner(apply1, 4)(state)
        np.testing.assert_allclose(positions[i], np.asarray(ref.positions), atol=1e-8)
        assert int(states.force_calls[i]) == int(state.force_calls) == single_pot.calls
        for counter in ("accepted", "rejected", "fallbacks"):
            assert int(getattr(states, counter)[i]) == int(getattr(state, counter))
        calls += single_pot.calls
        # padding atoms never move
        np.testing.assert_array_equal(np.asarray(frames.positions)[i, :, len(m):], batch.positions[i, len(m):][None].repeat(4, 0))
    assert pot.calls == calls
    assert int(np.sum(states.accepted)) > 0 and int(np.sum(states.fallbacks)) > 0


def test_padded_batch_errors(molecules):
    bundle = jkstep.load_pretrained("gfn2-k8")
    batch = pad(molecules)
    pot = padded_xtb_potential(molecules, workers=1)
    init_fn, _ = padded_kstep(bundle, pot, batch)
    with pytest.raises(InputError, match="batched_rollout"):
        jax.vmap(init_fn)(batch.positions, np.zeros_like(batch.positions))
    with pytest.raises(InputError, match="smaller than the largest"):
        pad(molecules, n_atoms=4)
    with pytest.raises(InputError, match="must be \\(3, 3\\)"):
        batch.pad_array([np.zeros((9, 3)), np.zeros((2, 3)), np.zeros((4, 3))])
