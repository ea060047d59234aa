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

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from rdkit import Chem

from jkstep import units
from jkstep.errors import InputError
from jkstep.integrate import kinetic_energy
from jkstep.molecule import Molecule
from jkstep.potentials.mmff import mmff_potential

WATER_OH, WATER_HOH_DEG = 0.9572, 104.52


def solvate(solute: Molecule, n_waters: int = 32, spacing: float = 3.1, min_distance: float = 2.6,
            seed: int = 0) -> tuple[Molecule, np.ndarray]:
    """The solute (centred at the origin) in a droplet of ``n_waters`` waters.

    Water oxygens sit on a cubic grid of ``spacing`` Å, the ``n_waters`` grid points nearest the
    origin that are at least ``min_distance`` Å from every solute atom, each water randomly
    oriented. Returns (system Molecule with the combined topology, QM atom indices: the solute)."""
    if solute.mol_block is None:
        raise InputError("the solute needs a topology (a Molecule from SMILES or with a mol block)")
    if n_waters < 1:
        raise InputError(f"n_waters must be ≥ 1, got {n_waters}")
    rng = np.random.default_rng(seed)
    xq = solute.positions - np.average(solute.positions, axis=0, weights=solute.masses)
    n = int(np.ceil((n_waters * 4) ** (1 / 3))) + 2
    g = spacing * np.arange(-n, n + 1)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    free = np.linalg.norm(grid[:, None] - xq[None], axis=-1).min(axis=1) >= min_distance
    grid = grid[free]
    sites = grid[np.argsort(np.linalg.norm(grid, axis=1), kind="stable")[:n_waters]]
    half = np.radians(WATER_HOH_DEG) / 2
    local = WATER_OH * np.array([[0.0, 0.0, 0.0], [np.sin(half), np.cos(half), 0.0], [-np.sin(half), np.cos(half), 0.0]])
    waters = []
    for site in sites:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rot = q * np.sign(np.diag(r))
        waters.append(site + local @ rot.T)
    xw = np.concatenate(waters)
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
    system = Molecule(numbers, x, charge=solute.charge, name=f"{solute.name} + {n_waters} H2O",
                      mol_block=Chem.MolToMolBlock(rd))
    return system, np.arange(len(solute))


def _sub_molecule(rd, atoms: np.ndarray, x: np.ndarray, name: str) -> Molecule:
    keep = set(int(i) for i in atoms)
    em = Chem.RWMol(rd)
    for i in sorted(set(range(rd.GetNumAtoms())) - keep, reverse=True):
        em.RemoveAtom(i)
    sub = em.GetMol()
    charge = sum(a.GetFormalCharge() for a in sub.GetAtoms())
    return Molecule(np.array([a.GetAtomicNum() for a in sub.GetAtoms()]), x[np.sort(atoms)],
                    charge=charge, name=name, mol_block=Chem.MolToMolBlock(sub))


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

    ``wall_radius`` (Å) defaults to 1.5 Å beyond the atom farthest from the origin. Raises
    InputError for indices out of range or repeated, a QM region that cuts a covalent bond, an
    empty region, or a QM and an MM atom closer than ``min_distance`` Å (overlapping solute and
    water)."""
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
    solute = _sub_molecule(rd, qm, x, system.name + " (QM)")
    env = _sub_molecule(rd, mm, x, system.name + " (MM)")
    return QMMMSystem(system, qm, mm, solute, env, radius, float(wall_k),
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


def respa(qmmm: QMMMSystem, qm_init, qm_apply, k: int, dt: float):
    """``init_fn(positions, velocities, key=None) -> QMMMState``, ``apply_fn(state)`` (one macro-
    step of k·dt) and ``energy_fn(state) -> dict`` of eV terms (xtb, mm, coupling, kinetic, total).

    ``qm_init, qm_apply``: the solute's integrator over k·dt per ``apply`` (``jkstep.kstep`` with
    its model, or ``jkstep.integrate`` k Verlet steps of the xTB potential; both ignore the
    water). Its state must have positions, velocities, forces and energy (the xTB energy)."""
    mq = jnp.asarray(qmmm.solute.masses)[:, None]
    mw = jnp.asarray(qmmm.environment.masses)[:, None]
    tau = k * dt
    slow = jax.grad(qmmm.coupling_energy, argnums=(0, 1))
    mm_force = jax.grad(qmmm.mm_energy)

    def slow_forces(xq, xw):
        gq, gw = slow(xq, xw)
        return -gq, -gw

    def init_fn(positions, velocities, key=None) -> QMMMState:
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
            v = v + 0.5 * dt * f * units.ACCEL / mw
            x = x + dt * v
            f = -mm_force(x)
            return x, v + 0.5 * dt * f * units.ACCEL / mw, f

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
    """The solute's reference integrator for ``respa``: k velocity-Verlet steps of dt per apply
    (k xTB calls), as an ``init_fn, apply_fn`` pair over ``jkstep.integrate.MDState``."""
    from jkstep.integrate import verlet

    init, step = verlet(potential, masses, dt)
    return init, (lambda s: jax.lax.fori_loop(0, k, lambda _, c: step(c), s))


def min_solute_water_distance(qmmm: QMMMSystem, xq, xw, heavy: bool = True) -> float:
    """Smallest solute–water distance (Å), heavy atoms only by default."""
    zq, zw = qmmm.solute.numbers, qmmm.environment.numbers
    a = np.asarray(xq)[zq > 1] if heavy else np.asarray(xq)
    b = np.asarray(xw)[zw > 1] if heavy else np.asarray(xw)
    return float(np.linalg.norm(a[:, None] - b[None], axis=-1).min())


def water_oh_lengths(qmmm: QMMMSystem, xw) -> np.ndarray:
    """All water O–H bond lengths (Å) of the MM region (waters as O, H, H in order)."""
    z = qmmm.environment.numbers
    x = np.asarray(xw)
    oxygens = np.flatnonzero(z == 8)
    return np.concatenate([np.linalg.norm(x[[o + 1, o + 2]] - x[o], axis=-1) for o in oxygens])
