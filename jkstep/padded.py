"""Hybrid k-step MD of different molecules in one batch, padded to a common atom count.

Members of a batch are molecules of different sizes (or replicas of them). Each is padded to
N = the largest atom count: padding atoms have atomic number 0, mass 1 amu, zero velocity and
force, and sit far from everything (10 Å apart on a line 1000 Å away), so the network (masked),
the ballistic jump, the guards and the NVT thermostat leave them where they are, and they add
nothing to the energies.

The member a traced call belongs to is its replica index, the one that
``jkstep.rollout.batched_rollout`` sets for every member (``jkstep.potentials.xtb.replica_slots``):
member i runs molecule i's integrator and its own xTB calculator. So::

    batch = pad(molecules)                                   # Padded: numbers, masses, mask, positions
    pot = padded_xtb_potential(molecules)                    # one tblite calculator per member
    init_fn, apply_fn = padded_kstep(bundle, pot, batch)      # per-member pair
    states, frames = batched_rollout(init_fn, apply_fn, batch.positions, velocities, n_frames)
    x_i = unpad(frames.positions, batch)[i]                  # molecule i's frames, (F, n_i, 3)

A batch of B members makes exactly the xTB calls that B single runs make (inactive members and
padding cost nothing), and every member's trajectory equals its single run's.

Units: Å, fs, eV, amu.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jkstep.errors import InputError, is_integer
from jkstep.kstep import REVERSAL_CORRECTION, KStepOptions, check_model, kstep_integrator, reversal_corrected
from jkstep.molecule import Molecule
from jkstep.potentials import xtb as xtb_module

#: Padding atoms sit at (PAD_ORIGIN + PAD_SPACING · j, 0, 0) Å.
PAD_ORIGIN, PAD_SPACING = 1000.0, 10.0
#: Most atoms a member may be padded to (the integrator keeps N × N distance matrices).
MAX_PAD_ATOMS = 10_000


@dataclasses.dataclass(frozen=True)
class Padded:
    """B molecules padded to N atoms: numbers (B, N) int (0 = padding), masses (B, N) amu (1 on
    padding), mask (B, N) bool, positions (B, N, 3) Å (each molecule's own, padding far away),
    n_atoms (B,)."""

    numbers: np.ndarray
    masses: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray

    def pad_array(self, arrays: Sequence[np.ndarray], fill: float = 0.0) -> np.ndarray:
        """Per-member (n_i, 3) arrays (velocities in Å/fs, say) as one (B, N, 3) array."""
        if len(arrays) != len(self.n_atoms):
            raise InputError(f"expected {len(self.n_atoms)} arrays, one per member, got {len(arrays)}")
        out = np.full(self.positions.shape, fill, np.float64)
        for i, (a, n) in enumerate(zip(arrays, self.n_atoms)):
            a = np.asarray(a, np.float64)
            if a.shape != (n, 3):
                raise InputError(f"member {i} has {n} atoms: its array must be ({n}, 3), got {a.shape}")
            out[i, :n] = a
        return out


def _molecule_list(molecules) -> list[Molecule]:
    """``molecules`` as a non-empty list of Molecule; raises InputError otherwise."""
    if isinstance(molecules, Molecule):
        raise InputError("give a list of molecules, e.g. pad([mol]), not one Molecule")
    try:
        molecules = list(molecules)
    except TypeError:
        molecules = []
    if not molecules or not all(isinstance(m, Molecule) for m in molecules):
        raise InputError("a padded batch needs a non-empty list of jkstep.Molecule, e.g. "
                         "[Molecule.from_smiles('O'), Molecule.from_smiles('CCO')]")
    return molecules


def pad(molecules: Sequence[Molecule], n_atoms: int | None = None) -> Padded:
    """Pad a list of molecules to ``n_atoms`` (an integer; default: the largest) atoms each."""
    molecules = _molecule_list(molecules)
    sizes = np.array([len(m) for m in molecules])
    if n_atoms is None:
        n_atoms = int(sizes.max())
    largest = int(sizes.max())
    if is_integer(n_atoms) and n_atoms < largest:
        raise InputError(f"n_atoms = {n_atoms} is smaller than the largest molecule ({largest} atoms): "
                         f"give at least {largest}, or None")
    if not is_integer(n_atoms) or n_atoms > MAX_PAD_ATOMS:
        raise InputError(f"n_atoms must be an integer from {largest} (the largest molecule) to "
                         f"{MAX_PAD_ATOMS}, or None; got {n_atoms!r}")
    n = int(n_atoms)
    b = len(molecules)
    far = np.zeros((n, 3))
    far[:, 0] = PAD_ORIGIN + PAD_SPACING * np.arange(n)
    numbers, masses = np.zeros((b, n), np.int32), np.ones((b, n))
    positions = np.broadcast_to(far, (b, n, 3)).copy()
    for i, (m, k) in enumerate(zip(molecules, sizes)):
        numbers[i, :k], masses[i, :k], positions[i, :k] = m.numbers, m.masses, m.positions
    return Padded(numbers, masses, numbers > 0, positions, sizes)


def unpad(array, batch: Padded) -> list[np.ndarray]:
    """Split a (B, ..., N, 3) array into the members' (..., n_i, 3) arrays."""
    array = np.asarray(array)
    b, n = batch.positions.shape[:2]
    if array.ndim < 3 or array.shape[0] != b or array.shape[-2:] != (n, 3):
        raise InputError(f"unpad needs a (B, ..., N, 3) array of this batch, B = {b}, N = {n}; got {array.shape}")
    return [array[i, ..., :k, :] for i, k in enumerate(batch.n_atoms)]


def _member_index():
    index = xtb_module._REPLICA.get()
    if index is None:
        raise InputError("a padded batch needs each member's index: run it with "
                         "jkstep.rollout.batched_rollout, or trace it inside "
                         "jkstep.potentials.xtb.replica_slots(index) under your own vmap")
    return jnp.asarray(index, jnp.int32)


class PaddedXTBPotential:
    """GFN-xTB of a padded batch: member i is molecule i, with its own tblite calculator.

    ``evaluate(positions (N, 3), active)`` → (energy eV, forces eV/Å, ok), traced per member
    inside ``replica_slots`` (``batched_rollout`` does it); padding atoms get zero force. The
    calls of a batch are spread over ``workers`` threads. ``calls`` counts tblite single points
    of all members (None: the CPU cores available). Keyword arguments go to
    ``jkstep.xtb_potential`` (method, accuracy, ...).
    """

    def __init__(self, molecules: Sequence[Molecule], workers: int | None = None, **xtb_kwargs):
        self.molecules = _molecule_list(molecules)
        if workers is not None and not is_integer(workers, 1):
            raise InputError(f"workers must be an integer ≥ 1 (threads), or None for all cores; got {workers!r}")
        self.batch = pad(self.molecules)
        self.members = [xtb_module.XTBPotential(m, workers=1, **xtb_kwargs) for m in self.molecules]
        self._slots = [xtb_module._Slot() for _ in self.molecules]
        self.workers = workers or len(xtb_module.os.sched_getaffinity(0))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="jkstep-xtb-pad") if self.workers > 1 else None
        self._evaluate = xtb_module._make_jax_function(self._host)

    @property
    def calls(self) -> int:
        return sum(p.calls for p in self.members)

    def evaluate(self, positions, active=None):
        positions = jnp.asarray(positions, jnp.float64)
        if positions.shape != self.batch.positions.shape[1:]:
            raise InputError(f"positions must be padded to {self.batch.positions.shape[1:]}, got {positions.shape}")
        active = jnp.ones((), bool) if active is None else jnp.asarray(active, bool)
        return self._evaluate(positions, active, _member_index())

    def _host(self, positions, active, member):
        shape, flat, act, idx = xtb_module.broadcast_batch(positions, active, member)
        if np.any((idx < 0) | (idx >= len(self.members))):
            raise InputError(f"member index out of range 0..{len(self.members) - 1}: {idx}")

        def single_point(i):
            j, n = int(idx[i]), int(self.batch.n_atoms[idx[i]])
            forces = np.zeros_like(flat[i])
            energy, forces[:n], ok = self.members[j]._single_point(self._slots[j], flat[i, :n])
            return energy, forces, ok

        return xtb_module.run_batch(shape, flat, act, single_point, self._pool)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for p in self.members:
            p.close()


def padded_xtb_potential(molecules: Sequence[Molecule], **kwargs) -> PaddedXTBPotential:
    """The xTB potential of a padded batch of molecules (see ``PaddedXTBPotential``)."""
    return PaddedXTBPotential(molecules, **kwargs)


def padded_kstep(bundle, potential, batch: Padded, options: KStepOptions | None = None,
                 reversal_correction: float = REVERSAL_CORRECTION, **changes):
    """``init_fn, apply_fn`` of the hybrid integrator for the members of a padded batch.

    Each call runs member i's integrator (its atoms, masses and padding mask; the model
    ``bundle`` with the mask) where i is the traced member index (``batched_rollout`` sets it).
    ``potential`` is a ``PaddedXTBPotential`` (or anything with ``evaluate(positions, active)``
    that reads the member index the same way). ``reversal_correction`` as in ``jkstep.kstep``;
    ``options`` (a ``KStepOptions``) and keyword ``changes`` (its fields) as for
    ``kstep_integrator``.
    """
    check_model(bundle, "padded_kstep")
    options = KStepOptions.of(options, "padded_kstep", **changes)
    if not isinstance(batch, Padded):
        raise InputError(f"batch must be a Padded batch (jkstep.padded.pad(molecules)), got {type(batch).__name__}")
    own = getattr(potential, "batch", None)
    if isinstance(own, Padded) and (own.numbers.shape != batch.numbers.shape
                                    or not np.array_equal(own.numbers, batch.numbers)):
        raise InputError(f"the potential was built for other molecules (or another order or padding) than "
                         f"batch: atomic numbers {own.numbers.shape} vs {batch.numbers.shape}; build both from "
                         f"the same list, e.g. batch = potential.batch")
    bundle.check_elements(batch.numbers)
    alpha = reversal_correction
    # build member 0's integrator once now, so that bad values fail here, not at rollout time
    kstep_integrator(reversal_corrected(lambda x, v, f: (x, v, f), alpha), potential, batch.numbers[0],
                     batch.masses[0], bundle.k, bundle.dt, options)
    numbers, masses, mask = (jnp.asarray(a) for a in (batch.numbers, batch.masses, batch.mask))

    def member():
        i = _member_index()
        z, m, real = numbers[i], masses[i], mask[i]

        def jump(x, v, f):          # the network zeroes padding: keep it where it is
            px, pv, pf = bundle.apply(None, z, real, m, x, v, f)
            keep = real[:, None]
            return jnp.where(keep, px, x), jnp.where(keep, pv, v), jnp.where(keep, pf, f)

        return kstep_integrator(reversal_corrected(jump, alpha), potential, z, m, bundle.k, bundle.dt, options)

    def init_fn(positions, velocities, key=None):
        return member()[0](positions, velocities, key)

    def apply_fn(state):
        return member()[1](state)

    return init_fn, apply_fn
