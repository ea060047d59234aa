"""Molecules: atomic numbers, positions (Å), masses (amu), charge and spin.

Build one from a SMILES string (RDKit embedding + a short MMFF94 relaxation, reproducible
with a seed), from an ASE ``Atoms`` or from any file ASE can read. Thermal velocities come
from ASE's Maxwell–Boltzmann distribution with the centre-of-mass motion removed, in Å/fs.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, chemical_symbols

from jkstep import units
from jkstep.errors import MAX_TEMPERATURE_K, InputError, is_finite_number, is_integer


@dataclasses.dataclass(frozen=True, eq=False)
class Molecule:
    """An isolated molecule.

    Attributes:
        numbers: (N,) atomic numbers.
        positions: (N, 3) Cartesian positions in Å (float64).
        masses: (N,) atomic masses in amu (ASE's standard masses by default).
        charge: total charge in e.
        spin: number of unpaired electrons (0 for a closed-shell singlet).
        name: a label: the SMILES string or file it came from.
        mol_block: RDKit/MDL mol block with the bond topology and formal charges, in the same
            atom order (set by ``from_smiles``; None where the topology is unknown).
    """

    numbers: np.ndarray
    positions: np.ndarray
    masses: np.ndarray | None = None
    charge: int = 0
    spin: int = 0
    name: str = ""
    mol_block: str | None = None

    def __post_init__(self):
        numbers = np.asarray(self.numbers)
        if numbers.ndim != 1 or numbers.size == 0 or not np.issubdtype(numbers.dtype, np.integer):
            raise InputError(f"numbers must be a non-empty 1-D integer array, got shape {numbers.shape} "
                             f"and dtype {numbers.dtype}")
        bad = numbers[(numbers < 1) | (numbers >= len(chemical_symbols))]
        if bad.size:
            raise InputError(f"unknown atomic number(s) {sorted(set(bad.tolist()))}")
        positions = check_positions(self.positions, len(numbers))
        masses = atomic_masses[numbers] if self.masses is None else np.asarray(self.masses, np.float64)
        if masses.shape != numbers.shape or not np.all(masses > 0):
            raise InputError(f"masses must be {len(numbers)} positive values in amu, got {masses!r}")
        charge, spin = _integer("charge (e)", self.charge), _integer("spin (unpaired electrons)", self.spin)
        if charge >= int(numbers.sum()):
            raise InputError(f"charge {charge} leaves no electrons (the molecule has {int(numbers.sum())}); "
                             "check the charge")
        if spin < 0 or (int(numbers.sum()) - charge + spin) % 2:
            raise InputError(f"spin {self.spin} (unpaired electrons) is impossible for "
                             f"{int(numbers.sum()) - int(self.charge)} electrons at charge {self.charge}: an odd "
                             "electron count needs an odd spin; give spin=1 (CLI: --spin 1) for a radical, "
                             "or the charge of the ion")
        object.__setattr__(self, "numbers", numbers.astype(np.int64))
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "masses", masses.astype(np.float64))
        object.__setattr__(self, "charge", charge)
        object.__setattr__(self, "spin", spin)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def symbols(self) -> list[str]:
        """The N chemical symbols, e.g. ['C', 'C', 'O', 'H', ...]."""
        return [chemical_symbols[z] for z in self.numbers]

    @property
    def formula(self) -> str:
        """The chemical formula as ASE writes it, e.g. 'C2H6O'."""
        return self.to_atoms().get_chemical_formula()

    def with_positions(self, positions) -> "Molecule":
        """The same molecule at other positions ((N, 3) Å)."""
        return dataclasses.replace(self, positions=positions)

    def hydrogen_partners(self) -> tuple[np.ndarray, np.ndarray]:
        """(hydrogens, partners): the indices of the H atoms and of the heavy atom nearest to each
        at ``positions`` (its bond partner in any sane geometry); two empty arrays without H."""
        hydrogens, heavy = np.flatnonzero(self.numbers == 1), np.flatnonzero(self.numbers != 1)
        if hydrogens.size and not heavy.size:
            raise InputError(f"{self.formula} has no heavy atom to bond its hydrogens to")
        d = np.linalg.norm(self.positions[hydrogens, None] - self.positions[None, heavy], axis=-1)
        return hydrogens, heavy[np.argmin(d, axis=1)]

    def repartition_hydrogen_mass(self, hydrogen_mass: float = 3.024) -> "Molecule":
        """The same molecule with hydrogen mass repartitioning (HMR; Hopkins et al., JCTC 11, 1864
        (2015), as OpenMM's ``hydrogenMass``): every H gets ``hydrogen_mass`` amu and the mass
        it gains is taken from its nearest heavy atom, so the total mass stays the same (no heavy
        atom may end lighter than the hydrogens: a methyl carbon keeps about 6 amu at 3.024).

        Masses do not enter the canonical distribution of positions, so NVT sampling (temperature,
        bond, angle and dihedral distributions) is unchanged, while the X–H stretch periods grow
        about 1.5–1.6× and a multiple-time-step macro-step can be longer before it resonates. The
        dynamics change: vibrational spectra and time correlations are those of heavier hydrogens.
        """
        if not (is_finite_number(hydrogen_mass) and float(hydrogen_mass) > 0):
            raise InputError(f"hydrogen_mass must be a positive mass in amu, got {hydrogen_mass!r}")
        hydrogens, partner = self.hydrogen_partners()
        heavy = np.flatnonzero(self.numbers != 1)
        masses = self.masses.copy()
        gain = float(hydrogen_mass) - masses[hydrogens]
        masses[hydrogens] = float(hydrogen_mass)
        np.subtract.at(masses, partner, gain)
        if np.any(masses[heavy] < float(hydrogen_mass)):
            worst = heavy[np.argmin(masses[heavy])]
            raise InputError(f"hydrogen_mass {hydrogen_mass} amu leaves atom {worst} ({self.symbols[worst]}) "
                             f"with {masses[worst]:.2f} of its {self.masses[worst]:.2f} amu; "
                             "give a smaller hydrogen_mass (3.024 is the usual value)")
        return dataclasses.replace(self, masses=masses)

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_smiles(cls, smiles: str, seed: int = 0, relax: bool = True) -> "Molecule":
        """Embed a SMILES string in 3-D with hydrogens (RDKit ETKDG, seeded) and relax it
        briefly with MMFF94. The same seed gives the same geometry."""
        from rdkit import Chem, rdBase
        from rdkit.Chem import AllChem

        if not (isinstance(smiles, str) and smiles.strip()):
            raise InputError(f"cannot parse SMILES {smiles!r}")
        seed = check_seed(seed, "conformer seed")
        with rdBase.BlockLogs():  # RDKit's own warnings (parser, UFF typer): our errors say it in one line
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                raise InputError(f"cannot parse SMILES {smiles!r}")
            mol = Chem.AddHs(mol)
            params = AllChem.ETKDGv3()
            params.randomSeed = seed
            if AllChem.EmbedMolecule(mol, params) != 0:
                params.useRandomCoords = True
                if AllChem.EmbedMolecule(mol, params) != 0:
                    raise InputError(f"RDKit could not embed SMILES {smiles!r} in 3-D")
            _separate_fragments(mol)
            if relax and AllChem.MMFFHasAllMoleculeParams(mol):
                AllChem.MMFFOptimizeMolecule(mol, maxIters=500, ignoreInterfragInteractions=False)
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        positions = mol.GetConformer().GetPositions()
        charge = Chem.GetFormalCharge(mol)
        spin = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
        return cls(numbers, positions, charge=charge, spin=spin, name=smiles,
                   mol_block=Chem.MolToMolBlock(mol))

    @classmethod
    def from_atoms(cls, atoms: Atoms, charge: int | None = None, spin: int | None = None,
                   name: str = "") -> "Molecule":
        """From an ASE ``Atoms``; charge and spin default to ``atoms.info['charge'|'spin']``
        or 0 (``spin`` = number of unpaired electrons)."""
        if not isinstance(atoms, Atoms):
            raise InputError(f"expected an ase.Atoms, got {type(atoms).__name__}")
        charge = atoms.info.get("charge", 0) if charge is None else charge
        spin = atoms.info.get("spin", 0) if spin is None else spin
        return cls(atoms.numbers, atoms.positions, atoms.get_masses(), charge=charge, spin=spin,
                   name=name or atoms.get_chemical_formula())

    @classmethod
    def read(cls, path, index=-1, charge: int | None = None, spin: int | None = None) -> "Molecule":
        """From any file ASE can read (xyz, pdb, sdf, traj, ...); ``index`` picks the frame."""
        return cls.from_atoms(_read_atoms(path, index), charge=charge, spin=spin, name=os.fspath(path))

    # -- conversions ----------------------------------------------------------------------

    def to_atoms(self, positions=None, velocities=None) -> Atoms:
        """An ASE ``Atoms`` (``positions`` (N, 3) Å, default the molecule's own); ``velocities``
        (N, 3) in Å/fs are converted to ASE's time unit."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions if positions is None else
                      np.asarray(positions), masses=self.masses)
        atoms.info.update(charge=self.charge, spin=self.spin)
        if velocities is not None:
            atoms.set_velocities(units.velocities_to_ase(np.asarray(velocities)))
        return atoms

    def thermal_velocities(self, temperature: float, seed: int = 0) -> np.ndarray:
        """Maxwell–Boltzmann velocities (N, 3) in Å/fs at ``temperature`` K, centre-of-mass motion removed."""
        from ase.md.velocitydistribution import Stationary, thermalize_momenta

        try:
            ok = np.isfinite(float(temperature)) and 0 <= temperature <= MAX_TEMPERATURE_K
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"temperature must be a finite value from 0 to {MAX_TEMPERATURE_K:g} K, "
                             f"got {temperature!r}")
        atoms = self.to_atoms()
        thermalize_momenta(atoms, float(temperature), rng=np.random.default_rng(check_seed(seed)))
        Stationary(atoms, preserve_temperature=False)  # leaves (3N-3)/2 kT on average
        return units.velocities_from_ase(atoms.get_velocities())


def _separate_fragments(mol, gap: float = 3.0) -> None:
    """RDKit embeds disconnected fragments (solute + waters, salts) on top of each other:
    line them up along x with ``gap`` Å between their bounding boxes, in place."""
    from rdkit import Chem

    frags = Chem.GetMolFrags(mol)
    if len(frags) < 2:
        return
    conf = mol.GetConformer()
    pos = conf.GetPositions()
    edge = None
    for atoms in frags:
        atoms = list(atoms)
        block = pos[atoms] - pos[atoms].mean(0)
        if edge is not None:
            block[:, 0] += edge - block[:, 0].min()
        edge = block[:, 0].max() + gap
        pos[atoms] = block
    for i, p in enumerate(pos):
        conf.SetAtomPosition(i, p.tolist())


#: Å: atoms closer than this are not a molecular geometry (the evaluation's blow-up bound too).
MIN_DISTANCE = 0.5


def read_velocities(path, index=-1) -> np.ndarray:
    """The velocities (N, 3) in Å/fs stored in frame ``index`` of a file ASE reads (an ASE .traj or an
    extended .xyz, as ``jkstep run --out`` writes them), to continue a run from that frame;
    InputError if the frame holds none."""
    atoms = _read_atoms(path, index)
    if not atoms.has("momenta"):
        raise InputError(f"{os.fspath(path)} holds no velocities (momenta); continue from an ASE .traj or an "
                         "extended .xyz written with velocities (jkstep run --out), or start from thermal ones")
    velocities = units.velocities_from_ase(atoms.get_velocities())
    if not np.isfinite(velocities).all():
        raise InputError(f"the velocities in {os.fspath(path)} are not finite (NaN or inf)")
    return velocities


def _read_atoms(path, index):
    """One frame of a file ASE reads, or one InputError naming what is wrong with the file."""
    from ase.io import read
    from ase.io.formats import UnknownFileTypeError

    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory; give a molecule file (xyz, pdb, sdf, traj, ...)")
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    try:
        return read(path, index=index)
    except UnknownFileTypeError:
        raise InputError(f"ASE does not know the format of {path}; give a file it reads "
                         "(xyz, pdb, sdf, mol, traj, ...), named with its usual extension") from None
    except KeyError as exc:  # ASE's symbol lookup: an element name it does not know
        raise InputError(f"ASE cannot read {path}: unknown element or key {exc}") from None
    except Exception as exc:  # ASE raises many kinds of errors for unreadable files
        raise InputError(f"ASE cannot read {path}: {type(exc).__name__}: {exc}") from None


def check_simulatable(molecule: Molecule) -> None:
    """InputError for a molecule MD cannot simulate: a single atom (no internal motion), or two
    atoms closer than ``MIN_DISTANCE`` Å (not a molecular geometry)."""
    if len(molecule) < 2:
        raise InputError(f"{molecule.name} is a single atom: it has no internal motion to simulate; "
                         "give a molecule of two or more atoms")
    x = molecule.positions
    d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(len(x)) * 1e9
    i, j = np.unravel_index(np.argmin(d), d.shape)
    if d[i, j] < MIN_DISTANCE:
        raise InputError(f"atoms {min(i, j)} and {max(i, j)} of {molecule.name} are {d[i, j]:.2f} Å apart "
                         f"(closer than {MIN_DISTANCE} Å): not a molecular geometry; check the coordinates")


#: Seeds are integers in [0, MAX_SEED] (what RDKit's embedding and JAX's PRNG both take).
MAX_SEED = 2**31 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int in [0, MAX_SEED]; raises InputError otherwise."""
    if not is_integer(seed, 0) or seed > MAX_SEED:
        raise InputError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def _integer(name: str, value) -> int:
    """``value`` as an int if it is a whole number; raises InputError otherwise."""
    try:
        whole = float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if isinstance(value, (bool, np.bool_)) or not whole:
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def check_positions(positions, n_atoms: int | None = None) -> np.ndarray:
    """Positions as an (N, 3) float64 array; raises InputError if wrongly shaped or not finite."""
    try:
        arr = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"positions must be numbers in Å, got {type(positions).__name__}") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"positions must have shape (N, 3) in Å, got {arr.shape}")
    if n_atoms is not None and arr.shape[0] != n_atoms:
        raise InputError(f"positions have {arr.shape[0]} atoms but the molecule has {n_atoms}")
    if not np.all(np.isfinite(arr)):
        raise InputError("positions contain NaN or infinite values")
    return arr
