"""Reference integrators in jax-md style: ``init_fn, apply_fn`` pairs over a dataclass state.

Both take any energy-and-forces function of positions: the xTB potential, the MMFF
potential, or any JAX energy function (its forces then come from ``jax.grad``). Every step
makes exactly one force call and counts it in ``state.force_calls``. The steps are pure
functions of the state, so they run under ``jax.jit``, inside ``lax.scan`` and under
``jax.vmap`` over replicas.

Units: positions Å, velocities Å/fs, forces eV/Å, energies eV, masses amu, time fs, K.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jkstep import units
from jkstep.errors import SCF_HINT, InputError, SimulationError


@struct.dataclass
class MDState:
    """State of an MD trajectory (leading batch axes under ``vmap``).

    Attributes:
        positions: (N, 3) Å.   velocities: (N, 3) Å/fs.   forces: (N, 3) eV/Å.
        energy: potential energy in eV.
        force_calls: force (xTB) calls made so far by the integrator, init included.
        step: base steps taken.
        failed: True once a force call failed (NaN energy or forces, e.g. an SCF failure);
            the state then stays frozen at the failed step and makes no further calls.
        key: PRNG key of a stochastic integrator (None for velocity Verlet).
    """

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    energy: jax.Array
    force_calls: jax.Array
    step: jax.Array
    failed: jax.Array
    key: jax.Array | None = None


EnergyAndForces = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def as_energy_and_forces(fn: Callable) -> EnergyAndForces:
    """Wrap ``fn`` so that it returns (energy eV, forces eV/Å): functions that already do are
    returned as they are; a function returning a scalar energy gets its forces from
    ``jax.value_and_grad`` (a pure JAX function, e.g. a jax-md energy)."""

    def energy_and_forces(positions):
        out = jax.eval_shape(fn, positions)
        if isinstance(out, (tuple, list)):
            energy, forces = fn(positions)[:2]
            return energy, forces
        energy, grad = jax.value_and_grad(fn)(positions)
        return energy, -grad

    if getattr(fn, "_jkstep_energy_and_forces", False):
        return fn
    energy_and_forces._jkstep_energy_and_forces = True
    return energy_and_forces


def kinetic_energy(velocities, masses):
    """Kinetic energy in eV of velocities (..., N, 3) Å/fs and masses (N,) amu."""
    return 0.5 * units.KINETIC * jnp.sum(masses[:, None] * velocities**2, axis=(-2, -1))


def temperature(velocities, masses, dof: int | None = None):
    """Kinetic temperature in K of velocities (..., N, 3) Å/fs and masses (N,) amu; ``dof``
    defaults to 3N - 3 (centre-of-mass motion removed)."""
    dof = 3 * masses.shape[-1] - 3 if dof is None else dof
    return 2.0 * kinetic_energy(velocities, masses) / (dof * units.KB)


def angular_momentum(positions, velocities, masses):
    """Angular momentum (3,) about the centre of mass, amu·Å²/fs, of positions (N, 3) Å,
    velocities (N, 3) Å/fs and masses (N,) amu (atoms of mass 0 are ignored)."""
    m = masses[:, None]
    r = positions - jnp.sum(m * positions, 0) / jnp.sum(m)
    return jnp.sum(m * jnp.cross(r, velocities - jnp.sum(m * velocities, 0) / jnp.sum(m)), 0)


def inverse_mass(masses):
    """(N, 1) factor that turns forces (eV/Å) into accelerations (Å/fs²) for masses (N,) amu."""
    return units.ACCEL / jnp.asarray(masses, jnp.float64)[:, None]


def velocity_verlet_step(evaluate, positions, velocities, forces, inv_m, dt, active=True):
    """One velocity-Verlet step of ``dt`` fs: half kick, drift, one force call, half kick.

    ``evaluate(positions, active) -> (energy, forces, ok)`` (see ``evaluator``); ``inv_m`` from
    ``inverse_mass``. Returns (positions Å, velocities Å/fs, forces eV/Å, energy eV, ok) at the
    end of the step. Every integrator of the package takes its Verlet steps through this one.
    """
    v_half = velocities + 0.5 * dt * forces * inv_m
    x = positions + dt * v_half
    energy, new_forces, ok = evaluate(x, jnp.asarray(active))
    return x, v_half + 0.5 * dt * new_forces * inv_m, new_forces, energy, ok


#: Ensembles of the integrators that take one: NVE, or NVT with a Langevin thermostat.
ENSEMBLES = ("nve", "nvt")

#: Longest time step (fs) of the plain-Verlet fallback of the hybrid integrators by default:
#: Verlet at 0.5 fs is close to the 0.25 fs reference (docs/results.md, "Fallback step").
FALLBACK_DT = 0.5


def fallback_step_count(k: int, dt: float, fallback_steps: int | None = None) -> int:
    """Verlet steps (= force calls) of one fallback macro-step: ``fallback_steps`` if given, else
    the fewest steps of at most ``FALLBACK_DT`` fs that span k·dt (k = 8, dt = 0.25 fs: 4 × 0.5 fs)."""
    if fallback_steps is None:
        return max(1, math.ceil(k * dt / FALLBACK_DT - 1e-9))
    if int(fallback_steps) != fallback_steps or fallback_steps < 1:
        raise InputError(f"fallback_steps must be an integer ≥ 1 (Verlet steps per fallback macro-step), "
                         f"got {fallback_steps}")
    return int(fallback_steps)


def verlet_span(evaluate, positions, velocities, forces, energy, inv_m, tau: float, n_steps: int, active):
    """``n_steps`` velocity-Verlet steps of tau/n_steps fs (the hybrids' fallback over one
    macro-step of tau fs): n_steps force calls for active members, none for inactive ones.
    Returns (positions, velocities, forces, energy, ok) at the end; ok is False if any call failed."""
    h = tau / n_steps

    def step(_, c):
        x, v, f, _e, ok = c
        x, v, f, e, ok_step = velocity_verlet_step(evaluate, x, v, f, inv_m, h, active)
        return x, v, f, e, ok & ok_step

    return jax.lax.fori_loop(0, n_steps, step, (positions, velocities, forces, energy, jnp.ones((), bool)))


def evaluator(potential) -> Callable:
    """(positions, active) -> (energy, forces, ok) for any potential: the xTB potential's own
    ``evaluate`` (inactive members cost no call), else any energy-and-forces or energy function,
    evaluated and masked. ``ok`` is False where the energy or forces are not finite."""
    if hasattr(potential, "evaluate"):
        return potential.evaluate
    ef = as_energy_and_forces(potential)

    def evaluate(x, active):
        e, f = ef(x)
        ok = jnp.isfinite(e) & jnp.all(jnp.isfinite(f))
        return jnp.where(active, e, 0.0), jnp.where(active, f, 0.0), ok | ~active

    return evaluate


def _new_state(evaluate, positions, velocities, masses, key=None) -> MDState:
    positions = jnp.asarray(positions, jnp.float64)
    n = len(masses)
    for name, x in (("positions", positions), ("velocities", velocities)):
        if jnp.shape(x) != (n, 3):
            raise InputError(f"{name} must have shape ({n}, 3) for the {n} masses given to the integrator, "
                             f"got {jnp.shape(x)} (use init_fn under jax.vmap for a batch)")
        if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
            raise InputError(f"{name} contain NaN or infinite values")
    energy, forces, ok = evaluate(positions, jnp.ones((), bool))
    return MDState(positions=positions, velocities=jnp.asarray(velocities, jnp.float64),
                   forces=forces, energy=energy, force_calls=jnp.ones((), jnp.int32),
                   step=jnp.zeros((), jnp.int32), failed=~(ok & _finite(energy, forces)), key=key)


def check_start(state, name: str = "the molecule") -> None:
    """SimulationError if the force call at a run's starting geometry failed (``state.failed``
    right after ``init_fn``, no step made); ``name`` labels the molecule in the message."""
    if bool(state.failed):
        raise SimulationError(f"the xTB SCF did not converge at the starting geometry of {name}; {SCF_HINT}")


def _finite(energy, forces):
    return jnp.isfinite(energy) & jnp.all(jnp.isfinite(forces))


def _advance(state: MDState, new: MDState) -> MDState:
    """``new`` unless the trajectory had already failed: a failed state stays as it was (its
    force calls are skipped, not made on NaN positions)."""
    return jax.tree.map(lambda a, b: jnp.where(state.failed, a, b), state, new)


def _with_forces(state: MDState, evaluate, positions, **changes) -> MDState:
    active = ~state.failed
    energy, forces, ok = evaluate(positions, active)
    return state.replace(positions=positions, forces=forces, energy=energy,
                         force_calls=state.force_calls + active.astype(jnp.int32), step=state.step + 1,
                         failed=state.failed | ~(ok & _finite(energy, forces)), **changes)


def equal_cost_dt(calls: int, n_replicas: int, simulated_fs: float, dt: float = 0.0) -> float:
    """Time step (fs) at which ``verlet`` makes ``calls`` force calls over ``n_replicas``
    replicas of ``simulated_fs`` each (one call at the start of each, one per step; the step
    count rounded to the nearest whole one), never finer than ``dt``: the equal-cost baseline
    of a run that made ``calls`` calls."""
    steps = max(1, math.floor(calls / n_replicas + 0.5) - 1)
    return max(simulated_fs / steps, dt)


def _check(name: str, value, lowest: float, allow_equal: bool) -> None:
    """InputError for a concrete setting that is not finite or below its bound (a traced value,
    e.g. a dt under vmap, is left to the caller)."""
    if isinstance(value, jax.core.Tracer):  # traced: no value to check yet
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < lowest or (v == lowest and not allow_equal):
        raise InputError(f"{name} must be a finite value {'≥' if allow_equal else '>'} {lowest:g}, got {value!r}")


def _check_setup(energy_and_forces, masses) -> None:
    """InputError for a potential that is not callable or masses that are not (N,) positive
    finite amu (traced masses, e.g. under vmap, are left to the caller)."""
    if not callable(energy_and_forces):
        raise InputError(f"the potential must be a function of positions returning (energy, forces) "
                         f"or an energy, e.g. jkstep.xtb_potential(molecule); got {energy_and_forces!r}")
    if isinstance(masses, jax.core.Tracer):
        return
    try:
        m = np.asarray(masses, np.float64)
    except (TypeError, ValueError):
        raise InputError(f"masses must be numbers in amu, got {masses!r}") from None
    if m.ndim != 1 or m.size == 0 or not np.all(np.isfinite(m) & (m > 0)):
        raise InputError(f"masses must be a 1-D array of positive finite values in amu (one per atom), "
                         f"got shape {m.shape}: {m!r}")


def verlet(energy_and_forces: Callable, masses, dt: float = 0.25):
    """NVE velocity Verlet: ``init_fn(positions, velocities) -> MDState``, ``apply_fn(state)``.

    ``dt`` in fs (> 0), ``masses`` (N,) in amu. One force call per step (and one in init_fn).
    """
    _check("dt (fs)", dt, 0.0, allow_equal=False)
    _check_setup(energy_and_forces, masses)
    ef = evaluator(energy_and_forces)
    inv_m = inverse_mass(masses)

    def init_fn(positions, velocities) -> MDState:
        return _new_state(ef, positions, velocities, masses)

    def apply_fn(state: MDState) -> MDState:
        active = ~state.failed
        x, v, f, e, ok = velocity_verlet_step(ef, state.positions, state.velocities, state.forces, inv_m, dt, active)
        new = state.replace(positions=x, velocities=v, forces=f, energy=e,
                            force_calls=state.force_calls + active.astype(jnp.int32), step=state.step + 1,
                            failed=state.failed | ~(ok & _finite(e, f)))
        return _advance(state, new)

    return init_fn, apply_fn


def langevin(energy_and_forces: Callable, masses, dt: float = 0.25, temperature: float = 300.0,
             friction: float = 0.01):
    """Langevin dynamics with the BAOAB splitting (Leimkuhler & Matthews).

    ``init_fn(positions, velocities, key) -> MDState``, ``apply_fn(state)``; ``dt`` in fs,
    ``temperature`` in K, ``friction`` γ in 1/fs (0.01 /fs = 10 /ps), masses in amu. One force
    call per step. The PRNG key lives in the state, so runs are reproducible from a seed.
    """
    _check("dt (fs)", dt, 0.0, allow_equal=False)
    _check("temperature (K)", temperature, 0.0, allow_equal=True)
    _check("friction (1/fs)", friction, 0.0, allow_equal=True)
    _check_setup(energy_and_forces, masses)
    ef = evaluator(energy_and_forces)
    masses = jnp.asarray(masses, jnp.float64)[:, None]
    inv_m = units.ACCEL / masses
    c1 = jnp.exp(-friction * dt)
    # std of the thermal velocity (Å/fs) per atom: sqrt(kT/m)
    sigma = jnp.sqrt((1.0 - c1**2) * units.KB * temperature * units.ACCEL / masses)

    def init_fn(positions, velocities, key) -> MDState:
        return _new_state(ef, positions, velocities, masses, key=jnp.asarray(key))

    def apply_fn(state: MDState) -> MDState:
        key, noise_key = jax.random.split(state.key)
        v = state.velocities + 0.5 * dt * state.forces * inv_m                      # B
        x = state.positions + 0.5 * dt * v                                          # A
        v = c1 * v + sigma * jax.random.normal(noise_key, v.shape, v.dtype)         # O
        x = x + 0.5 * dt * v                                                        # A
        new = _with_forces(state, ef, x, key=key)
        return _advance(state, new.replace(velocities=v + 0.5 * dt * new.forces * inv_m))  # B

    return init_fn, apply_fn
