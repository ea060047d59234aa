"""Metrics on constructed cases whose answers are known in closed form."""

import numpy as np
import pytest
from ase import Atoms
from scipy import stats
from scipy.integrate import trapezoid

from jkstep import units
from jkstep.evaluate import metrics as M

C = M.C_CM_FS


def ethane(phi_deg=60.0):
    """Heavy-atom frame of a hand-built ethane-like chain i-j-k-l with dihedral phi."""
    phi = np.radians(phi_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.5],
                     [np.cos(phi), np.sin(phi), 1.5]])


def test_bond_angle_dihedral_values_and_signs():
    for phi in (-179.0, -60.0, 0.0, 37.5, 120.0, 180.0):
        x = ethane(phi)
        d = M.dihedrals(x, [[0, 1, 2, 3]])[0]
        assert abs(M.wrap_deg(d - phi)) < 1e-8
        assert abs(M.wrap_deg(M.dihedrals(x * [1, 1, -1], [[0, 1, 2, 3]])[0] + phi)) < 1e-8  # mirror
        ase_d = Atoms("C4", positions=x).get_dihedral(0, 1, 2, 3)  # independent, 0..360
        assert abs(M.wrap_deg(d - ase_d)) < 1e-6
    x = ethane(60.0)
    np.testing.assert_allclose(M.bond_lengths(x, [[0, 1], [1, 2], [2, 3]]), [1.0, 1.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(M.angles(x, [[0, 1, 2], [1, 2, 3]]), [90.0, 90.0], atol=1e-10)
    lin = np.array([[-1.2, 0.0, 0.0], [0.0, 0.0, 0.0], [1.3, 0.0, 0.0]])
    assert M.angles(lin, [[0, 1, 2]])[0] == pytest.approx(180.0, abs=1e-12)
    assert np.isfinite(M.dihedrals(np.vstack([lin, [[2, 1, 0]]]), [[0, 1, 2, 3]])).all()
    frames = np.stack([ethane(p) for p in (10.0, 20.0, 30.0)])  # (F, N, 3) → (F, n_terms)
    assert M.dihedrals(frames, [[0, 1, 2, 3]]).shape == (3, 1)
    np.testing.assert_allclose(M.dihedrals(frames, [[0, 1, 2, 3]])[:, 0], [10, 20, 30], atol=1e-8)


def _mol(smiles):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=3)
    z = np.array([a.GetAtomicNum() for a in m.GetAtoms()])
    return z, m.GetConformer().GetPositions(), Chem.MolToMolBlock(m)


def test_topology_from_mol_block_and_radii():
    z, x, block = _mol("CC(=O)NC(C)C(=O)NC")  # alanine dipeptide, 22 atoms
    bonds, angs, dihs = M.internal_coordinates(z, x, block)
    assert len(bonds) == 21 and len(angs) == 36 and len(dihs) == 41
    for a, b in zip((bonds, angs, dihs), M.internal_coordinates(z, x)):
        np.testing.assert_array_equal(a, b)
    rot = M.rotatable_dihedrals(z, x, block)  # 2 amide C-N, phi, psi: methyl rotors left out
    assert sorted(map(tuple, rot[:, 1:3].tolist())) == [(1, 3), (3, 4), (4, 6), (6, 8)]
    assert (z[rot] > 1).all()
    np.testing.assert_array_equal(M.rotatable_dihedrals(z, x), rot)
    z, x, block = _mol("CCO")
    assert M.rotatable_dihedrals(z, x, block).shape == (0, 4)
    z, x, block = _mol("CC1CCCCC1CC=CC")  # ring bonds and the C=C are not rotatable
    rot = M.rotatable_dihedrals(z, x, block)
    assert len(rot) == 2 and len(M.rotatable_dihedrals(z, x)) == 2


def test_one_jump_errors():
    x = ethane(60.0)
    y = ethane(70.0)
    e = M.one_jump_errors(y, x, bonds=[[0, 1], [1, 2], [2, 3]], angles=[[0, 1, 2]],
                          dihedrals=[[0, 1, 2, 3]])
    assert e["dihedral_rmse_deg"] == pytest.approx(10.0, abs=1e-8)
    assert e["bond_rmse_a"] == pytest.approx(0.0, abs=1e-12) and e["force_rmse_ev_a"] is None
    assert e["position_rmse_a"] == pytest.approx(2 * np.sin(np.radians(5)) / 2, rel=1e-10)
    wrap = M.one_jump_errors(ethane(179.0), ethane(-179.0), dihedrals=[[0, 1, 2, 3]])
    assert wrap["dihedral_rmse_deg"] == pytest.approx(2.0, abs=1e-8)
    f = M.one_jump_errors(x, x, np.ones((4, 3)), np.zeros((4, 3)))
    assert f["force_rmse_ev_a"] == pytest.approx(1.0) and f["angle_rmse_deg"] is None


def test_js_divergence():
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000)
    assert M.js_divergence(a, a, 40) == 0.0
    assert M.js_divergence(a, a + 100.0, 40) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < M.js_divergence(a, rng.normal(size=5000), 40) < 0.02
    assert M.js_divergence([], a) is None and M.js_divergence(a, [np.nan]) is None
    frames = np.stack([ethane(p) for p in rng.normal(60, 10, 3000)])
    terms = [[0, 1, 2, 3]]
    assert M.distribution_js(frames, frames, terms, "dihedral") == 0.0
    far = np.stack([ethane(p) for p in rng.normal(-60, 10, 3000)])
    assert M.distribution_js(frames, far, terms, "dihedral") > 0.99
    assert M.distribution_js(frames, frames[:0], terms, "dihedral") is None
    stretched = frames.copy()
    stretched[:, 2:] += [0.0, 0.0, 0.1]  # bond 1-2 lengthened by 0.1 Å in every frame
    assert M.distribution_js(frames, stretched, [[1, 2]], "bond") > 0.99
    assert M.distribution_js(frames, stretched, [[0, 1]], "bond") == 0.0
    bad = frames.copy()
    bad[5, 0, 0] = np.nan
    assert M.distribution_js(frames, bad, [[0, 1]], "bonds") is None


def oscillators(wavenumbers, n_frames=4000, dt=1.0, masses=(1.0, 16.0)):
    """Velocities (F, 2, 3) of undamped oscillators, one per atom, at the given cm⁻¹."""
    t = np.arange(n_frames) * dt
    masses = masses[: len(wavenumbers)]
    v = np.zeros((n_frames, len(masses), 3))
    for a, wn in enumerate(wavenumbers):
        v[:, a, a % 3] = np.cos(2 * np.pi * wn * C * t + 0.3 * a) / np.sqrt(masses[a])
    return v, np.array(masses)


def _peaks(wn, spec):
    i = np.flatnonzero((spec[1:-1] > spec[:-2]) & (spec[1:-1] >= spec[2:])) + 1
    i = i[spec[i] > 0.1 * spec.max()]
    return wn[i]


def test_spectrum_peaks_band_and_nyquist():
    v, m = oscillators([1000.0, 3000.0])
    wn, spec = M.vibrational_spectrum(v, m, 1.0)
    assert wn[-1] == 4500.0 and trapezoid_area(wn, spec) == pytest.approx(1.0)
    np.testing.assert_allclose(_peaks(wn, spec), [1000.0, 3000.0], atol=3.0)
    # mass weighting: each oscillator carries the same mass-weighted energy → equal areas
    lo, hi = trapezoid_area(wn, spec, 0, 2000), trapezoid_area(wn, spec, 2000, 4500)
    assert lo == pytest.approx(hi, rel=0.02)
    ref = M.vibrational_spectrum(*oscillators([3000.0]), 1.0)
    assert M.band_centroid(*ref) == pytest.approx(3000.0, abs=5.0)
    shifted = M.vibrational_spectrum(*oscillators([3150.0]), 1.0)
    assert M.xh_band_shift(shifted, ref) == pytest.approx(150.0, abs=5.0)
    scaled = M.vibrational_spectrum(*oscillators([1000 * 1.04, 3000 * 1.04]), 1.0)  # 4 % scaling
    assert M.xh_band_shift(scaled, (wn, spec)) == pytest.approx(120.0, abs=5.0)
    assert M.spectrum_overlap(ref, ref) == pytest.approx(1.0, abs=1e-9)
    assert M.spectrum_overlap(ref, shifted) < 0.05
    assert M.spectrum_overlap(M.average_spectra([ref, shifted]), ref) == pytest.approx(0.5, abs=0.02)
    coarse = M.vibrational_spectrum(*oscillators([1000.0], n_frames=600, dt=8.0), 8.0)
    assert coarse[0][-1] < 2100 and M.band_centroid(*coarse) is None
    inside = M.vibrational_spectrum(*oscillators([3000.0], n_frames=800, dt=5.0), 5.0)
    assert 3000 < inside[0][-1] < 3700 and M.band_centroid(*inside) is None  # Nyquist 3336 cm⁻¹
    assert M.xh_band_shift(coarse, ref) is None and M.spectrum_overlap(coarse, ref) is None
    # frames 4 fs apart end at 4170 cm⁻¹, above every fundamental: compared on the common range
    v4, m4 = oscillators([1000.0, 3000.0], n_frames=1000, dt=4.0)
    every4 = M.vibrational_spectrum(v4, m4, 4.0)
    assert 4100 < every4[0][-1] < 4200 and wn[-1] == 4500.0
    assert M.spectrum_overlap(every4, (wn, spec)) == pytest.approx(M.spectrum_overlap((wn, spec), every4), abs=0.02)
    assert M.spectrum_overlap(every4, (wn, spec)) > 0.9
    assert M.spectrum_overlap(every4, ref) == pytest.approx(0.5, abs=0.05)
    assert M.spectrum_overlap(coarse, coarse) == pytest.approx(1.0)   # aliased alike: comparable
    assert M.vibrational_spectrum(v * np.nan, m, 1.0) is None


def trapezoid_area(wn, spec, lo=-np.inf, hi=np.inf):
    sel = (wn >= lo) & (wn <= hi)
    return float(trapezoid(spec[sel], wn[sel]))


def test_torsion_staircase_with_border_noise():
    rng = np.random.default_rng(1)
    seg = []
    for centre, spikes in ((60.0, (130.0, 5.0)), (180.0, (125.0, -115.0)), (-60.0, (-125.0, -5.0))):
        s = centre + rng.normal(0, 8, 300)
        s[rng.choice(300, 40, replace=False)] = rng.choice(spikes, 40)  # cross borders, miss cores
        seg.append(s)
    series = M.wrap_deg(np.concatenate(seg))
    out = M.torsion_transitions(series, 10.0)
    assert out["n_transitions"] == 2
    assert np.count_nonzero(np.diff(out["wells"][:, 0])) > 20  # sectors alone would count noise
    assert out["time_ps"] == pytest.approx(899 * 0.01)
    two = M.torsion_transitions(np.stack([series, series[::-1]], axis=1), 10.0)
    assert two["per_torsion"].tolist() == [2, 2]


def test_torsion_known_switching_rate():
    rng = np.random.default_rng(2)
    rate, dt, n = 2.0, 10.0, 20000  # 2 flips/ps between g+ and t, 200 ps
    flips = rng.random(n) < rate * dt / 1000.0
    state = np.cumsum(flips) % 2
    series = M.wrap_deg(np.where(state == 0, 60.0, 180.0) + rng.normal(0, 10, n))
    out = M.torsion_transitions(series, dt)
    assert out["n_transitions"] == np.count_nonzero(np.diff(state))
    assert out["rate_per_ps"] == pytest.approx(rate, rel=0.15)


def test_flip_rate_ratio_intervals():
    r = M.flip_rate_ratio(50, 10.0, 50, 10.0)
    assert r["ratio"] == 1.0 and r["low"] < 1.0 < r["high"]
    p = stats.binomtest(50, 100).proportion_ci(0.95, method="exact")
    assert r["low"] == pytest.approx(p.low / (1 - p.low))
    assert r["high"] == pytest.approx(p.high / (1 - p.high))
    r2 = M.flip_rate_ratio(40, 5.0, 40, 10.0)  # same counts in half the time: twice the rate
    assert r2["ratio"] == pytest.approx(2.0) and r2["low"] > 1.0
    assert M.poisson_interval(0)[1] == pytest.approx(3.689, abs=1e-3)
    assert M.flip_rate_ratio(30, 10.0, 0, 10.0)["ratio"] is None
    assert M.flip_rate_ratio(0, 10.0, 10, 10.0)["ratio"] == 0.0


def test_energy_temperature_blowup_rmsd():
    t = np.arange(1000) * 2.0
    e = 0.01 * units.KJ_MOL * t / 1000.0  # +0.01 kJ/mol per ps
    assert M.energy_drift(t, e) == pytest.approx(0.01)
    rng = np.random.default_rng(3)
    m = np.array([12.0, 1.0, 16.0, 1.0])
    v = rng.normal(size=(200, 4, 3)) * np.sqrt(units.KB * 300.0 / (m[:, None] * units.KINETIC))
    assert M.mean_temperature(v, m, dof=12) == pytest.approx(300.0, rel=0.05)
    x = np.stack([ethane(p) for p in (60.0, 70.0)])
    bonds = [[0, 1], [1, 2], [2, 3]]
    assert not M.blew_up(x, bonds)
    far = x.copy()
    far[1, 3] += [0, 0, 3.0]
    assert M.blew_up(far, bonds) and M.blew_up(x * np.nan, bonds)
    clash = x.copy()
    clash[1, 3] = clash[1, 0] + [0.2, 0.0, 0.0]  # non-bonded 0-3 pair at 0.2 Å
    assert M.blew_up(clash, bonds)
    z, ref, _ = _mol("CC(F)(Cl)Br")
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # proper rotation
    frames = np.stack([ref, ref @ q.T + [1.0, -2.0, 3.0]])
    np.testing.assert_allclose(M.rmsd_to_start(frames, np.ones(len(z))), 0.0, atol=1e-10)
    mirror = np.stack([ref, ref * [1, 1, -1]])
    assert M.rmsd_to_start(mirror)[1] > 0.1  # a chiral molecule's mirror image does not superpose
    assert np.isnan(M.rmsd_to_start(np.stack([ref, ref * np.nan]))[1])


def test_plots_written(tmp_path):
    t = np.arange(50) * 2.0
    M.plot_energy(tmp_path / "e.png", {"ref": (t, np.sin(t) * 1e-3), "kstep": (t, t * 1e-5)})
    vals = np.random.default_rng(0).normal(1.5, 0.02, (500, 4))
    M.plot_distributions(tmp_path / "d.png", {"ref": vals, "kstep": vals + 0.01}, "bond")
    spec = M.vibrational_spectrum(*oscillators([1000.0, 3000.0], n_frames=500), 1.0)
    M.plot_spectra(tmp_path / "s.png", {"ref": spec, "broken": None})
    for name in ("e.png", "d.png", "s.png"):
        assert (tmp_path / name).stat().st_size > 1000
