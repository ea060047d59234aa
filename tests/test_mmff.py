"""The JAX MMFF94 potential against RDKit's MMFF94, term by term, under jit/vmap/scan, and at
exactly linear angles. The test molecules sit side by side in one system, so one compilation
covers them all and the file stays fast."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdForceFieldHelpers

from jkstep import InputError, Molecule
from jkstep.potentials.mmff import KCAL_MOL, TERMS, mmff_potential

RDKIT_TERMS = dict(bond="Bond", angle="Angle", stretch_bend="StretchBend", oop="Oop",
                   torsion="Torsion", vdw="VdW", electrostatic="Ele")
CORE = ("glycine_zwitterion", "benzene", "pyridine", "imidazole", "caffeine", "dipeptide", "ethanol_two_waters")
SMILES = {
    "glycine_zwitterion": "[NH3+]CC(=O)[O-]",
    "benzene": "c1ccccc1",
    "pyridine": "c1ccncc1",
    "imidazole": "c1cnc[nH]1",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "dipeptide": "CC(=O)NC(C)C(=O)NC",
    "ethanol_two_waters": "CCO.O.O",
    # halogens
    "fluorobenzene": "Fc1ccccc1", "chloroform": "ClC(Cl)Cl", "bromoethane": "CCBr",
    "iodobenzene": "Ic1ccccc1", "trifluoroacetate": "[O-]C(=O)C(F)(F)F", "4-chlorophenol": "Oc1ccc(Cl)cc1",
    "2-chloropyridine": "Clc1ccccn1",
    # sulfur
    "methanethiol": "CS", "dimethyl_sulfide": "CSC", "thiophene": "c1ccsc1", "dmso": "CS(C)=O",
    "methanesulfonamide": "CS(N)(=O)=O", "cysteine_zwitterion": "[NH3+][C@@H](CS)C([O-])=O",
    "methionine": "CSCCC(N)C(=O)O",
    # charged groups
    "acetate": "CC(=O)[O-]", "methylammonium": "C[NH3+]", "guanidinium": "NC(N)=[NH2+]",
    "nitromethane": "C[N+](=O)[O-]", "dimethyl_phosphate": "COP(=O)([O-])OC",
    # aromatic and other drug-like / biological
    "phenol": "Oc1ccccc1", "indole": "c1ccc2[nH]ccc2c1", "furan": "c1ccoc1", "acetone": "CC(C)=O",
    "acetonitrile": "CC#N", "urea": "NC(N)=O", "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1", "uracil": "O=c1cc[nH]c(=O)[nH]1",
    "adenine": "Nc1ncnc2[nH]cnc12", "cyclohexane": "C1CCCCC1",
}
# Every potential built here goes through this one jitted function, so potentials of the same
# system (other options, other topology source) reuse its compilation.
evaluate = jax.jit(lambda pot, x: (pot(x), pot.terms(x)))


def fragments(mol: Molecule):
    return Chem.GetMolFrags(Chem.MolFromMolBlock(mol.mol_block, removeHs=False))


def embed(smiles: str) -> Molecule:
    mol = Molecule.from_smiles(smiles, seed=0)
    if len(fragments(mol)) > 1:  # ETKDG overlaps fragments: put the waters either side
        x = mol.positions.copy()
        solute, *waters = fragments(mol)
        x -= x[list(solute)].mean(axis=0)
        d = np.linalg.norm(x[list(solute)], axis=1).max() + 2.8
        for w, sign in zip(waters, (1.0, -1.0)):
            x[list(w)] += np.array([sign * d, 0.0, 0.0]) - x[list(w)].mean(axis=0)
        mol = mol.with_positions(x)
    return mol


@functools.cache
def system(names=CORE):
    """Test molecules side by side, 12 Å apart, as one Molecule (one compilation covers
    them all), its MMFF potential and each molecule's atom indices. The default is the 7 core
    molecules; the term-by-term comparison with RDKit uses all 37 of ``SMILES``."""
    mols = {name: embed(SMILES[name]) for name in names}
    rd = functools.reduce(Chem.CombineMols, [Chem.MolFromMolBlock(m.mol_block, removeHs=False)
                                             for m in mols.values()])
    x = np.concatenate([m.positions - m.positions.mean(axis=0) + [12.0 * n, 0.0, 0.0]
                        for n, m in enumerate(mols.values())])
    mol = Molecule(np.concatenate([m.numbers for m in mols.values()]), x, name="test molecules",
                   mol_block=Chem.MolToMolBlock(rd), charge=sum(m.charge for m in mols.values()))
    bounds = np.cumsum([0] + [len(m) for m in mols.values()])
    atoms = {name: np.arange(a, b) for name, a, b in zip(mols, bounds[:-1], bounds[1:])}
    return mol, mmff_potential(mol), atoms


def perturbed(mol: Molecule, seed: int = 0, scale: float = 0.05) -> np.ndarray:
    return mol.positions + scale * np.random.default_rng(seed).normal(size=mol.positions.shape)


def rdkit_reference(mol: Molecule, positions, only=None, variant="MMFF94", dielectric=1,
                    thresh=1e9):
    """RDKit's MMFF energy (eV) and forces (eV/Å), all fragments interacting; ``only`` keeps
    one term. The nonbonded pair list uses ``positions`` (RDKit fixes it at construction)."""
    rd = Chem.MolFromMolBlock(mol.mol_block, removeHs=False)
    conf = rd.GetConformer()
    for i, p in enumerate(np.asarray(positions, float)):
        conf.SetAtomPosition(i, p.tolist())
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(rd, mmffVariant=variant)
    props.SetMMFFDielectricModel(dielectric)
    for term, rd_name in RDKIT_TERMS.items():
        getattr(props, f"SetMMFF{rd_name}Term")(only is None or term == only)
    ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(
        rd, props, nonBondedThresh=thresh, ignoreInterfragInteractions=False)
    x = np.asarray(positions, float).ravel().tolist()
    return (ff.CalcEnergy(x) * KCAL_MOL,
            -np.reshape(ff.CalcGrad(x), (-1, 3)) * KCAL_MOL)


def assert_energy(e, e_ref):
    assert abs(float(e) - e_ref) <= 1e-10 + 1e-8 * abs(e_ref), (float(e), e_ref)


def assert_forces(f, f_ref, err_msg=""):
    """Equal to 1e-6 relative to the largest force component (at least 0.1 eV/Å): at relaxed,
    planar geometries RDKit's and our gradients of near-zero out-of-plane terms differ by
    ~1e-8 eV/Å, far below any physical force."""
    scale = max(float(np.abs(f_ref).max()), 0.1)
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-6 * scale, err_msg=err_msg)


@pytest.mark.slow
def test_energy_forces_and_each_term_equal_rdkit():
    """37 molecules: charged, aromatic, sulfur, halogens (F, Cl, Br, I), phosphate, a linear
    nitrile, a solute with two waters."""
    mol, pot, atoms = system(tuple(SMILES))
    assert len(atoms) >= 30
    for x in (mol.positions, perturbed(mol)):
        (e, f), terms = evaluate(pot, x)
        e_ref, f_ref = rdkit_reference(mol, x)
        assert e.dtype == jnp.float64 and f.shape == (len(mol), 3)
        assert_energy(e, e_ref)
        for name, idx in atoms.items():
            assert_forces(f[idx], f_ref[idx], err_msg=name)
        assert_energy(sum(terms.values()), e_ref)
        for term in TERMS:
            assert abs(float(terms[term])) > 1e-3, term  # every term is exercised
            assert_energy(terms[term], rdkit_reference(mol, x, only=term)[0])


@pytest.mark.slow
def test_interfragment_terms_are_included():
    mol, pot, atoms = system()
    x = mol.positions.copy()
    (e, _), terms = evaluate(pot, x)
    waters = [list(f) for f in fragments(mol) if sorted(mol.numbers[list(f)]) == [1, 1, 8]]
    assert len(waters) == 2 and all(set(w) <= set(atoms["ethanol_two_waters"]) for w in waters)
    # a new array: JAX may still be reading x (CPU arrays can be aliased, dispatch is async),
    # so x must not be changed in place after the call above
    x = x.copy()
    x[waters[0]] += 100.0  # pull the waters away from ethanol and from each other
    x[waters[1]] -= 100.0
    (e_far, _), terms_far = evaluate(pot, x)
    assert abs(float(terms["electrostatic"] - terms_far["electrostatic"])) > 1e-3
    assert_energy(e - e_far, rdkit_reference(mol, mol.positions)[0] - rdkit_reference(mol, x)[0])


@pytest.mark.parametrize("options, reference", [
    (dict(dielectric="distance"), dict(dielectric=2)),
    (dict(variant="MMFF94s"), dict(variant="MMFF94s")),
    (dict(nonbonded_cutoff=4.0), dict(thresh=4.0)),
])
def test_options_equal_rdkit(options, reference):
    mol, default, _ = system()
    pot = mmff_potential(mol, **options)
    x = mol.positions  # RDKit picks nonbonded pairs within its threshold at this geometry
    (e, f), _ = evaluate(pot, x)
    e_ref, f_ref = rdkit_reference(mol, x, **reference)
    assert_energy(e, e_ref)
    assert_forces(f, f_ref)
    assert abs(float(e - evaluate(default, x)[0][0])) > 1e-4  # the option matters


def test_forces_are_minus_the_gradient_by_finite_differences():
    mol, pot, _ = system()
    x = perturbed(mol, seed=2)
    (_, f), _ = evaluate(pot, x)
    h = 1e-5
    rng = np.random.default_rng(3)
    for atom, axis in zip(rng.integers(0, len(mol), 8), rng.integers(0, 3, 8)):
        xp, xm = x.copy(), x.copy()
        xp[atom, axis] += h
        xm[atom, axis] -= h
        fd = -(float(evaluate(pot, xp)[0][0]) - float(evaluate(pot, xm)[0][0])) / (2 * h)
        assert abs(fd - float(f[atom, axis])) < 1e-6, (atom, axis, fd, float(f[atom, axis]))


@pytest.mark.slow
def test_jit_vmap_give_the_unbatched_numbers_without_retracing():
    mol, pot, _ = system()
    batch = np.stack([perturbed(mol, seed=s) for s in range(3)])
    run = jax.jit(lambda p, xs: jax.vmap(p)(xs))  # the potential travels as a pytree argument
    e_b, f_b = run(pot, batch)
    assert e_b.shape == (3,) and f_b.shape == batch.shape
    for n, x in enumerate(batch):
        (e, f), _ = evaluate(pot, x)
        np.testing.assert_allclose(e_b[n], e, rtol=1e-12)
        np.testing.assert_allclose(f_b[n], f, rtol=1e-10, atol=1e-12)
    run(mmff_potential(mol), batch + 0.01)  # a new potential and new geometries: no retrace
    assert run._cache_size() == 1


def linear_system():
    """CO2 (linear atom type), water bent to exactly 180° and ethane with one H-C-C angle at
    exactly 180° (degenerate torsions), far apart in one molecule."""
    mol = Molecule.from_smiles("O=C=O.O.CC", seed=0)
    co2, water, ethane = fragments(mol)
    x = mol.positions.copy()
    x[list(co2)] = [[-1.16, 0, 0], [0, 0, 0], [1.16, 0, 0]]
    x[list(water)] = [[0, 8, 0], [-0.97, 8, 0], [0.97, 8, 0]]
    rd = Chem.MolFromMolBlock(mol.mol_block, removeHs=False)
    c1, c2 = [a for a in ethane if mol.numbers[a] == 6]
    h1, h2, _ = [a for a in ethane if rd.GetBondBetweenAtoms(a, c1) and mol.numbers[a] == 1]
    e1 = x[c2] - x[c1]
    length = np.linalg.norm(e1)
    e1 /= length
    e2 = x[h2] - x[c1] - (x[h2] - x[c1]) @ e1 * e1
    e2 /= np.linalg.norm(e2)
    frame = np.stack([e1, e2, np.cross(e1, e2)])
    x[list(ethane)] = (x[list(ethane)] - x[c1]) @ frame.T + [0, 0, 8]
    x[c1], x[c2], x[h1] = [0, 0, 8], [length, 0, 8], [-1.09, 0, 8]
    return mol.with_positions(x), [c1, c2, h1]


@pytest.mark.slow
def test_finite_forces_at_exactly_linear_angles():
    mol, ethane_axis = linear_system()
    pot = mmff_potential(mol)
    (e, f), _ = evaluate(pot, mol.positions)
    e_ref, f_ref = rdkit_reference(mol, mol.positions)
    assert np.all(np.isfinite(f))
    assert_energy(e, e_ref)
    # The torsions through ethane's 180° angle have no defined angle (RDKit sets cos φ = 0, as
    # here); their gradient there is a convention, so compare forces on the other atoms.
    rest = np.setdiff1d(np.arange(len(mol)), ethane_axis)
    assert_forces(f[rest], f_ref[rest])
    (_, f_near), _ = evaluate(pot, perturbed(mol, scale=1e-6))
    assert np.all(np.isfinite(f_near))


def test_bonds_perceived_from_geometry_give_the_same_potential():
    mol, pot, _ = system()
    bare = Molecule(mol.numbers, mol.positions, charge=mol.charge, name=mol.name)
    assert bare.mol_block is None
    x = perturbed(mol)
    (e, f), _ = evaluate(mmff_potential(bare), x)
    (e_ref, f_ref), _ = evaluate(pot, x)
    np.testing.assert_allclose(e, e_ref, rtol=1e-12)
    np.testing.assert_allclose(f, f_ref, rtol=1e-10, atol=1e-12)


def test_untypeable_or_bad_input_raises_input_error():
    with pytest.raises(InputError, match=r"C\[Se\]C.*Se"):
        mmff_potential(Molecule.from_smiles("C[Se]C"))
    mol, pot, _ = system()
    with pytest.raises(InputError, match="variant"):
        mmff_potential(mol, variant="MMFF95")
    with pytest.raises(InputError, match="dielectric"):
        mmff_potential(mol, dielectric="vacuum")
    with pytest.raises(InputError, match="nonbonded_cutoff"):
        mmff_potential(mol, nonbonded_cutoff=-1.0)
    methane = Molecule.from_smiles("C")
    with pytest.raises(InputError, match="cannot determine the bonds"):
        mmff_potential(Molecule(methane.numbers, methane.positions, charge=2))
    methyl = Molecule.from_smiles("[CH3]")   # a radical read from coordinates has no bond orders
    with pytest.raises(InputError, match=r"radical \(spin 1\).*from_smiles.*\[CH3\]"):
        mmff_potential(Molecule(methyl.numbers, methyl.positions, spin=1))
    with pytest.raises(InputError, match="shape"):
        pot(np.zeros((3, 3)))


@pytest.mark.parametrize("cutoff", [True, "5", [5], float("nan"), -1.0])
def test_nonbonded_cutoff_must_be_a_positive_distance(cutoff):
    with pytest.raises(InputError, match="nonbonded_cutoff must be a positive distance"):
        mmff_potential(Molecule.from_smiles("O"), nonbonded_cutoff=cutoff)
