"""Command line: ``jkstep run`` (and later stages of the pipeline).

Only this module parses arguments, prints progress bars and exits the process. Bad input
exits with status 2 and one line ``jkstep: error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys

#: The main job's molecule: alanine dipeptide (22 atoms), the field's standard test case.
DEFAULT_SMILES = "CC(=O)NC(C)C(=O)NC"
#: The learned jump of ``--integrator kstep`` (shipped in jkstep/pretrained/).
DEFAULT_MODEL = "gfn2-k8"
#: The main job's fast force: ``jkstep run`` with no integrator named is RESPA with it (k = 8)
#: where MMFF94 can type the molecule (it is a Δ-potential on MMFF94), else kstep with
#: DEFAULT_MODEL; chosen on the validation molecules (docs/results.md, "The shipped fast force").
DEFAULT_FAST = "gfn2-fast"
DEFAULT_K = 8
#: A learned Δ-potential on MMFF94 runs in three levels: MMFF94 every inner step, the network's
#: correction as kicks every DEFAULT_FAST_EVERY inner steps where that divides k (as well conserved
#: as every step on the validation molecules, for half the network calls: docs/results.md, "Three
#: levels"). A full network (no MMFF94 baseline) runs in two levels unless --fast-every says otherwise.
DEFAULT_FAST_EVERY = 2
DEFAULT_EQUILIBRATE_PS = 0.5   # jkstep run: Langevin thermalisation before production by default


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2, as for every other bad input
        _fail(message)


def _fail(message: str):
    print(f"jkstep: error: {message}", file=sys.stderr)
    sys.exit(2)


def _add_molecule_args(p):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--smiles", help=f"molecule as SMILES (default: alanine dipeptide {DEFAULT_SMILES})")
    src.add_argument("--file", help="molecule from any file ASE reads (xyz, pdb, sdf, traj, ...)")
    p.add_argument("--charge", type=int, default=None, help="total charge (file input; SMILES carries its own)")
    p.add_argument("--spin", type=int, default=None, help="unpaired electrons (file input)")
    p.add_argument("--conformer-seed", type=int, default=0, help="RDKit embedding seed for --smiles")


def _add_parallel_args(p, tasks: str):
    """--workers / --scheduler of the commands whose tasks run on the Dask execution layer."""
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help=f"worker processes of the embedded Dask cluster, {tasks} (default: one per core)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the tasks on an existing Dask scheduler instead, e.g. tcp://127.0.0.1:8786 "
                        "(docs/cluster.md); the results do not depend on which")


def _add_xtb_args(p, fallback_method: bool = False):
    """The xTB flags of every command that calls xTB."""
    p.add_argument("--method", default="GFN2-xTB", choices=["GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"])
    p.add_argument("--accuracy", type=float, default=None, help="tblite SCF accuracy (default 0.01)")
    if fallback_method:
        p.add_argument("--fallback-method", default=None, choices=["GFN1-xTB"],
                       help="method tried when an SCF fails twice (default: none, the run stops)")


def _add_hybrid_args(p, what: str):
    """The k-step flags that ``run`` and ``evaluate`` share (``what``: whose fallback it is)."""
    from jkstep.kstep import REVERSAL_CORRECTION

    p.add_argument("--fallback-steps", type=int, default=None, metavar="N",
                   help=f"{what} fallback macro-step is N Verlet steps of k·dt/N (N xTB calls; default: steps "
                        "of at most 0.5 fs, 4 at k = 8; N = k gives steps of dt)")
    p.add_argument("--reversal-correction", type=float, default=None,
                   help="share of the model's time-reversal error removed from each jump, 0-1 (one more network "
                        f"call, no xTB call; default {REVERSAL_CORRECTION}, 0 = off)")


def _add_guard_args(p):
    """``jkstep run``'s flags of ``jkstep.kstep.KStepOptions`` and ``Guards``; unset ones keep the
    defaults written there."""
    from jkstep.kstep import Guards, KStepOptions

    g, o = Guards(), KStepOptions()
    kg = p.add_argument_group("kstep acceptance and options (jkstep.kstep.Guards, KStepOptions)")
    kg.add_argument("--delta-scale", type=float, default=None,
                    help=f"scale of the learned correction on the first attempt, halved per retry ({o.delta_scale})")
    kg.add_argument("--max-attempts", type=int, default=None,
                    help=f"attempts per jump before the Verlet fallback ({g.max_attempts})")
    kg.add_argument("--max-displacement", type=float, default=None, help="Å per atom per jump (default 0.025·k)")
    kg.add_argument("--max-energy-rise", type=float, default=None,
                    help=f"total-energy rise per jump, eV ({g.max_energy_rise})")
    kg.add_argument("--max-energy-drift", type=float, default=None,
                    help=f"NVE: keep the total energy within this many eV of its start ({g.max_energy_drift}; "
                         "<0 turns it off)")
    kg.add_argument("--max-kinetic-rise", type=float, default=None,
                    help=f"kinetic-energy rise per jump, eV ({g.max_kinetic_rise})")
    kg.add_argument("--clash-ratio", type=float, default=None,
                    help=f"reject if any pair is closer than this x the sum of covalent radii ({g.clash_ratio})")
    kg.add_argument("--max-force-error", type=float, default=None,
                    help="escalate to real steps when the model's force estimate misses the xTB forces by "
                         "more than this RMS, eV/Å (default off)")
    kg.add_argument("--energy-rescale", action="store_true",
                    help="FlashMD-style velocity rescale to the initial total energy (off by default)")
    kg.add_argument("--energy-relaxation", type=float, default=None, metavar="FS",
                    help="NVE: after each accepted jump, take kΔt/FS of the total energy's excursion "
                         "back by a velocity rescale (weak coupling; default off)")
    kg.add_argument("--energy-window", type=float, default=None, metavar="EV",
                    help="NVE: rescale the velocities when the total energy leaves its start by more than "
                         "EV, back to the window's edge (use with --max-energy-drift -1; default off)")
    kg.add_argument("--no-angular-momentum", action="store_true",
                    help="do not restore the angular momentum after a learned jump (it is restored by "
                         "default: an isolated molecule conserves it)")


def _kstep_options(args):
    """``jkstep run``'s ``KStepOptions``: the flags given, the dataclasses' defaults for the rest."""
    from jkstep.kstep import Guards, KStepOptions

    given = {name: getattr(args, name) for name in ("max_displacement", "clash_ratio", "max_energy_rise",
                                                   "max_kinetic_rise", "max_attempts", "max_force_error",
                                                   "max_energy_drift") if getattr(args, name) is not None}
    if given.get("max_energy_drift", 0.0) < 0:
        given["max_energy_drift"] = None
    options = dict(guards=Guards(**given), energy_rescale=args.energy_rescale,
                   energy_relaxation=args.energy_relaxation, energy_window=args.energy_window,
                   fallback_steps=args.fallback_steps, conserve_angular_momentum=not args.no_angular_momentum)
    if args.delta_scale is not None:
        options["delta_scale"] = args.delta_scale
    return KStepOptions(**options)


def _add_fast_every_arg(parser):
    parser.add_argument("--fast-every", type=int, default=None, metavar="N",
                        help=f"respa with a learned --fast: MMFF94 every inner step and the network's correction as "
                             f"kicks every N inner steps (three-level RESPA; 1: the whole fast force every step; "
                             f"default {DEFAULT_FAST_EVERY} for a Δ-potential on MMFF94 such as gfn2-fast where it "
                             f"divides --k, else 1)")


def _add_adapt_steps_arg(parser):
    from jkstep.model.adapt import AdaptConfig

    parser.add_argument("--adapt-steps", type=int, default=None, metavar="N",
                        help=f"with --adapt: optimiser steps of the fine-tuning (default {AdaptConfig.steps}; "
                             f"fewer is quicker and fits less, docs/results.md)")


def _adapt_steps(args) -> int:
    """--adapt-steps, or its default; given without --adapt it is an error (it would do nothing)."""
    from jkstep.errors import InputError
    from jkstep.model.adapt import AdaptConfig

    if args.adapt_steps is not None and not args.adapt:
        raise InputError("--adapt-steps sets the fine-tuning of --adapt: give --adapt too")
    return AdaptConfig.steps if args.adapt_steps is None else args.adapt_steps


def _fast_every(args, k: int, fast=None) -> int:
    """--fast-every, or its default for the fast force named by --fast (``fast``: that force, where
    it is loaded already): DEFAULT_FAST_EVERY for a Δ-potential on MMFF94 where it divides k, else 1
    (MMFF94 itself, a full network, none)."""
    if args.fast_every is not None:
        return args.fast_every
    if args.fast in (None, "mmff") or k % DEFAULT_FAST_EVERY:
        return 1
    if fast is None:
        from jkstep.model.potential import read_potential_checkpoint

        _, _, config = read_potential_checkpoint(args.fast)   # an unknown name or path fails here, early
        delta = config.baseline == "mmff"
    else:
        delta = getattr(fast, "baseline", None) is not None
    return DEFAULT_FAST_EVERY if delta else 1


def _run_parser(sub):
    run = sub.add_parser("run", help="one MD run; prints a summary (and writes it as JSON with --summary)")
    _add_molecule_args(run)
    run.add_argument("--integrator", default=None, choices=["verlet", "langevin", "kstep", "respa"],
                     help=f"verlet: NVE velocity Verlet; langevin: BAOAB at --temperature; kstep: learned "
                          f"k-step jump + one xTB call; respa: k Verlet steps on a fast force (--fast) between "
                          f"half kicks of the xTB-minus-fast force, one xTB call per k·dt (default: respa with "
                          f"the shipped {DEFAULT_FAST} at k = {DEFAULT_K} where MMFF94 types the molecule, else "
                          f"kstep with {DEFAULT_MODEL}; verlet with --dt)")
    run.add_argument("--fast", default=None, metavar="mmff|NAME|PATH",
                     help=f"respa: the fast force, mmff (MMFF94) or a learned fast force (a shipped name such as "
                          f"{DEFAULT_FAST}, or a checkpoint directory); default mmff with --integrator respa, "
                          f"{DEFAULT_FAST} in the main job")
    run.add_argument("--k", type=int, default=None,
                     help=f"respa: inner steps of --dt per xTB call (default {DEFAULT_K})")
    _add_fast_every_arg(run)
    run.add_argument("--adapt", action="store_true",
                     help="respa with a learned --fast: fine-tune it on the Langevin equilibration's own xTB frames "
                          "before the run (no extra xTB call; 25-60 s of CPU; needs --equilibrate-ps ≥ 0.1)")
    _add_adapt_steps_arg(run)
    run.add_argument("--model", help=f"kstep: a shipped model name (`jkstep models` lists them) or the path of an "
                                     f"Orbax checkpoint directory (default {DEFAULT_MODEL})")
    run.add_argument("--ensemble", default=None, choices=["nve", "nvt"],
                     help="kstep and respa: nve, or nvt with a Langevin thermostat step per macro-step "
                          "(default nve)")
    _add_hybrid_args(run, "kstep and respa: a")
    _add_guard_args(run)
    run.add_argument("--dt", type=float, default=None,
                     help="time step in fs (default 0.25; kstep uses its model's base step)")
    run.add_argument("--ps", type=float, default=0.5, help="simulated time in ps (default 0.5)")
    run.add_argument("--temperature", type=float, default=300.0,
                     help="K: initial Maxwell-Boltzmann velocities and Langevin target (default 300)")
    run.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs (default 0.01)")
    run.add_argument("--hydrogen-mass", type=float, default=None, metavar="AMU",
                     help="hydrogen mass repartitioning: every H gets AMU (3.024 is usual), taken from its "
                          "heavy atom; the same distribution of positions, slower X-H vibrations, so respa at "
                          "k = 16 resonates less (docs/results.md); not for spectra (default: true masses)")
    run.add_argument("--equilibrate-ps", type=float, default=None,
                     help="Langevin thermalisation before production, ps; an NVE run then rescales the "
                          "velocities until its mean temperature is within 2 %% of --temperature (default "
                          f"{DEFAULT_EQUILIBRATE_PS}; 0 with --keep-velocities)")
    run.add_argument("--equilibrate-dt", type=float, default=None, metavar="FS",
                     help="time step of that thermalisation, fs (default: the run's dt; the same value "
                          "starts runs of different time steps from the same state)")
    _add_xtb_args(run, fallback_method=True)
    run.add_argument("--save-every", type=int, default=4, help="record a frame every N steps (default 4)")
    run.add_argument("--seed", type=int, default=0, help="seed of the velocities and the thermostat")
    run.add_argument("--keep-velocities", action="store_true",
                     help="start from the velocities stored in --file (its last frame: a previous run's "
                          "--out .traj or .xyz) instead of Maxwell-Boltzmann ones: continues that run")
    run.add_argument("--out", help="write the frames to this ASE trajectory file")
    run.add_argument("--summary", help="write the summary as JSON to this path")
    run.add_argument("--replicas", type=int, default=1, metavar="N",
                     help="run N replicas, replica r seeded --seed + r, each a task of the Dask execution layer; "
                          "the summary holds each replica's and their mean under `replicas` (default 1)")
    _add_parallel_args(run, "one task per replica")
    run.set_defaults(handler=cmd_run)


def _evaluate_parser(sub):
    ev = sub.add_parser("evaluate", help="the hybrid against the equal-cost baselines on any molecule, "
                                         "from the same thermalised states, with a noise floor")
    _add_molecule_args(ev)
    ev.add_argument("--model", help="a shipped model name (`jkstep models` lists them) or a checkpoint directory "
                                    "(without it: only the baselines and the zero-network corrector are run, at --k)")
    ev.add_argument("--k", type=int, default=8, help="base steps per jump when no --model is given (default 8)")
    ev.add_argument("--ps", type=float, default=5.0, help="NVE length of every replica, ps (default 5)")
    ev.add_argument("--replicas", type=int, default=4, help="same-energy replicas (default 4, at least 2)")
    ev.add_argument("--temperature", type=float, default=300.0, help="thermalisation temperature, K (default 300)")
    ev.add_argument("--equilibrate-ps", type=float, default=1.0, help="Langevin thermalisation, ps (default 1)")
    _add_xtb_args(ev)
    ev.add_argument("--seed", type=int, default=0)
    _add_hybrid_args(ev, "every hybrid contender's")
    ev.add_argument("--energy-rescale", action="store_true",
                    help="also run kstep_rescaled: the model with the FlashMD-style velocity rescale to the "
                         "initial total energy (reported beside kstep, never instead of it)")
    ev.add_argument("--energy-relaxation", type=float, default=None, metavar="FS",
                    help="also run kstep_relaxed: the model with the weak-coupling energy rescale of "
                         "jkstep run --energy-relaxation FS (reported beside kstep)")
    ev.add_argument("--relaxed-max-energy-drift", type=float, default=-1.0, metavar="EV",
                    help="kstep_relaxed's total-energy excursion guard, eV (default off: the coupling "
                         "bounds the energy instead; 0.05 is kstep's)")
    ev.add_argument("--energy-window", type=float, default=None, metavar="EV",
                    help="also run kstep_windowed: the model without the excursion guard, its total energy "
                         "held within EV of its start by a rescale at the edges (jkstep run --energy-window)")
    ev.add_argument("--equal-cost", action=argparse.BooleanOptionalAction, default=True,
                    help="with --model, also run verlet_equal_cost: Verlet at the time step that makes as many "
                         "xTB calls as kstep made (default on; --no-equal-cost skips it)")
    ev.add_argument("--fast", metavar="NAME|PATH",
                    help="also run respa: RESPA with this learned fast force (a shipped name such as gfn2-fast "
                         "or a checkpoint directory) beside mmff_respa, which is always run")
    _add_fast_every_arg(ev)
    ev.add_argument("--mollify", action="store_true",
                    help="with --fast: run respa mollified on the X–H bonds (equilibrium MOLLY; its energy is "
                         "the modified energy the scheme conserves); mmff_respa stays impulse")
    ev.add_argument("--adapt", action="store_true",
                    help="with --fast: also run respa_adapted, the fast force fine-tuned on the thermalisation's "
                         "own xTB frames (no extra xTB call; 25-60 s of CPU, counted in its wall_s)")
    _add_adapt_steps_arg(ev)
    ev.add_argument("--summary", help="write the evaluation as JSON to this path")
    ev.add_argument("--plots", help="directory for the energy, spectrum and distribution plots")
    _add_parallel_args(ev, "one task per contender and replica")
    ev.set_defaults(handler=cmd_evaluate)


def _train_parser(sub):
    tr = sub.add_parser("train", help="train a k-step model from YAML configs (resumes from OUT/latest)")
    tr.add_argument("--model-config", default="configs/model_qm_k8.yaml", help="model YAML (default QM k = 8)")
    tr.add_argument("--train-config", default="configs/train_qm_k8.yaml",
                    help="training YAML with its data: section (default QM k = 8)")
    tr.add_argument("--out", required=True, help="checkpoint directory (latest/ and best/ inside)")
    tr.add_argument("--pretrained", help="start from this checkpoint: an MM model (MM → QM transfer) or a "
                    "QM model to fine-tune (a shipped name or a checkpoint directory)")
    tr.add_argument("--freeze-layers", nargs="+", default=(), metavar="NAME",
                    help="layers kept fixed while fine-tuning (names or globs, e.g. embedding interaction_0)")
    tr.add_argument("--heads", default="map", choices=["map", "reinit"],
                    help="with --pretrained: map the output heads or re-initialise them")
    tr.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: config)")
    tr.set_defaults(handler=cmd_train)


def _export_parser(sub):
    ex = sub.add_parser("export", help="ship a trained checkpoint (EMA weights + metadata) as a named model "
                                       "in jkstep/pretrained/NAME, with its data provenance")
    ex.add_argument("--from", dest="source", required=True, help="training run directory (its best/ is used)")
    ex.add_argument("--name", required=True, help="shipped name, e.g. gfn2-k8")
    ex.add_argument("--evaluation", nargs="*", default=None,
                    help="jkstep evaluate JSON summaries to record (each labelled with its molecule's name and "
                         "split where data/qm_molecules.smi and data/qm_splits.json list it); they replace "
                         "those of an exported source, which are kept without this option")
    ex.add_argument("--notes", help="YAML with the record's prose: description, stages, regenerate "
                                    "(e.g. configs/ship/gfn2-k8_record.yaml); kept from an exported source "
                                    "where not given")
    ex.add_argument("--to", help="target directory (default jkstep/pretrained/NAME)")
    ex.set_defaults(handler=cmd_export)


def _generate_parser(sub, name: str, config: str, tasks: str, help_: str, handler):
    """generate and generate-mm: trajectories from a YAML config, one Dask task per molecule."""
    gen = sub.add_parser(name, help=help_)
    gen.add_argument("--config", default=config, help=f"YAML config (default {config})")
    _add_parallel_args(gen, tasks)
    gen.add_argument("--only", nargs="+", metavar="NAME", default=None,
                     help="generate only these molecules (names from the molecules file)")
    gen.add_argument("--summary", help="write the per-molecule summaries as JSON to this path")
    gen.set_defaults(handler=handler)


def _dataset_parser(sub):
    ds = sub.add_parser("dataset", help="k-step window files (frames + window indices, .npz without pickle) "
                                        "from generated trajectories; rerun to finish an interrupted build")
    ds.add_argument("--data", default="data/qm", help="trajectory root (default data/qm)")
    ds.add_argument("--out", default=None, help="output directory (default <data>/windows)")
    ds.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 32], help="jump lengths in base steps "
                                                                            "(default 4 8 16 32)")
    ds.add_argument("--stride", type=int, default=4, help="base steps between window starts (default 4)")
    ds.add_argument("--runs", nargs="+", default=["production"],
                    help="run directories per molecule (default production; 'all' for every run)")
    ds.add_argument("--overwrite", action="store_true", help="rebuild files that exist")
    ds.set_defaults(handler=cmd_dataset)


def _generate_fast_parser(sub):
    ff = sub.add_parser("generate-fast", help="labelled frames (xTB and MMFF94 energies and forces) for the "
                                              "learned fast force; resumable: rerun to continue")
    ff.add_argument("--config", default="configs/fast/data.yaml", help="YAML config (default configs/fast/data.yaml)")
    ff.add_argument("--compact", metavar="PATH", default=None,
                    help="instead of generating, pack the generated molecule files into one committed float32 "
                         "file (e.g. data/fast_frames.npz) with a provenance file beside it")
    ff.add_argument("--triplets", action="store_true",
                    help="--config is a triplet config (configs/fast/triplets.yaml): label, for each frame of its "
                         "frame file, the frames one short step before and after along a thermal motion (the "
                         "training's curvature term, w_curvature); with --compact, pack those")
    _add_parallel_args(ff, "one task per molecule")
    ff.set_defaults(handler=cmd_generate_fast)


def build_parser() -> argparse.ArgumentParser:
    """The ``jkstep`` parser: one builder per subcommand."""
    parser = _Parser(prog="jkstep", description="Learned k-step molecular dynamics with GFN-xTB.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _run_parser(sub)
    _evaluate_parser(sub)
    _train_parser(sub)
    _export_parser(sub)
    _generate_parser(sub, "generate", "configs/qm.yaml",
                     "one task per molecule (default: the config's workers, else one per core)",
                     "xTB reference trajectories for training from a YAML config (chunked, resumable: "
                     "rerun the same command to continue)", cmd_generate)
    _dataset_parser(sub)
    _generate_parser(sub, "generate-mm", "configs/mm.yaml", "one task per molecule",
                     "classical MMFF94 trajectories for pretraining from a YAML config (replicas vmap'd, "
                     "chunked, resumable: rerun to continue)", cmd_generate_mm)
    _generate_fast_parser(sub)
    md = sub.add_parser("models", help="the shipped models: name, jump, elements and what each is for "
                                       "(from jkstep/pretrained/NAME/provenance.json)")
    md.set_defaults(handler=cmd_models)
    return parser


def load_molecule(args):
    """The molecule of --file or --smiles, refused with one line if it cannot be simulated."""
    from jkstep.errors import InputError
    from jkstep.molecule import Molecule, check_simulatable

    if args.file:
        molecule = Molecule.read(args.file, charge=args.charge, spin=args.spin)
    else:
        molecule = Molecule.from_smiles(DEFAULT_SMILES if args.smiles is None else args.smiles,
                                        seed=args.conformer_seed)
        for name in ("charge", "spin"):
            given = getattr(args, name)
            if given is not None and given != getattr(molecule, name):
                raise InputError(f"--{name} {given} contradicts the SMILES, which gives {name} "
                                 f"{getattr(molecule, name)}; write the {name} into the SMILES (e.g. [NH4+], "
                                 f"[CH3] for a radical) or leave --{name} out")
    check_simulatable(molecule)
    return molecule


def cmd_run(args) -> int:
    from tqdm import tqdm

    from jkstep.errors import InputError
    from jkstep.md import RunConfig, run_md, write_trajectory
    from jkstep.potentials.xtb import DEFAULT_ACCURACY, xtb_potential

    options = _kstep_options(args)   # bad option values fail here, before any molecule or model is loaded
    molecule = load_molecule(args)
    if args.hydrogen_mass is not None:
        molecule = molecule.repartition_hydrogen_mass(args.hydrogen_mass)
    velocities = None
    if args.keep_velocities:
        from jkstep.molecule import read_velocities

        if not args.file:
            raise InputError("--keep-velocities continues from a file's last frame: give it with --file")
        velocities = read_velocities(args.file)
    jump, k, dt = None, 1, 0.25 if args.dt is None else args.dt
    if args.integrator is None:
        args.integrator = _default_integrator(args, molecule)
        if args.integrator == "respa" and args.fast is None:
            args.fast = DEFAULT_FAST
    if args.integrator == "kstep":
        from jkstep.kstep import model_jump
        from jkstep.model.pretrained import load_pretrained

        bundle = load_pretrained(args.model or DEFAULT_MODEL)
        if args.dt is not None and abs(args.dt - bundle.dt) > 1e-12:
            raise InputError(f"--dt {args.dt} differs from the model's base step {bundle.dt} fs; leave --dt out")
        jump, k, dt = (model_jump(bundle, molecule.numbers, molecule.masses, _reversal_correction(args)),
                       bundle.k, bundle.dt)
    elif args.model:
        raise InputError("--model is only used with --integrator kstep")
    fast = None
    if args.integrator == "respa":
        k = DEFAULT_K if args.k is None else args.k
        fast = _fast_force(args.fast or "mmff", molecule)
    elif args.fast or args.k is not None or args.fast_every is not None or args.adapt:
        raise InputError("--fast, --k, --fast-every and --adapt are only used with --integrator respa")
    if args.integrator == "langevin" and args.ensemble == "nve":
        raise InputError("--integrator langevin is NVT (a thermostat); for NVE use verlet or kstep")
    ensemble = args.ensemble or ("nvt" if args.integrator == "langevin" else "nve")
    config = RunConfig(integrator=args.integrator, dt=dt, ensemble=ensemble, ps=args.ps,
                       temperature=args.temperature, friction=args.friction,
                       equilibrate_ps=(args.equilibrate_ps if args.equilibrate_ps is not None
                                       else 0.0 if args.keep_velocities else DEFAULT_EQUILIBRATE_PS),
                       equilibrate_dt=args.equilibrate_dt,
                       save_every=args.save_every, seed=args.seed, fast=args.fast or "mmff",
                       fast_every=_fast_every(args, k, fast) if args.integrator == "respa" else 1,
                       adapt=args.adapt, adapt_steps=_adapt_steps(args), kstep_options=options)
    if args.replicas != 1 or args.workers is not None or args.scheduler is not None:
        return _run_replicas(args, molecule, config, k, velocities)
    pot = xtb_potential(molecule, method=args.method, fallback_method=args.fallback_method,
                        accuracy=DEFAULT_ACCURACY if args.accuracy is None else args.accuracy)
    with tqdm(total=config.n_steps, unit="step", desc=f"{args.integrator} {molecule.formula}",
              file=sys.stderr, disable=None) as bar:
        summary, frames = run_md(molecule, pot, config, jump=jump, k=k, progress=bar.update,
                                 calls=lambda: pot.calls, velocities=velocities, fast=fast)
    summary["scf_failures"] = pot.scf_failures
    summary["method"] = args.method
    summary["hydrogen_mass"] = args.hydrogen_mass
    summary["velocities_from"] = args.file if args.keep_velocities else None   # None: Maxwell-Boltzmann
    if args.out:
        write_trajectory(args.out, molecule, frames)
        summary["trajectory"] = args.out
    _print_summary(summary)
    if args.summary:
        _write_json(args.summary, summary)
    if summary.get("interrupted"):
        print(f"jkstep: interrupted after {summary['simulated_fs'] / 1000:.3f} ps of {args.ps} ps; "
              "what was finished is written", file=sys.stderr)
        return 143 if _TERMINATED else 130
    return 1 if summary["blew_up"] else 0


def _run_replicas(args, molecule, config, k: int, velocities) -> int:
    """``jkstep run --replicas N``: replica r (seed + r) as one task of ``jkstep.parallel`` each;
    finished replicas are kept in the result cache (a rerun reuses them). Prints each replica's
    summary and their mean; the JSON holds the mean's keys and, under ``replicas``, every
    replica's summary and the mean."""
    import dataclasses
    import time

    from tqdm import tqdm

    from jkstep import parallel
    from jkstep.errors import InputError
    from jkstep.md import mean_summary, run_replica, write_trajectory
    from jkstep.potentials.xtb import DEFAULT_ACCURACY, xtb_potential
    from jkstep.rollout import Frames

    if isinstance(args.replicas, bool) or args.replicas < 1:
        raise InputError(f"--replicas must be a whole number ≥ 1, got {args.replicas}")
    parallel.check_workers(args.workers, args.scheduler)
    xtb_options = dict(method=args.method, fallback_method=args.fallback_method,
                       accuracy=DEFAULT_ACCURACY if args.accuracy is None else args.accuracy)
    xtb_potential(molecule, **xtb_options)  # bad input fails here, before any cluster is started
    model = (args.model or DEFAULT_MODEL) if args.integrator == "kstep" else None
    fast = (args.fast or "mmff") if args.integrator == "respa" else None
    options = dict(model=model, reversal_correction=_reversal_correction(args) if model else None, fast=fast, k=k,
                   velocities=velocities, frames=bool(args.out))
    tasks = []
    for r in range(args.replicas):
        cfg = dataclasses.replace(config, seed=config.seed + r)
        key = parallel.task_key(f"run-r{r}", molecule, cfg, xtb_options, options)
        tasks.append(parallel.Task(key, run_replica, molecule, cfg, xtb_options, cache=True, **options))
    t0 = time.perf_counter()
    with tqdm(total=config.n_steps * args.replicas, unit="step", file=sys.stderr, disable=None,
              desc=f"{args.integrator} {molecule.formula} x {args.replicas}") as bar:
        done = {}

        def finished(key, result):
            done[key] = result
            bar.set_postfix_str(f"{len(done)}/{len(tasks)} replicas")

        try:
            parallel.run_tasks(tasks, workers=args.workers, scheduler=args.scheduler, on_task=finished,
                               on_steps=lambda key, n: bar.update(n), results=parallel.ResultCache())
        except BaseException as exc:
            from jkstep.errors import is_interrupt

            if is_interrupt(exc):
                print(f"jkstep: interrupted; {len(done)} of {len(tasks)} replicas finished, kept in "
                      f"{parallel.results_dir()} (the same command reuses them)", file=sys.stderr)
                return 143 if _TERMINATED else 130
            raise
    summaries = []
    for r, task in enumerate(tasks):
        summary = dict(done[task.key]["summary"], seed=config.seed + r, replica=r, method=args.method,
                       hydrogen_mass=args.hydrogen_mass,
                       velocities_from=args.file if args.keep_velocities else None)
        if args.out:
            root, ext = os.path.splitext(args.out)
            path = f"{root}_r{r}{ext}"
            write_trajectory(path, molecule, Frames(**done[task.key]["frames"]))
            summary["trajectory"] = path
        summaries.append(summary)
        _print_summary(summary)
    mean = mean_summary(summaries)
    result = dict(mean, wall_s=time.perf_counter() - t0,
                  replicas={"n": args.replicas, "seeds": [s["seed"] for s in summaries], "summaries": summaries,
                            "mean": mean})
    print(f"mean of {args.replicas} replicas: drift {mean.get('drift_kj_mol_ps')} kJ/mol/ps, energy std "
          f"{mean.get('energy_std_kj_mol')} kJ/mol, T {mean.get('mean_temperature_k')} K, xTB calls "
          f"{mean.get('xtb_calls')}; blew up: {mean['blew_up']}")
    if args.summary:
        _write_json(args.summary, result)
    return 1 if mean["blew_up"] else 0


def _default_integrator(args, molecule) -> str:
    """``jkstep run``'s integrator when none is named: kstep where --model is given; verlet where
    --dt is (a time step of the user's own) or nothing ships; else RESPA with DEFAULT_FAST where
    it ships and MMFF94 types the molecule, kstep with DEFAULT_MODEL where not."""
    from jkstep.model.pretrained import shipped_fast_forces, shipped_names

    if args.model:
        return "kstep"
    if args.dt is not None:
        return "verlet"
    if args.fast is not None or (DEFAULT_FAST in shipped_fast_forces() and _mmff_types(molecule)):
        return "respa"
    return "kstep" if DEFAULT_MODEL in shipped_names() else "verlet"


def _mmff_types(molecule) -> bool:
    """Whether MMFF94 has parameters for every atom of ``molecule``."""
    from jkstep.errors import InputError
    from jkstep.potentials.mmff import mmff_potential

    try:
        mmff_potential(molecule)
    except InputError:
        return False
    return True


def _fast_force(name: str, molecule):
    """The fast force of ``jkstep run --integrator respa --fast NAME``: MMFF94 for ``mmff``, else a
    learned fast force (a shipped name or a checkpoint directory)."""
    if name == "mmff":
        from jkstep.potentials.mmff import mmff_potential

        return mmff_potential(molecule)
    from jkstep.model.potential import learned_potential

    return learned_potential(name, molecule)


def _reversal_correction(args) -> float:
    """--reversal-correction, or the integrator's default (jkstep.kstep.REVERSAL_CORRECTION)."""
    from jkstep.kstep import REVERSAL_CORRECTION

    return REVERSAL_CORRECTION if args.reversal_correction is None else args.reversal_correction


def cmd_evaluate(args) -> int:
    from tqdm import tqdm

    import functools

    from jkstep import parallel
    from jkstep.evaluate.compare import EvalConfig, evaluate
    from jkstep.potentials.xtb import DEFAULT_ACCURACY, xtb_potential

    parallel.check_workers(args.workers, args.scheduler)
    molecule = load_molecule(args)
    bundle = None
    if args.model:
        from jkstep.model.pretrained import load_pretrained

        bundle = load_pretrained(args.model)
    config = EvalConfig(k=args.k, ps=args.ps, n_replicas=args.replicas, temperature=args.temperature,
                        equilibrate_ps=args.equilibrate_ps, seed=args.seed,
                        energy_rescale=bool(args.energy_rescale and bundle is not None),
                        energy_relaxation=args.energy_relaxation if bundle is not None else None,
                        relaxed_max_energy_drift=(None if args.relaxed_max_energy_drift < 0
                                                  else args.relaxed_max_energy_drift),
                        energy_window=args.energy_window if bundle is not None else None,
                        reversal_correction=_reversal_correction(args), fallback_steps=args.fallback_steps,
                        equal_cost=args.equal_cost, fast=args.fast, mollify=args.mollify, adapt=args.adapt,
                        adapt_steps=_adapt_steps(args), fast_every=_fast_every(args, args.k))
    accuracy = DEFAULT_ACCURACY if args.accuracy is None else args.accuracy
    xtb_potential(molecule, method=args.method, accuracy=accuracy)  # bad input fails here, before any run
    bars = {}

    def progress(name, n, total):   # one bar over the tasks (their number grows as stages start)
        if "tasks" not in bars:
            bars["tasks"] = tqdm(total=total, unit="task", desc="evaluate", file=sys.stderr, disable=None)
        bar = bars["tasks"]
        bar.total = total
        bar.set_postfix_str(name, refresh=False)
        bar.update(n)

    results = parallel.ResultCache()
    try:
        with parallel.open_executor(args.workers, args.scheduler) as executor:
            result = evaluate(molecule, functools.partial(xtb_potential, molecule, method=args.method,
                                                          accuracy=accuracy),
                              config, bundle=bundle, plots=args.plots, progress=progress, executor=executor,
                              results=results)
    finally:
        for bar in bars.values():
            bar.close()
    _print_evaluation(result)
    if args.summary:
        _write_json(args.summary, result)
    if result.get("interrupted"):
        print("jkstep: interrupted; the summary holds the contenders that finished (the others are null); "
              f"finished tasks are kept in {results.directory}: the same command reuses them", file=sys.stderr)
        return 143 if _TERMINATED else 130
    return 0


def _print_evaluation(r: dict):
    def fmt(x, spec=".4g"):
        return "null" if x is None else str(x) if isinstance(x, bool) else format(x, spec)

    print(f"{r['molecule']}: k = {r['k']}, {r['n_replicas']} replicas x {r['simulated_fs'] / 1000:.2f} ps")
    keys = ("xtb_calls", "blew_up", "drift_kj_mol_ps", "energy_std_kj_mol", "mean_temperature_k", "bond_js",
            "angle_js", "dihedral_js", "spectrum_overlap", "xh_band_shift_cm1", "flip_rate_ratio", "wall_s")
    names = [n for n, c in r["contenders"].items() if c is not None]
    width = 2 + max(len(n) for n in names + ["noise floor"])
    print(f"{'':20s}" + "".join(f"{n:>{width}s}" for n in names) + f"{'noise floor':>{width}s}")
    for key in keys:
        row = [fmt(r["contenders"][n].get(key)) for n in names]
        floor = fmt(r["noise_floor"].get(key)) if key in r["noise_floor"] else ""
        print(f"{key:20s}" + "".join(f"{v:>{width}s}" for v in row) + f"{floor:>{width}s}")
    for name, c in r["contenders"].items():
        if c is not None and c.get("reason"):
            print(f"{name} not run: {c['reason']}")
    equal = r["contenders"].get("verlet_equal_cost")
    if equal:
        print(f"verlet_equal_cost: Verlet at {equal['dt_fs']:.3f} fs, as many xTB calls as kstep made "
              f"({equal['xtb_calls']} against {r['contenders']['kstep']['xtb_calls']})")
    adaptation = r.get("fast_adaptation")
    if adaptation:
        print(f"respa_adapted: the fast force fine-tuned on {adaptation['train_frames']} thermalisation frames "
              f"({adaptation['steps']} steps, {adaptation['wall_s']:.1f} s); force RMSE on the last "
              f"{adaptation['holdout_frames']} {fmt(adaptation['force_rmse_before_ev_a'])} -> "
              f"{fmt(adaptation['force_rmse_after_ev_a'])} eV/Å, energy-error curvature "
              f"{fmt(adaptation['curvature_rms_before'])} -> {fmt(adaptation['curvature_rms_after'])} eV/fs²")
    if r["one_jump"]:
        print("one jump: " + ", ".join(f"{k} {fmt(v)}" for k, v in r["one_jump"].items()))
    if r.get("one_jump_verlet_kdt"):
        print("one jump of Verlet at k·dt: " + ", ".join(f"{k} {fmt(v)}" for k, v in r["one_jump_verlet_kdt"].items()))


class ProgressBar:
    """A tqdm bar for ``jkstep.model.train.train(callback=...)``: steps, loss and the best
    validation loss so far."""

    def __init__(self, total: int, initial: int = 0, **tqdm_kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, **tqdm_kwargs)
        self.postfix: dict[str, str] = {}

    def __call__(self, step: int, metrics) -> None:
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        for key in ("loss", "rmse_x_a", "val_loss", "best_val_loss"):
            if key in metrics:
                self.postfix[key] = f"{metrics[key]:.4g}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


def cmd_train(args) -> int:
    from jkstep.errors import InputError, is_interrupt
    from jkstep.data.windows import data_setting, datasets_from_config
    from jkstep.model.pretrained import checkpoint_steps
    from jkstep.model.train import (EpochBatches, check_max_steps, load_model_config, load_train_config,
                                    train_from_config)

    check_max_steps(args.max_steps, "--max-steps")
    model_config = load_model_config(args.model_config)
    train_config = load_train_config(args.train_config)
    if type(model_config).__name__ == "PotentialConfig":   # a learned fast force (kind: potential)
        return _train_potential(args, model_config, train_config)
    batch = data_setting(train_config.data, "batch_size", 32)
    train_set, val_set = datasets_from_config(train_config.data, model_config.k, train_config.jumps)
    seed = train_config.seed
    print(f"train: {len(train_set.names)} trajectories, {train_set.n_windows} windows; "
          f"validation: {len(val_set.names)} trajectories, {val_set.n_windows} windows; "
          f"k = {model_config.k}, dt = {train_set.dt_fs} fs"
          + (f", {train_config.jumps} jumps per window" if train_config.jumps > 1 else ""))
    if abs(train_set.dt_fs - model_config.dt_fs) > 1e-12:
        raise InputError(f"the data have dt {train_set.dt_fs} fs but the model config says {model_config.dt_fs} fs")
    buckets = train_set.bucket_sizes()
    largest = max(buckets.values(), default=0)
    if not largest:
        raise InputError(f"the training trajectories give no windows of {train_config.jumps} jump(s) of "
                         f"k = {model_config.k} steps: they are too short; give longer trajectories")
    if batch > largest:  # a batch holds windows of one size bucket, and a smaller last batch is dropped
        where = f"; a batch holds one size bucket, the largest has {largest}" if len(buckets) > 1 else ""
        raise InputError(f"data: batch_size {batch} (in {args.train_config}) is larger than the "
                         f"{train_set.n_windows} training windows{where}: set batch_size to at most {largest}, "
                         "or give more windows (more or longer trajectories, a smaller stride)")
    batches = EpochBatches(lambda epoch: train_set.batches(batch, seed=seed + epoch, drop_last=True))
    val_batches = lambda: val_set.batches(batch, shuffle=False)  # noqa: E731
    from jkstep.data.windows import provenance

    # what the windows were read from, recorded now: the trajectories may grow later
    recorded = dict(provenance(train_config.data, model_config.k, (train_set, val_set)), recorded_at="training start",
                    train_windows=train_set.n_windows, val_windows=val_set.n_windows)
    bar = ProgressBar(args.max_steps or train_config.total_steps, file=sys.stderr)
    try:
        result = train_from_config(args.model_config, args.train_config, batches, val_batches, args.out,
                                   pretrained=args.pretrained, freeze=tuple(args.freeze_layers),
                                   heads=args.heads, callback=bar, max_steps=args.max_steps,
                                   extra_meta={"data_provenance": recorded})
    except BaseException as exc:
        bar.close()
        if is_interrupt(exc):
            steps = checkpoint_steps(os.path.join(args.out, "latest"))
            if steps:
                print(f"train: stopped at step {steps[-1]}, saved in {os.path.join(args.out, 'latest')}; "
                      "the same command resumes from there", file=sys.stderr)
        raise
    bar.close()
    stopped = " (stopped early)" if result.stopped_early else ""
    print(f"done: {result.steps} steps{stopped}, best validation loss {result.best_val_loss} at step "
          f"{result.best_step}; checkpoints in {args.out}")
    return 0


def _train_potential(args, model_config, train_config) -> int:
    """``jkstep train`` of a learned fast force: energy-and-force matching on the frame file of the
    train config's data: section; ``--pretrained`` restores a potential checkpoint (e.g. the MMFF94
    pretraining run) with Orbax and fine-tunes it at ``finetune_learning_rate``."""
    import dataclasses

    from jkstep.errors import InputError
    from jkstep.model.potential import potential_data, read_potential_checkpoint
    from jkstep.model.train import train

    if args.freeze_layers or args.heads != "map":
        raise InputError("--freeze-layers and --heads are for k-step models; a potential fine-tunes all weights")
    triplets = (train_config.curvature_triplets or 16) if train_config.w_curvature > 0 else None  # per batch
    model_config, train_set, val_batches, prov = potential_data(model_config, train_config.data, train_config.seed,
                                                                triplets)
    other = [k for k in prov if k.startswith("val_force_rmse_of_") and k.endswith("labels_ev_a")]
    print(f"train: {prov['train_molecules']} molecules, {prov['train_frames']} frames ({prov['labels']} labels); "
          f"validation: {len(prov['val_molecules'])} molecules, {prov['val_frames']} frames"
          + (f"; {other[0].split('_')[4]} force RMSE against them {prov[other[0]]:.4f} eV/Å" if other else ""))
    if triplets:
        if abs(prov["triplet_spacing_fs"] - train_config.curvature_spacing_fs) > 1e-9:
            raise InputError(f"train config: curvature_spacing_fs is {train_config.curvature_spacing_fs:g} fs but the "
                             f"triplets are {prov['triplet_spacing_fs']:g} fs apart: make them agree")
        train_config = dataclasses.replace(
            train_config, curvature_triplets=triplets,
            scale_curvature=train_config.scale_curvature or prov["triplet_label_curvature_rms"])
        print(f"curvature term: {prov['train_triplets']} training and {prov['val_triplets']} validation triplets, "
              f"{train_config.curvature_triplets} per batch, scale {train_config.scale_curvature:.4g} eV/fs²")
    init, lr, extra = None, None, {"data_provenance": prov}
    if args.pretrained:
        init, meta, source_config = read_potential_checkpoint(args.pretrained)
        if dataclasses.replace(source_config, element_energies=model_config.element_energies) != model_config:
            raise InputError(f"{args.pretrained} is a potential of another architecture ({source_config}); "
                             "fine-tuning needs the same features, layers, cutoff and n_rbf")
        lr = train_config.finetune_learning_rate
        extra["pretrained_from"] = {"path": meta["path"], "step": meta.get("step"),
                                    "labels": (meta.get("data_provenance") or {}).get("labels")}
    bar = ProgressBar(args.max_steps or train_config.total_steps, file=sys.stderr)
    try:
        result = train(model_config, train_config, train_set, val_batches, args.out, init_params=init,
                       learning_rate=lr, callback=bar, max_steps=args.max_steps, extra_meta=extra)
    finally:
        bar.close()
    best = [h for h in result.history if h["step"] == result.best_step]
    rmse = f", validation force RMSE {best[0]['rmse_force']:.4f} eV/Å" if best and "rmse_force" in best[0] else ""
    print(f"done: {result.steps} steps, best validation loss {result.best_val_loss} at step "
          f"{result.best_step}{rmse}; checkpoints in {args.out}")
    return 0


#: Keys a --notes file of ``jkstep export`` may set (everything else in the record comes from training).
NOTE_KEYS = ("description", "stages", "regenerate", "validation")


def cmd_export(args) -> int:
    from jkstep.config import read_yaml
    from jkstep.data.windows import provenance
    from jkstep.errors import InputError
    from jkstep.model.pretrained import PRETRAINED_DIR, check_export_destination, export_checkpoint, read_meta

    # every input is checked before anything is written
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise InputError(f"--name {args.name!r}: a shipped name is letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit (it is a directory of jkstep/pretrained), e.g. gfn2-k8")
    check_export_destination(args.to or PRETRAINED_DIR / args.name)
    meta = read_meta(args.source)
    evaluations = None if args.evaluation is None else [_read_evaluation(p, meta.get("k")) for p in args.evaluation]
    notes = read_yaml(args.notes) if args.notes else {}
    unknown = sorted(set(map(str, notes)) - set(NOTE_KEYS))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)} in {args.notes}; a notes file may set "
                         f"{', '.join(NOTE_KEYS)} (the rest of the record comes from the checkpoint)")
    data = (meta.get("train_config") or {}).get("data", {}) if isinstance(meta.get("train_config"), dict) else {}
    recorded = meta.get("data_provenance")        # as read when training started
    if recorded is None and data:
        # checkpoints from before training recorded it: the trajectories as they are now
        recorded = dict(provenance(data, meta["k"]), recorded_at="export (the trajectories may have grown "
                                                                  "since training)")
    extra = {**notes, "shipped_name": args.name, "data_provenance": recorded}
    if evaluations is not None:
        extra["evaluations"] = evaluations
    target = export_checkpoint(args.source, args.to or PRETRAINED_DIR / args.name, extra)
    labels = ", ".join(f"{e.get('molecule_name') or e['molecule']} ({e.get('split') or 'no split'})"
                       for e in evaluations or ())
    print(f"shipped {args.name}: {target}" + (f"; evaluations recorded: {labels}" if labels else ""))
    return 0


def _read_evaluation(path, k: int | None) -> dict:
    """A ``jkstep evaluate`` summary to record beside a model of k base steps per jump (None: a
    fast force, which runs at any k), labelled with its molecule's name and split (train/val/test)
    where data/qm_molecules.smi lists it."""
    from jkstep.errors import InputError

    try:
        with open(path) as fh:
            summary = json.load(fh)
    except OSError as exc:
        raise InputError(f"cannot read the evaluation {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON ({exc.msg}): pass the --summary file of jkstep evaluate") from None
    if not isinstance(summary, dict) or not {"molecule", "k", "contenders"} <= set(summary):
        raise InputError(f"{path} is not a jkstep evaluate summary (it needs molecule, k and contenders): "
                         "pass the --summary file of jkstep evaluate")
    if k is not None and summary["k"] != k:
        raise InputError(f"{path} evaluates k = {summary['k']} but the model jumps k = {k} steps")
    name, split = _molecule_split(summary["molecule"])
    return {"molecule_name": name, "split": split, **summary} if name else summary


def _molecule_split(smiles: str, molecules="data/qm_molecules.smi", splits="data/qm_splits.json"):
    """(name, split) of a SMILES in the project's molecule list and splits; (None, None) where
    either file is absent or the molecule is not listed."""
    if not (os.path.isfile(molecules) and os.path.isfile(splits)):
        return None, None
    from rdkit import Chem

    from jkstep.data.generate import read_molecules, read_splits

    def canonical(s):
        mol = Chem.MolFromSmiles(s)
        return Chem.MolToSmiles(mol) if mol is not None else s

    names = {canonical(s): n for s, n in read_molecules(molecules)}
    name = names.get(canonical(smiles))
    split = next((sp for sp, members in read_splits(splits).items() if name in members), None)
    return (name, split) if name else (None, None)


def cmd_models(args) -> int:
    import textwrap

    from ase.data import chemical_symbols

    from jkstep.errors import InputError
    from jkstep.model.pretrained import PRETRAINED_DIR, shipped_names, shipped_record

    names = shipped_names()
    if not names:
        raise InputError(f"no shipped models in {PRETRAINED_DIR}: reinstall jkstep")
    from jkstep.model.pretrained import shipped_fast_forces

    for name in names + shipped_fast_forces():
        if name in names:
            record = shipped_record(name)
        else:
            with open(PRETRAINED_DIR / name / "provenance.json") as fh:
                record = json.load(fh)
        if record.get("kind") == "potential":   # a learned fast force for respa (--fast NAME)
            cfg = record["potential_config"]
            elements = " ".join(chemical_symbols[z] for z in cfg["elements"])
            rmse = (record.get("validation") or {}).get("force_rmse_ev_a")
            base = "MMFF94 + a network of " if cfg.get("baseline") == "mmff" else "a network of "
            default = " (the main job's)" if name == DEFAULT_FAST else ""
            print(f"{name}{default}: fast force for --integrator respa --fast {name} ({base}{cfg['features']} "
                  f"features, {cfg['layers']} interaction block(s), {cfg['cutoff']:g} Å cutoff), elements {elements}"
                  + (f", validation force RMSE {rmse:.3f} eV/Å" if rmse is not None else ""))
            print(textwrap.fill(record.get("description", ""), 100, initial_indent="  ", subsequent_indent="  "))
            print(f"  record: {PRETRAINED_DIR / name / 'provenance.json'}\n")
            continue
        k, dt = record["k"], record["dt_fs"]
        elements = " ".join(chemical_symbols[z] for z in record["elements"])
        print(f"{name}{' (default)' if name == DEFAULT_MODEL else ''}: k = {k} x {dt} fs ({k * dt:g} fs jumps), "
              f"elements {elements}, training step {record['step']}")
        print(textwrap.fill(record.get("description", ""), 100, initial_indent="  ", subsequent_indent="  "))
        print(f"  record: {PRETRAINED_DIR / name / 'provenance.json'}\n")
    return 0


def cmd_dataset(args) -> int:
    from jkstep.data.dataset import build_dataset
    from jkstep.errors import InputError
    from jkstep.data.store import TrajectoryStore

    if not os.path.isdir(args.data):
        raise InputError(f"no data directory {args.data}: generate it first (jkstep generate / generate-mm)")
    paths = []
    for name in sorted(os.listdir(args.data)):
        directory = os.path.join(args.data, name)
        if not os.path.isdir(directory) or name == "windows":
            continue
        runs = sorted(os.listdir(directory)) if args.runs == ["all"] else args.runs
        paths += [os.path.join(directory, r) for r in runs if TrajectoryStore(os.path.join(directory, r)).exists]
    if not paths:
        raise InputError(f"no trajectories under {args.data} for runs {args.runs}")
    out = args.out or os.path.join(args.data, "windows")
    total = 0
    for row in build_dataset(paths, args.k, args.stride, out, overwrite=args.overwrite):
        if row.get("skipped"):
            print(f"kept {row['file']}")
            continue
        total += os.path.getsize(row["file"])
        print(f"{row['file']}: {row['frames']} frames, windows " +
              ", ".join(f"k={k}: {n}" for k, n in row["windows"].items()))
    print(f"{len(paths)} trajectories -> {out} ({total / 1e6:.1f} MB written)")
    return 0


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from jkstep.data.generate import generate, load_config
    from jkstep.parallel import check_workers

    check_workers(args.workers, args.scheduler)
    config = load_config(args.config, workers=args.workers, only=args.only)
    _check_generation_summary(args.summary, args.config, config)
    bars = []  # made once the steps still to run are known

    def set_total(n):
        bars.append(tqdm(total=n, unit="step", desc="xTB reference", file=sys.stderr, disable=None,
                         smoothing=0.05))

    try:
        results = generate(config, progress=lambda n: bars[0].update(n), on_total=set_total,
                           scheduler=args.scheduler)
    finally:
        for bar in bars:
            bar.close()
    return _report_generation(results, config.output, args.summary)


def cmd_generate_mm(args) -> int:
    from tqdm import tqdm

    from jkstep.data.mm import generate_mm, load_config
    from jkstep.parallel import check_workers

    check_workers(args.workers, args.scheduler)
    config = load_config(args.config, only=args.only)
    _check_generation_summary(args.summary, args.config, config)
    bars = []  # made once the steps still to run are known

    def set_total(n):
        bars.append(tqdm(total=n, unit="step", desc=f"MM reference ({config.replicas} replicas)",
                         file=sys.stderr, disable=None, smoothing=0.05))

    try:
        results = generate_mm(config, progress=lambda n: bars[0].update(n), on_total=set_total, processes=True,
                              workers=args.workers, scheduler=args.scheduler)
    finally:
        for bar in bars:
            bar.close()
    return _report_generation(results, config.output, args.summary)


def cmd_generate_fast(args) -> int:
    from jkstep import parallel
    from jkstep.data import fastforce

    parallel.check_workers(args.workers, args.scheduler)
    if args.triplets:
        from jkstep.data import triplets as kind
    else:
        kind = fastforce
    config = kind.load_config(args.config)
    if args.compact:
        command = "jkstep generate-fast --config " + args.config + (" --triplets" if args.triplets else "")
        prov = fastforce.compact(config.output, args.compact, command=command + " && " + command + " --compact "
                                 + args.compact, blocks=3 if args.triplets else 1)
        print(f"{args.compact}: {prov['molecules']} molecules, {prov['frames']} frames, {prov['bytes'] / 1e6:.1f} MB")
        return 0

    def progress(name, i, n):
        print(f"[{i}/{n}] {name}", file=sys.stderr, flush=True)

    make = kind.generate_triplets if args.triplets else fastforce.generate
    summary = make(config, progress=progress, workers=args.workers, scheduler=args.scheduler)
    print(json.dumps(summary))
    return 0


def _check_generation_summary(summary_path, config_path, config) -> None:
    """InputError if --summary of generate/generate-mm would overwrite the config, its molecules or
    splits file, or a file inside the data directory it writes."""
    from jkstep.errors import InputError

    if not summary_path:
        return
    target = os.path.realpath(summary_path)
    inputs = [config_path, config.molecules, getattr(config, "splits", None)]
    if target in {os.path.realpath(p) for p in inputs if p}:
        raise InputError(f"--summary {summary_path} is one of the job's inputs (config, molecules or splits "
                         "file); give a new path")
    output = os.path.realpath(config.output)
    if os.path.commonpath([target, output]) == output:
        raise InputError(f"--summary {summary_path} is inside the data directory {config.output}, whose files the "
                         "job owns; give a path outside it")


def _report_generation(results, output, summary_path) -> int:
    """Print one line per molecule of a generation job (and its failures); exit status 1 unless
    every molecule is complete."""
    for r in results:
        runs = r.get("runs", {})
        frames = sum(run.get("n_frames", 0) for run in runs.values())
        failures = [f"{name}: {run['failure']}" for name, run in runs.items() if run.get("failure")]
        if r.get("error"):
            failures.append(r["error"].strip().splitlines()[-1])
        print(f"{r['name']}: {r['status']}, {len(runs)} run(s), {frames} frames"
              + "".join(f"\n  {f}" for f in failures))
    if summary_path:
        _write_json(summary_path, {"output": output, "molecules": results})
    return 0 if all(r["status"] == "complete" for r in results) else 1


def _print_summary(s: dict):
    def fmt(x, spec):
        return "n/a" if x is None else format(x, spec)

    print(f"{s['molecule']}: {s['integrator']} ({s['ensemble']}), dt {s['dt_fs']} fs, "
          f"{s['steps']} steps = {s['simulated_fs'] / 1000:.3f} ps")
    print(f"  xTB calls {s['xtb_calls']}  SCF failures {s.get('scf_failures', 0)}  blew up: {s['blew_up']}")
    if s["k"]:
        plain = s["steps"] + 1  # plain Verlet at the base step: one call per step and one at the start
        levels = (f"; MMFF94 every inner step, the rest as kicks every {s['fast_every']}"
                  if s.get("fast_every", 1) > 1 else "")
        what = (f"macro-steps {s['accepted']} (fast force {s['fast']}{levels})" if s["integrator"] == "respa"
                else f"jumps accepted {s['accepted']}, rejected attempts {s['rejected']}")
        adapted = s.get("fast_adaptation")
        if adapted:
            print(f"  fast force adapted on {adapted['train_frames']} equilibration frames ({adapted['steps']} steps, "
                  f"{adapted['wall_s']:.1f} s): force RMSE on the last {adapted['holdout_frames']} "
                  f"{fmt(adapted['force_rmse_before_ev_a'], '.3f')} -> "
                  f"{fmt(adapted['force_rmse_after_ev_a'], '.3f')} eV/Å, energy-error curvature "
                  f"{fmt(adapted['curvature_rms_before'], '.2e')} -> {fmt(adapted['curvature_rms_after'], '.2e')} eV/fs²")
        print(f"  k {s['k']}: {what}, fallbacks to Verlet {s['fallbacks']}; Verlet at {s['dt_fs']} fs would make "
              f"{plain} xTB calls ({plain / max(1, s['xtb_calls']):.1f}x more)")
        from jkstep.integrate import equal_cost_dt

        print(f"  equal cost: plain Verlet at {equal_cost_dt(s['xtb_calls'], 1, s['simulated_fs']):.2f} fs "
              f"would make as many xTB calls as this run")
        from jkstep.md import call_rates

        rates = call_rates(s.get("timeline", []))
        if rates and s["simulated_fs"] >= 2000.0:
            print(f"  xTB calls per ps: {rates[0]:.0f} in the first fifth of the run, {rates[1]:.0f} in the last "
                  f"(Verlet at {s['k'] * s['dt_fs']:g} fs: {1000.0 / (s['k'] * s['dt_fs']):.0f})")
    print(f"  energy drift {fmt(s['drift_kj_mol_ps'], '.4f')} kJ/mol/ps, "
          f"fluctuation {fmt(s['energy_std_kj_mol'], '.4f')} kJ/mol, "
          f"mean T {fmt(s['mean_temperature_k'], '.1f')} K")
    if s.get("settle"):
        st = s["settle"]
        print(f"  start: Langevin, then {st['settle_fs'] / 1000:.2f} ps of NVE with {st['rescales']} velocity rescales "
              f"to a mean T of {st['window_temperature_k']:.1f} K over the last 0.2 ps"
              + ("" if st["converged"] else " (not within 2 % of the target: the run starts off it)"))
    if s["k"] and s["ensemble"] == "nve":
        print("  reading it: the energy fluctuation and drift measure the integration error (the 0.25 fs reference "
              "fluctuates ~0.02 kJ/mol, Verlet at 2 fs 1-2 kJ/mol on molecules of this size); docs/results.md has "
              "every integrator against equal-cost Verlet on the test molecules")
    print(f"  wall {s['wall_s']:.1f} s" + (f", trajectory {s['trajectory']}" if "trajectory" in s else ""))


#: options that name a file to write (checked before any work, so a bad path loses no run)
OUTPUT_FILES = ("out", "summary")
#: options that name a directory to write into
OUTPUT_DIRS = ("plots",)


def check_output_paths(args) -> None:
    """One clear error for an output path that cannot be written: a file option naming a
    directory, a directory option naming a file, or a path below an existing file."""
    from jkstep.errors import InputError

    for name in OUTPUT_FILES + OUTPUT_DIRS:
        path = getattr(args, name, None)
        if not path or (name == "out" and args.command != "run"):  # train/dataset --out is a directory
            continue
        flag = f"--{name}"
        if name in OUTPUT_FILES and os.path.isdir(path):
            raise InputError(f"{flag} {path} is a directory; give the path of a file to write, e.g. "
                             f"{os.path.join(path, 'run.json' if name == 'summary' else 'run.traj')}")
        if name in OUTPUT_DIRS and os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{flag} {path} is a file; give a directory for the plots")
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise InputError(f"{flag} {path}: {parent} is a file, not a directory")
        if not os.access(parent, os.W_OK):
            raise InputError(f"{flag} {path}: the directory {parent} is not writable")
    if args.command == "run" and args.out:
        from jkstep.md import trajectory_format

        trajectory_format(args.out)
    named = [(f"--{n}", getattr(args, n, None)) for n in ("file", *OUTPUT_FILES)
             if n != "out" or args.command == "run"]
    named = [(flag, os.path.realpath(path)) for flag, path in named if path]
    for i, (flag, path) in enumerate(named):
        for other, other_path in named[i + 1:]:
            if path == other_path:
                raise InputError(f"{flag} and {other} name the same file ({path}); "
                                 f"writing {other} would {'overwrite the input' if flag == '--file' else 'replace it'}")


def _write_json(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


_TERMINATED = []  # set by a SIGTERM: the exit status is then 143, not Ctrl-C's 130


def _terminate(*_):
    _TERMINATED.append(True)
    raise KeyboardInterrupt


def main(argv=None) -> int:
    from jkstep.errors import InputError, SimulationError, is_interrupt

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # bare `jkstep` runs the main job
    args = parser.parse_args(argv)
    # a SIGTERM (kill, a batch system) unwinds like Ctrl-C, so worker processes are stopped too and
    # a run keeps what it finished
    signal.signal(signal.SIGTERM, _terminate)
    try:
        check_output_paths(args)
        return args.handler(args)
    except InputError as exc:
        _fail(str(exc))
    except SimulationError as exc:  # a run that cannot go on: the status of a blow-up
        print(f"jkstep: error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:
        if not is_interrupt(exc):
            raise
        print("jkstep: interrupted", file=sys.stderr)
        return 143 if _TERMINATED else 130


def console() -> None:
    """The ``jkstep`` command: ``main`` as a process. After an interrupt it leaves at once
    (``os._exit``, outputs already written and streams flushed): XLA's threads, stopped mid-work,
    can crash a normal interpreter shutdown (a segmentation fault instead of status 130/143).
    A reader that closes the pipe early (``jkstep models | head``) ends it quietly."""
    try:
        code = main()
    except BrokenPipeError:
        # Python's documented idiom: no traceback, and no second error when stdout is flushed at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
