"""GFN-xTB energy and forces from tblite, callable from jitted, vmapped and scanned JAX code.

One energy-and-forces request is exactly one tblite single point, made on the host through
``jax.pure_callback``; ``jax.grad`` of the energy returns minus those forces through a custom
JVP, without a second call. Calls are counted on the host, where they happen. A batch of
geometries (``vmap``) is spread over a thread pool (tblite releases the GIL), one tblite
calculator per batch slot, each restarting from its own previous wavefunction. A slot is a
member's position in the batch, or the global replica index set with ``replica_slots`` (what
``jkstep.rollout.batched_rollout`` does, so that shards of a batch never share a slot).

Units: positions in Å, energy in eV, forces in eV/Å (tblite works in Bohr and Hartree).

SCF failure policy: a failed SCF is retried once from a fresh guess (SAD); then, if a
``fallback_method`` is given, with that method; if it still fails the energy and forces are
NaN and ``ok`` is False. Every failure, retry and fallback is counted.

tblite parallelises with OpenMP; with a thread pool over batch members one OpenMP thread per
calculator is fastest, so this module sets ``OMP_NUM_THREADS=1`` if it is unset before
tblite is loaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import atexit  # noqa: E402
import contextlib  # noqa: E402
import contextvars  # noqa: E402
import threading  # noqa: E402
import weakref  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jkstep import units  # noqa: E402
from jkstep.errors import InputError  # noqa: E402
from jkstep.molecule import Molecule, check_positions  # noqa: E402

METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")
#: Highest atomic number each method is parametrised for.
MAX_Z = {"GFN2-xTB": 86, "GFN1-xTB": 86, "IPEA1-xTB": 86}
#: Default SCF accuracy: tblite's default (1.0) is not conservative enough for NVE reference
#: MD (0.25 fs Verlet drifts -0.3 kJ/mol/ps on alanine dipeptide); 0.01 gives -0.001.
DEFAULT_ACCURACY = 0.01


#: The replica index (an int array, one value per vmapped member) of the calls being traced.
_REPLICA: contextvars.ContextVar = contextvars.ContextVar("jkstep_xtb_replica", default=None)


@contextlib.contextmanager
def replica_slots(index):
    """While tracing inside this block, xTB calls use restart slot ``index`` (the member's
    global replica number, a traced int under ``vmap``) instead of the member's position in
    the batch that reaches the callback. Shards of one batch (``shard_map``) then keep their
    own wavefunctions, as in the unsharded run."""
    token = _REPLICA.set(index)
    try:
        yield
    finally:
        _REPLICA.reset(token)


class XTBPotential:
    """GFN-xTB energy and forces of one molecule (fixed atoms, charge and spin).

    Call it as ``energy, forces = pot(positions)`` with positions (N, 3) in Å, or with a
    batch under ``jax.vmap``. ``pot.evaluate(positions, active)`` also returns ``ok`` (False
    where the SCF failed) and skips members whose ``active`` flag is False (they cost no
    call and return zeros), which is how batched control flow avoids wasted calls.

    Attributes:
        calls: tblite single points made so far (one per energy-and-forces request, plus
            one per retry or fallback after an SCF failure).
        scf_failures: requests whose first SCF failed.
        retries: fresh-guess retries made; ``fallbacks``: fallback-method calls made;
        failed: requests that still failed (returned NaN).
    """

    def __init__(self, molecule: Molecule, method: str = "GFN2-xTB", accuracy: float = DEFAULT_ACCURACY,
                 restart: bool = True, fallback_method: str | None = None, max_iter: int = 250,
                 electronic_temperature: float = 300.0, workers: int | None = None):
        if not isinstance(molecule, Molecule):
            raise InputError(f"xtb_potential needs a jkstep.Molecule, got {type(molecule).__name__}")
        for m in (method, fallback_method):
            if m is not None and m not in METHODS:
                raise InputError(f"unknown xTB method {m!r}; choose one of {', '.join(METHODS)}")
        check_parametrised(molecule.numbers, method)
        if not accuracy > 0:
            raise InputError(f"SCF accuracy must be > 0, got {accuracy}")
        self.molecule = molecule
        self.method = method
        self.accuracy = float(accuracy)
        self.restart = bool(restart)
        self.fallback_method = fallback_method
        self.max_iter = int(max_iter)
        self.electronic_temperature = float(electronic_temperature)
        self.workers = workers or len(os.sched_getaffinity(0))
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.calls = self.scf_failures = self.retries = self.fallbacks = self.failed = 0
        self._evaluate = _make_jax_function(self._host)
        _LIVE.add(self)

    def __repr__(self):
        return (f"XTBPotential({self.molecule.formula}, method={self.method!r}, "
                f"accuracy={self.accuracy}, calls={self.calls})")

    # -- JAX side -------------------------------------------------------------------------

    def __call__(self, positions):
        """Energy (eV) and forces (eV/Å) at positions (N, 3) Å. NaN where the SCF failed."""
        energy, forces, _ = self.evaluate(positions)
        return energy, forces

    def evaluate(self, positions, active=None):
        """(energy eV, forces eV/Å, ok) at positions (N, 3) Å; members with ``active``
        False are skipped (no call; zeros returned, ok True)."""
        positions = self._check(positions)
        active = jnp.ones((), bool) if active is None else jnp.asarray(active, bool)
        replica = _REPLICA.get()
        replica = jnp.full((), -1, jnp.int32) if replica is None else jnp.asarray(replica, jnp.int32)
        return self._evaluate(positions, active, replica)

    def energy(self, positions):
        """Energy in eV (differentiable: ``jax.grad`` gives minus the forces)."""
        return self(positions)[0]

    def _check(self, positions):
        n = len(self.molecule)
        if isinstance(positions, jax.core.Tracer):
            if positions.shape != (n, 3):
                raise InputError(f"positions must have shape ({n}, 3) in Å, got {positions.shape}")
            return positions.astype(jnp.float64)  # float32 input: the callback works in float64
        return jnp.asarray(check_positions(positions, n))

    # -- host side ------------------------------------------------------------------------

    def _host(self, positions: np.ndarray, active: np.ndarray, replica: np.ndarray):
        """Numpy callback: positions (..., N, 3) Å, active (...), replica (...) → energy,
        forces, ok. Member i restarts from slot ``replica[i]``, or slot i where that is -1."""
        shape, flat, act, rep = broadcast_batch(positions, active, replica)
        slot = np.where(rep >= 0, rep, np.arange(len(flat)))
        with self._lock:
            while len(self._slots) <= slot.max(initial=-1):
                self._slots.append(_Slot())
            slots = [self._slots[j] for j in slot]
            if self._pool is None and self.workers > 1:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="jkstep-xtb")
        return run_batch(shape, flat, act, lambda i: self._single_point(slots[i], flat[i]), self._pool)

    def _single_point(self, slot: "_Slot", positions: np.ndarray):
        """One request: tblite single point(s) under the SCF failure policy."""
        from tblite.exceptions import TBLiteRuntimeError

        if not np.all(np.isfinite(positions)):
            self._count(failed=1)
            return np.nan, np.full_like(positions, np.nan), False
        attempts = [(self.method, self.restart), (self.method, False)]
        if self.fallback_method:
            attempts.append((self.fallback_method, False))
        for n, (method, reuse) in enumerate(attempts):
            self._count(calls=1, retries=int(n == 1), fallbacks=int(n == 2))
            try:
                return (*self._tblite(slot, method, positions, reuse), True)
            except TBLiteRuntimeError:
                slot.result = None  # a failed SCF leaves no usable wavefunction
                if n == 0:
                    self._count(scf_failures=1)
        self._count(failed=1)
        return np.nan, np.full_like(positions, np.nan), False

    def _tblite(self, slot: "_Slot", method: str, positions: np.ndarray, reuse: bool):
        """One tblite single point → (energy eV, forces eV/Å)."""
        calc = slot.calculators.get(method)
        if calc is None:
            calc = slot.calculators[method] = self._new_calculator(method, positions)
        calc.update(positions / units.BOHR)
        if not reuse or slot.method != method:
            slot.result = None
        slot.result = calc.singlepoint(slot.result)
        slot.method = method
        energy = float(slot.result.get("energy")) * units.HARTREE
        forces = -np.asarray(slot.result.get("gradient")) * (units.HARTREE / units.BOHR)
        return energy, forces

    def _new_calculator(self, method: str, positions: np.ndarray):
        from tblite.interface import Calculator

        mol = self.molecule
        calc = Calculator(method, mol.numbers, positions / units.BOHR, charge=float(mol.charge),
                          uhf=mol.spin)
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("max-iter", self.max_iter)
        calc.set("temperature", self.electronic_temperature * units.KB / units.HARTREE)
        return calc

    def _count(self, **increments):
        with self._lock:
            for name, inc in increments.items():
                setattr(self, name, getattr(self, name) + inc)

    def counters(self) -> dict:
        """All counters as a dict (calls, scf_failures, retries, fallbacks, failed)."""
        return {k: getattr(self, k) for k in ("calls", "scf_failures", "retries", "fallbacks", "failed")}

    def reset_restart(self):
        """Forget the stored wavefunctions (the next calls start from a fresh guess)."""
        for slot in self._slots:
            slot.result = None

    _slots: list = []  # class defaults keep close() safe on a half-built object
    _pool = None

    def close(self):
        """Release the tblite calculators and the thread pool (also done at exit)."""
        self._slots = []
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __del__(self):
        self.close()


_LIVE: "weakref.WeakSet[XTBPotential]" = weakref.WeakSet()


@atexit.register
def _close_all():
    # free tblite objects before the interpreter tears down tblite's own module
    for pot in list(_LIVE):
        pot.close()


class _Slot:
    """Per batch member: its calculators (one per method) and last result for restarts."""

    def __init__(self):
        self.calculators = {}
        self.result = None
        self.method = None


SECOND_DERIVATIVE_ERROR = (
    "the xTB potential gives first derivatives only: jax.grad of the energy is minus the forces, "
    "but there is no Hessian (derivatives of the forces are NaN, second derivatives of the energy "
    "raise this error); differentiate through the MMFF potential (jkstep.mmff_potential) instead")


def broadcast_batch(positions, active, index):
    """Host side of a batched call: positions (..., N, 3) Å, active (...) and a per-member index
    (...) broadcast to one batch shape → (shape, positions (B, N, 3), active (B,), index (B,))."""
    positions = np.asarray(positions, np.float64)
    shape = np.broadcast_shapes(positions.shape[:-2], np.shape(active), np.shape(index))
    flat = np.broadcast_to(positions, (*shape, *positions.shape[-2:])).reshape(-1, *positions.shape[-2:])
    return (shape, flat, np.broadcast_to(active, shape).reshape(-1).astype(bool),
            np.broadcast_to(index, shape).reshape(-1))


def run_batch(shape, flat, active, single_point, pool=None):
    """``single_point(i)`` → (energy eV, forces (N, 3) eV/Å, ok) for every active member i of a
    flat batch, over ``pool``'s threads where there are several; inactive members get zeros and
    ok True (no call). Returns energy, forces and ok in the batch ``shape``."""
    energy, forces, ok = np.zeros(len(flat)), np.zeros_like(flat), np.ones(len(flat), bool)

    def run(i):
        energy[i], forces[i], ok[i] = single_point(i)

    todo = [i for i in range(len(flat)) if active[i]]
    if pool is not None and len(todo) > 1:
        list(pool.map(run, todo))
    else:
        for i in todo:
            run(i)
    return energy.reshape(shape), forces.reshape(*shape, *flat.shape[1:]), ok.reshape(shape)


def _make_jax_function(host):
    """(positions, active, replica) → (energy, forces, ok) through one pure_callback, with a custom
    JVP that makes the energy's derivative minus the forces. There is no Hessian: the
    callback inside the rule is guarded so that a second derivative of the energy raises, and
    the forces' own tangent is NaN."""

    def call(positions, active, replica):
        shapes = (jax.ShapeDtypeStruct(active.shape, jnp.float64),
                  jax.ShapeDtypeStruct(positions.shape, jnp.float64),
                  jax.ShapeDtypeStruct(active.shape, jnp.bool_))
        return jax.pure_callback(host, shapes, positions, active, replica, vmap_method="expand_dims")

    @jax.custom_jvp
    def evaluate(positions, active, replica):
        return call(positions, active, replica)

    @jax.custom_jvp
    def guarded_call(positions, active, replica):
        return call(positions, active, replica)

    @guarded_call.defjvp
    def _no_second_derivative(primals, tangents):
        raise InputError(SECOND_DERIVATIVE_ERROR)

    @evaluate.defjvp
    def _jvp(primals, tangents):
        positions, active, replica = primals
        dpos = tangents[0]
        energy, forces, ok = guarded_call(positions, active, replica)
        denergy = -jnp.sum(forces * dpos)
        # xTB has no Hessian: the forces' tangent is NaN (linear in dpos, so it vanishes from
        # a reverse pass that does not use the forces), never a silent zero
        dforces = jnp.nan * dpos
        return (energy, forces, ok), (denergy, dforces, jnp.zeros(ok.shape, jax.dtypes.float0))

    return evaluate


def check_parametrised(numbers, method: str) -> None:
    """InputError if ``method`` has no parameters for one of the atomic ``numbers``."""
    too_heavy = sorted({int(z) for z in numbers if z > MAX_Z[method]})
    if too_heavy:
        raise InputError(f"{method} has no parameters for atomic number(s) {too_heavy} "
                         f"(it covers Z = 1-{MAX_Z[method]})")


def xtb_potential(molecule: Molecule, method: str = "GFN2-xTB", **kwargs) -> XTBPotential:
    """GFN-xTB potential of ``molecule``: ``energy, forces = pot(positions)`` in eV and eV/Å.

    ``method`` is "GFN2-xTB" (default), "GFN1-xTB" or "IPEA1-xTB". Keyword arguments:
    ``accuracy`` (SCF, default 0.01, tight enough for energy-conserving NVE), ``restart``
    (reuse the previous wavefunction, default True), ``fallback_method`` (e.g. "GFN1-xTB",
    default None), ``max_iter`` (SCF iterations, 250), ``electronic_temperature`` (K, 300),
    ``workers`` (threads for a vmapped batch, default: the CPU cores available).
    """
    return XTBPotential(molecule, method=method, **kwargs)
