"""Every contender from the same starting states, in one run: what ``jkstep evaluate`` does.

1. Thermalise the molecule (Langevin BAOAB at ``temperature``), then make ``n_replicas`` start
   states on the same energy shell: the thermalised positions with new velocity directions at
   the same kinetic energy (``jkstep.data.replicas.same_energy_velocities``).
2. Run every contender NVE from those states, the replicas batched under ``vmap``:
   ``reference`` (Verlet at dt = 0.25 fs), ``verlet_kdt`` (Verlet at k·dt: the xTB calls of
   a hybrid that never rejects a jump), ``corrector_only`` (the hybrid with the zero network: ballistic
   jump + corrector; with jkstep's Verlet-consistent final kick it is Verlet at k·dt by
   construction, so it checks the plumbing), ``kstep`` (the model), ``mmff_respa`` (``jkstep.respa``
   with MMFF94 as the fast force, one xTB call per k·dt) and ``respa`` (the same with a learned
   fast force, ``EvalConfig.fast``; with ``EvalConfig.adapt`` also ``respa_adapted``, that force
   fine-tuned on the thermalisation's own xTB frames, ``jkstep.model.adapt``). Frames of all of
   them are k·dt apart, so spectra and distributions see the same sampling. Because rejected
   jumps and fallbacks make the model dearer than Verlet at k·dt, ``verlet_equal_cost`` then
   runs Verlet at the time step that makes as many xTB calls as ``kstep`` actually made
   (frames every step; its ``dt_fs`` is recorded): the equal-cost baseline in fact, not only
   in name.
3. Distribution and spectrum metrics compare a contender on the first half of the replicas
   against the reference on the second half; the noise floor is the reference's first half
   against its second half: the same statistics, so a contender at the floor is as good as a
   second reference run.
4. ``evaluate_ks`` does the same for several k at once (the k sweep): one thermalisation and one
   reference run per molecule, read at every k's frame spacing; ``evaluate`` is its one-k case.

Units: Å, fs, eV, K; drift kJ/mol/ps, fluctuation kJ/mol, wavenumbers cm⁻¹. A metric that
cannot be measured is None (JSON null).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import types
import uuid
from collections.abc import MutableMapping
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jkstep import analysis, integrate
from jkstep.data.replicas import same_energy_velocities
from jkstep.errors import (MAX_STEPS, MAX_TEMPERATURE_K, InputError, SimulationError, is_finite_number,
                           is_integer, is_interrupt)
from jkstep.evaluate import metrics
from jkstep.integrate import equal_cost_dt
from jkstep.kstep import (REVERSAL_CORRECTION, Guards, KStepOptions, ballistic_jump, fallback_step_count,
                          kstep_integrator, model_jump)
from jkstep.md import three_levels
from jkstep.model.adapt import AdaptConfig, adapt_potential, check_adapt
from jkstep.molecule import Molecule, check_seed
from jkstep.potentials.mmff import mmff_potential
from jkstep.respa import check_fast_every, respa, xh_mollifier
from jkstep.rollout import Frames, concat, frames_of, run_steps, runner

CONTENDERS = ("reference", "verlet_kdt", "corrector_only", "kstep", "mmff_respa", "respa")
VARIANTS = ("verlet_equal_cost", "kstep_rescaled", "kstep_relaxed", "kstep_windowed",   # reported beside kstep
            "respa_adapted")                                                            # and beside respa
THERMALISE_DT_FS = 0.5   # the Langevin thermalisation's time step, fs
DISTRIBUTION_KEYS = ("bond_js", "angle_js", "dihedral_js", "spectrum_overlap", "xh_band_shift_cm1")
RESULT_KEYS = ("xtb_calls", "blew_up", "drift_kj_mol_ps", "energy_std_kj_mol", "mean_temperature_k",
               *DISTRIBUTION_KEYS, "flip_rate_ratio", "wall_s")


@dataclasses.dataclass
class EvalConfig:
    """Settings of an evaluation. Times in fs / ps, temperature K, friction 1/fs.

    ``energy_rescale`` adds a fifth contender, ``kstep_rescaled``: the model with the FlashMD-style
    velocity rescale to the run's initial total energy after every accepted jump. Its energy
    drift and fluctuation are zero by construction for accepted jumps, so only its temperature,
    distributions, spectrum and flip rates say anything; it is reported beside ``kstep``, never
    instead of it. ``energy_relaxation`` (τ_E in fs, None = off) adds ``kstep_relaxed``: the model
    with the weak-coupling form of that rescale (``kstep_integrator(energy_relaxation=...)``), also
    reported beside ``kstep``; its drift is held down in part by construction. Its total-energy
    excursion guard is ``relaxed_max_energy_drift`` eV (default None: off, the coupling bounds
    the energy's walk instead, and the cost stays that of Verlet at k·dt).
    ``energy_window`` (W in eV, None = off) adds ``kstep_windowed``: the model with its excursion
    guard off and the total energy held within W of its start by a velocity rescale at the
    window's edges (``kstep_integrator(energy_window=...)``); its energy fluctuation is bounded
    by construction.
    ``reversal_correction``: α of the model's time-reversal correction
    (``jkstep.kstep.reversal_corrected``), as ``jkstep run`` uses it by default.
    ``fallback_steps``: Verlet steps per fallback macro-step of every hybrid contender
    (``kstep_integrator(fallback_steps=...)``; None: steps of at most 0.5 fs,
    ``jkstep.kstep.fallback_step_count``). ``equal_cost`` (with a model): also run
    ``verlet_equal_cost``, Verlet at the time step that makes as many xTB calls per replica as
    ``kstep`` made (``equal_cost_dt``). ``mmff_respa`` (default on): run ``jkstep.respa`` with
    MMFF94 as the fast force at k and dt (null with a ``reason`` where MMFF94 cannot type the
    molecule). ``fast``: a learned fast force (shipped name or checkpoint path,
    ``jkstep.learned_potential``) for the ``respa`` contender (None: not run); ``fast_every``: that
    contender in three levels (MMFF94 every inner step, the rest of the fast force as kicks every
    ``fast_every`` inner steps; 1: two levels); ``mollify``: that
    contender mollified on the X–H bonds (``jkstep.respa.xh_mollifier``; its energy figures are then
    the modified energy's, which the summary's ``mollified`` says; ``mmff_respa`` stays impulse);
    ``adapt``: also run ``respa_adapted``, that force fine-tuned (``adapt_steps`` optimiser steps) on
    the thermalisation's frames."""

    k: int = 8
    dt: float = 0.25
    ps: float = 5.0
    n_replicas: int = 4
    temperature: float = 300.0
    equilibrate_ps: float = 1.0
    friction: float = 0.01
    seed: int = 0
    chunk_frames: int = 250
    energy_rescale: bool = False
    energy_relaxation: float | None = None
    relaxed_max_energy_drift: float | None = None
    energy_window: float | None = None
    reversal_correction: float = REVERSAL_CORRECTION
    fallback_steps: int | None = None
    equal_cost: bool = True
    mmff_respa: bool = True
    fast: str | None = None
    fast_every: int = 1
    mollify: bool = False
    adapt: bool = False
    adapt_steps: int = AdaptConfig.steps

    def __post_init__(self):
        if not is_integer(self.k, 1):
            raise InputError(f"k must be an integer ≥ 1 (base steps per jump), got {self.k!r}")
        for name, unit in (("dt", "fs"), ("ps", "ps"), ("temperature", "K")):
            if not is_finite_number(getattr(self, name)) or not getattr(self, name) > 0:
                raise InputError(f"{name} must be a finite value > 0 {unit}, got {getattr(self, name)!r}")
        if self.temperature > MAX_TEMPERATURE_K:
            raise InputError(f"temperature must be at most {MAX_TEMPERATURE_K:g} K, got {self.temperature!r}")
        if not is_finite_number(self.equilibrate_ps) or not self.equilibrate_ps >= 0:
            raise InputError(f"equilibrate_ps must be a finite value ≥ 0 ps, got {self.equilibrate_ps!r}")
        if not is_integer(self.n_replicas, 2):
            raise InputError(f"at least 2 replicas are needed for a noise floor, got {self.n_replicas!r}")
        for what, steps in (("ps", self.ps * 1000.0 / (self.k * self.dt)),
                            ("equilibrate_ps", self.equilibrate_ps * 1000.0 / THERMALISE_DT_FS)):
            if steps * self.n_replicas > MAX_STEPS:
                raise InputError(f"{what} {getattr(self, what)} needs {steps:.3g} steps per replica; "
                                 "give a length in ps that can finish")
        check_seed(self.seed)
        check_fast_every(self.fast_every)
        if self.fast_every > 1 and self.fast is None:
            raise InputError("fast_every (--fast-every) applies to the respa contender: give a learned fast force "
                             "too (fast=NAME, --fast NAME)")
        if self.adapt and self.fast is None:
            raise InputError("adapt (--adapt) fine-tunes the learned fast force of the respa contender: give one "
                             "too (fast=NAME, --fast NAME)")
        if self.adapt:
            check_adapt(self.equilibrate_ps, self.adapt_steps)
        if self.mollify and self.fast is None:
            raise InputError("mollify (--mollify) applies to the respa contender: give a learned fast force too "
                             "(fast=NAME, --fast NAME)")
        # the hybrid contenders' options, checked where they are defined (each contender its own)
        KStepOptions(fallback_steps=self.fallback_steps, energy_relaxation=self.energy_relaxation)
        KStepOptions(energy_window=self.energy_window)
        fallback_step_count(self.k, self.dt, self.fallback_steps)

    @property
    def n_frames(self) -> int:
        """Frames per replica, k·dt apart (the start excluded)."""
        return max(2, int(round(self.ps * 1000.0 / (self.k * self.dt))))


def thermalised_starts(molecule: Molecule, potential, config: EvalConfig):
    """(positions (R,N,3), velocities (R,N,3)): one Langevin-thermalised geometry with
    ``n_replicas`` same-energy velocity sets."""
    return thermalise(molecule, potential, config)[:2]


def thermalise(molecule: Molecule, potential, config: EvalConfig, record_every: int | None = None):
    """``thermalised_starts`` and, with ``record_every`` (steps of THERMALISE_DT_FS), the thermalisation's
    frames every that many steps: (positions, velocities, frames) with frames None or
    {"positions": (F, N, 3) Å, "energy": (F,) eV, "forces": (F, N, 3) eV/Å} of ``potential``.
    (Recording runs the same steps in other compiled chunks, so the start can differ from the
    unrecorded one by round-off grown over the thermalisation.)"""
    init, apply = integrate.langevin(potential, molecule.masses, THERMALISE_DT_FS, config.temperature,
                                     config.friction)
    state = init(molecule.positions, molecule.thermal_velocities(config.temperature, config.seed),
                 jax.random.PRNGKey(config.seed))
    integrate.check_start(state, molecule.name)
    n_eq = int(round(config.equilibrate_ps * 1000.0 / THERMALISE_DT_FS))
    state, fr = run_steps(apply, state, n_eq, record_every)
    frames = None if fr is None else {key: np.asarray(getattr(fr, key), np.float64)
                                      for key in ("positions", "energy", "forces")}
    if bool(state.failed):
        raise SimulationError(f"the xTB SCF failed for good during the thermalisation (after {int(state.step)} "
                              f"of {n_eq} steps of {THERMALISE_DT_FS:g} fs)")
    x0, v0 = np.asarray(state.positions), np.asarray(state.velocities)
    vs = np.stack([same_energy_velocities(molecule, x0, v0, seed=config.seed * 1000 + r + 1)
                   for r in range(config.n_replicas)])
    return np.broadcast_to(x0, vs.shape).copy(), vs, frames


def run_contender(init, apply, applies_per_frame: int, starts, config: EvalConfig, calls: Callable[[], int],
                  progress: Callable[[int], None] | None = None, runners: dict | None = None) -> dict:
    """Run a contender from all start states at once (vmap); frames every ``applies_per_frame``.
    ``runners`` keeps the jitted chunk runners (one per chunk length) for the next call with the
    same ``apply``; each is compiled once, not once per chunk."""
    runners = {} if runners is None else runners
    t0, calls0 = time.perf_counter(), calls()
    state = jax.vmap(init)(*starts)
    first = jax.tree.map(lambda x: jnp.asarray(x)[:, None], frames_of(state))
    chunks, done = [first], 0
    while done < config.n_frames:
        n = min(config.chunk_frames, config.n_frames - done)
        if (n, applies_per_frame) not in runners:
            runners[n, applies_per_frame] = runner(apply, n, applies_per_frame, batched=True)
        state, fr = runners[n, applies_per_frame](state)
        chunks.append(fr)
        done += n
        if progress:
            progress(n)
    frames = jax.device_get(concat(chunks))
    return {"frames": frames, "state": jax.device_get(state), "xtb_calls": calls() - calls0,
            "wall_s": time.perf_counter() - t0}


def _split(x):
    """First and second half of the replicas (axis 0)."""
    h = x.shape[0] // 2
    return x[:h], x[h:2 * h]


def distribution_metrics(contender, reference, masses, terms, frame_fs: float,
                         reference_frame_fs: float | None = None) -> dict:
    """Contender's first half of the replicas against the reference's second half; frames
    ``frame_fs`` apart (the reference's ``reference_frame_fs``, default the same)."""
    (pa, _), (va, _) = _split(contender.positions), _split(contender.velocities)
    (_, pb), (_, vb) = _split(reference.positions), _split(reference.velocities)
    bonds, angles, dihedrals = terms
    ref_fs = frame_fs if reference_frame_fs is None else reference_frame_fs
    spec_a = metrics.average_spectra([metrics.vibrational_spectrum(v, masses, frame_fs) for v in va])
    spec_b = metrics.average_spectra([metrics.vibrational_spectrum(v, masses, ref_fs) for v in vb])
    return {"bond_js": metrics.distribution_js(pa, pb, bonds, "bond"),
            "angle_js": metrics.distribution_js(pa, pb, angles, "angle"),
            "dihedral_js": metrics.distribution_js(pa, pb, dihedrals, "dihedral"),
            "spectrum_overlap": metrics.spectrum_overlap(spec_a, spec_b),
            "xh_band_shift_cm1": metrics.xh_band_shift(spec_a, spec_b)}, spec_a


def flip_metrics(contender, reference, rotatable, frame_fs: float, reference_frame_fs: float | None = None) -> dict:
    """Torsion transitions per ps of the contender's first half over the reference's second half
    (frames ``frame_fs`` apart; the reference's ``reference_frame_fs``, default the same)."""
    if len(rotatable) == 0:
        return {"flip_rate_ratio": None, "flip_rate_ci": None}
    counts = []
    ref_fs = frame_fs if reference_frame_fs is None else reference_frame_fs
    for positions, spacing in ((_split(contender.positions)[0], frame_fs), (_split(reference.positions)[1], ref_fs)):
        n, t = 0, 0.0
        for replica in positions:
            tr = metrics.torsion_transitions(metrics.dihedrals(replica, rotatable), spacing)
            n += tr["n_transitions"]
            t += tr["time_ps"] * len(rotatable)
        counts += [n, t]
    ratio = metrics.flip_rate_ratio(*counts)
    ci = None if ratio["ratio"] is None else [ratio["low"], ratio["high"]]
    return {"flip_rate_ratio": ratio["ratio"], "flip_rate_ci": ci, "flips": [ratio["n_a"], ratio["n_b"]]}


def energy_metrics(frames, masses, frame_fs: float) -> dict:
    """Drift and fluctuation of the total energy (mean over replicas) and mean temperature."""
    e = np.asarray(frames.energy) + analysis.kinetic_energy(frames.velocities, masses)
    t = np.arange(e.shape[1]) * frame_fs
    drift = [analysis.energy_drift(t, er) for er in e]
    std = [analysis.energy_std(er) for er in e]
    temp = analysis.temperature(frames.velocities, masses)
    return {"drift_kj_mol_ps": analysis.finite_or_none(np.mean(drift)),
            "energy_std_kj_mol": analysis.finite_or_none(np.mean(std)),
            "mean_temperature_k": analysis.finite_or_none(np.mean(temp))}


def one_jump(jump_fn, reference, terms) -> dict:
    """Single jumps of ``jump_fn`` (``kstep.JumpFn``) from reference frames (x, v, F at t) against
    the reference at t + k. With ``ballistic_jump`` the positions are those of Verlet at k·dt
    (and of the corrector-only control), and the "force prediction" is F_t."""
    fr = reference
    n, f = fr.positions.shape[:2]
    flat = lambda a: np.asarray(a[:, :-1]).reshape(n * (f - 1), *a.shape[2:])  # noqa: E731
    target = lambda a: np.asarray(a[:, 1:]).reshape(n * (f - 1), *a.shape[2:])  # noqa: E731
    jump = jax.jit(jax.vmap(jump_fn))
    px, _, pf = jump(flat(fr.positions), flat(fr.velocities), flat(fr.forces))
    bonds, angles, dihedrals = terms
    return metrics.one_jump_errors(np.asarray(px), target(fr.positions), np.asarray(pf), target(fr.forces),
                                   bonds, angles, dihedrals)


def evaluate(molecule: Molecule, potential_factory: Callable[[], object], config: EvalConfig, bundle=None,
             plots: str | os.PathLike | None = None, progress: Callable[[str, int, int], None] | None = None,
             executor=None, results=None) -> dict:
    """Evaluate the hybrid against the baselines on ``molecule``; returns the summary dict.

    ``potential_factory()`` makes a fresh xTB potential (one per contender and replica, so its
    call counter is that run's). ``bundle`` is a loaded model (``load_pretrained``); without one the
    ``kstep`` contender and ``one_jump`` are None and k comes from ``config.k``. The runs are
    tasks of ``executor`` (``jkstep.parallel``: the thermalisation, then one task per contender
    and replica; default: the same tasks one after the other in this process); ``results`` (a
    ``jkstep.parallel.ResultCache``) keeps finished tasks for a rerun. ``progress(name, 1,
    tasks)`` is told of every finished task.
    """
    if bundle is not None:
        config = dataclasses.replace(config, k=bundle.k, dt=bundle.dt)
    return evaluate_ks(molecule, potential_factory, config, {config.k: bundle}, plots, progress, executor,
                       results)[config.k]


def evaluate_ks(molecule: Molecule, potential_factory: Callable[[], object], config: EvalConfig,
                models: dict, plots: str | os.PathLike | None = None,
                progress: Callable[[str, int, int], None] | None = None, executor=None, results=None) -> dict:
    """The k sweep: one summary per k of ``models`` ({k: bundle or None}), all from the same
    starting states and **one** reference run.

    The reference (Verlet at ``config.dt``) is run once with frames every g steps, g the
    greatest common divisor of the ks, and read every k/g-th frame for each k: the same frames
    that a separate evaluation at that k would have stored. Each k then gets its own Verlet at
    k·dt, zero-network corrector and (where its model is given) ``kstep``. A bundle's k and dt
    must match its key and ``config.dt``. Returns {k: summary}, each as ``evaluate``'s; with
    several ks, plots go to ``plots``/k{k}. ``executor``, ``results``: as ``evaluate``'s.
    """
    from jkstep import parallel

    executor = parallel.SerialExecutor() if executor is None else executor
    ks = sorted(models)
    if not ks or min(ks) < 1:
        raise InputError(f"the k sweep needs ks ≥ 1, got {ks}")
    if config.fast is not None and any(k % config.fast_every for k in ks):
        raise InputError(f"fast_every = {config.fast_every} must divide every k ({ks}) (--fast-every, --k)")
    for k, bundle in models.items():
        if bundle is None:
            continue
        bundle.check_elements(molecule.numbers)
        if bundle.k != k or abs(bundle.dt - config.dt) > 1e-12:
            raise InputError(f"the model given for k = {k} was trained for k = {bundle.k}, dt = {bundle.dt} fs; "
                             f"the evaluation runs dt = {config.dt} fs: give each model under its own k")
    base = math.gcd(*ks)
    dt, masses = config.dt, molecule.masses
    # every task's key digests what its result depends on (jkstep.parallel.task_key); without a
    # result cache the keys need only be unique to this evaluation (no potential is made for them)
    pot_identity = uuid.uuid4().hex if results is None else _potential_identity(potential_factory())
    identity = (molecule, pot_identity, {k: _bundle_identity(b) for k, b in sorted(models.items())})
    submitted = [0]

    def submit(name, key, fn, *args):
        submitted[0] += 1
        done = (lambda _: progress(name, 1, submitted[0])) if progress else None
        return executor.submit(parallel.Task(key, fn, *args, cache=True), results=results, on_done=done)

    therm = {"temperature": config.temperature, "friction": config.friction, "equilibrate_ps": config.equilibrate_ps,
             "seed": config.seed, "n_replicas": config.n_replicas, "record": config.adapt}
    fasts = {}   # the respa contenders' learned fast forces, loaded (a bad name fails here) and adapted once
    if config.fast is not None:
        from jkstep.model.potential import learned_potential

        fasts["respa"] = learned_potential(config.fast, molecule)
    start = submit("thermalisation", parallel.task_key("evaluate-thermalise", identity[:2], therm),
                   _thermalise_task, molecule, potential_factory, config).result()
    starts = (start["positions"], start["velocities"])
    adaptation = None
    if config.adapt:    # the fast force fine-tuned on the thermalisation's frames
        fr = start["frames"]
        fasts["respa_adapted"], adaptation = adapt_potential(fasts["respa"], fr["positions"], fr["energy"],
                                                             fr["forces"], AdaptConfig(steps=config.adapt_steps),
                                                             spacing_fs=THERMALISE_DT_FS)
    terms = metrics.internal_coordinates(molecule.numbers, starts[0][0], molecule.mol_block)
    rotatable = metrics.rotatable_dihedrals(molecule.numbers, starts[0][0], molecule.mol_block)

    def run(name, cfg, build, per_frame):
        """The contender's replicas as tasks (one each), under way: a _Pending."""
        built = parallel.task_key(f"build-{name}", identity, cfg, per_frame)
        handles = [submit(name, parallel.task_key(f"evaluate-{name}-r{r}", built, starts[0][r], starts[1][r]),
                          _contender_task, build, potential_factory, per_frame, cfg, starts[0][r:r + 1],
                          starts[1][r:r + 1], built)
                   for r in range(config.n_replicas)]
        return _Pending(handles)

    ref_config = dataclasses.replace(config, k=base)
    reference = run("reference", ref_config, lambda pot: integrate.verlet(pot, masses, dt), base).resolve()
    out, interrupted = {}, False
    for k in ks:
        cfg = dataclasses.replace(config, k=k)
        ref_run = dict(reference, frames=jax.tree.map(lambda a: a[:, ::k // base], reference["frames"]))
        runs = {"reference": ref_run}
        if not interrupted:
            try:
                _k_runs(molecule, cfg, models[k], lambda name, build, c=cfg: run(name, c, build, 1), runs,
                        fasts)
                for r in runs.values():
                    if isinstance(r, _Pending):
                        r.resolve()
            except BaseException as exc:  # an interrupt keeps the contenders that finished
                if not is_interrupt(exc):
                    raise
                interrupted = True
                for name, r in list(runs.items()):   # the unfinished are cancelled (their finished tasks kept)
                    if isinstance(r, _Pending) and not r.resolved:
                        if all(h.finished for h in r.handles):
                            r.resolve()
                        else:
                            executor.cancel(r.handles)
                            del runs[name]
        directory = None if not plots else plots if len(ks) == 1 else os.path.join(plots, f"k{k}")
        out[k] = _summary(molecule, cfg, models[k], runs, starts, terms, rotatable, directory, adaptation)
        if interrupted:
            out[k]["interrupted"] = True
    return out


def _k_runs(molecule, config, bundle, run, runs: dict, fasts: dict | None = None) -> dict:
    """Verlet at k·dt, the zero-network corrector and the model's contenders at ``config.k``
    (``run(name, build, config)``: one contender, frames every apply of ``config``), added to
    ``runs`` one by one as they finish (so an interrupt leaves the finished ones there).
    ``fasts``: {contender name: learned fast force} of the respa contenders (``respa``,
    ``respa_adapted``), each run as RESPA with it."""
    k, dt, masses = config.k, config.dt, molecule.masses

    options = KStepOptions(fallback_steps=config.fallback_steps)

    def hybrid(pot, jump, **changes):
        init, apply = kstep_integrator(jump, pot, molecule.numbers, masses, k, dt, options, **changes)
        return (lambda x, v: init(x, v)), apply

    runs["verlet_kdt"] = run("verlet_kdt", lambda pot: integrate.verlet(pot, masses, k * dt))
    runs["corrector_only"] = run("corrector_only", lambda pot: hybrid(pot, ballistic_jump(masses, k, dt)))
    if config.mmff_respa:
        try:
            mmff = mmff_potential(molecule)
        except InputError as exc:
            runs["mmff_respa"] = {"reason": str(exc)}
        else:
            runs["mmff_respa"] = run("mmff_respa", lambda pot: respa(mmff, pot, masses, k, dt,
                                                                     fallback_steps=config.fallback_steps))
    mollifier = xh_mollifier(molecule) if config.mollify and fasts else None
    for name, fast in (fasts or {}).items():
        split = three_levels(molecule, fast, config.fast_every)
        runs[name] = run(name, lambda pot, fast=fast, split=split: respa(
            fast, pot, masses, k, dt, fallback_steps=config.fallback_steps, mollifier=mollifier, **split))
    if bundle is not None:
        runs["kstep"] = run("kstep", lambda pot: hybrid(pot, _learned(bundle, molecule, config)))
        if config.equal_cost:
            dt_equal = equal_cost_dt(runs["kstep"]["xtb_calls"], config.n_replicas, config.n_frames * k * dt, dt)
            # frames every step of dt_equal over the same time: k = 1 step of dt_equal per frame
            every_step = dataclasses.replace(config, k=1, dt=dt_equal, ps=config.n_frames * k * dt / 1000.0)
            runs["verlet_equal_cost"] = run("verlet_equal_cost",
                                            lambda pot: integrate.verlet(pot, masses, dt_equal), every_step)
            runs["verlet_equal_cost"]["frame_fs"] = dt_equal
        if config.energy_rescale:
            runs["kstep_rescaled"] = run("kstep_rescaled", lambda pot: hybrid(
                pot, _learned(bundle, molecule, config), energy_rescale=True))
        if config.energy_relaxation is not None:
            runs["kstep_relaxed"] = run("kstep_relaxed", lambda pot: hybrid(
                pot, _learned(bundle, molecule, config), energy_relaxation=config.energy_relaxation,
                guards=Guards(max_energy_drift=config.relaxed_max_energy_drift)))
        if config.energy_window is not None:
            runs["kstep_windowed"] = run("kstep_windowed", lambda pot: hybrid(
                pot, _learned(bundle, molecule, config), energy_window=config.energy_window,
                guards=Guards(max_energy_drift=None)))
    return runs


def _learned(bundle, molecule, config):
    return model_jump(bundle, molecule.numbers, molecule.masses, config.reversal_correction)


def _summary(molecule, config, bundle, runs, starts, terms, rotatable, plots, adaptation=None) -> dict:
    """The summary of one k from its runs (the reference's frames k·dt apart); ``adaptation``:
    the report of ``jkstep.model.adapt.adapt_potential`` (its wall time is added to
    ``respa_adapted``'s)."""
    k, dt, masses = config.k, config.dt, molecule.masses
    frame_fs = k * dt
    ref = runs["reference"]["frames"]
    out = {"molecule": molecule.name, "k": k, "simulated_fs": config.n_frames * frame_fs,
           "n_replicas": config.n_replicas, "dt_fs": dt, "temperature_k": config.temperature,
           "fallback_steps": fallback_step_count(k, dt, config.fallback_steps), "mollified": config.mollify,
           "fast_every": config.fast_every if config.fast is not None else None, "fast_adaptation": adaptation}
    out["one_jump"] = None if bundle is None else one_jump(_learned(bundle, molecule, config), ref, terms)
    # the same errors for Verlet at k·dt's positions (= the ballistic jump), on the same windows
    out["one_jump_verlet_kdt"] = one_jump(ballistic_jump(masses, k, dt), ref, terms)
    out["noise_floor"] = distribution_metrics(ref, ref, masses, terms, frame_fs)[0]
    spectra, results = {}, {}
    for name in CONTENDERS + tuple(name for name in VARIANTS if name in runs):
        if name not in runs:
            results[name] = None
            continue
        run = runs[name]
        if "reason" in run:     # not runnable on this molecule (e.g. MMFF94 cannot type it)
            results[name] = {"reason": run["reason"], **{key: None for key in RESULT_KEYS}}
            continue
        fr, state = run["frames"], run["state"]
        exploded = bool(np.asarray(fr.failed).any()) or metrics.blew_up(fr.positions, terms[0], starts[0][0])
        res = {"xtb_calls": int(run["xtb_calls"]), "blew_up": exploded, "wall_s": run["wall_s"]}
        if name == "respa_adapted" and adaptation is not None:   # the fine-tuning is part of its cost
            res["wall_s"] += adaptation["wall_s"]
        spacing = run.get("frame_fs", frame_fs)    # verlet_equal_cost: frames every step of its own dt
        if "frame_fs" in run:
            res["dt_fs"] = spacing
        if exploded:
            res.update({key: None for key in ("drift_kj_mol_ps", "energy_std_kj_mol", "mean_temperature_k",
                                              *DISTRIBUTION_KEYS, "flip_rate_ratio")})
        else:
            res.update(energy_metrics(fr, masses, spacing))
            dist, spectra[name] = distribution_metrics(fr, ref, masses, terms, spacing, frame_fs)
            res.update(dist)
            res.update(flip_metrics(fr, ref, rotatable, spacing, frame_fs))
        if hasattr(state, "accepted"):
            res.update(accepted=int(np.sum(state.accepted)), rejected=int(np.sum(state.rejected)),
                       fallbacks=int(np.sum(state.fallbacks)))
        elif hasattr(state, "fallbacks"):   # respa: every macro-step is kept; fallbacks are fault fallbacks
            res.update(fallbacks=int(np.sum(state.fallbacks)))
        res["integrator_force_calls"] = int(np.sum(state.force_calls))
        results[name] = res
    out["contenders"] = results
    if plots:
        _plots(plots, runs, spectra, masses, frame_fs, terms)
    return out


def _plots(directory, runs, spectra, masses, frame_fs, terms):
    os.makedirs(directory, exist_ok=True)
    energy = {}
    runs = {name: run for name, run in runs.items() if "frames" in run}
    for name, run in runs.items():
        fr = run["frames"]
        energy[name] = (np.arange(fr.energy.shape[1]) * run.get("frame_fs", frame_fs),
                        np.asarray(fr.energy[0]) + analysis.kinetic_energy(fr.velocities[0], masses))
    metrics.plot_energy(os.path.join(directory, "energy.png"), energy)
    metrics.plot_spectra(os.path.join(directory, "spectra.png"), spectra)
    bonds = {name: metrics.bond_lengths(run["frames"].positions.reshape(-1, *run["frames"].positions.shape[-2:]),
                                        terms[0]) for name, run in runs.items()}
    metrics.plot_distributions(os.path.join(directory, "bonds.png"), bonds, kind="bond")


# -- the evaluation as tasks of the execution layer (jkstep.parallel) ----------------------------


def _potential_identity(pot) -> dict:
    """What makes two potentials compute the same (for the task keys): type and settings."""
    keys = ("method", "accuracy", "restart", "fallback_method", "max_iter", "electronic_temperature")
    return {"type": type(pot).__name__, **{k: getattr(pot, k) for k in keys if hasattr(pot, k)}}


def _bundle_identity(bundle):
    """A model's identity for the task keys: k, dt and its weights."""
    if bundle is None:
        return None
    return {"k": bundle.k, "dt": bundle.dt, "params": [np.asarray(a) for a in jax.tree.leaves(bundle.params)]}


def _thermalise_task(molecule: Molecule, potential_factory, config: EvalConfig) -> dict:
    """The thermalisation as a task: {"positions": (R, N, 3), "velocities": (R, N, 3)}, and with
    ``config.adapt`` its frames (every step) under "frames" (``thermalise``)."""
    x, v, frames = thermalise(molecule, potential_factory(), config, 1 if config.adapt else None)
    out = {"positions": np.asarray(x, np.float64), "velocities": np.asarray(v, np.float64)}
    if frames is not None:
        out["frames"] = frames
    return out


def _contender_task(build, potential_factory, per_frame: int, config: EvalConfig, positions, velocities,
                    identity: str) -> dict:
    """One contender on one replica (positions, velocities: (1, N, 3)) as a task. The integrator
    (``build(potential)``) and its chunk runners are made once per worker process for
    ``identity`` (``jkstep.parallel.built``); the potential is renewed for every task
    (``fresh_potential``: new tblite calculators, counters at zero), as a new one would be.
    Returns plain arrays: frames, the state's counters, xtb_calls, wall_s."""
    from jkstep import parallel

    def make():
        pot = potential_factory()
        init, apply = build(pot)
        return pot, init, apply, {}

    pot, init, apply, runners = parallel.built(identity, make)
    parallel.fresh_potential(pot)
    report = parallel.step_reporter()
    try:
        out = run_contender(init, apply, per_frame, (positions, velocities), config, lambda: pot.calls, report,
                            runners=runners)
    finally:
        parallel.flush_steps(report)
    state = out["state"]   # its per-replica scalars (counters, flags) travel back; positions etc. do not
    fields = [f.name for f in dataclasses.fields(state)] if dataclasses.is_dataclass(state) else []
    counters = {name: np.asarray(getattr(state, name)) for name in fields
                if np.ndim(getattr(state, name)) <= 1 and np.asarray(getattr(state, name)).dtype != object}
    frames = {f.name: np.asarray(getattr(out["frames"], f.name)) for f in dataclasses.fields(Frames)}
    return {"frames": frames, "state": counters, "xtb_calls": int(out["xtb_calls"]), "wall_s": float(out["wall_s"])}


class _Pending(MutableMapping):
    """A contender's run while its replica tasks are under way: reading or writing any key
    waits for all of them and joins the replicas (the dict ``run_contender`` returns: frames
    (R, F, ...), the counters' state, xtb_calls and wall_s summed over the replicas)."""

    def __init__(self, handles):
        self.handles, self._data = handles, None

    @property
    def resolved(self) -> bool:
        return self._data is not None

    def resolve(self) -> "_Pending":
        if self._data is None:
            parts = [h.result() for h in self.handles]
            frames = Frames(**{f.name: np.concatenate([p["frames"][f.name] for p in parts])
                               for f in dataclasses.fields(Frames)})
            names = set.intersection(*(set(p["state"]) for p in parts))
            state = types.SimpleNamespace(**{n: np.concatenate([np.atleast_1d(p["state"][n]) for p in parts])
                                             for n in sorted(names)})
            self._data = {"frames": frames, "state": state, "xtb_calls": sum(p["xtb_calls"] for p in parts),
                          "wall_s": float(sum(p["wall_s"] for p in parts))}
        return self

    def __getitem__(self, key):
        return self.resolve()._data[key]

    def __setitem__(self, key, value):
        self.resolve()._data[key] = value

    def __delitem__(self, key):
        del self.resolve()._data[key]

    def __iter__(self):
        return iter(self.resolve()._data)

    def __len__(self):
        return len(self.resolve()._data)
