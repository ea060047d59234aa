"""MMFF94 / MMFF94s force field in pure JAX, parameterised from RDKit.

``mmff_potential(molecule)`` types the molecule with RDKit once (numpy, at construction) and
returns an ``MMFFPotential``: a pytree of parameter and index arrays whose energy is a
vectorised JAX function of the positions, so ``jit``, ``vmap``, ``grad`` and ``lax.scan``
all work. Positions are in Å, energies in eV and forces in eV/Å.

The functional forms, constants and term selection follow RDKit's MMFF implementation
(Code/ForceField/MMFF/*.cpp and Code/GraphMol/ForceFieldHelpers/MMFF/Builder.cpp), so the
energy equals ``MMFFGetMoleculeForceField(mol, props, ignoreInterfragInteractions=False)
.CalcEnergy()`` to round-off. Unlike RDKit's default, nonbonded terms between separate
fragments (e.g. solvent molecules) are always included. Internally terms are evaluated in
kcal/mol and converted to eV at the end.

Angles are computed as ``atan2(|a×b|, a·b)`` with a norm whose gradient is zero at zero, so
forces stay finite at exactly linear (180°) or folded (0°) angles.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from ase import units as _ase

from jkstep.errors import InputError, is_finite_number
from jkstep.molecule import Molecule

#: One kcal/mol in eV.
KCAL_MOL = _ase.kcal / _ase.mol

_MDYNE = 143.9325          # md/Å → kcal/(mol·Å²) (RDKit's MDYNE_A_TO_KCAL_MOL)
_DEG = np.pi / 180.0       # degrees → radians
_CS = -2.0                 # bond cubic stretch constant, 1/Å
_CB = -0.006981317         # angle cubic bend constant, 1/deg
_COULOMB = 332.0716        # e²/Å → kcal/mol
_LINEAR_TYPES = (4, 53, 61)  # MMFFPROP atom types with lin = 1 (sp carbon, =N=, isonitrile N)
_MMFF_ELEMENTS = {1, 3, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 26, 29, 30, 35, 53}
TERMS = ("bond", "angle", "stretch_bend", "oop", "torsion", "vdw", "electrostatic")


@partial(jax.tree_util.register_dataclass,
         data_fields=["bond_idx", "bond_kb", "bond_r0",
                      "angle_idx", "angle_ka", "angle_theta0", "angle_linear",
                      "stbn_k", "stbn_r0",
                      "oop_idx", "oop_koop", "torsion_idx", "torsion_v",
                      "pair_idx", "vdw_rstar", "vdw_eps", "ele_qq",
                      "distance_dielectric", "cutoff"],
         meta_fields=["n_atoms", "name"])
@dataclasses.dataclass(frozen=True, eq=False)
class MMFFPotential:
    """MMFF94 energy (eV) and forces (eV/Å) of one molecule as a JAX pytree.

    Index arrays are int; force constants use MMFF's units (kb md/Å, ka md·Å/rad²,
    stretch-bend md/rad, koop md·Å/rad², torsion V kcal/mol, ε kcal/mol), lengths are Å and
    reference angles degrees. ``ele_qq`` holds 332.0716·qi·qj (×0.75 for 1-4 pairs) in
    kcal·Å/mol. The dielectric model and cutoff are arrays too, so potentials that differ
    only in parameters share one compiled function. Build one with ``mmff_potential``.

    Like the xTB potential it never raises inside a trace: positions that are not finite, or
    atoms on top of each other, give NaN energy and forces, which the integrators report as a
    failed state (``state.failed``).
    """

    bond_idx: jax.Array       # (nb, 2)
    bond_kb: jax.Array
    bond_r0: jax.Array
    angle_idx: jax.Array      # (na, 3) i, j (centre), k
    angle_ka: jax.Array
    angle_theta0: jax.Array
    angle_linear: jax.Array   # bool: centre atom is linear → ka·(1 + cos θ)
    stbn_k: jax.Array         # (na, 2) stretch-bend kbaIJK, kbaKJI (0 where no term)
    stbn_r0: jax.Array        # (na, 2) r0(ij), r0(kj)
    oop_idx: jax.Array        # (no, 4) i, j (centre), k, l (out-of-plane atom)
    oop_koop: jax.Array
    torsion_idx: jax.Array    # (nt, 4)
    torsion_v: jax.Array      # (nt, 3) V1, V2, V3
    pair_idx: jax.Array       # (np, 2) nonbonded pairs: 1-4 and further, all fragments
    vdw_rstar: jax.Array
    vdw_eps: jax.Array
    ele_qq: jax.Array
    distance_dielectric: jax.Array  # bool scalar: Coulomb with ε = r instead of ε = 1
    cutoff: jax.Array               # nonbonded cutoff in Å (inf for none)
    n_atoms: int
    name: str = ""

    def __call__(self, positions):
        """(energy in eV, forces (N, 3) in eV/Å) at ``positions`` (N, 3) in Å."""
        return _energy_and_forces(self, self._check(positions))

    def energy(self, positions):
        """Total energy in eV at ``positions`` (N, 3) in Å."""
        return _energy(self, self._check(positions))

    def terms(self, positions) -> dict:
        """Energy of each MMFF term (keys ``TERMS``) in eV at ``positions`` (N, 3) in Å."""
        return _terms(self, self._check(positions))

    def __repr__(self):
        return (f"MMFFPotential({self.name!r}, atoms={self.n_atoms}, bonds={len(self.bond_kb)}, "
                f"angles={len(self.angle_ka)}, oop={len(self.oop_koop)}, "
                f"torsions={len(self.torsion_v)}, pairs={len(self.ele_qq)})")

    def _check(self, positions):
        if jnp.shape(positions) != (self.n_atoms, 3):
            raise InputError(f"positions must have shape ({self.n_atoms}, 3) in Å for "
                             f"{self.name!r}, got {jnp.shape(positions)}")
        return positions


# -- energy ----------------------------------------------------------------------------------

def _norm(v):
    """|v| over the last axis, with a zero (not NaN) gradient at v = 0."""
    sq = jnp.sum(v * v, axis=-1)
    ok = sq > 0.0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)


def _atan2(y, x):
    """atan2 that is 0 with a zero gradient where x = y = 0."""
    ok = (x != 0.0) | (y != 0.0)
    return jnp.where(ok, jnp.arctan2(jnp.where(ok, y, 0.0), jnp.where(ok, x, 1.0)), 0.0)


def _angle_deg(a, b):
    """Angle between vectors a and b (..., 3) in degrees, finite gradient at 0° and 180°."""
    return jnp.arctan2(_norm(jnp.cross(a, b)), jnp.sum(a * b, axis=-1)) / _DEG


def _gather(p: MMFFPotential, x):
    """Positions of the atoms of every term, (n_terms, atoms per term, 3), from one gather."""
    groups = (p.bond_idx, p.angle_idx, p.oop_idx, p.torsion_idx, p.pair_idx)
    xs = x[jnp.concatenate([g.reshape(-1) for g in groups])]
    out, start = [], 0
    for g in groups:
        out.append(xs[start:start + g.size].reshape(g.shape + (3,)))
        start += g.size
    return out


def _terms_kcal(p: MMFFPotential, x) -> dict:
    """Energy of each term in kcal/mol at positions x (N, 3) in Å."""
    x = jnp.asarray(x, dtype=jnp.float64)
    xb, xa, xo, xt, xp = _gather(p, x)
    out = {}

    dr = jnp.linalg.norm(xb[:, 0] - xb[:, 1], axis=-1) - p.bond_r0
    out["bond"] = jnp.sum(0.5 * _MDYNE * p.bond_kb * dr**2
                          * (1.0 + _CS * dr + 7.0 / 12.0 * _CS**2 * dr**2))

    a, b = xa[:, 0] - xa[:, 1], xa[:, 2] - xa[:, 1]
    ra, rb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
    dt = _angle_deg(a, b) - p.angle_theta0
    bend = 0.5 * _MDYNE * _DEG**2 * p.angle_ka * dt**2 * (1.0 + _CB * dt)
    linear = _MDYNE * p.angle_ka * (1.0 + jnp.sum(a * b, axis=-1) / (ra * rb))
    out["angle"] = jnp.sum(jnp.where(p.angle_linear, linear, bend))
    dr = jnp.stack([ra, rb], axis=-1) - p.stbn_r0
    out["stretch_bend"] = jnp.sum(_MDYNE * _DEG * dt * jnp.sum(p.stbn_k * dr, axis=-1))

    # Wilson angle χ between bond j-l and the plane i-j-k: sin χ = n̂·r̂_jl, n = r_ji × r_jk.
    n = jnp.cross(xo[:, 0] - xo[:, 1], xo[:, 2] - xo[:, 1])
    rjl = xo[:, 3] - xo[:, 1]
    chi = _atan2(jnp.sum(n * rjl, axis=-1), _norm(jnp.cross(n, rjl))) / _DEG
    out["oop"] = jnp.sum(0.5 * _MDYNE * _DEG**2 * p.oop_koop * chi**2)

    t1 = jnp.cross(xt[:, 0] - xt[:, 1], xt[:, 2] - xt[:, 1])
    t2 = jnp.cross(xt[:, 1] - xt[:, 2], xt[:, 3] - xt[:, 2])
    prod = jnp.sum(t1 * t1, axis=-1) * jnp.sum(t2 * t2, axis=-1)
    ok = prod > 0.0   # like RDKit, cos φ = 0 where an outer angle is exactly linear
    cos = jnp.where(ok, jnp.sum(t1 * t2, axis=-1) / jnp.sqrt(jnp.where(ok, prod, 1.0)), 0.0)
    cos = jnp.clip(cos, -1.0, 1.0)
    cos2 = 2.0 * cos**2 - 1.0
    cos3 = cos * (2.0 * cos2 - 1.0)
    v1, v2, v3 = p.torsion_v.T
    out["torsion"] = jnp.sum(0.5 * (v1 * (1.0 + cos) + v2 * (1.0 - cos2) + v3 * (1.0 + cos3)))

    r = jnp.linalg.norm(xp[:, 0] - xp[:, 1], axis=-1)
    rs = p.vdw_rstar
    vdw = (p.vdw_eps * (1.07 * rs / (r + 0.07 * rs))**7
           * (1.12 * rs**7 / (r**7 + 0.12 * rs**7) - 2.0))
    shifted = r + 0.05
    ele = p.ele_qq / jnp.where(p.distance_dielectric, shifted**2, shifted)
    inside = r <= p.cutoff
    vdw, ele = jnp.where(inside, vdw, 0.0), jnp.where(inside, ele, 0.0)
    out["vdw"] = jnp.sum(vdw)
    out["electrostatic"] = jnp.sum(ele)
    return out


def _energy_ev(p: MMFFPotential, positions):
    return sum(_terms_kcal(p, positions).values()) * KCAL_MOL


_energy = jax.jit(_energy_ev)
_terms = jax.jit(lambda p, positions: {k: v * KCAL_MOL for k, v in _terms_kcal(p, positions).items()})


@jax.jit
def _energy_and_forces(p: MMFFPotential, positions):
    energy, grad = jax.value_and_grad(_energy_ev, argnums=1)(p, jnp.asarray(positions, jnp.float64))
    return energy, -grad


# -- parameterisation (numpy + RDKit, once) -------------------------------------------------

def _rdkit_mol(molecule):
    """RDKit molecule with the bond topology and ``molecule``'s positions on its conformer."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    label = molecule.name or molecule.formula
    if molecule.mol_block is not None:
        mol = Chem.MolFromMolBlock(molecule.mol_block, removeHs=False)
        if mol is None:
            raise InputError(f"RDKit cannot read the mol_block of molecule {label!r}; rebuild it "
                             "with Molecule.from_smiles or set mol_block=None to perceive bonds")
    else:
        symbols = molecule.symbols
        xyz = "\n".join([str(len(symbols)), ""] + [f"{s} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}"
                                                   for s, p in zip(symbols, molecule.positions)])
        mol = Chem.MolFromXYZBlock(xyz)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=molecule.charge)
            Chem.SanitizeMol(mol)
        except Exception as exc:  # RDKit raises ValueError/RuntimeError for impossible bonding
            radical = (f" RDKit perceives only closed-shell bonding from coordinates, and this is a "
                       f"radical (spin {molecule.spin});" if molecule.spin else "")
            raise InputError(f"cannot determine the bonds of molecule {label!r} (charge "
                             f"{molecule.charge}) from its geometry: {exc};{radical} build it with "
                             "Molecule.from_smiles to give the topology explicitly (e.g. '[CH3]' for the "
                             "methyl radical)") from None
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    if numbers != molecule.numbers.tolist():
        raise InputError(f"the mol_block of molecule {label!r} has atoms {numbers}, but the "
                         f"molecule has {molecule.numbers.tolist()}; they must match in order")
    if Chem.GetFormalCharge(mol) != molecule.charge:
        raise InputError(f"molecule {label!r} has charge {molecule.charge} but its topology "
                         f"has formal charge {Chem.GetFormalCharge(mol)}")
    conf = mol.GetConformer() if mol.GetNumConformers() else None
    if conf is None:
        conf = Chem.Conformer(mol.GetNumAtoms())
        mol.AddConformer(conf, assignId=True)
        conf = mol.GetConformer()
    for idx, pos in enumerate(molecule.positions):
        conf.SetAtomPosition(idx, Point3D(*map(float, pos)))
    return mol


def _mmff_props(mol, variant, label):
    from rdkit import rdBase
    from rdkit.Chem import rdForceFieldHelpers

    with rdBase.BlockLogs():
        props = (rdForceFieldHelpers.MMFFGetMoleculeProperties(mol, mmffVariant=variant)
                 if rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol) else None)
    if props is None:
        odd = [f"{a.GetSymbol()} (atom {a.GetIdx()})" for a in mol.GetAtoms()
               if a.GetAtomicNum() not in _MMFF_ELEMENTS]
        why = (f"MMFF has no parameters for {', '.join(odd)}" if odd else
               "some atom is in a bonding situation MMFF has no atom type for")
        raise InputError(f"RDKit cannot assign {variant} atom types to molecule {label!r}: {why}. "
                         "Use another potential (e.g. GFN-xTB) for this molecule")
    return props


def mmff_potential(molecule: Molecule, variant: str = "MMFF94", nonbonded_cutoff: float | None = None,
                   dielectric: str = "constant") -> MMFFPotential:
    """The MMFF94 (or MMFF94s) force field of ``molecule`` as an ``MMFFPotential``.

    Args:
        molecule: a ``jkstep.Molecule``. Its ``mol_block`` gives the bond topology and formal
            charges; without one, bonds are perceived from the geometry (RDKit DetermineBonds).
        variant: ``"MMFF94"`` or ``"MMFF94s"``.
        nonbonded_cutoff: distance (Å) beyond which van der Waals and Coulomb pairs are
            dropped (a hard, discontinuous cut); None (default) keeps every pair.
        dielectric: ``"constant"`` (ε = 1, RDKit's default) or ``"distance"`` (ε = r).

    Raises InputError if the topology cannot be found or RDKit cannot type the molecule.
    """
    if not isinstance(molecule, Molecule):
        raise InputError(f"expected a jkstep.Molecule, got {type(molecule).__name__}")
    if variant not in ("MMFF94", "MMFF94s"):
        raise InputError(f"variant must be 'MMFF94' or 'MMFF94s', got {variant!r}")
    if dielectric not in ("constant", "distance"):
        raise InputError(f"dielectric must be 'constant' or 'distance', got {dielectric!r}")
    cutoff_ok = (isinstance(nonbonded_cutoff, (int, float, np.number)) and not isinstance(nonbonded_cutoff, bool)
                 and is_finite_number(nonbonded_cutoff) and nonbonded_cutoff > 0)
    if nonbonded_cutoff is not None and not cutoff_ok:
        raise InputError(f"nonbonded_cutoff must be a positive distance in Å or None, "
                         f"got {nonbonded_cutoff!r}")
    from rdkit import Chem

    label = molecule.name or molecule.formula
    mol = _rdkit_mol(molecule)
    props = _mmff_props(mol, variant, label)
    types = [props.GetMMFFAtomType(i) for i in range(mol.GetNumAtoms())]
    nbrs = [[n.GetIdx() for n in a.GetNeighbors()] for a in mol.GetAtoms()]

    bonds = []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        par = props.GetMMFFBondStretchParams(mol, i, j)  # (type, kb, r0)
        if par:
            bonds.append((i, j, par[1], par[2]))

    angles = []
    for j, nb in enumerate(nbrs):
        for a, i in enumerate(nb):
            for k in nb[a + 1:]:
                par = props.GetMMFFAngleBendParams(mol, i, j, k)  # (type, ka, theta0)
                if not par:
                    continue
                # Stretch-bend (type, kbaIJK, kbaKJI); None for linear centres or no parameters.
                sb = props.GetMMFFStretchBendParams(mol, i, j, k) or (0, 0.0, 0.0)
                r0 = [props.GetMMFFBondStretchParams(mol, *ab) for ab in ((i, j), (j, k))]
                r0 = [bp[2] if bp else 0.0 for bp in r0]
                angles.append((i, j, k, par[1], par[2], types[j] in _LINEAR_TYPES, *sb[1:], *r0))

    oops = []
    for j, nb in enumerate(nbrs):
        if len(nb) != 3:
            continue
        koop = props.GetMMFFOopBendParams(mol, nb[0], j, nb[1], nb[2])
        if not koop:  # no parameters (or koop = 0): RDKit leaves the term out
            continue
        for i, k, l in ((nb[0], nb[1], nb[2]), (nb[0], nb[2], nb[1]), (nb[1], nb[2], nb[0])):
            oops.append((i, j, k, l, koop))

    # Torsions about bonds between two non-terminal sp2/sp3 atoms, neither in a triple bond
    # (RDKit's SMARTS [!$(*#*)&!D1]~[!$(*#*)&!D1] plus its hybridisation test).
    ok_hyb = (Chem.HybridizationType.SP2, Chem.HybridizationType.SP3)

    def central(atom):
        return (atom.GetDegree() > 1 and atom.GetHybridization() in ok_hyb and
                not any(b.GetBondType() == Chem.BondType.TRIPLE for b in atom.GetBonds()))

    torsions = []
    for bond in mol.GetBonds():
        j, k = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if not (central(bond.GetBeginAtom()) and central(bond.GetEndAtom())):
            continue
        for i in nbrs[j]:
            for l in nbrs[k]:
                if k == i or l == j or l == i:  # skip the central bond and 3-membered rings
                    continue
                par = props.GetMMFFTorsionParams(mol, i, j, k, l)  # (type, V1, V2, V3)
                if par:
                    torsions.append((i, j, k, l, *par[1:]))

    # Nonbonded pairs: topological distance ≥ 3 bonds or in different fragments.
    n = mol.GetNumAtoms()
    topo = Chem.GetDistanceMatrix(mol)
    pi, pj = np.triu_indices(n, 1)
    keep = topo[pi, pj] >= 3
    pi, pj = pi[keep], pj[keep]
    vdw_cache = {}
    rstar, eps = np.zeros(len(pi)), np.zeros(len(pi))
    for m, (i, j) in enumerate(zip(pi.tolist(), pj.tolist())):
        key = (types[i], types[j])
        if key not in vdw_cache:
            vdw_cache[key] = props.GetMMFFVdWParams(i, j)[2:]  # scaled R*ij (Å), ε (kcal/mol)
        rstar[m], eps[m] = vdw_cache[key]
    q = np.array([props.GetMMFFPartialCharge(i) for i in range(n)])
    qq = _COULOMB * q[pi] * q[pj] * np.where(topo[pi, pj] == 3, 0.75, 1.0)

    b, a, o, t = (np.asarray(v, np.float64).reshape(len(v), w) for v, w in
                  ((bonds, 4), (angles, 10), (oops, 5), (torsions, 7)))
    idx = lambda cols: jnp.asarray(cols.astype(np.int64))  # noqa: E731
    return MMFFPotential(
        bond_idx=idx(b[:, :2]), bond_kb=jnp.asarray(b[:, 2]), bond_r0=jnp.asarray(b[:, 3]),
        angle_idx=idx(a[:, :3]), angle_ka=jnp.asarray(a[:, 3]),
        angle_theta0=jnp.asarray(a[:, 4]), angle_linear=jnp.asarray(a[:, 5] > 0),
        stbn_k=jnp.asarray(a[:, 6:8]), stbn_r0=jnp.asarray(a[:, 8:10]),
        oop_idx=idx(o[:, :4]), oop_koop=jnp.asarray(o[:, 4]),
        torsion_idx=idx(t[:, :4]), torsion_v=jnp.asarray(t[:, 4:7]),
        pair_idx=jnp.asarray(np.stack([pi, pj], axis=1).astype(np.int64).reshape(-1, 2)),
        vdw_rstar=jnp.asarray(rstar), vdw_eps=jnp.asarray(eps), ele_qq=jnp.asarray(qq),
        distance_dielectric=jnp.asarray(dielectric == "distance"),
        cutoff=jnp.asarray(np.inf if nonbonded_cutoff is None else float(nonbonded_cutoff)),
        n_atoms=n, name=label)
