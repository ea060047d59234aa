"""QM/MM proof of concept: impulse RESPA of an xTB solute in flexible MMFF94 water."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import jkstep
from jkstep import qmmm, units
from jkstep.errors import InputError
from jkstep.kstep import Guards, fallback_step_count

K, DT = 8, 0.25


@functools.cache
def droplet():
    solute = jkstep.Molecule.from_smiles("CC(=O)NC", seed=0)
    system, qm_atoms = qmmm.solvate(solute, 30, seed=0)
    return system, qm_atoms, qmmm.qmmm_system(system, qm_atoms)


def run(integrator, n_macro):
    system, _, qs = droplet()
    init, apply, energy = qmmm.respa(qs, *integrator, K, DT)
    state = init(system.positions, system.thermal_velocities(300.0, seed=1))
    apply, energy = jax.jit(apply), jax.jit(energy)
    totals, dmin = [float(energy(state)["total"])], []
    for _ in range(n_macro):
        state = apply(state)
        totals.append(float(energy(state)["total"]))
        dmin.append(qmmm.min_solute_water_distance(qs, state.qm.positions, state.xw))
    return state, np.array(totals), np.array(dmin)


def test_split_and_coupling_are_mmff_interfragment_terms():
    system, qm_atoms, qs = droplet()
    assert len(qs.qm) == 12 and len(qs.mm) == 90 and qs.environment.formula == "H60O30"
    x = system.positions
    xq, xw = qs.split(x)
    total = float(qs.mmff_all.energy(x))
    # the three parts add up to the whole-system MMFF energy (+ wall on the solute, zero here)
    assert float(qs.coupling_energy(xq, xw)) + float(qs.mmff_qm.energy(xq)) + float(qs.mmff_mm.energy(xw)) \
        == pytest.approx(total, abs=1e-9)
    # far apart, solute and water do not interact
    far = np.asarray(xw) + np.array([1000.0, 0.0, 0.0])
    assert abs(float(qs.coupling_energy(xq, far) - qs.wall_energy(xq))) < 1e-4


def test_verlet_respa_conserves_energy_and_hybrid_holds_it_with_far_fewer_calls():
    system, _, qs = droplet()
    pot = jkstep.xtb_potential(qs.solute)
    state, totals, dmin = run(qmmm.verlet_block(pot, qs.solute.masses, K, DT), 40)
    de = (totals - totals[0]) / units.KJ_MOL
    # plain Verlet on both regions (80 fs): total energy conserved at the level of Verlet's fluctuation
    assert np.abs(de).max() < 1.5, de
    assert int(state.qm.force_calls) == pot.calls == 1 + 40 * K
    oh = qmmm.water_oh_lengths(qs, state.xw)
    assert 0.8 < oh.min() and oh.max() < 1.2 and dmin.min() > 2.0

    hyb_pot = jkstep.xtb_potential(qs.solute)
    bundle = jkstep.load_pretrained("gfn2-k8")
    hybrid = jkstep.kstep(bundle, hyb_pot, qs.solute, guards=Guards(max_energy_drift=None))
    hstate, htotals, hdmin = run(hybrid, 40)
    calls = int(hstate.qm.force_calls)
    assert calls == hyb_pot.calls
    expected = (1 + int(hstate.qm.accepted) + int(hstate.qm.rejected)
                + fallback_step_count(K, DT) * int(hstate.qm.fallbacks))
    assert calls <= expected       # rejected attempts that fail a geometry guard cost no call
    assert calls < pot.calls / 4   # most macro-steps cost one call instead of k = 8
    hde = (htotals - htotals[0]) / units.KJ_MOL
    assert np.abs(hde).max() < 5.0, hde  # no excursion guard here: the jumps alone keep the energy
    oh = qmmm.water_oh_lengths(qs, hstate.xw)
    assert 0.8 < oh.min() and oh.max() < 1.2 and hdmin.min() > 2.0
    print(f"hybrid: {calls} xTB calls vs {pot.calls}; |ΔE| max {np.abs(htotals - htotals[0]).max() / units.KJ_MOL:.2f} "
          f"kJ/mol vs Verlet {np.abs(de).max():.2f}")


def test_bad_input():
    system, qm_atoms, _ = droplet()
    with pytest.raises(InputError, match="out of range"):
        qmmm.qmmm_system(system, [0, 1, 500])
    with pytest.raises(InputError, match="cuts the covalent bond"):
        qmmm.qmmm_system(system, qm_atoms[:-1])
    x = system.positions.copy()
    x[12] = x[0] + np.array([0.5, 0.0, 0.0])    # a water oxygen on top of a solute carbon
    with pytest.raises(InputError, match="overlap"):
        qmmm.qmmm_system(system.with_positions(x), qm_atoms)
    with pytest.raises(InputError, match="more than once"):
        qmmm.qmmm_system(system, [0, 0, 1])
