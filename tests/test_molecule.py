import os

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from jkstep import InputError, Molecule, units


def test_from_smiles_is_reproducible_and_complete():
    a = Molecule.from_smiles("CCO", seed=3)
    b = Molecule.from_smiles("CCO", seed=3)
    c = Molecule.from_smiles("CCO", seed=4)
    assert a.numbers.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.allclose(a.positions, c.positions)
    assert a.positions.dtype == np.float64 and a.positions.shape == (9, 3)
    np.testing.assert_allclose(a.masses[:3], [12.011, 12.011, 15.999])
    assert (a.charge, a.spin, a.name) == (0, 0, "CCO")
    # a relaxed geometry has sane C-C and C-O bond lengths (Å)
    assert 1.45 < np.linalg.norm(a.positions[0] - a.positions[1]) < 1.58
    assert 1.36 < np.linalg.norm(a.positions[1] - a.positions[2]) < 1.48


def test_charge_and_spin_from_smiles():
    assert Molecule.from_smiles("C[NH3+]").charge == 1
    assert Molecule.from_smiles("[NH3+]CC(=O)[O-]").charge == 0
    assert Molecule.from_smiles("CC(=O)[O-]").charge == -1
    assert Molecule.from_smiles("[CH3]").spin == 1


def test_from_atoms_and_read(tmp_path):
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    atoms.info["charge"] = 0
    mol = Molecule.from_atoms(atoms)
    assert mol.numbers.tolist() == [8, 1, 1] and mol.name == "H2O"
    path = tmp_path / "w.xyz"
    write(path, atoms)
    read = Molecule.read(path)
    np.testing.assert_allclose(read.positions, atoms.positions)
    assert read.name == str(path)
    assert Molecule.read(path, charge=1, spin=1).charge == 1


def test_thermal_velocities_units_and_com(ethanol):
    v = ethanol.thermal_velocities(300.0, seed=1)
    assert v.shape == (9, 3)
    np.testing.assert_allclose((ethanol.masses[:, None] * v).sum(0), 0.0, atol=1e-12)
    # the same velocities through ASE's own unit system
    atoms = ethanol.to_atoms(velocities=v)
    np.testing.assert_allclose(units.velocities_from_ase(atoms.get_velocities()), v, rtol=1e-12)
    # ASE's kinetic energy (eV) equals ours: 0.5 m v^2 with v in Å/fs
    ke = 0.5 * units.KINETIC * np.sum(ethanol.masses[:, None] * v**2)
    np.testing.assert_allclose(atoms.get_kinetic_energy(), ke, rtol=1e-12)
    # a thermal hydrogen moves about 0.02 Å/fs at 300 K, not 10x that (the ASE time-unit trap)
    temps = [2 * 0.5 * units.KINETIC * np.sum(ethanol.masses[:, None] * ethanol.thermal_velocities(300.0, s) ** 2)
             / (3 * 9 - 3) / units.KB for s in range(300)]
    assert abs(np.mean(temps) - 300.0) < 15.0


WATER = [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]


def test_hydrogen_mass_repartitioning(ethanol):
    heavy = ethanol.repartition_hydrogen_mass()  # CCO: C0 holds 3 H, C1 2 H, O2 1 H
    np.testing.assert_allclose(heavy.masses.sum(), ethanol.masses.sum(), rtol=1e-12)
    np.testing.assert_allclose(heavy.masses[3:], 3.024)
    gain = 3.024 - ethanol.masses[3]
    np.testing.assert_allclose(ethanol.masses[:3] - heavy.masses[:3], [3 * gain, 2 * gain, gain], rtol=1e-12)
    np.testing.assert_array_equal(heavy.positions, ethanol.positions)
    assert heavy.numbers.tolist() == ethanol.numbers.tolist()
    with pytest.raises(InputError, match="hydrogen_mass must be a positive"):
        ethanol.repartition_hydrogen_mass(0.0)
    with pytest.raises(InputError, match="leaves atom 0 .C."):
        ethanol.repartition_hydrogen_mass(4.0)
    with pytest.raises(InputError, match="has no heavy atom"):
        Molecule(np.array([1, 1]), np.array([[0.0, 0, 0], [0.74, 0, 0]])).repartition_hydrogen_mass()


@pytest.mark.parametrize("make, match", [
    (lambda: Molecule.from_smiles("C1CC"), "cannot parse SMILES"),
    (lambda: Molecule.from_smiles(""), "cannot parse SMILES"),
    (lambda: Molecule([6, 1], [[0, 0, 0]]), "1 atoms but the molecule has 2"),
    (lambda: Molecule([6], [[0, 0]]), r"shape \(N, 3\)"),
    (lambda: Molecule([6], [[0, np.nan, 0]]), "NaN"),
    (lambda: Molecule([1], [[0, 0, 0]]), "spin 0 .* give spin=1 .*--spin 1"),
    (lambda: Molecule([0], [[0, 0, 0]]), "unknown atomic number"),
    (lambda: Molecule.read("/no/such/file.xyz"), "no such file"),
    (lambda: Molecule.from_smiles("CCO").thermal_velocities(-1), "temperature"),
    (lambda: Molecule.from_smiles("CCO").thermal_velocities("hot"), "temperature must be a finite value"),
    (lambda: Molecule.from_smiles("CCO").thermal_velocities(1e9), "temperature must be .* from 0 to 10000 K"),
    (lambda: Molecule.from_smiles("CCO").thermal_velocities(300.0, seed=-1), "seed must be an integer from 0"),
    (lambda: Molecule.from_smiles("CCO", seed=-5), "conformer seed must be an integer from 0"),
    (lambda: Molecule.from_smiles("CCO", seed=-1), "conformer seed"),  # RDKit's -1 would mean random
    (lambda: Molecule.from_smiles("CCO", seed=2**40), "conformer seed"),
    (lambda: Molecule.from_smiles("CCO", seed="a"), "conformer seed"),
    (lambda: Molecule([8, 1, 1], WATER, charge=0.5), r"charge \(e\) must be a whole number, got 0.5"),
    (lambda: Molecule([8, 1, 1], WATER, charge="a"), "charge .* must be a whole number"),
    (lambda: Molecule([8, 1, 1], WATER, spin=1.5), "spin .* must be a whole number"),
    (lambda: Molecule([8, 1, 1], WATER, charge=10), "charge 10 leaves no electrons"),
    (lambda: Molecule.read(os.path.dirname(__file__)), "is a directory"),
])
def test_bad_input_raises_one_clear_error(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_unreadable_file(tmp_path):
    bad = tmp_path / "junk.xyz"
    bad.write_text("this is not\nan xyz file\n")
    with pytest.raises(InputError, match="ASE cannot read"):
        Molecule.read(bad)
