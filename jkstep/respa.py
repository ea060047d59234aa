"""The symplectic multiple-time-step hybrid (impulse RESPA): one slow (xTB) call per macro-step.

One macro-step of τ = k·dt from (x, v) with the slow forces F_s and the fast forces F_f at x:

1. half kick with the difference force: v ← v + (τ/2)·(F_s − F_f)/m;
2. k velocity-Verlet steps of dt on the fast force alone (one ``lax.fori_loop``);
3. one slow call at the new positions (the only xTB call of the macro-step);
4. closing half kick with the new difference force.

Each part is the exact flow of a Hamiltonian piece, so the map is symplectic and time-reversible
by construction (Tuckerman, Berne & Martyna 1992): the total energy of the slow potential
oscillates with no drift as long as τ stays clear of the resonances of the fastest vibrations
(an impulse scheme goes unstable near half of the shortest period, weaker near a third). With
fast ≡ 0 it is velocity Verlet at τ.

Faults: a fast force that is not finite anywhere in the inner loop, or a slow call that fails
(SCF), makes the macro-step fall back to plain velocity Verlet on the slow potential over the same
τ in steps of at most ``FALLBACK_DT`` = 0.5 fs (those calls are counted, the macro-step is counted
in ``fallbacks``); the fast force is then evaluated again at the end positions (no slow call).
With a mollifier the fallback integrates the modified potential, which contains the fast force:
it rescues an SCF failure, but a fast force that is not finite there ends the run (``failed``).

Mollified impulse (``mollifier=A``, equilibrium MOLLY; Izaguirre, Reich & Skeel, JCP 110, 9853
(1999)): the slow potential is evaluated at A(x) instead of x, U = U_f(x) + (U_s − U_f)(A(x)), so
one slow call per macro-step is made at A(x) and the kick is A'(x)ᵀ(F_s − F_f)(A(x)) (by
``jax.vjp``). With ``xh_mollifier`` A projects the X–H bonds onto fixed lengths, so the slow
kicks no longer drive the X–H stretches at the macro-step's rhythm: those follow the fast force
alone. The map is still symplectic and reversible, for that modified potential, and ``energy`` and
``forces`` are the modified potential's (what the scheme conserves). Measured (docs/results.md,
"Mollified impulse"): with gfn2-fast it removes the k = 16 resonance and conserves its energy to
0.08 kJ/mol at k = 8, but the X–H band then moves 14–22 cm⁻¹ with the fast force's stretches.

Three levels (``inner=U_i, fast_every=m``; Tuckerman, Berne & Martyna 1992): the fast force is itself
split, U_f = U_i + (U_f − U_i). The k inner steps of dt run on the cheap inner force (MMFF94), and
the rest of the fast force (a learned Δ-potential's network) is felt as half kicks around every m
inner steps, so the fast force costs k/m calls per macro-step instead of k. Still symplectic and
reversible; with m = 1 it is two-level RESPA to round-off. Only m·dt has to stay clear of the
resonances of the fast kicks, which are small (the network's correction to MMFF94).

NVT (``ensemble="nvt"``): Langevin, seeded from the state's key. ``thermostat="macro"`` puts an
exact Ornstein–Uhlenbeck velocity half-step over τ/2 before and after each macro-step (as
``jkstep.kstep`` does); ``thermostat="inner"`` makes the inner loop BAOAB on the fast force
(the O step every dt). "macro" is the default: the two held the temperature equally well within
the noise at k = 16 and both blew up at k = 32 (docs/results.md, "Over k, NVE and NVT").

Everything runs under ``jit``, inside ``lax.scan`` and under ``vmap`` over replicas: the slow
potential gets an ``active`` mask, so members that need no call make none, and every call is
counted in ``state.force_calls``. Units: Å, fs, eV, amu, K.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jkstep import units
from jkstep.errors import InputError, is_integer
from jkstep.integrate import (ENSEMBLES, _check, _check_setup, evaluator, fallback_step_count, inverse_mass,
                              velocity_verlet_step, verlet_span)
from jkstep.molecule import Molecule

#: Thermostat placements of ``ensemble="nvt"`` and the default (docs/results.md, "Over k, NVE and NVT").
THERMOSTATS = ("macro", "inner")
DEFAULT_THERMOSTAT = "macro"


@struct.dataclass
class RespaState:
    """State of the RESPA integrator (leading batch axes under ``vmap``).

    positions (N, 3) Å, velocities (N, 3) Å/fs; forces (N, 3) eV/Å and energy (eV): the slow
    potential's at ``positions`` (with a mollifier, the modified potential's); fast_forces,
    fast_energy: the fast potential's there; inner_forces: the inner force's there (the fast
    force's when there is no inner force); force_calls: slow calls made (init included);
    step: base steps taken (k per macro-step); fallbacks: macro-steps made by the Verlet
    fallback; failed: a slow call failed for good (the state then stays frozen and makes no
    calls); key: PRNG key (``ensemble="nvt"``).
    """

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    energy: jax.Array
    fast_forces: jax.Array
    fast_energy: jax.Array
    inner_forces: jax.Array
    force_calls: jax.Array
    step: jax.Array
    fallbacks: jax.Array
    failed: jax.Array
    key: jax.Array


def _finite(*arrays):
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in arrays]))


def _check_fast(fast_evaluate, positions, n_atoms: int, name: str = "fast") -> None:
    """InputError unless the fast (or inner) force gives (N, 3) forces for the integrator's N atoms."""
    try:
        out = jax.eval_shape(lambda x: fast_evaluate(x, jnp.ones((), bool)), positions)
    except InputError as exc:
        raise InputError(f"the {name} force does not fit the {n_atoms} atoms given to respa: {exc}") from None
    shape = tuple(out[1].shape)
    if shape != (n_atoms, 3):
        raise InputError(f"the {name} force returns forces of shape {shape} for the {n_atoms} atoms given to respa: "
                         f"it was built for another molecule (build it from the same Molecule as the slow one)")


def xh_mollifier(molecule: Molecule, sweeps: int = 4):
    """A(x) of equilibrium MOLLY on the X–H bonds: positions (N, 3) Å → positions (N, 3) Å with
    every H set back to its bond length in ``molecule.positions`` from its nearest heavy atom
    (``Molecule.hydrogen_partners``), by ``sweeps`` Jacobi sweeps of SHAKE's mass-weighted bond
    correction (each keeps the pair's centre of mass; 4 sweeps leave ~1e-5 Å of a 0.03 Å
    stretch). A moves the atoms of a pure X–H stretch back to the same point, so a potential of
    A(x) does not depend on the stretches. Smooth, translation- and rotation-equivariant, pure JAX."""
    if not isinstance(molecule, Molecule):
        raise InputError(f"xh_mollifier needs a jkstep.Molecule, got {type(molecule).__name__}")
    if isinstance(sweeps, bool) or not is_integer(sweeps, 1):
        raise InputError(f"sweeps must be an integer ≥ 1, got {sweeps!r}")
    h, x_of_h = molecule.hydrogen_partners()
    lengths = jnp.asarray(np.linalg.norm(molecule.positions[h] - molecule.positions[x_of_h], axis=-1))[:, None]
    m_h, m_x = molecule.masses[h], molecule.masses[x_of_h]
    w_h, w_x = (jnp.asarray(w / (m_h + m_x))[:, None] for w in (m_x, m_h))

    def mollify(x):
        for _ in range(int(sweeps)):
            d = x[h] - x[x_of_h]
            excess = (1.0 - lengths / jnp.linalg.norm(d, axis=-1, keepdims=True)) * d  # (r − r0)·u
            x = x.at[h].add(-w_h * excess).at[x_of_h].add(w_x * excess)
        return x

    return mollify


def _mollified(slow_eval, fast_eval, mollifier):
    """(x, active, fast_at_x=None) -> (U_f(x) + (U_s − U_f)(A(x)), its forces, ok): one slow call,
    at A(x). ``fast_at_x``: the fast force's (energy, forces, ok) at x where the caller has them
    (the inner loop ends there), else they are computed."""

    def evaluate(x, active, fast_at_x=None):
        a, pullback = jax.vjp(mollifier, x)
        e_s, f_s, ok_s = slow_eval(a, active)
        e_fa, f_fa, ok_fa = fast_eval(a, active)
        e_f, f_f, ok_f = fast_eval(x, active) if fast_at_x is None else fast_at_x
        (kick,) = pullback(f_s - f_fa)
        return e_f + e_s - e_fa, f_f + kick, ok_s & ok_fa & ok_f

    return evaluate


def check_fast_every(fast_every) -> int:
    """``fast_every`` as an int, or one InputError: inner steps per fast kick, an integer ≥ 1."""
    if isinstance(fast_every, bool) or not is_integer(fast_every, 1):
        raise InputError(f"fast_every must be an integer ≥ 1 (inner steps per fast kick), got {fast_every!r}")
    return int(fast_every)


def respa(fast, slow, masses, k: int = 8, dt: float = 0.25, ensemble: str = "nve", temperature: float = 300.0,
          friction: float = 0.01, thermostat: str = DEFAULT_THERMOSTAT, fallback_steps: int | None = None,
          mollifier=None, inner=None, fast_every: int = 1):
    """``init_fn, apply_fn`` of impulse RESPA (jax-md style).

    Args:
        fast: the fast force, (energy eV, forces eV/Å) of positions (N, 3) Å, or a JAX energy
            function (forces by ``jax.grad``): ``jkstep.mmff_potential(mol)`` or
            ``jkstep.learned_potential(name, mol)``. It is called k times per macro-step.
        slow: the slow potential, normally ``jkstep.xtb_potential(mol)``: called once per
            macro-step.
        masses: (N,) amu.
        k: inner steps per macro-step (integer ≥ 1); dt: the inner step in fs (> 0); the
            macro-step is τ = k·dt.
        ensemble: "nve" (default) or "nvt" (Langevin at ``temperature`` K with ``friction``
            γ in 1/fs, placed by ``thermostat``: "macro" or "inner", see the module doc).
        fallback_steps: Verlet steps of a fault fallback over τ (None: steps ≤ 0.5 fs).
        mollifier: None (impulse RESPA) or A: positions (N, 3) → (N, 3), pure JAX, e.g.
            ``xh_mollifier(mol)``: the slow potential is then felt at A(x) (module doc).
        inner: None, or a cheaper force inside the fast one (same forms as ``fast``), e.g.
            ``jkstep.mmff_potential(mol)`` under a learned Δ-potential on MMFF94: the k inner
            steps of dt then run on ``inner`` alone, and ``fast − inner`` is felt as half kicks
            every ``fast_every``·dt (three-level RESPA, module doc), so ``fast`` is called
            k / fast_every times per macro-step. fast_every: integer ≥ 1 dividing k (> 1 needs
            ``inner``); with fast_every = 1 the result is that of ``inner=None`` to round-off.

    ``init_fn(positions, velocities, key=None) -> RespaState`` makes one slow call;
    ``apply_fn(state) -> RespaState`` advances one macro-step (one slow call).
    """
    if isinstance(k, bool) or not is_integer(k, 1):
        raise InputError(f"k must be an integer ≥ 1 (inner steps per macro-step), got {k!r}")
    k = int(k)
    _check("dt (fs)", dt, 0.0, allow_equal=False)
    if ensemble not in ENSEMBLES:
        raise InputError(f"ensemble must be 'nve' or 'nvt', got {ensemble!r}")
    if thermostat not in THERMOSTATS:
        raise InputError(f"thermostat must be one of {', '.join(THERMOSTATS)}, got {thermostat!r}")
    _check("temperature (K)", temperature, 0.0, allow_equal=True)
    _check("friction (1/fs)", friction, 0.0, allow_equal=True)
    for name, fn in (("fast", fast), ("slow", slow)):
        if not callable(fn):
            raise InputError(f"the {name} force must be a function of positions returning (energy, forces), "
                             f"e.g. jkstep.mmff_potential(mol) or jkstep.xtb_potential(mol); got {fn!r:.60}")
    if inner is not None and not callable(inner):
        raise InputError(f"the inner force must be a function of positions returning (energy, forces), "
                         f"e.g. jkstep.mmff_potential(mol); got {inner!r:.60}")
    fast_every = check_fast_every(fast_every)
    if fast_every > 1 and inner is None:
        raise InputError(f"fast_every = {fast_every} needs an inner force to integrate between the fast kicks "
                         f"(inner=jkstep.mmff_potential(mol) under a learned Δ fast force)")
    if k % fast_every:
        raise InputError(f"fast_every = {fast_every} must divide k = {k} (the fast kicks fill the macro-step)")
    _check_setup(slow, masses)
    n_fallback = fallback_step_count(k, dt, fallback_steps)
    if mollifier is not None and not callable(mollifier):
        raise InputError(f"mollifier must be a function of positions (N, 3) returning positions, "
                         f"e.g. jkstep.respa.xh_mollifier(mol); got {mollifier!r:.60}")
    fast_eval, slow_eval = evaluator(fast), evaluator(slow)
    inner_eval = None if inner is None else evaluator(inner)
    if mollifier is not None:
        slow_eval = _mollified(slow_eval, fast_eval, mollifier)
    masses = jnp.asarray(masses, jnp.float64)
    n_atoms = masses.shape[0]
    inv_m = inverse_mass(masses)
    tau = k * dt
    nvt = ensemble == "nvt"
    # Ornstein–Uhlenbeck step: over τ/2 around the macro-step, or over dt inside the inner loop
    h_ou = dt if thermostat == "inner" else 0.5 * tau
    c1 = jnp.exp(-friction * h_ou)
    sigma = jnp.sqrt((1.0 - c1**2) * units.KB * temperature * units.ACCEL / masses)[:, None]

    def ou(v, key):
        return c1 * v + sigma * jax.random.normal(key, v.shape, jnp.float64)

    def init_fn(positions, velocities, key=None) -> RespaState:
        x = jnp.asarray(positions, jnp.float64)
        v = jnp.asarray(velocities, jnp.float64)
        for name, a in (("positions", x), ("velocities", v)):
            if a.shape != (n_atoms, 3):
                raise InputError(f"{name} must have shape ({n_atoms}, 3) for the {n_atoms} masses given to respa, "
                                 f"got {a.shape} (use init_fn under jax.vmap for a batch)")
            if not isinstance(a, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(a))):
                raise InputError(f"{name} contain NaN or infinite values")
        _check_fast(fast_eval, x, n_atoms)
        one = jnp.ones((), bool)
        e, f, ok = slow_eval(x, one)
        fe, ff, fok = fast_eval(x, one)
        fi = ff
        if inner_eval is not None:
            _check_fast(inner_eval, x, n_atoms, "inner")
            _, fi, _ = inner_eval(x, one)
        zero = jnp.zeros((), jnp.int32)
        return RespaState(x, v, f, e, ff, fe, fi, force_calls=jnp.ones((), jnp.int32), step=zero, fallbacks=zero,
                          failed=~(ok & _finite(e, f)),
                          key=jax.random.PRNGKey(0) if key is None else jnp.asarray(key))

    def verlet_steps(force_eval, n, x, v, f, key, active):
        """n steps of dt on one force (BAOAB with ``thermostat="inner"`` in NVT): (x, v, f, e, ok, key)."""

        def verlet(_, c):
            x, v, f, e, ok, key = c
            x, v, f, e, ok_step = velocity_verlet_step(force_eval, x, v, f, inv_m, dt, active)
            return x, v, f, e, ok & ok_step & _finite(e, f), key

        def baoab(_, c):
            x, v, f, e, ok, key = c
            key, sub = jax.random.split(key)
            v = v + 0.5 * dt * f * inv_m
            x = x + 0.5 * dt * v
            v = ou(v, sub)
            x = x + 0.5 * dt * v
            e, f, ok_step = force_eval(x, active)
            return x, v + 0.5 * dt * f * inv_m, f, e, ok & ok_step & _finite(e, f), key

        body = baoab if nvt and thermostat == "inner" else verlet
        zero = jnp.zeros((), jnp.float64)
        return jax.lax.fori_loop(0, n, body, (x, v, f, zero, jnp.ones((), bool), key))

    def inner_loop(x, v, ff, fe, fi, key, active):
        """The k inner steps of a macro-step: (x, v, fast forces, fast energy, inner forces, ok, key)."""
        if inner_eval is None:
            x, v, ff, fe, ok, key = verlet_steps(fast_eval, k, x, v, ff, key, active)
            return x, v, ff, fe, ff, ok, key
        h = fast_every * dt

        def block(_, c):   # half kick of fast − inner, fast_every steps on inner, fast call, half kick
            x, v, ff, fe, fi, ok, key = c
            v = v + 0.5 * h * (ff - fi) * inv_m
            x, v, fi, _, ok_i, key = verlet_steps(inner_eval, fast_every, x, v, fi, key, active)
            fe, ff, ok_f = fast_eval(x, active)
            v = v + 0.5 * h * (ff - fi) * inv_m
            return x, v, ff, fe, fi, ok & ok_i & ok_f & _finite(fe, ff), key

        return jax.lax.fori_loop(0, k // fast_every, block, (x, v, ff, fe, fi, jnp.ones((), bool), key))

    def macro_ou(state: RespaState) -> RespaState:
        if not (nvt and thermostat == "macro"):
            return state
        key, sub = jax.random.split(state.key)
        return state.replace(velocities=ou(state.velocities, sub), key=key)

    def fallback(state: RespaState, need):
        """Plain Verlet on the slow potential over τ, then the fast (and inner) force at the end positions."""
        x, v, f, e, ok = verlet_span(slow_eval, state.positions, state.velocities, state.forces, state.energy,
                                     inv_m, tau, n_fallback, need)
        fe, ff, _ = fast_eval(x, need)
        fi = ff if inner_eval is None else inner_eval(x, need)[1]
        return x, v, f, e, ff, fe, fi, ok & _finite(e, f)

    def apply_fn(state: RespaState) -> RespaState:
        state = macro_ou(state)
        active = ~state.failed
        half = 0.5 * tau
        v = state.velocities + half * (state.forces - state.fast_forces) * inv_m
        x, v, ff, fe, fi, fast_ok, key = inner_loop(state.positions, v, state.fast_forces, state.fast_energy,
                                                    state.inner_forces, state.key, active)
        call = active & fast_ok
        e, f, ok = slow_eval(x, call) if mollifier is None else slow_eval(x, call, (fe, ff, fast_ok))
        v = v + half * (f - ff) * inv_m
        need = active & ~(call & ok & _finite(e, f))
        candidate = (x, v, f, e, ff, fe, fi, jnp.ones((), bool))
        fx, fv, fs, fe_s, fff, ffe, ffi, fok = jax.lax.cond(need, fallback, lambda s, n: candidate, state, need)
        new = state.replace(positions=fx, velocities=fv, forces=fs, energy=fe_s, fast_forces=fff, fast_energy=ffe,
                            inner_forces=ffi, force_calls=state.force_calls + call.astype(jnp.int32)
                            + need.astype(jnp.int32) * n_fallback,
                            step=state.step + k, fallbacks=state.fallbacks + need.astype(jnp.int32),
                            failed=state.failed | (need & ~fok), key=key)
        new = macro_ou(new)
        return jax.tree.map(lambda a, b: jnp.where(state.failed, a, b), state, new)

    return init_fn, apply_fn
