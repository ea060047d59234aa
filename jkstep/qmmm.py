"""QM/MM proof of concept: a solute (xTB, k-step jumps) in a droplet of flexible MMFF94 water.

**Model (mechanical embedding).** The system is one ``Molecule`` with a topology (mol block),
split into a QM region (whole molecules, given by atom indices) and the MM rest. Energy, eV:

    E = E_xTB(x_q) + E_MMFF(x_w) + E_int(x_q, x_w) + E_wall(x)

- E_xTB: the solute alone in GFN2-xTB (tblite); no point charges enter its Hamiltonian.
- E_MMFF(x_w): the waters with MMFF94 (the project's JAX MMFF: flexible O–H bonds and H–O–H
  angle, buffered 14-7 van der Waals and buffered Coulomb between waters), so the water moves
  with the base step and needs no constraints (ASE's TIP3P is rigid and needs RATTLE).
- E_int = E_MMFF(all) − E_MMFF(solute) − E_MMFF(waters): exactly MMFF's interfragment van der
  Waals and Coulomb between solute and water, with MMFF charges and parameters on both sides
  (no bonds cross the boundary, so no bonded term survives the subtraction).
- E_wall: a soft spherical wall, k_wall·(r − R)² for every atom beyond R from the origin.

ASE's ``SimpleQMMM`` / ``EIQMMM`` are calculators: they return forces for a given geometry and
cannot host a learned jump over k steps, hence a JAX composition.

**Time-scale coupling (impulse RESPA).** Per macro-step of τ = k·dt:

1. half-kick of every atom with the slow force, −∇(E_int + E_wall on the solute), over τ/2;
2. the solute advances τ under E_xTB alone: one learned jump plus one xTB corrector call
   (``jkstep.kstep``), or k plain Verlet steps for the reference; the waters advance τ in k
   velocity-Verlet steps of dt under E_MMFF(waters) + their wall;
3. the slow force at the new positions, and the second half-kick.

This is Tuckerman's reversible RESPA with the solute–water coupling as the slow force: with
Verlet inside it is symplectic and conserves the total energy above. It is consistent as long as
the coupling force changes little over τ (intermolecular van der Waals and Coulomb forces vary
on the 20–100 fs scale of librations and hydrogen-bond vibrations; τ = 2 fs at k = 8); its cost
in accuracy is the RESPA splitting error of the coupling (second order in τ) and the usual
resonance limit (τ well below half the fastest period the slow force drives). The solute's
internal dynamics between impulses are exactly the isolated-molecule task the model learned.

**Limits.** Mechanical embedding only: the solute's electrons do not see the water's charges.
Electrostatic embedding would need tblite to take external point charges into its Hamiltonian
(and return the forces on them), and the k-step model would need the embedding field as an
input. No link atoms: the QM region must be whole molecules. Non-periodic droplet.

Units: Å, fs, eV, amu, K.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from rdkit import Chem

from jkstep import units
from jkstep.errors import InputError, is_finite_number, is_integer
from jkstep.integrate import inverse_mass, kinetic_energy, velocity_verlet_step
from jkstep.molecule import Molecule, check_seed
from jkstep.potentials.mmff import mmff_potential

WATER_OH, WATER_HOH_DEG = 0.9572, 104.52
#: Smallest water grid spacing (Å) ``solvate`` accepts: closer, neighbouring waters overlap.
MIN_SPACING = 2.5
#: Most waters ``solvate`` places (all-pairs MMFF beyond that is out of reach anyway).
MAX_WATERS = 10_000


def _number(name: str, value, lowest: float = 0.0, allow_equal: bool = False) -> float:
    """``value`` as a float if it is a real, finite number above ``lowest`` (or equal, if
    ``allow_equal``); InputError otherwise (text and bools are refused, not converted)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and is_finite_number(value)
    if not ok or value < lowest or (value == lowest and not allow_equal):
        raise InputError(f"{name} must be a finite number {'≥' if allow_equal else '>'} {lowest:g}, got {value!r}")
    return float(value)


def solvate(solute: Molecule, n_waters: int = 32, spacing: float = 3.1, min_distance: float = 2.6,
            seed: int = 0) -> tuple[Molecule, np.ndarray]:
    """The solute (centred at the origin) in a droplet of ``n_waters`` waters.

    Water oxygens sit on a cubic grid of ``spacing`` Å, the ``n_waters`` grid points nearest the
    origin that are at least ``min_distance`` Å from every solute atom, each water randomly
    oriented (``seed``: integer ≥ 0). ``spacing`` ≥ 2.5 Å, ``min_distance`` > 0 Å. The system keeps the
    solute's charge and spin. Returns (system Molecule with the combined topology, QM atom
    indices: the solute)."""
    if not isinstance(solute, Molecule):
        raise InputError(f"the solute must be a jkstep.Molecule (e.g. Molecule.from_smiles('CCO')), "
                         f"got {type(solute).__name__}")
    if solute.mol_block is None:
        raise InputError("the solute needs a topology (a Molecule from SMILES or with a mol block)")
    if not is_integer(n_waters, 0) or n_waters > MAX_WATERS:
        raise InputError(f"n_waters must be an integer from 0 to {MAX_WATERS}, got {n_waters!r}")
    spacing = _number("spacing (Å)", spacing, MIN_SPACING, allow_equal=True)
    min_distance = _number("min_distance (Å)", min_distance)
    rng = np.random.default_rng(check_seed(seed))
    xq = solute.positions - np.average(solute.positions, axis=0, weights=solute.masses)
    # grid half-width (in spacings): room for the waters around the solute's extent
    n = int(np.ceil((n_waters * 4) ** (1 / 3))) + 2 + int(np.ceil(np.linalg.norm(xq, axis=1).max() / spacing))
    g = spacing * np.arange(-n, n + 1)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    free = np.linalg.norm(grid[:, None] - xq[None], axis=-1).min(axis=1) >= min_distance
    grid = grid[free]
    if len(grid) < n_waters:
        raise InputError(f"only {len(grid)} of {n_waters} water sites lie ≥ min_distance = {min_distance:g} Å from "
                         f"the solute on the {spacing:g} Å grid; lower min_distance (default 2.6 Å)")
    sites = grid[np.argsort(np.linalg.norm(grid, axis=1), kind="stable")[:n_waters]]
    half = np.radians(WATER_HOH_DEG) / 2
    local = WATER_OH * np.array([[0.0, 0.0, 0.0], [np.sin(half), np.cos(half), 0.0], [-np.sin(half), np.cos(half), 0.0]])
    waters = []
    for site in sites:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rot = q * np.sign(np.diag(r))
        waters.append(site + local @ rot.T)
    xw = np.concatenate(waters) if waters else np.zeros((0, 3))
    rd = Chem.MolFromMolBlock(solute.mol_block, removeHs=False)
    water = Chem.AddHs(Chem.MolFromSmiles("O"))
    for _ in range(n_waters):
        rd = Chem.CombineMols(rd, water)
    x = np.concatenate([xq, xw])
    conf = Chem.Conformer(rd.GetNumAtoms())
    for i, p in enumerate(x):
        conf.SetAtomPosition(i, p.tolist())
    rd.RemoveAllConformers()
    rd.AddConformer(conf)
    numbers = np.array([a.GetAtomicNum() for a in rd.GetAtoms()])
    system = Molecule(numbers, x, charge=solute.charge, spin=solute.spin, name=f"{solute.name} + {n_waters} H2O",
                      mol_block=Chem.MolToMolBlock(rd))
    return system, np.arange(len(solute))


def _sub_molecule(rd, atoms: np.ndarray, x: np.ndarray, name: str, spin: int | None = None) -> Molecule:
    """The atoms ``atoms`` of RDKit molecule ``rd`` at positions ``x`` (Å) as a Molecule: charge
    from their formal charges, spin (unpaired electrons) from their radicals unless given."""
    keep = set(int(i) for i in atoms)
    em = Chem.RWMol(rd)
    for i in sorted(set(range(rd.GetNumAtoms())) - keep, reverse=True):
        em.RemoveAtom(i)
    sub = em.GetMol()
    charge = sum(a.GetFormalCharge() for a in sub.GetAtoms())
    if spin is None:
        spin = sum(a.GetNumRadicalElectrons() for a in sub.GetAtoms())
    return Molecule(np.array([a.GetAtomicNum() for a in sub.GetAtoms()]), x[np.sort(atoms)],
                    charge=charge, spin=spin, name=name, mol_block=Chem.MolToMolBlock(sub))


@dataclasses.dataclass(frozen=True, eq=False)
class QMMMSystem:
    """A QM region inside an MM environment (see the module doc). Build with ``qmmm_system``.

    ``system``: the whole Molecule; ``qm``, ``mm``: index arrays; ``solute``, ``environment``:
    the two regions as Molecules (their own atom order: ascending indices); ``wall_radius`` Å,
    ``wall_k`` eV/Å²."""

    system: Molecule
    qm: np.ndarray
    mm: np.ndarray
    solute: Molecule
    environment: Molecule
    wall_radius: float
    wall_k: float
    mmff_all: object
    mmff_qm: object
    mmff_mm: object

    def split(self, x):
        return x[self.qm], x[self.mm]

    def join(self, xq, xw):
        x = jnp.zeros((len(self.system), 3), jnp.float64)
        return x.at[self.qm].set(xq).at[self.mm].set(xw)

    def wall_energy(self, x):
        r = jnp.linalg.norm(x, axis=-1)
        return self.wall_k * jnp.sum(jnp.where(r > self.wall_radius, (r - self.wall_radius) ** 2, 0.0))

    def coupling_energy(self, xq, xw):
        """E_int (solute–water MMFF nonbonded terms) + the wall on the solute, eV."""
        x = self.join(xq, xw)
        return (self.mmff_all.energy(x) - self.mmff_qm.energy(xq) - self.mmff_mm.energy(xw)
                + self.wall_energy(xq))

    def mm_energy(self, xw):
        """Waters' own MMFF energy + their wall, eV."""
        return self.mmff_mm.energy(xw) + self.wall_energy(xw)


def qmmm_system(system: Molecule, qm_atoms, wall_radius: float | None = None, wall_k: float = 1.0,
                min_distance: float = 1.2) -> QMMMSystem:
    """Split ``system`` into the QM region ``qm_atoms`` (whole molecules) and the MM rest.

    ``wall_radius`` (Å, finite > 0) defaults to 1.5 Å beyond the atom farthest from the origin;
    ``wall_k`` (eV/Å², finite > 0); ``min_distance`` (Å, finite ≥ 0). The environment's spin is
    its radicals' (0 for water), the solute gets the rest of the system's spin. Raises InputError
    for indices out of range or repeated, a QM region that cuts a covalent bond, an empty region,
    or a QM and an MM atom closer than ``min_distance`` Å (overlapping solute and water)."""
    if not isinstance(system, Molecule):
        raise InputError(f"the system must be a jkstep.Molecule with a topology (e.g. from jkstep.qmmm.solvate), "
                         f"got {type(system).__name__}")
    if wall_radius is not None:
        wall_radius = _number("wall_radius (Å)", wall_radius)
    wall_k = _number("wall_k (eV/Å²)", wall_k)
    min_distance = _number("min_distance (Å)", min_distance, allow_equal=True)
    if system.mol_block is None:
        raise InputError("the system needs a topology (mol block) to type MMFF and find whole molecules")
    qm = np.asarray(qm_atoms)
    n = len(system)
    if qm.ndim != 1 or qm.size == 0 or not np.issubdtype(qm.dtype, np.integer):
        raise InputError("qm_atoms must be a non-empty list of atom indices")
    if qm.min() < 0 or qm.max() >= n:
        raise InputError(f"QM region index out of range: the system has atoms 0..{n - 1}, got "
                         f"{sorted(int(i) for i in qm if i < 0 or i >= n)}")
    if len(set(qm.tolist())) != len(qm):
        raise InputError("qm_atoms lists an atom more than once")
    qm = np.sort(qm)
    mm = np.setdiff1d(np.arange(n), qm)
    if mm.size == 0:
        raise InputError("the MM region is empty: every atom is in qm_atoms")
    rd = Chem.MolFromMolBlock(system.mol_block, removeHs=False)
    inside = np.zeros(n, bool)
    inside[qm] = True
    for bond in rd.GetBonds():
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if inside[a] != inside[b]:
            raise InputError(f"the QM region cuts the covalent bond {a}-{b}; QM/MM here needs whole molecules "
                             "(no link atoms)")
    x = system.positions
    d = np.linalg.norm(x[qm][:, None] - x[mm][None], axis=-1)
    if d.min() < min_distance:
        i, j = np.unravel_index(np.argmin(d), d.shape)
        raise InputError(f"QM atom {qm[i]} and MM atom {mm[j]} are {d.min():.2f} Å apart (< {min_distance} Å): "
                         "solute and water overlap; place the waters again (jkstep.qmmm.solvate)")
    radius = float(np.linalg.norm(x, axis=1).max() + 1.5) if wall_radius is None else float(wall_radius)
    env = _sub_molecule(rd, mm, x, system.name + " (MM)")
    if env.spin > system.spin:
        raise InputError(f"the MM region has {env.spin} unpaired electrons but the system's spin is {system.spin}; "
                         "give the system its full spin (unpaired electrons)")
    solute = _sub_molecule(rd, qm, x, system.name + " (QM)", spin=system.spin - env.spin)
    return QMMMSystem(system, qm, mm, solute, env, radius, wall_k,
                      mmff_potential(system), mmff_potential(solute), mmff_potential(env))


@struct.dataclass
class QMMMState:
    """QM/MM state: ``qm`` the solute's integrator state (KStepState or MDState of the solute
    alone); waters: positions ``xw`` Å, velocities ``vw`` Å/fs, forces ``fw`` eV/Å (their own
    MMFF + wall); ``fq_slow``, ``fw_slow``: the coupling forces; ``step`` base steps."""

    qm: object
    xw: jax.Array
    vw: jax.Array
    fw: jax.Array
    fq_slow: jax.Array
    fw_slow: jax.Array
    step: jax.Array


def embedded_integrator(qmmm: QMMMSystem, qm_init, qm_apply, k: int, dt: float):
    """The QM/MM system's multiple-time-step integrator (the solute's own integrator inside,
    k Verlet steps of the water between half kicks of the coupling force).

    ``init_fn(positions, velocities, key=None) -> QMMMState``, ``apply_fn(state)`` (one macro-
    step of k·dt) and ``energy_fn(state) -> dict`` of eV terms (xtb, mm, coupling, kinetic, total).

    ``qm_init, qm_apply``: the solute's integrator over k·dt per ``apply`` (``jkstep.kstep`` with
    its model, or ``jkstep.integrate`` k Verlet steps of the xTB potential; both ignore the
    water). Its state must have positions, velocities, forces and energy (the xTB energy).
    ``k``: integer ≥ 1; ``dt``: the base step in fs, finite > 0. ``init_fn`` takes positions (Å)
    and velocities (Å/fs) of the whole system, shape (len(system), 3)."""
    if not isinstance(qmmm, QMMMSystem):
        raise InputError(f"qmmm must be a QMMMSystem (jkstep.qmmm.qmmm_system), got {type(qmmm).__name__}")
    if not (callable(qm_init) and callable(qm_apply)):
        raise InputError("qm_init and qm_apply must be the solute's integrator functions, e.g. "
                         "jkstep.qmmm.verlet_block(potential, masses, k, dt) or jkstep.kstep(...)")
    if not is_integer(k, 1):
        raise InputError(f"k (base steps per macro-step) must be an integer ≥ 1, got {k!r}")
    dt = _number("dt (fs)", dt)
    n_atoms = len(qmmm.system)
    mq = jnp.asarray(qmmm.solute.masses)[:, None]
    mw = jnp.asarray(qmmm.environment.masses)[:, None]
    tau = k * dt
    slow = jax.grad(qmmm.coupling_energy, argnums=(0, 1))
    mm_force = jax.grad(qmmm.mm_energy)
    inv_mw = inverse_mass(qmmm.environment.masses)

    def water_forces(xw, active):
        return 0.0, -mm_force(xw), True

    def slow_forces(xq, xw):
        gq, gw = slow(xq, xw)
        return -gq, -gw

    def init_fn(positions, velocities, key=None) -> QMMMState:
        for name, a in (("positions (Å)", positions), ("velocities (Å/fs)", velocities)):
            if np.shape(a) != (n_atoms, 3):
                raise InputError(f"{name} must have shape ({n_atoms}, 3), one row per atom of the whole system "
                                 f"(QM and MM), got {np.shape(a)}")
            if not isinstance(a, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(a, np.float64))):
                raise InputError(f"{name} contain NaN or infinite values")
        x, v = jnp.asarray(positions, jnp.float64), jnp.asarray(velocities, jnp.float64)
        xq, xw = x[qmmm.qm], x[qmmm.mm]
        q = qm_init(xq, v[qmmm.qm]) if key is None else qm_init(xq, v[qmmm.qm], key)
        fq, fw_slow = slow_forces(xq, xw)
        return QMMMState(q, xw, v[qmmm.mm], -mm_force(xw), fq, fw_slow, jnp.zeros((), jnp.int32))

    def kick(s: QMMMState, h):
        q = s.qm.replace(velocities=s.qm.velocities + h * s.fq_slow * units.ACCEL / mq)
        return s.replace(qm=q, vw=s.vw + h * s.fw_slow * units.ACCEL / mw)

    def apply_fn(s: QMMMState) -> QMMMState:
        s = kick(s, 0.5 * tau)
        q = qm_apply(s.qm)

        def water_step(_, c):
            x, v, f = c
            x, v, f, _, _ = velocity_verlet_step(water_forces, x, v, f, inv_mw, dt)
            return x, v, f

        xw, vw, fw = jax.lax.fori_loop(0, k, water_step, (s.xw, s.vw, s.fw))
        fq, fw_slow = slow_forces(q.positions, xw)
        s = QMMMState(q, xw, vw, fw, fq, fw_slow, s.step + k)
        return kick(s, 0.5 * tau)

    def energy_fn(s: QMMMState) -> dict:
        xq = s.qm.positions
        kin = kinetic_energy(s.qm.velocities, qmmm.solute.masses) + kinetic_energy(s.vw, qmmm.environment.masses)
        terms = {"xtb": s.qm.energy, "mm": qmmm.mm_energy(s.xw), "coupling": qmmm.coupling_energy(xq, s.xw),
                 "kinetic": kin}
        terms["total"] = terms["xtb"] + terms["mm"] + terms["coupling"] + terms["kinetic"]
        return terms

    return init_fn, apply_fn, energy_fn


def verlet_block(potential, masses, k: int, dt: float):
    """The solute's reference integrator for ``embedded_integrator``: k velocity-Verlet steps of dt per apply
    (k xTB calls), as an ``init_fn, apply_fn`` pair over ``jkstep.integrate.MDState``."""
    from jkstep.integrate import verlet

    init, step = verlet(potential, masses, dt)
    return init, (lambda s: jax.lax.fori_loop(0, k, lambda _, c: step(c), s))


def min_solute_water_distance(qmmm: QMMMSystem, xq, xw, heavy: bool = True) -> float:
    """Smallest solute–water distance (Å), heavy atoms only by default (all atoms of a region
    that has no heavy atom, e.g. H2)."""
    zq, zw = qmmm.solute.numbers, qmmm.environment.numbers
    a = np.asarray(xq)[zq > 1] if heavy and np.any(zq > 1) else np.asarray(xq)
    b = np.asarray(xw)[zw > 1] if heavy and np.any(zw > 1) else np.asarray(xw)
    return float(np.linalg.norm(a[:, None] - b[None], axis=-1).min())


def water_oh_lengths(qmmm: QMMMSystem, xw) -> np.ndarray:
    """All water O–H bond lengths (Å) of the MM region (waters as O, H, H in order); InputError
    if the environment is not water or ``xw`` is not its (n, 3) positions in Å."""
    z = qmmm.environment.numbers
    if len(z) % 3 or not np.array_equal(z, np.tile([8, 1, 1], len(z) // 3)):
        raise InputError(f"water_oh_lengths needs a water environment (atoms O, H, H per water, as from "
                         f"jkstep.qmmm.solvate), got {qmmm.environment.formula}")
    x = np.asarray(xw)
    if x.shape != (len(z), 3):
        raise InputError(f"xw must be the environment's positions, shape ({len(z)}, 3) in Å, got {x.shape}")
    oxygens = np.flatnonzero(z == 8)
    return np.concatenate([np.linalg.norm(x[[o + 1, o + 2]] - x[o], axis=-1) for o in oxygens])
