"""One MD run from a molecule to a summary: what ``jkstep run`` does, callable from Python.

``run_md`` builds the integrator, runs it in jitted chunks, records frames and returns
them with a summary dict whose keys are those of ``jkstep run --summary`` (API.md).
Units: fs, K, eV; drift in kJ/mol/ps, energy fluctuation in kJ/mol.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jkstep import analysis, integrate
from jkstep.errors import (MAX_STEPS, MAX_TEMPERATURE_K, InputError, SimulationError, is_finite_number,
                           is_integer, is_interrupt)
from jkstep.integrate import ENSEMBLES, fallback_step_count
from jkstep.kstep import KStepOptions, kstep_integrator
from jkstep.respa import check_fast_every, respa
from jkstep.model.adapt import AdaptConfig, adapt_potential, check_adapt
from jkstep.molecule import Molecule, check_seed
from jkstep.rollout import Frames, concat, frames_of, run_steps, runner

INTEGRATORS = ("verlet", "langevin", "kstep", "respa")


@dataclasses.dataclass
class RunConfig:
    """Settings of one run. dt in fs, lengths in ps, temperature in K, friction in 1/fs.

    ``ensemble`` applies to kstep and respa (nve, or nvt with a Langevin thermostat); verlet is
    NVE and langevin NVT. ``save_every`` is in base steps (rounded up to whole macro-steps for
    kstep and respa). For respa ``dt`` is the inner step and ``k`` the inner steps per macro-step
    (one xTB call each); ``fast`` names the fast force (``"mmff"``, a shipped learned fast force
    or a checkpoint path; the summary reports it); ``fast_every`` > 1 runs respa in three levels,
    MMFF94 every inner step and the rest of the (learned) fast force as kicks every ``fast_every``
    inner steps (``jkstep.respa``'s ``inner``/``fast_every``); ``adapt`` fine-tunes the learned fast
    force on the Langevin equilibration's own xTB frames (every step) before the run
    (``jkstep.model.adapt``, ``adapt_steps`` optimiser steps; reported under ``fast_adaptation``). ``equilibrate_dt``: time step of the Langevin
    thermalisation (None: ``dt``); give the same one to runs with different time steps to start
    them from the same state (e.g. Verlet at the hybrid's equal-cost step and the hybrid itself).
    ``settle`` (NVE runs after a Langevin thermalisation): then run NVE velocity Verlet at that
    step, rescaling the velocities every ``SETTLE_EVERY_FS`` until the mean kinetic temperature
    over the last ``SETTLE_WINDOW_FS`` is within ``SETTLE_TOLERANCE`` of ``temperature``
    (``settle_temperature``): one canonical sample's NVE temperature spreads by ±10–15 % for
    20 atoms, so a Langevin start alone does not give an NVE run at the temperature asked for.
    ``kstep_options``: the hybrid's ``KStepOptions`` (a dict of its fields is converted); its
    ensemble, temperature and friction are the run's. respa takes its ``fallback_steps``.
    """

    integrator: str = "verlet"
    dt: float = 0.25
    ensemble: str = "nve"
    ps: float = 0.5
    temperature: float = 300.0
    friction: float = 0.01
    equilibrate_ps: float = 0.0
    equilibrate_dt: float | None = None
    settle: bool = True
    save_every: int = 4
    seed: int = 0
    chunk_frames: int = 100
    kstep_options: KStepOptions = KStepOptions()
    fast: str = "mmff"
    fast_every: int = 1
    adapt: bool = False
    adapt_steps: int = AdaptConfig.steps

    def __post_init__(self):
        if self.integrator not in INTEGRATORS:
            raise InputError(f"unknown integrator {self.integrator!r}; choose one of {', '.join(INTEGRATORS)}")
        if self.ensemble not in ENSEMBLES:
            raise InputError(f"unknown ensemble {self.ensemble!r}; choose nve or nvt")
        for name in ("dt", "ps", "save_every", "chunk_frames"):
            if not is_finite_number(getattr(self, name)) or not getattr(self, name) > 0:
                raise InputError(f"{name} must be a finite value > 0, got {getattr(self, name)!r}")
        for name in ("save_every", "chunk_frames"):
            if int(getattr(self, name)) != getattr(self, name):
                raise InputError(f"{name} must be a whole number, got {getattr(self, name)!r}")
        for name in ("temperature", "friction", "equilibrate_ps"):
            if not is_finite_number(getattr(self, name)) or not getattr(self, name) >= 0:
                raise InputError(f"{name} must be a finite value ≥ 0, got {getattr(self, name)!r}")
        if self.temperature > MAX_TEMPERATURE_K:
            raise InputError(f"temperature must be at most {MAX_TEMPERATURE_K:g} K, got {self.temperature!r}")
        if self.equilibrate_dt is not None and not (is_finite_number(self.equilibrate_dt)
                                                    and self.equilibrate_dt > 0):
            raise InputError(f"equilibrate_dt must be a finite value > 0 fs, got {self.equilibrate_dt!r}")
        check_seed(self.seed)
        if isinstance(self.kstep_options, dict):
            self.kstep_options = KStepOptions.of(None, "RunConfig.kstep_options", **self.kstep_options)
        elif not isinstance(self.kstep_options, KStepOptions):
            raise InputError(f"kstep_options must be a jkstep.kstep.KStepOptions, got {type(self.kstep_options).__name__}")
        if self.integrator == "respa" and not (isinstance(self.fast, str) and self.fast):
            raise InputError(f"fast must name the fast force (mmff, a shipped name or a checkpoint path), "
                             f"got {self.fast!r}")
        check_fast_every(self.fast_every)
        if self.fast_every > 1 and (self.integrator != "respa" or self.fast == "mmff"):
            raise InputError("fast_every > 1 (--fast-every) splits a learned fast force into MMFF94 every inner step "
                             "and the network's correction as kicks: it needs --integrator respa with a learned "
                             f"--fast, not {self.fast if self.integrator == 'respa' else self.integrator}")
        if self.adapt and (self.integrator != "respa" or self.fast == "mmff"):
            raise InputError("adapt (--adapt) fine-tunes a learned fast force: it needs --integrator respa with a "
                             f"learned --fast, not {self.fast if self.integrator == 'respa' else self.integrator}")
        if self.adapt:
            check_adapt(self.equilibrate_ps, self.adapt_steps)
        if self.integrator == "verlet" and self.ensemble == "nvt":
            raise InputError("velocity Verlet is NVE; for NVT use the langevin integrator "
                             "(or kstep with ensemble nvt)")
        dt_eq = self.dt if self.equilibrate_dt is None else self.equilibrate_dt
        for what, ps, dt in (("the run", self.ps, self.dt), ("the equilibration", self.equilibrate_ps, dt_eq)):
            if ps * 1000.0 / dt > MAX_STEPS:
                raise InputError(f"{what} would take {ps * 1000.0 / dt:.3g} steps of {dt} fs (more than "
                                 f"{MAX_STEPS:.0e}); check the length (ps) and the time step (fs)")
        if self.n_steps < 1:
            raise InputError(f"ps {self.ps} is shorter than one time step of {self.dt} fs")

    @property
    def n_steps(self) -> int:
        return int(round(self.ps * 1000.0 / self.dt))


#: Velocity rescaling before an NVE run (``settle_temperature``): every 20 fs, until the mean
#: kinetic temperature over the last 0.2 ps is within 2 % of the target, for at most 5 ps.
SETTLE_EVERY_FS, SETTLE_WINDOW_FS, SETTLE_TOLERANCE, SETTLE_MAX_FS = 20.0, 200.0, 0.02, 5000.0


def settle_temperature(potential, masses, positions, velocities, temperature: float, dt: float):
    """NVE velocity Verlet at ``dt`` fs whose velocities are rescaled every ``SETTLE_EVERY_FS``
    (weak coupling with a time constant of ``SETTLE_WINDOW_FS``: λ² = (T / T̄)^(every/window), T̄
    the mean kinetic temperature, 3N − 3 degrees of freedom, over the last ``SETTLE_WINDOW_FS``)
    while T̄ is off ``temperature`` K by more than ``SETTLE_TOLERANCE``; it ends once a whole
    window with no rescale in it has T̄ within the tolerance (at most ``SETTLE_MAX_FS``), so the
    NVE run starts on an energy shell whose mean temperature is the one asked for.
    Positions (N, 3) Å, velocities Å/fs.

    Returns (positions, velocities, info): info has ``settle_fs`` (simulated), ``rescales``,
    ``window_temperature_k`` (T̄ of the last window) and ``converged``."""
    masses = np.asarray(masses, np.float64)
    init, apply = integrate.verlet(potential, masses, dt)
    state = init(positions, velocities)
    per_chunk = max(1, int(round(SETTLE_EVERY_FS / dt)))
    window = max(per_chunk, int(round(SETTLE_WINDOW_FS / dt)))
    chunk = runner(apply, per_chunk)
    temps, rescales, since = [], 0, 0     # since: steps since the last rescale
    while True:
        state, fr = chunk(state)
        if bool(state.failed):
            raise SimulationError("the xTB SCF failed for good while settling the temperature before the NVE run; "
                                  "try --fallback-method GFN1-xTB")
        temps.extend(analysis.temperature(np.asarray(fr.velocities), masses).tolist())
        since += per_chunk
        mean = float(np.mean(temps[-window:]))
        close = len(temps) >= window and abs(mean / temperature - 1.0) <= SETTLE_TOLERANCE
        done = close and since >= window
        if done or len(temps) * dt >= SETTLE_MAX_FS or mean <= 0:
            break
        if not close:
            state = state.replace(velocities=state.velocities * (temperature / mean) ** (0.5 * per_chunk / window))
            rescales, since = rescales + 1, 0
    return state.positions, state.velocities, {"settle_fs": len(temps) * dt, "rescales": rescales,
                                               "window_temperature_k": mean, "converged": bool(done)}


def blew_up(frames: Frames, masses, temperature_limit: float) -> bool:
    """A run blew up if a force call failed, a value is not finite, or the kinetic
    temperature of any frame exceeded ``temperature_limit`` K."""
    t = analysis.temperature(frames.velocities, masses)
    finite = np.isfinite(np.asarray(frames.energy)).all() and np.isfinite(t).all()
    return bool(np.asarray(frames.failed).any() or not finite or (t > temperature_limit).any())


def three_levels(molecule: Molecule, fast, fast_every: int) -> dict:
    """``jkstep.respa``'s keyword arguments for ``fast_every`` inner steps per fast kick: none for 1,
    else MMFF94 of ``molecule`` as the inner force (a Δ-potential's own baseline where it has one)."""
    if fast_every == 1:
        return {}
    inner = getattr(fast, "baseline", None)
    if inner is None:
        from jkstep.potentials.mmff import mmff_potential

        inner = mmff_potential(molecule)
    return {"inner": inner, "fast_every": fast_every}


def run_md(molecule: Molecule, potential: Callable, config: RunConfig, jump=None, k: int = 1,
           progress: Callable[[int], None] | None = None, calls: Callable[[], int] | None = None,
           velocities=None, fast: Callable | None = None):
    """Run MD of ``molecule`` with ``potential`` (an energy-and-forces function).

    Starts from ``velocities`` (Å/fs, e.g. ``jkstep.molecule.read_velocities`` of a previous
    run's last frame, to continue it) or, by default, Maxwell–Boltzmann velocities at
    ``config.temperature`` (seeded), optionally
    thermalised with Langevin for ``equilibrate_ps``, then ``config.ps`` of production with
    the chosen integrator. For ``kstep`` give the ``jump`` function (``jkstep.kstep.model_jump``)
    and its ``k``; ``config.dt`` is then the model's base step. For ``respa`` give the ``fast``
    (energy, forces) function and ``k``, the inner steps per xTB call. ``xtb_calls`` in the summary
    counts the production run (its initial force call included), read from ``calls()``, the
    potential's own host-side counter (e.g. ``lambda: pot.calls``); ``integrator_force_calls``
    is the integrator's count of the same calls. ``progress(n)`` is told of each n base steps.

    A KeyboardInterrupt during production ends the run early instead of losing it: the summary
    and frames cover the chunks (``config.chunk_frames`` frames) finished before it, with
    ``"interrupted": true``; ``xtb_calls`` then also counts the calls of the unfinished chunk.

    Returns (summary dict, Frames of the production run with frame 0 = the start).
    """
    hybrid = config.integrator in ("kstep", "respa")
    if config.integrator == "kstep" and jump is None:
        raise InputError("the kstep integrator needs a model (--model NAME|PATH)")
    if config.integrator == "respa" and fast is None:
        raise InputError("the respa integrator needs a fast force (--fast mmff|NAME|PATH)")
    if hybrid and (isinstance(k, bool) or not is_integer(k, 1)):
        raise InputError(f"k must be an integer ≥ 1 (base steps per macro-step), got {k!r}")
    if config.integrator == "respa" and k % config.fast_every:
        raise InputError(f"fast_every = {config.fast_every} must divide k = {k} (--fast-every, --k)")
    steps_per_apply = k if hybrid else 1
    every = max(1, -(-config.save_every // steps_per_apply))  # applies per frame
    if config.n_steps < every * steps_per_apply:
        raise InputError(f"the run ({config.n_steps} steps of {config.dt} fs) is shorter than one saved frame "
                         f"({every * steps_per_apply} steps); lengthen ps or lower save_every")
    masses = molecule.masses
    key = jax.random.PRNGKey(config.seed)
    calls = calls or (lambda: None)
    t0 = time.perf_counter()
    if velocities is None:
        velocities = molecule.thermal_velocities(config.temperature, config.seed)
    else:
        velocities = np.asarray(velocities, np.float64)
        if velocities.shape != molecule.positions.shape or not np.isfinite(velocities).all():
            raise InputError(f"start velocities must be finite and shaped like the positions "
                             f"{molecule.positions.shape} (Å/fs), got shape {velocities.shape}")
    positions = molecule.positions
    settled = None

    if config.equilibrate_ps > 0:
        dt_eq = config.dt if config.equilibrate_dt is None else config.equilibrate_dt
        init, apply = integrate.langevin(potential, masses, dt_eq, config.temperature, config.friction)
        key, sub = jax.random.split(key)
        state = init(positions, velocities, sub)
        integrate.check_start(state, molecule.name)
        n_eq = int(round(config.equilibrate_ps * 1000.0 / dt_eq))
        state, eq_frames = run_steps(apply, state, n_eq, 1 if config.adapt else None)   # frames adapted on
        positions, velocities = state.positions, state.velocities
        if bool(state.failed):
            raise SimulationError(f"the xTB SCF failed for good during the Langevin equilibration (after "
                                  f"{int(state.step)} of {n_eq} steps); try --fallback-method GFN1-xTB")
        if config.settle and (config.integrator == "verlet" or config.ensemble == "nve") \
                and config.integrator != "langevin":
            positions, velocities, settled = settle_temperature(potential, masses, positions, velocities,
                                                                config.temperature, dt_eq)

    adaptation = None
    if config.adapt:
        fast, adaptation = adapt_potential(fast, np.asarray(eq_frames.positions), np.asarray(eq_frames.energy),
                                           np.asarray(eq_frames.forces), AdaptConfig(steps=config.adapt_steps),
                                           spacing_fs=dt_eq)
    calls_before = calls()
    if config.integrator == "verlet":
        init, apply = integrate.verlet(potential, masses, config.dt)
        state = init(positions, velocities)
    elif config.integrator == "langevin":
        init, apply = integrate.langevin(potential, masses, config.dt, config.temperature, config.friction)
        state = init(positions, velocities, key)
    elif config.integrator == "respa":
        init, apply = respa(fast, potential, masses, k, config.dt, ensemble=config.ensemble,
                            temperature=config.temperature, friction=config.friction,
                            fallback_steps=config.kstep_options.fallback_steps,
                            **three_levels(molecule, fast, config.fast_every))
        state = init(positions, velocities, key)
    else:
        init, apply = kstep_integrator(jump, potential, molecule.numbers, masses, k, config.dt,
                                       config.kstep_options, ensemble=config.ensemble,
                                       temperature=config.temperature, friction=config.friction)
        state = init(positions, velocities, key)
    integrate.check_start(state, molecule.name)
    frames = [jax.tree.map(lambda x: jnp.asarray(x)[None], frames_of(state))]

    n_frames = config.n_steps // (every * steps_per_apply)
    chunk = min(config.chunk_frames, n_frames)
    run_chunk = runner(apply, chunk, every)
    done = 0
    kstep = config.integrator == "kstep"
    timeline = [_progress_point(state, config.dt)] if hybrid else []
    interrupted = False
    try:
        while done < n_frames:
            if n_frames - done < chunk:
                run_chunk = runner(apply, n_frames - done, every)
            state, fr = run_chunk(state)
            frames.append(fr)
            done += fr.energy.shape[0]
            if hybrid:
                timeline.append(_progress_point(state, config.dt))
            if progress:
                progress(fr.energy.shape[0] * every * steps_per_apply)
            if bool(state.failed):
                break
    except BaseException as exc:  # an interrupt keeps what the finished chunks hold
        if not is_interrupt(exc):
            raise
        interrupted = True
    frames = jax.device_get(concat(frames))
    wall = time.perf_counter() - t0

    nve = config.integrator == "verlet" or (hybrid and config.ensemble == "nve")
    times = np.asarray(frames.step) * config.dt
    e_total = np.asarray(frames.energy) + analysis.kinetic_energy(frames.velocities, masses)
    temps = analysis.temperature(frames.velocities, masses, dof=None if nve else 3 * len(masses))
    exploded = blew_up(frames, masses, max(1000.0, 10.0 * config.temperature))
    summary = {
        "molecule": molecule.name,
        "integrator": config.integrator,
        "ensemble": "nve" if nve else "nvt",
        "dt_fs": config.dt,
        "k": k if hybrid else None,
        "simulated_fs": float(times[-1]),
        "xtb_calls": None if calls_before is None else calls() - calls_before,
        # respa keeps every macro-step: accepted = macro-steps made, fallbacks = fault fallbacks among them
        "accepted": int(state.accepted) if kstep else int(state.step) // k if hybrid else 0,
        "rejected": int(state.rejected) if kstep else 0,
        "fallbacks": int(state.fallbacks) if hybrid else 0,
        "escalations": int(state.escalations) if kstep else 0,
        "blew_up": exploded,
        "drift_kj_mol_ps": analysis.finite_or_none(analysis.energy_drift(times, e_total)) if nve else None,
        "energy_std_kj_mol": analysis.finite_or_none(analysis.energy_std(e_total)),
        "mean_temperature_k": analysis.finite_or_none(float(np.mean(temps))),
        "wall_s": wall,
        # beyond API.md: the call split and the integrator's own count
        "n_atoms": len(molecule),
        "steps": int(frames.step[-1]),
        "integrator_force_calls": int(state.force_calls),
    }
    if settled is not None:
        summary["settle"] = settled
    if interrupted:
        summary["interrupted"] = True
    if config.integrator == "respa":
        summary["fast"] = config.fast
        summary["fast_every"] = config.fast_every
        summary["fast_adaptation"] = adaptation
    if hybrid:
        summary["fallback_steps"] = fallback_step_count(k, config.dt, config.kstep_options.fallback_steps)
        # [simulated fs, integrator calls, fallbacks] so far, every chunk_frames frames: over long
        # runs the fallbacks (and so the cost) need not stay at the rate of the first picoseconds
        summary["timeline"] = timeline
    return summary, frames


def _progress_point(state, dt: float) -> list:
    return [float(state.step) * dt, int(state.force_calls), int(state.fallbacks)]


def call_rates(timeline: list, fraction: float = 0.2) -> tuple[float, float] | None:
    """xTB calls per ps over the first and the last ``fraction`` of a run's ``timeline``
    (points at chunk ends, so the spans are rounded to them); None if it is too short."""
    t = np.array([p[0] for p in timeline])
    c = np.array([p[1] for p in timeline])
    if len(t) < 3 or t[-1] <= 0:
        return None
    i = max(1, int(np.searchsorted(t, fraction * t[-1])))
    j = min(len(t) - 2, int(np.searchsorted(t, (1 - fraction) * t[-1])))
    return (1000.0 * (c[i] - c[0]) / (t[i] - t[0]), 1000.0 * (c[-1] - c[j]) / (t[-1] - t[j]))


def trajectory_format(path) -> str:
    """ASE's name of the format a trajectory at ``path`` is written in, from its extension
    (.traj: ASE trajectory; .xyz/.extxyz: extended XYZ, both keep velocities, energies and
    forces; .pdb and other multi-frame formats ASE writes keep positions only).
    InputError for an extension ASE cannot write several frames to."""
    from ase.io.formats import UnknownFileTypeError, filetype, get_ioformat

    hint = "name it .traj (ASE trajectory, keeps velocities) or .xyz (extended XYZ)"
    try:
        fmt = get_ioformat(filetype(os.fspath(path), read=False))
    except UnknownFileTypeError:
        raise InputError(f"cannot tell the trajectory format of {path} from its extension; {hint}") from None
    if not fmt.can_write or fmt.single:
        raise InputError(f"ASE cannot write a multi-frame trajectory as {fmt.name} ({path}); {hint}")
    return fmt.name


def write_trajectory(path, molecule: Molecule, frames: Frames) -> None:
    """Write frames to ``path`` (positions, velocities, energy, forces where the format holds
    them; format from the extension, ``trajectory_format``), atomically."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    path = os.fspath(path)
    fmt = trajectory_format(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    atoms = []
    for i in range(len(frames.energy)):
        a = molecule.to_atoms(frames.positions[i], frames.velocities[i])
        a.calc = SinglePointCalculator(a, energy=float(frames.energy[i]), forces=np.asarray(frames.forces[i]))
        atoms.append(a)
    try:
        write(tmp, atoms, format=fmt)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -- replicas of one run as tasks of jkstep.parallel (jkstep run --replicas N) ----------------

#: Summary keys averaged over replicas (the others are kept where every replica agrees).
MEAN_KEYS = ("simulated_fs", "xtb_calls", "accepted", "rejected", "fallbacks", "drift_kj_mol_ps",
             "energy_std_kj_mol", "mean_temperature_k", "wall_s", "scf_failures")


def run_replica(molecule, config, xtb_options: dict, model: str | None = None, reversal_correction=None,
                fast: str | None = None, k: int = 1, velocities=None, frames: bool = False) -> dict:
    """One replica of ``jkstep run --replicas N`` as a task: its own xTB potential (one thread),
    model jump or fast force built here from their names, ``jkstep.md.run_md`` with
    ``config`` (its seed is the replica's). Returns {"summary": ..., "frames": {array: values}
    (only with ``frames``)}."""
    from jkstep.parallel import built, flush_steps, step_reporter
    from jkstep.potentials.xtb import xtb_potential

    pot = xtb_potential(molecule, workers=1, **xtb_options)
    jump, fast_force = None, None
    if model is not None:
        from jkstep.kstep import model_jump
        from jkstep.model.pretrained import load_pretrained

        bundle = built(f"bundle-{model}", lambda: load_pretrained(model))   # read once per worker process
        jump = model_jump(bundle, molecule.numbers, molecule.masses, reversal_correction)
    if fast is not None:
        if fast == "mmff":
            from jkstep.potentials.mmff import mmff_potential

            fast_force = mmff_potential(molecule)
        else:
            from jkstep.model.potential import learned_potential

            fast_force = learned_potential(fast, molecule)
    report = step_reporter()
    options = {"fast": fast_force} if fast_force is not None else {}
    try:
        summary, fr = run_md(molecule, pot, config, jump=jump, k=k, progress=report, calls=lambda: pot.calls,
                             velocities=velocities, **options)
    finally:
        flush_steps(report)
        close = getattr(pot, "close", None)
        if close:
            close()
    summary["scf_failures"] = pot.scf_failures
    out = {"summary": summary}
    if frames:
        out["frames"] = {name: np.asarray(getattr(fr, name)) for name in
                         ("positions", "velocities", "forces", "energy", "step", "failed")}
    return out


def mean_summary(summaries: list[dict]) -> dict:
    """The mean of replica summaries: ``MEAN_KEYS`` averaged (None where a replica has None),
    ``blew_up`` true if any replica blew up, other keys kept where every replica agrees."""
    out = {}
    for key in summaries[0]:
        values = [s.get(key) for s in summaries]
        if key in MEAN_KEYS:
            out[key] = None if any(v is None for v in values) else float(np.mean(values))
        elif key == "blew_up":
            out[key] = any(bool(v) for v in values)
        elif all(isinstance(v, (str, int, float, bool, type(None))) and v == values[0] for v in values):
            out[key] = values[0]
    return out
