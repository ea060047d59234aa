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


@pytest.mark.slow
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


def test_bad_padding_inputs(molecules):
    batch = pad(molecules)
    with pytest.raises(InputError, match="not one Molecule"):
        pad(molecules[0])
    with pytest.raises(InputError, match="not one Molecule"):
        padded_xtb_potential(molecules[0])
    for n in ("x", float("nan"), 9.7, 10**12):
        with pytest.raises(InputError, match="n_atoms must be an integer"):
            pad(molecules, n_atoms=n)
    assert pad(molecules, n_atoms=12).positions.shape == (3, 12, 3)
    for workers in (-1, 2.5):
        with pytest.raises(InputError, match="workers"):
            padded_xtb_potential(molecules, workers=workers)
    with pytest.raises(InputError, match="B = 3, N = 9"):
        unpad(np.zeros((2, 9, 3)), batch)


class _Bundle:
    """Stands in for a loaded model (loading one takes seconds): the checks need only its face."""
    k, dt = 8, 0.25

    def apply(self, params, numbers, mask, masses, x, v, f):
        return x, v, f

    def check_elements(self, numbers):
        pass


def test_padded_kstep_checks_up_front(molecules):
    bundle = _Bundle()
    pot = padded_xtb_potential(molecules[:2], workers=1)
    # same sizes, other order: the potential's member 0 would be water, the batch's ethanol
    with pytest.raises(InputError, match="built for other molecules"):
        padded_kstep(bundle, pot, pad(molecules[1::-1], n_atoms=9))
    with pytest.raises(InputError, match="built for other molecules"):
        padded_kstep(bundle, pot, pad(molecules[:1]))
    with pytest.raises(InputError, match="Padded batch"):
        padded_kstep(bundle, pot, molecules[:2])
    with pytest.raises(InputError, match="unknown option.*bogus"):
        padded_kstep(bundle, pot, pot.batch, bogus=1)
    with pytest.raises(InputError, match="reversal correction"):
        padded_kstep(bundle, pot, pot.batch, reversal_correction=2.0)
    with pytest.raises(InputError, match="ensemble"):
        padded_kstep(bundle, pot, pot.batch, ensemble="npt")
    with pytest.raises(InputError, match="loaded model"):
        padded_kstep("gfn2-k8", pot, pot.batch)
    padded_kstep(bundle, pot, pot.batch)   # the matching batch is fine
