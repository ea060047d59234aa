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
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
from ase.data import covalent_radii
from flax import struct

from jkstep import units
from jkstep.errors import InputError, is_finite_number
from jkstep.integrate import (FALLBACK_DT, angular_momentum, evaluator, fallback_step_count, inverse_mass,  # noqa: F401
                              kinetic_energy, verlet_span)
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


def kstep_integrator(jump: JumpFn, potential, numbers, masses, k: int, dt: float,
                     guards: Guards = Guards(), delta_scale: float = 1.0, kick_weight: float | None = None,
                     energy_rescale: bool = False, energy_relaxation: float | None = None,
                     energy_window: float | None = None,
                     conserve_angular_momentum: bool = True, fallback_steps: int | None = None,
                     ensemble: str = "nve", temperature: float = 300.0, friction: float = 0.01):
    """``init_fn, apply_fn`` of the hybrid integrator around any jump function.

    ``init_fn(positions, velocities, key=None) -> KStepState`` (one xTB call);
    ``apply_fn(state) -> KStepState`` advances one macro-step of k base steps.
    ``dt`` in fs; ``delta_scale``: scale of the learned correction on the first attempt (halved
    on each retry); ``kick_weight`` w in fs (default k·dt/2); ``temperature`` K and
    ``friction`` 1/fs are used with ``ensemble="nvt"``. ``energy_relaxation`` τ_E in fs (NVE
    only; None = off): after each accepted jump the velocities are scaled so that the total
    energy moves min(1, kΔt/τ_E) of the way back to its value at init (``energy_rescale`` is
    the τ_E ≤ kΔt case). ``energy_window`` W in eV (NVE only; None = off): after an accepted
    jump that leaves the total energy more than W from its value at init, the velocities are
    scaled to bring it back to the window's edge (inside the window nothing is touched; use it
    with ``Guards(max_energy_drift=None)``, which would reject those jumps instead).
    ``fallback_steps`` n: a macro-step whose attempts all fail is made of n velocity-Verlet
    steps of k·dt/n fs (n xTB calls; None: ``fallback_step_count``, steps of at most
    ``FALLBACK_DT`` = 0.5 fs).
    ``conserve_angular_momentum``: the
    velocity after each learned jump and its corrector kick gets the angular momentum it had
    before the jump, by the smallest rigid-rotation change (``with_angular_momentum``); the zero
    network's jump is left alone, so it stays exactly Verlet at τ. The network
    conserves linear momentum by construction but not angular momentum; uncorrected, a model
    spins a molecule up over hundreds of jumps, which reads as heating (docs/results.md). Exact
    dynamics conserve it (the xTB forces exert no net torque), and plain Verlet does to round-off.
    """
    if ensemble not in ("nve", "nvt"):
        raise InputError(f"ensemble must be 'nve' or 'nvt', got {ensemble!r}")
    if int(k) != k or k < 1 or not dt > 0:
        raise InputError(f"k must be an integer ≥ 1 and dt > 0 fs, got k={k}, dt={dt}")
    if not 0 < delta_scale <= 1:
        raise InputError(f"delta_scale must be in (0, 1], got {delta_scale}")
    if not isinstance(guards, Guards):
        raise InputError(f"guards must be a jkstep.kstep.Guards, got {type(guards).__name__}")
    n_fallback = fallback_step_count(k, dt, fallback_steps)
    if energy_relaxation is not None and not energy_relaxation > 0:
        raise InputError(f"energy_relaxation is a time constant in fs and must be > 0, got {energy_relaxation}")
    if energy_relaxation is not None and energy_rescale:
        raise InputError("energy_rescale is the full rescale and energy_relaxation its weak form: give one of them")
    if energy_window is not None and not (is_finite_number(energy_window) and energy_window > 0):
        raise InputError(f"energy_window is a total-energy distance in eV and must be > 0, got {energy_window!r}")
    if energy_window is not None and (energy_rescale or energy_relaxation is not None or ensemble != "nve"):
        raise InputError("energy_window bounds the NVE total energy by a rescale at its edges: not with "
                         "energy_rescale, energy_relaxation or NVT")
    if energy_relaxation is not None and ensemble != "nve":
        raise InputError("energy_relaxation pulls the total energy back to its start: NVE only "
                         "(in NVT the thermostat sets the energy); leave it out")
    evaluate = evaluator(potential)
    masses = jnp.asarray(masses, jnp.float64)
    inv_m = units.ACCEL / masses[:, None]
    tau = k * dt
    # share of the total energy's excursion taken back after an accepted jump (None: none)
    relax = 1.0 if energy_rescale else (None if energy_relaxation is None else min(1.0, tau / energy_relaxation))
    max_displacement = 0.025 * k if guards.max_displacement is None else guards.max_displacement
    w = 0.5 * tau if kick_weight is None else float(kick_weight)
    numbers = jnp.asarray(numbers)                 # may be traced (padded batches: 0 = padding)
    radii = jnp.where(numbers > 0, jnp.asarray(covalent_radii)[numbers], 0.0)   # padding clashes with nothing
    min_dist = guards.clash_ratio * (radii[:, None] + radii[None, :])
    off_diag = ~jnp.eye(len(radii), dtype=bool)
    c1 = jnp.exp(-friction * 0.5 * k * dt)  # O half-step over kΔt/2
    sigma = jnp.sqrt((1.0 - c1**2) * units.KB * temperature * units.ACCEL / masses)[:, None]
    sigma = sigma * (numbers > 0)[:, None]          # padding atoms get no thermostat noise
    real_masses = jnp.where(numbers > 0, masses, 0.0)

    def init_fn(positions, velocities, key=None) -> KStepState:
        x = jnp.asarray(positions, jnp.float64)
        v = jnp.asarray(velocities, jnp.float64)
        e, f, ok = evaluate(x, jnp.ones((), bool))
        zero = jnp.zeros((), jnp.int32)
        return KStepState(x, v, f, e, force_calls=jnp.ones((), jnp.int32), step=zero, accepted=zero,
                          rejected=zero, fallbacks=zero, failed=~ok,
                          reference_energy=e + kinetic_energy(v, masses), escalations=zero,
                          key=jax.random.PRNGKey(0) if key is None else jnp.asarray(key))

    def clash_free(x):
        d = jnp.linalg.norm(x[:, None] - x[None, :] + jnp.eye(len(radii))[..., None], axis=-1)
        return jnp.all(jnp.where(off_diag, d >= min_dist, True))

    def attempt(state: KStepState, prediction, scale, active, learned):
        """Scaled jump + one xTB call (for active members) → candidate and its verdict."""
        x0, v0 = state.positions, state.velocities
        bx, bu, px, pu, pf = prediction
        x = bx + scale * (px - bx)
        u = bu + scale * (pu - bu)
        geometry_ok = (jnp.max(jnp.linalg.norm(x - x0, axis=-1)) <= max_displacement) & clash_free(x)
        call = active & geometry_ok
        e, f, ok = evaluate(x, call)
        v = u + w * f * inv_m
        if conserve_angular_momentum:   # (the zero network is Verlet at τ: left exactly as it is)
            v = jnp.where(learned, with_angular_momentum(x, v, real_masses, angular_momentum(x0, v0, real_masses)), v)
        ke0, ke = kinetic_energy(v0, masses), kinetic_energy(v, masses)
        # the guards judge the jump itself, before any rescale (a rescale would hide its error)
        good = (call & ok & jnp.isfinite(e)
                & (e + ke - state.energy - ke0 <= guards.max_energy_rise)
                & (ke - ke0 <= guards.max_kinetic_rise))
        if guards.max_energy_drift is not None and ensemble == "nve":
            good = good & (jnp.abs(e + ke - state.reference_energy) <= guards.max_energy_drift)
        target = None   # kinetic energy after a rescale of the velocities (None: no rescale)
        if relax is not None:
            target = ke + relax * (state.reference_energy - e - ke)
        elif energy_window is not None:
            excess = e + ke - state.reference_energy
            target = ke - (excess - jnp.clip(excess, -energy_window, energy_window))
        if target is not None:
            good = good & (target > 0)
            v = v * jnp.sqrt(jnp.maximum(target, 0.0) / jnp.maximum(ke, 1e-30))
        escalate = jnp.zeros((), bool)
        if guards.max_force_error is not None:
            force_error = jnp.sqrt(jnp.mean(jnp.sum((f - pf) ** 2, axis=-1)))
            escalate = call & ok & (force_error > guards.max_force_error)
            good = good & ~escalate
        return (x, v, f, e), good, call, escalate

    def fallback(state: KStepState, active):
        """n_fallback velocity-Verlet steps over k·dt for active members (inactive ones cost nothing)."""
        return verlet_span(evaluate, state.positions, state.velocities, state.forces, state.energy, inv_m,
                           tau, n_fallback, active)

    def thermostat(state: KStepState) -> KStepState:
        """Exact Ornstein–Uhlenbeck velocity half-step over kΔt/2 (NVT only; no xTB call)."""
        if ensemble != "nvt":
            return state
        key, sub = jax.random.split(state.key)
        v = c1 * state.velocities + sigma * jax.random.normal(sub, state.velocities.shape, jnp.float64)
        return state.replace(velocities=v, key=key)

    def apply_fn(state: KStepState) -> KStepState:
        state = thermostat(state)
        x0, v0, a0 = state.positions, state.velocities, state.forces * inv_m
        px, pv, pf = jump(x0, v0, state.forces)
        prediction = (x0 + v0 * tau + 0.5 * a0 * tau**2, v0 + a0 * (tau - w), px, pv - w * pf * inv_m, pf)

        # halving a correction that is zero (the zero network) gives the same jump again: no retry
        # (beyond round-off: the zero network's u' = v + aτ − w·a differs from v + a(τ − w) in the last bit)
        learned = (jnp.any(jnp.abs(prediction[2] - prediction[0]) > 1e-12)
                   | jnp.any(jnp.abs(prediction[3] - prediction[1]) > 1e-14))

        def cond(c):
            n, done, *_ = c
            return (n < guards.max_attempts) & ~done & ((n == 0) | learned)

        def body(c):
            n, done, accepted, escalated, calls, cand = c
            scale = delta_scale * 0.5 ** n.astype(jnp.float64)
            new, good, called, escalate = attempt(state, prediction, scale, ~done, learned)
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
        fx, fv, ff, fe, fok = jax.lax.cond(need, fallback, lambda s, a: (*start, jnp.ones((), bool)),
                                           state, need)
        pick = lambda a, b: jnp.where(need, a, b)  # noqa: E731
        new = state.replace(
            positions=pick(fx, x), velocities=pick(fv, v), forces=pick(ff, f), energy=pick(fe, e),
            force_calls=state.force_calls + calls + need.astype(jnp.int32) * n_fallback,
            step=state.step + k, accepted=state.accepted + accepted.astype(jnp.int32),
            rejected=state.rejected + n - accepted.astype(jnp.int32),
            fallbacks=state.fallbacks + need.astype(jnp.int32),
            escalations=state.escalations + escalated.astype(jnp.int32),
            failed=state.failed | (need & ~fok))
        return jax.tree.map(lambda a, b: jnp.where(state.failed, a, b), state, thermostat(new))

    return init_fn, apply_fn


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
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"the reversal correction must be in [0, 1], got {alpha}")
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


def check_options(options: dict, caller: str, extra: tuple[str, ...] = ()) -> None:
    """InputError for keyword options that ``kstep_integrator`` (or ``extra``) does not take."""
    known = {name for name, p in inspect.signature(kstep_integrator).parameters.items()
             if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(options) - known - set(extra))
    if unknown:
        raise InputError(f"unknown option(s) {unknown}: {caller} takes {', '.join(extra) + ' and ' if extra else ''}"
                         f"the options of jkstep.kstep.kstep_integrator ({', '.join(sorted(known))})")


def model_jump(bundle, numbers, masses, reversal_correction: float = REVERSAL_CORRECTION) -> JumpFn:
    """The jump of a loaded model (``load_pretrained``) for one molecule, with the
    time-reversal correction ``reversal_correction`` (α of ``reversal_corrected``; 0 = off)."""
    bundle.check_elements(numbers)
    numbers = jnp.asarray(numbers)
    masses = jnp.asarray(masses, jnp.float64)

    def jump(x, v, f):
        return bundle.apply(None, numbers, None, masses, x, v, f)

    return reversal_corrected(jump, reversal_correction)


def kstep(bundle, potential, molecule, k: int | None = None, dt: float | None = None, **options):
    """Hybrid integrator of ``molecule`` with a loaded model and a potential (jax-md style).

    ``init_fn, apply_fn = kstep(bundle, pot, mol)``; ``state = init_fn(positions, velocities)``;
    ``state = apply_fn(state)`` advances one macro-step of ``bundle.k`` base steps of
    ``bundle.dt`` fs. ``options``: ``reversal_correction`` (α, default 0.5, see
    ``reversal_corrected``; 0 turns it off) and those of ``kstep_integrator`` (guards,
    kick_weight, energy_rescale, energy_relaxation, energy_window, fallback_steps, conserve_angular_momentum,
    ensemble, temperature, friction). ``k`` and ``dt``, if given, must be the
    model's own: a model trained for one jump length cannot make another.
    """
    check_model(bundle, "kstep")
    check_options(options, "kstep", extra=("reversal_correction",))
    if not isinstance(molecule, Molecule):
        raise InputError(f"kstep needs a jkstep.Molecule (e.g. Molecule.from_smiles('CCO')), "
                         f"got {type(molecule).__name__} {molecule!r:.60}")
    if (k is not None and k != bundle.k) or (dt is not None and abs(dt - bundle.dt) > 1e-12):
        raise InputError(f"the model jumps k = {bundle.k} steps of dt = {bundle.dt} fs; "
                         f"it cannot run k = {k}, dt = {dt}")
    jump = model_jump(bundle, molecule.numbers, molecule.masses,
                      options.pop("reversal_correction", REVERSAL_CORRECTION))
    return kstep_integrator(jump, potential, molecule.numbers, molecule.masses, bundle.k, bundle.dt, **options)
