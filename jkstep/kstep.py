"""The hybrid k-step integrator: a learned jump of k base steps plus one xTB call.

One macro-step from (x_t, v_t, F_t):

1. **Jump.** A jump function predicts (x', v', F̂') at t + τ, τ = k·dt (a model's jump is
   corrected by its own time-reversal error by default: ``reversal_corrected``). The velocity is
   split into its "pre-kick" part u' = v' − w·F̂'/m and the final kick w·F/m, w = τ/2 by
   default. The learned part is measured against the ballistic baseline
   (x + v·τ + ½aτ², u = v + a·(τ − w)) and scaled by ``delta_scale`` s on retries:
   x' ← b_x + s·(x' − b_x), likewise u'.
2. **Guards before the call** (free): largest atom displacement ≤ ``max_displacement`` Å;
   every atom pair farther apart than ``clash_ratio`` × the sum of covalent radii.
3. **Corrector: one xTB call** at x' gives the real (E', F'); the final kick is made with
   it: v ← u' + w·F'/m. F' also feeds the next jump. After a learned jump the velocities get
   back the angular momentum they had before it (``conserve_angular_momentum``, default on).
   With the ballistic jump ("zero network", F̂' = F_t) this is exactly velocity Verlet at τ,
   the equal-cost baseline, so a model is judged by what its learned correction adds to that.
4. **Guards after the call**: the SCF converged; the total energy rose by at most
   ``max_energy_rise`` eV and the kinetic energy by at most ``max_kinetic_rise`` eV over the
   jump; in NVE, the total energy stays within ``max_energy_drift`` eV of its value at the
   start of the run (a learned jump's small random energy errors add up to heating; this
   window bounds that walk, and a jump that would leave it goes to the retry and fallback).
5. A rejected jump is retried with ``delta_scale`` halved, up to ``max_attempts`` (not when the
   learned correction is zero: the retry would be the same jump); then the macro-step falls
   back to plain velocity Verlet over the same k·dt: n steps of k·dt/n (n xTB calls; by
   default the fewest steps of at most ``FALLBACK_DT`` = 0.5 fs: 4 at k = 8, dt = 0.25 fs).

Optional, off by default and reported separately: ``energy_rescale`` (FlashMD style) rescales
the velocities after an accepted jump so that the total energy equals the one at the start of
the run (the guards judge the jump before the rescale, so a bad jump is still rejected);
``energy_relaxation`` (fs, NVE) is its weak-coupling form: each accepted jump's velocities are
scaled so that the total energy moves only kΔt/τ_E of the way back to its start, which takes
out the slow random walk of the jumps' energy errors but leaves the fast, bounded energy
oscillation of a kΔt integrator alone;
``Guards.max_force_error`` (uncertainty-triggered escalation) compares the jump's own force
estimate F̂' with the real F' of the corrector call — a signal that costs no extra call — and
where their RMS difference exceeds the bound the macro-step skips its retries and goes
straight to the Verlet fallback (step 5). ``energy_window`` (eV, NVE, with the excursion guard
off) keeps the total energy within that distance of its start by a rescale only where an
accepted jump leaves the window, back to its edge. ``ensemble="nvt"`` makes the thermostat act
at the macro level, BAOAB like: an exact Ornstein–Uhlenbeck velocity half-step (Langevin "O")
over kΔt/2 before and after each jump-and-correction, seeded from the state's PRNG key; it
costs no xTB call.

Everything is jittable, runs in ``lax.scan`` and under ``vmap``: the attempt loop and the
fallback pass an ``active`` mask to the potential, so batch members that are done (or need
no fallback) cost no xTB call. Every call is counted in ``state.force_calls``.

Units: Å, fs, eV, amu, K.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from ase.data import covalent_radii
from flax import struct

from jkstep import units
from jkstep.errors import InputError, is_finite_number, is_integer
from jkstep.integrate import (ENSEMBLES, FALLBACK_DT, angular_momentum, evaluator,  # noqa: F401
                              fallback_step_count, inverse_mass, kinetic_energy, verlet_span)
from jkstep.molecule import Molecule

#: jump(positions, velocities, forces) -> (positions', velocities', forces_hat') after k steps.
JumpFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


@struct.dataclass
class KStepState:
    """State of the hybrid integrator (leading batch axes under ``vmap``).

    positions (N,3) Å, velocities (N,3) Å/fs, forces (N,3) eV/Å, energy (potential) eV;
    force_calls: xTB calls made (init included); step: base steps (k per macro-step);
    accepted / rejected / fallbacks: accepted jumps, rejected attempts, fallback macro-steps;
    failed: a force call failed for good (the state then stays frozen, making no calls);
    reference_energy: total energy at init (eV);
    escalations: macro-steps sent to the fallback by the force-disagreement signal;
    key: PRNG key (used by ``ensemble="nvt"``).
    """

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    energy: jax.Array
    force_calls: jax.Array
    step: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    fallbacks: jax.Array
    failed: jax.Array
    reference_energy: jax.Array
    escalations: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class Guards:
    """Acceptance thresholds of a jump. Lengths in Å, energies in eV.

    ``max_displacement`` (Å) bounds the largest atom displacement of a jump; None means
    0.025·k Å (0.2 Å at k = 8). ``clash_ratio``: every atom pair must stay farther apart than
    this fraction of the sum of covalent radii (0 = off). ``max_energy_rise`` and
    ``max_kinetic_rise`` (eV) bound the rise of the total and of the kinetic energy over one
    jump. ``max_force_error`` (eV/Å, RMS over atoms of |F' − F̂'|; None = off) escalates to the
    fallback without retries. ``max_energy_drift`` (eV; None = off; NVE only) bounds the total
    energy's distance from its value at init (0.05 eV ≈ 5 kJ/mol). ``max_attempts``: tries of a
    jump before the fallback. What the defaults rest on: docs/results.md, "What the hybrid
    integrator's defaults rest on".
    """

    max_displacement: float | None = None
    clash_ratio: float = 0.6
    max_energy_rise: float = 0.1
    max_energy_drift: float | None = 0.05
    max_kinetic_rise: float = 0.5
    max_attempts: int = 3
    max_force_error: float | None = None

    def __post_init__(self):
        optional = ("max_displacement", "max_energy_drift", "max_force_error")  # None: default or off
        for name in (*optional, "max_energy_rise", "max_kinetic_rise"):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            try:
                ok = float(value) > 0  # +inf turns a bound off; NaN, ≤ 0 and text are refused
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(f"Guards.{name} must be > 0 (or None where the bound may be off), got {value!r}")
        if not (is_finite_number(self.clash_ratio) and 0 <= self.clash_ratio < 1):
            raise InputError(f"Guards.clash_ratio must be in [0, 1) (a fraction of the covalent bond length; "
                             f"0 turns the check off), got {self.clash_ratio!r}")
        n = self.max_attempts
        if isinstance(n, bool) or not is_finite_number(n) or int(n) != n or n < 1:
            raise InputError(f"Guards.max_attempts must be an integer ≥ 1, got {self.max_attempts!r}")


def ballistic_jump(masses, k: int, dt: float) -> JumpFn:
    """The zero network: constant-force ballistic motion over k·dt (x + v·τ + ½aτ², v + aτ),
    with F̂' = F_t. With the corrector it is the ``corrector_only`` control."""
    inv_m = units.ACCEL / jnp.asarray(masses, jnp.float64)[:, None]
    tau = k * dt

    def jump(x, v, f):
        a = f * inv_m
        return x + v * tau + 0.5 * a * tau**2, v + a * tau, f

    return jump


def with_angular_momentum(positions, velocities, masses, target):
    """Velocities (Å/fs) changed by the smallest rigid rotation ω × r (mass-weighted) that gives
    them the angular momentum ``target`` (amu·Å²/fs) about the centre of mass; linear momentum
    is unchanged. Atoms of mass 0 (padding) are left alone; linear molecules use the
    pseudo-inverse of their singular inertia tensor."""
    m = masses[:, None]
    real = (masses > 0)[:, None]
    r = (positions - jnp.sum(m * positions, 0) / jnp.sum(m)) * real
    inertia = jnp.eye(3) * jnp.sum(m * r**2) - jnp.einsum("i,ij,ik->jk", masses, r, r)
    omega = jnp.linalg.pinv(inertia, rtol=1e-10) @ (target - angular_momentum(positions, velocities, masses))
    return velocities + jnp.cross(omega, r) * real


@dataclasses.dataclass(frozen=True)
class KStepOptions:
    """Every option of the hybrid integrator, validated once (``kstep_integrator`` and all its
    fronts: ``jkstep.kstep``, ``padded_kstep``, ``KStepMD``, ``md.run_md``, ``jkstep evaluate``
    and ``jkstep run`` take these names and defaults, written only here).

    ``guards``: the acceptance thresholds (``Guards``). ``delta_scale``: scale of the learned
    correction on the first attempt, in (0, 1], halved on each retry. ``kick_weight`` w in fs
    (None: k·dt/2). ``energy_rescale``: FlashMD-style rescale of the velocities after each
    accepted jump to the total energy at init. ``energy_relaxation`` τ_E in fs (NVE only; None =
    off): after each accepted jump the velocities are scaled so that the total energy moves
    min(1, kΔt/τ_E) of the way back to its value at init (``energy_rescale`` is the τ_E ≤ kΔt
    case). ``energy_window`` W in eV (NVE only; None = off): after an accepted jump that leaves
    the total energy more than W from its value at init, the velocities are scaled to bring it
    back to the window's edge (use it with ``Guards(max_energy_drift=None)``, which would reject
    those jumps instead). ``conserve_angular_momentum``: the velocity after each learned jump and
    its corrector kick gets back the angular momentum it had before the jump, by the smallest
    rigid-rotation change (``with_angular_momentum``; the zero network's jump is left alone, so
    it stays exactly Verlet at τ). The network conserves linear momentum by construction but not
    angular momentum; exact dynamics conserve it (the xTB forces exert no net torque).
    ``fallback_steps`` n: a macro-step whose attempts all fail is made of n velocity-Verlet steps
    of k·dt/n fs (n xTB calls; None: ``fallback_step_count``, steps of at most ``FALLBACK_DT`` =
    0.5 fs). ``ensemble``: "nve" or "nvt" (a Langevin O half-step over kΔt/2 before and after
    each macro-step, at ``temperature`` K with ``friction`` 1/fs).
    """

    guards: Guards = Guards()
    delta_scale: float = 1.0
    kick_weight: float | None = None
    energy_rescale: bool = False
    energy_relaxation: float | None = None
    energy_window: float | None = None
    conserve_angular_momentum: bool = True
    fallback_steps: int | None = None
    ensemble: str = "nve"
    temperature: float = 300.0
    friction: float = 0.01

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise InputError(f"ensemble must be 'nve' or 'nvt', got {self.ensemble!r}")
        if not isinstance(self.guards, Guards):
            raise InputError(f"guards must be a jkstep.kstep.Guards, got {type(self.guards).__name__}")
        if not (is_finite_number(self.delta_scale) and 0 < self.delta_scale <= 1):
            raise InputError(f"delta_scale must be in (0, 1], got {self.delta_scale!r}")
        if self.kick_weight is not None and not is_finite_number(self.kick_weight):
            raise InputError(f"kick_weight is a time in fs (or None: k·dt/2), got {self.kick_weight!r}")
        for name, unit in (("temperature", "K"), ("friction", "1/fs")):
            if not (is_finite_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise InputError(f"{name} must be a finite value ≥ 0 {unit}, got {getattr(self, name)!r}")
        if self.fallback_steps is not None and not is_integer(self.fallback_steps, 1):
            raise InputError(f"fallback_steps must be an integer ≥ 1 (Verlet steps per fallback macro-step) "
                             f"or None, got {self.fallback_steps!r}")
        relaxation, window = self.energy_relaxation, self.energy_window
        if relaxation is not None and not (is_finite_number(relaxation) and relaxation > 0):
            raise InputError(f"energy_relaxation is a time constant in fs and must be > 0, got {relaxation!r}")
        if relaxation is not None and self.energy_rescale:
            raise InputError("energy_rescale is the full rescale and energy_relaxation its weak form: give one of them")
        if window is not None and not (is_finite_number(window) and window > 0):
            raise InputError(f"energy_window is a total-energy distance in eV and must be > 0, got {window!r}")
        if window is not None and (self.energy_rescale or relaxation is not None or self.ensemble != "nve"):
            raise InputError("energy_window bounds the NVE total energy by a rescale at its edges: not with "
                             "energy_rescale, energy_relaxation or NVT")
        if relaxation is not None and self.ensemble != "nve":
            raise InputError("energy_relaxation pulls the total energy back to its start: NVE only "
                             "(in NVT the thermostat sets the energy); leave it out")

    @classmethod
    def of(cls, options: "KStepOptions | None" = None, caller: str = "kstep_integrator",
           **changes) -> "KStepOptions":
        """``options`` (default: all defaults) with the keyword ``changes``; an unknown keyword is
        one InputError that names ``caller`` and lists the known ones."""
        if options is not None and not isinstance(options, cls):
            raise InputError(f"{caller}: options must be a jkstep.kstep.KStepOptions, got {type(options).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise InputError(f"unknown option(s) {unknown}: {caller} takes the options of "
                             f"jkstep.kstep.KStepOptions ({', '.join(known)})")
        return dataclasses.replace(options or cls(), **changes)


class Prediction(NamedTuple):
    """One jump's candidate before scaling (each (N, 3)): the ballistic baseline's positions (Å)
    and pre-kick velocities (Å/fs), the jump's own, and its force estimate F̂' (eV/Å). The
    pre-kick velocity is u' = v' − w·F'/m; the corrector's kick w·F/m completes it."""

    base_positions: jax.Array
    base_prekick: jax.Array
    positions: jax.Array
    prekick: jax.Array
    forces: jax.Array

    def scaled(self, scale):
        """(positions, pre-kick velocities) with the learned part scaled by ``scale``."""
        return (self.base_positions + scale * (self.positions - self.base_positions),
                self.base_prekick + scale * (self.prekick - self.base_prekick))

    def is_learned(self):
        """True where the jump differs from the ballistic baseline beyond round-off (halving a
        correction that is zero gives the same jump again, so the zero network gets no retry;
        its u' = v + aτ − w·a differs from v + a(τ − w) in the last bit)."""
        return (jnp.any(jnp.abs(self.positions - self.base_positions) > 1e-12)
                | jnp.any(jnp.abs(self.prekick - self.base_prekick) > 1e-14))


@struct.dataclass
class _Setup:
    """What one hybrid integrator needs besides the state: the molecule's constants (arrays,
    possibly traced for padded batches) and its options (static)."""

    masses: jax.Array          # (N,) amu
    inv_m: jax.Array           # (N, 1) ACCEL/m: eV/Å → Å/fs² per amu
    real_masses: jax.Array     # (N,) amu, 0 on padding atoms
    min_dist: jax.Array        # (N, N) Å: closest allowed pair distance
    c1: jax.Array              # Ornstein–Uhlenbeck velocity factor over kΔt/2
    sigma: jax.Array           # (N, 1) Å/fs: its noise amplitude
    k: int = struct.field(pytree_node=False)
    tau: float = struct.field(pytree_node=False)            # fs
    kick: float = struct.field(pytree_node=False)           # w, fs
    max_displacement: float = struct.field(pytree_node=False)   # Å
    relax: float | None = struct.field(pytree_node=False)   # share of the energy excursion taken back
    n_fallback: int = struct.field(pytree_node=False)
    options: KStepOptions = struct.field(pytree_node=False)


def _setup(numbers, masses, k: int, dt: float, options: KStepOptions) -> _Setup:
    tau = k * dt
    masses = jnp.asarray(masses, jnp.float64)
    numbers = jnp.asarray(numbers)                 # may be traced (padded batches: 0 = padding)
    radii = jnp.where(numbers > 0, jnp.asarray(covalent_radii)[numbers], 0.0)   # padding clashes with nothing
    c1 = jnp.exp(-options.friction * 0.5 * tau)
    sigma = jnp.sqrt((1.0 - c1**2) * units.KB * options.temperature * units.ACCEL / masses)[:, None]
    guards = options.guards
    relax = (1.0 if options.energy_rescale else
             None if options.energy_relaxation is None else min(1.0, tau / options.energy_relaxation))
    return _Setup(masses=masses, inv_m=units.ACCEL / masses[:, None],
                  real_masses=jnp.where(numbers > 0, masses, 0.0),
                  min_dist=guards.clash_ratio * (radii[:, None] + radii[None, :]),
                  c1=c1, sigma=sigma * (numbers > 0)[:, None],           # padding atoms get no noise
                  k=int(k), tau=tau, kick=0.5 * tau if options.kick_weight is None else float(options.kick_weight),
                  max_displacement=0.025 * k if guards.max_displacement is None else guards.max_displacement,
                  relax=relax, n_fallback=fallback_step_count(k, dt, options.fallback_steps), options=options)


def kstep_integrator(jump: JumpFn, potential, numbers, masses, k: int, dt: float,
                     options: KStepOptions | None = None, **changes):
    """``init_fn, apply_fn`` of the hybrid integrator around any jump function.

    ``init_fn(positions, velocities, key=None) -> KStepState`` (one xTB call);
    ``apply_fn(state) -> KStepState`` advances one macro-step of k base steps of ``dt`` fs.
    ``numbers`` (N,) atomic numbers (0 = padding), ``masses`` (N,) amu. ``options``: a
    ``KStepOptions`` (default: its defaults); keyword ``changes`` are its fields
    (``guards=Guards(...)``, ``ensemble="nvt"``, ...) and replace those of ``options``.
    """
    options = KStepOptions.of(options, "kstep_integrator", **changes)
    if not is_integer(k, 1) or not (is_finite_number(dt) and dt > 0):
        raise InputError(f"k must be an integer ≥ 1 and dt > 0 fs, got k={k}, dt={dt}")
    setup = _setup(numbers, masses, k, dt, options)
    evaluate = evaluator(potential)
    return functools.partial(_init, setup, evaluate), functools.partial(_apply, setup, jump, evaluate)


def _init(setup: _Setup, evaluate, positions, velocities, key=None) -> KStepState:
    x = jnp.asarray(positions, jnp.float64)
    v = jnp.asarray(velocities, jnp.float64)
    e, f, ok = evaluate(x, jnp.ones((), bool))
    zero = jnp.zeros((), jnp.int32)
    return KStepState(x, v, f, e, force_calls=jnp.ones((), jnp.int32), step=zero, accepted=zero,
                      rejected=zero, fallbacks=zero, failed=~ok,
                      reference_energy=e + kinetic_energy(v, setup.masses), escalations=zero,
                      key=jax.random.PRNGKey(0) if key is None else jnp.asarray(key))


def _clash_free(setup: _Setup, x) -> jax.Array:
    """True if every atom pair is at least ``setup.min_dist`` apart."""
    n = x.shape[0]
    d = jnp.linalg.norm(x[:, None] - x[None, :] + jnp.eye(n)[..., None], axis=-1)
    return jnp.all(jnp.where(~jnp.eye(n, dtype=bool), d >= setup.min_dist, True))


def _attempt(setup: _Setup, evaluate, state: KStepState, prediction: Prediction, scale, active, learned):
    """Scaled jump + one xTB call (for active members) → ((x, v, F, E), good, called, escalate)."""
    options, guards = setup.options, setup.options.guards
    x0, v0 = state.positions, state.velocities
    x, u = prediction.scaled(scale)
    geometry_ok = (jnp.max(jnp.linalg.norm(x - x0, axis=-1)) <= setup.max_displacement) & _clash_free(setup, x)
    call = active & geometry_ok
    e, f, ok = evaluate(x, call)
    v = u + setup.kick * f * setup.inv_m
    if options.conserve_angular_momentum:   # (the zero network is Verlet at τ: left exactly as it is)
        target = angular_momentum(x0, v0, setup.real_masses)
        v = jnp.where(learned, with_angular_momentum(x, v, setup.real_masses, target), v)
    ke0, ke = kinetic_energy(v0, setup.masses), kinetic_energy(v, setup.masses)
    # the guards judge the jump itself, before any rescale (a rescale would hide its error)
    good = (call & ok & jnp.isfinite(e)
            & (e + ke - state.energy - ke0 <= guards.max_energy_rise)
            & (ke - ke0 <= guards.max_kinetic_rise))
    if guards.max_energy_drift is not None and options.ensemble == "nve":
        good = good & (jnp.abs(e + ke - state.reference_energy) <= guards.max_energy_drift)
    target = None   # kinetic energy after a rescale of the velocities (None: no rescale)
    if setup.relax is not None:
        target = ke + setup.relax * (state.reference_energy - e - ke)
    elif options.energy_window is not None:
        excess = e + ke - state.reference_energy
        target = ke - (excess - jnp.clip(excess, -options.energy_window, options.energy_window))
    if target is not None:
        good = good & (target > 0)
        v = v * jnp.sqrt(jnp.maximum(target, 0.0) / jnp.maximum(ke, 1e-30))
    escalate = jnp.zeros((), bool)
    if guards.max_force_error is not None:
        force_error = jnp.sqrt(jnp.mean(jnp.sum((f - prediction.forces) ** 2, axis=-1)))
        escalate = call & ok & (force_error > guards.max_force_error)
        good = good & ~escalate
    return (x, v, f, e), good, call, escalate


def _fallback(setup: _Setup, evaluate, state: KStepState, active):
    """n_fallback velocity-Verlet steps over k·dt for active members (inactive ones cost nothing)."""
    return verlet_span(evaluate, state.positions, state.velocities, state.forces, state.energy, setup.inv_m,
                       setup.tau, setup.n_fallback, active)


def _thermostat(setup: _Setup, state: KStepState) -> KStepState:
    """Exact Ornstein–Uhlenbeck velocity half-step over kΔt/2 (NVT only; no xTB call)."""
    if setup.options.ensemble != "nvt":
        return state
    key, sub = jax.random.split(state.key)
    v = setup.c1 * state.velocities + setup.sigma * jax.random.normal(sub, state.velocities.shape, jnp.float64)
    return state.replace(velocities=v, key=key)


def _predict(setup: _Setup, jump: JumpFn, state: KStepState) -> Prediction:
    """The jump from ``state`` beside its ballistic baseline, as pre-kick velocities."""
    x0, v0, a0 = state.positions, state.velocities, state.forces * setup.inv_m
    px, pv, pf = jump(x0, v0, state.forces)
    tau, w = setup.tau, setup.kick
    return Prediction(x0 + v0 * tau + 0.5 * a0 * tau**2, v0 + a0 * (tau - w), px, pv - w * pf * setup.inv_m, pf)


def _apply(setup: _Setup, jump: JumpFn, evaluate, state: KStepState) -> KStepState:
    """One macro-step: thermostat half-step, attempts (retries halve the correction), the
    fallback where none was accepted, thermostat half-step."""
    state = _thermostat(setup, state)
    prediction = _predict(setup, jump, state)
    learned = prediction.is_learned()
    max_attempts, delta_scale = setup.options.guards.max_attempts, setup.options.delta_scale

    def cond(c):
        n, done, *_ = c
        return (n < max_attempts) & ~done & ((n == 0) | learned)

    def body(c):
        n, done, accepted, escalated, calls, cand = c
        scale = delta_scale * 0.5 ** n.astype(jnp.float64)
        new, good, called, escalate = _attempt(setup, evaluate, state, prediction, scale, ~done, learned)
        cand = jax.tree.map(lambda a, b: jnp.where(good, a, b), new, cand)
        return (n + 1, done | good | escalate, accepted | good, escalated | escalate,
                calls + called.astype(jnp.int32), cand)

    start = (state.positions, state.velocities, state.forces, state.energy)
    no = jnp.zeros((), bool)
    zero = jnp.zeros((), jnp.int32)
    # a trajectory that failed for good stays frozen and makes no calls
    n, _, accepted, escalated, calls, (x, v, f, e) = jax.lax.while_loop(
        cond, body, (zero, state.failed, no, no, zero, start))
    need = ~accepted & ~state.failed
    fx, fv, ff, fe, fok = jax.lax.cond(need, functools.partial(_fallback, setup, evaluate),
                                       lambda s, a: (*start, jnp.ones((), bool)), state, need)
    pick = lambda a, b: jnp.where(need, a, b)  # noqa: E731
    new = state.replace(
        positions=pick(fx, x), velocities=pick(fv, v), forces=pick(ff, f), energy=pick(fe, e),
        force_calls=state.force_calls + calls + need.astype(jnp.int32) * setup.n_fallback,
        step=state.step + setup.k, accepted=state.accepted + accepted.astype(jnp.int32),
        rejected=state.rejected + n - accepted.astype(jnp.int32),
        fallbacks=state.fallbacks + need.astype(jnp.int32),
        escalations=state.escalations + escalated.astype(jnp.int32),
        failed=state.failed | (need & ~fok))
    return jax.tree.map(lambda a, b: jnp.where(state.failed, a, b), state, _thermostat(setup, new))


#: Default share of the round-trip error removed from a learned jump (``reversal_corrected``).
REVERSAL_CORRECTION = 0.5


def reversal_corrected(jump: JumpFn, alpha: float = REVERSAL_CORRECTION) -> JumpFn:
    """A jump corrected by its own time-reversal error, for one more network call (no xTB call).

    Exact dynamics are reversible: jumping back from (x', −v') returns to (x, −v). The network
    jumps back to (x_b, −v_b) instead; the corrected jump is x' − α(x_b − x), v' − α(−v_b − v).
    With α = ½ this removes, to first order, the part of the error that is even under time
    reversal (the same forwards and backwards: e.g. a regression-to-the-mean shrinkage of
    vibrations, which MSE training produces), and leaves the odd part alone. The back jump
    starts from the forward jump's own force estimate F̂'. Centre of mass and linear momentum
    are unchanged (both jumps conserve them). ``jump``: (x Å, v Å/fs, F eV/Å), each (N, 3), →
    (x', v', F̂'), the same shapes and units; so is the corrected jump. Its effect on fallbacks and
    temperature: docs/results.md, "What the hybrid integrator's defaults rest on".
    """
    if not (is_finite_number(alpha) and 0.0 <= alpha <= 1.0):
        raise InputError(f"the reversal correction must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if alpha == 0.0:
        return jump

    def corrected(x, v, f):
        px, pv, pf = jump(x, v, f)
        bx, bv, _ = jump(px, -pv, pf)
        return px - alpha * (bx - x), pv - alpha * (-bv - v), pf

    return corrected


def check_model(bundle, caller: str) -> None:
    """InputError unless ``bundle`` is a loaded model (``load_pretrained``); ``caller`` names the
    function in the message."""
    if not (hasattr(bundle, "apply") and hasattr(bundle, "check_elements")):
        raise InputError(f"{caller} needs a loaded model, e.g. jkstep.load_pretrained('gfn2-k8'); "
                         f"got {type(bundle).__name__} {bundle!r:.60}")


def model_jump(bundle, numbers, masses, reversal_correction: float = REVERSAL_CORRECTION) -> JumpFn:
    """The jump of a loaded model (``load_pretrained``) for one molecule, with the
    time-reversal correction ``reversal_correction`` (α of ``reversal_corrected``; 0 = off)."""
    bundle.check_elements(numbers)
    numbers = jnp.asarray(numbers)
    masses = jnp.asarray(masses, jnp.float64)

    def jump(x, v, f):
        return bundle.apply(None, numbers, None, masses, x, v, f)

    return reversal_corrected(jump, reversal_correction)


def kstep(bundle, potential, molecule, k: int | None = None, dt: float | None = None,
          options: KStepOptions | None = None, reversal_correction: float = REVERSAL_CORRECTION, **changes):
    """Hybrid integrator of ``molecule`` with a loaded model and a potential (jax-md style).

    ``init_fn, apply_fn = kstep(bundle, pot, mol)``; ``state = init_fn(positions, velocities)``;
    ``state = apply_fn(state)`` advances one macro-step of ``bundle.k`` base steps of
    ``bundle.dt`` fs. ``reversal_correction``: α of ``reversal_corrected`` (default 0.5; 0 turns
    it off). ``options`` (a ``KStepOptions``) and keyword ``changes`` (its fields: guards,
    kick_weight, energy_rescale, energy_relaxation, energy_window, fallback_steps,
    conserve_angular_momentum, ensemble, temperature, friction) as for ``kstep_integrator``.
    ``k`` and ``dt``, if given, must be the model's own: a model trained for one jump length
    cannot make another.
    """
    check_model(bundle, "kstep")
    options = KStepOptions.of(options, "kstep", **changes)
    if not isinstance(molecule, Molecule):
        raise InputError(f"kstep needs a jkstep.Molecule (e.g. Molecule.from_smiles('CCO')), "
                         f"got {type(molecule).__name__} {molecule!r:.60}")
    if (k is not None and k != bundle.k) or (dt is not None and abs(dt - bundle.dt) > 1e-12):
        raise InputError(f"the model jumps k = {bundle.k} steps of dt = {bundle.dt} fs; "
                         f"it cannot run k = {k}, dt = {dt}")
    jump = model_jump(bundle, molecule.numbers, molecule.masses, reversal_correction)
    return kstep_integrator(jump, potential, molecule.numbers, molecule.masses, bundle.k, bundle.dt, options)
