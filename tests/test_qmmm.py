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
    init, apply, energy = qmmm.embedded_integrator(qs, *integrator, K, DT)
    state = init(system.positions, system.thermal_velocities(300.0, seed=1))
    apply, energy = jax.jit(apply), jax.jit(energy)
    totals, dmin = [float(energy(state)["total"])], []
    for _ in range(n_macro):
        state = apply(state)
        totals.append(float(energy(state)["total"]))
        dmin.append(qmmm.min_solute_water_distance(qs, state.qm.positions, state.xw))
    return state, np.array(totals), np.array(dmin)


@pytest.mark.slow
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


@pytest.mark.slow
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


@functools.cache
def small():
    """A water in 4 waters (15 atoms, all MMFF): fast bad-input checks."""
    system, qm_atoms = qmmm.solvate(jkstep.Molecule.from_smiles("O"), n_waters=4)
    return system, qm_atoms, qmmm.qmmm_system(system, qm_atoms)


def test_solvate_and_split_keep_the_solute_spin():
    for smiles, spin in (("[CH2]", 2), ("[CH3]", 1)):
        solute = jkstep.Molecule.from_smiles(smiles)
        system, qm_atoms = qmmm.solvate(solute, n_waters=2)
        assert system.spin == spin and system.charge == solute.charge
        qs = qmmm.qmmm_system(system, qm_atoms)
        assert qs.solute.spin == spin and qs.environment.spin == 0
    # a radical inside a larger system (no solvate): spin from its topology
    qs = qmmm.qmmm_system(jkstep.Molecule.from_smiles("[CH2].O"), [0, 2, 3], min_distance=0.0)
    assert qs.solute.spin == 2 and qs.environment.spin == 0


def test_solvate_bad_input():
    w = jkstep.Molecule.from_smiles("O")
    for n in (2.5, "3", True, -1):
        with pytest.raises(InputError, match="n_waters must be an integer"):
            qmmm.solvate(w, n_waters=n)
    for spacing in (0, 0.1, -3.1, float("nan"), "3.1"):
        with pytest.raises(InputError, match="spacing"):
            qmmm.solvate(w, n_waters=3, spacing=spacing)
    for d in (0, -1.0, float("inf"), None):
        with pytest.raises(InputError, match="min_distance"):
            qmmm.solvate(w, n_waters=3, min_distance=d)
    with pytest.raises(InputError, match="lower min_distance"):
        qmmm.solvate(w, n_waters=3, min_distance=1e3)
    with pytest.raises(InputError, match="seed"):
        qmmm.solvate(w, n_waters=3, seed=-1)
    with pytest.raises(InputError, match="must be a jkstep.Molecule"):
        qmmm.solvate("O", n_waters=3)
    with pytest.raises(InputError, match="topology"):
        qmmm.solvate(jkstep.Molecule(w.numbers, w.positions), n_waters=3)
    alone, qm_atoms = qmmm.solvate(w, n_waters=0)      # no water: the centred solute alone
    assert len(alone) == 3 and list(qm_atoms) == [0, 1, 2]


def test_qmmm_system_bad_settings():
    system, qm_atoms, _ = small()
    with pytest.raises(InputError, match="must be a jkstep.Molecule"):
        qmmm.qmmm_system("O", qm_atoms)
    for bad in (-1, 0, float("nan"), "5", True):
        with pytest.raises(InputError, match="wall_radius"):
            qmmm.qmmm_system(system, qm_atoms, wall_radius=bad)
        with pytest.raises(InputError, match="wall_k"):
            qmmm.qmmm_system(system, qm_atoms, wall_k=bad)
    for bad in (-0.5, float("nan"), "1.2", None):
        with pytest.raises(InputError, match="min_distance"):
            qmmm.qmmm_system(system, qm_atoms, min_distance=bad)
    for bad in (np.arange(len(system)) < 3, [0.0, 1.0, 2.0], [[0, 1, 2]], "012", None):
        with pytest.raises(InputError, match="qm_atoms"):
            qmmm.qmmm_system(system, bad)


def test_respa_bad_input():
    system, _, qs = small()
    blk = qmmm.verlet_block(qs.mmff_qm, qs.solute.masses, 2, 0.25)
    for k in (0, -1, 2.5, "2", True):
        with pytest.raises(InputError, match="k \\(base steps"):
            qmmm.embedded_integrator(qs, *blk, k, 0.25)
    for dt in (0, -0.25, float("nan"), "0.25"):
        with pytest.raises(InputError, match="dt"):
            qmmm.embedded_integrator(qs, *blk, 2, dt)
    with pytest.raises(InputError, match="QMMMSystem"):
        qmmm.embedded_integrator(system, *blk, 2, 0.25)
    init, apply, energy = qmmm.embedded_integrator(qs, *blk, 2, 0.25)
    x, v = system.positions, np.zeros_like(system.positions)
    with pytest.raises(InputError, match=r"shape \(15, 3\).*got \(12, 3\)"):
        init(x[:12], v[:12])
    with pytest.raises(InputError, match="velocities"):
        init(x, v[:, :2])
    xn = x.copy()
    xn[5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        init(xn, v)
    with pytest.raises(InputError, match="got \\(12, 3\\)"):   # also when traced under jit
        jax.jit(init)(x[:12], v[:12])


def test_water_oh_lengths_needs_water():
    _, _, qs = small()
    assert np.allclose(qmmm.water_oh_lengths(qs, qs.environment.positions), qmmm.WATER_OH)
    with pytest.raises(InputError, match="shape"):
        qmmm.water_oh_lengths(qs, qs.environment.positions[:-1])
    methanol = qmmm.qmmm_system(jkstep.Molecule.from_smiles("C.CO"), [0, 3, 4, 5, 6], min_distance=0.0)
    with pytest.raises(InputError, match="water environment"):
        qmmm.water_oh_lengths(methanol, methanol.environment.positions)
