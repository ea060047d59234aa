"""RESPA with MMFF94 against RESPA with a learned fast force, from the same starts, NVE.

For each molecule: ``jkstep evaluate``'s starting states (seed 0: a 1 ps Langevin thermalisation at
300 K, 4 same-energy replicas), then RESPA at each k with MMFF94 (``mmff_respa``) and with the
learned fast force, 4 replicas × ``--ps`` ps, the same xTB calls. Prints each run's energy
fluctuation and drift per replica, mean kinetic temperature and fallbacks. (The distributions, the
X–H band and the reference are what ``jkstep evaluate --fast NAME`` adds, at about 3× the cost.)
``--no-mmff`` runs the learned fast force only (e.g. long runs); ``--verlet-dt 1`` adds velocity
Verlet at 1 fs from the same starts (what a k = 4 evaluation's ``verlet_kdt`` is).
``--hydrogen-mass 3.024`` runs RESPA with repartitioned hydrogen masses
(``Molecule.repartition_hydrogen_mass``; each atom's start velocity scaled by sqrt(m/m') so its
kinetic energy, and so the total energy, is the start's): a longer macro-step before the X–H
resonances, other vibrational dynamics; Verlet keeps the true masses. ``--average-with NAME`` runs
the mean of two learned fast forces. ``--fast-every N`` runs the learned fast force in three levels
(``jkstep.respa(inner=MMFF94, fast_every=N)``). ``--adapt`` runs the learned fast force fine-tuned
on the thermalisation's own xTB frames (``jkstep.model.adapt``, as ``jkstep evaluate --adapt``) in
place of the shipped one. ``--mollify`` runs RESPA
mollified on the X–H bonds (``jkstep.respa.xh_mollifier``): its E std is that of the modified
energy it conserves, and the true energy (xTB at the positions themselves, every 5th frame, calls
made after the run and not counted) is reported beside it.

    python benchmarks/respa_fast_compare.py --fast outputs/fast_delta_smooth --molecules 1-propanol cytosine
    python benchmarks/respa_fast_compare.py --fast gfn2-fast --k 16 --verlet-dt 1 --molecules cysteine
    python benchmarks/respa_fast_compare.py --fast gfn2-fast --no-mmff --ps 10 --json outputs/long.json
    python benchmarks/respa_fast_compare.py --fast gfn2-fast --no-mmff --fast-every 4
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep import analysis  # noqa: E402
from jkstep.data.store import write_json  # noqa: E402
from jkstep.evaluate.compare import THERMALISE_DT_FS, EvalConfig, run_contender  # noqa: E402
from jkstep.md import three_levels  # noqa: E402
from jkstep.model.adapt import adapt_potential  # noqa: E402
from jkstep.respa import xh_mollifier  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import evaluation_start, positive_float, positive_int, qm_smiles, replica_energies  # noqa: E402


class averaged:
    """(energy, forces) mean of two fast forces; ``baseline``: the first one's (its MMFF94), so
    three levels split it as MMFF94 + the mean network correction."""

    def __init__(self, a, b):
        self.a, self.b, self.baseline = a, b, getattr(a, "baseline", None)

    def __call__(self, x):
        (ea, fa), (eb, fb) = self.a(x), self.b(x)
        return 0.5 * (ea + eb), 0.5 * (fa + fb)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", required=True, help="a learned fast force: shipped name or checkpoint path")
    parser.add_argument("--molecules", nargs="+", default=["1-propanol", "cytosine"],
                        help="names of data/qm_molecules.smi (default: validation molecules)")
    parser.add_argument("--k", nargs="+", type=positive_int, default=[8])
    parser.add_argument("--ps", type=positive_float, default=2.0, help="NVE length per replica, ps (2)")
    parser.add_argument("--no-mmff", action="store_true", help="skip RESPA with MMFF94")
    parser.add_argument("--verlet-dt", type=positive_float, nargs="*", default=[],
                        help="also velocity Verlet at these steps (fs) from the same starts")
    parser.add_argument("--hydrogen-mass", type=positive_float, default=None,
                        help="RESPA with hydrogen mass repartitioning to this H mass, amu (e.g. 3.024)")
    parser.add_argument("--mollify", action="store_true", help="RESPA mollified on the X–H bonds (equilibrium MOLLY)")
    parser.add_argument("--average-with", default=None, metavar="NAME|PATH",
                        help="use the mean of --fast and this second learned fast force (energies and forces "
                             "averaged; both Δ-potentials on MMFF94 give MMFF94 + the mean correction)")
    parser.add_argument("--fast-every", type=positive_int, default=1,
                        help="three-level RESPA: MMFF94 every inner step, the rest of the learned fast force as "
                             "kicks every N inner steps (default 1: two-level)")
    parser.add_argument("--adapt", action="store_true",
                        help="the learned fast force fine-tuned on the thermalisation's frames (jkstep.model.adapt)")
    parser.add_argument("--json", default=None, help="write every run's figures as JSON here")
    args = parser.parse_args(argv)
    smiles = qm_smiles(parser, args.molecules)
    print("| molecule | k | fast force | E std kJ/mol (mean; per replica) | drift kJ/mol/ps (mean; per replica) "
          "| mean T K | fallbacks | true E std kJ/mol |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.molecules:
        mol, pot, x0, v0, therm = evaluation_start(smiles[name], record=args.adapt)
        starts = (x0, v0)
        fasts = {} if args.no_mmff else {"MMFF94": jkstep.mmff_potential(mol)}
        learned = jkstep.learned_potential(args.fast, mol)
        if args.adapt:
            learned, report = adapt_potential(learned, therm["positions"], therm["energy"], therm["forces"],
                                              spacing_fs=THERMALISE_DT_FS)
            print(f"adapted on {report['train_frames']} frames: held-out force RMSE "
                  f"{report['force_rmse_before_ev_a']:.3f} -> {report['force_rmse_after_ev_a']:.3f} eV/Å", flush=True)
        if args.average_with:
            fasts[f"mean of {args.fast} and {args.average_with}"] = averaged(
                learned, jkstep.learned_potential(args.average_with, mol))
        else:
            fasts[args.fast + (" (adapted)" if args.adapt else "")] = learned
        respa_mol, respa_starts, hmr = mol, starts, ""
        if args.hydrogen_mass:
            respa_mol = mol.repartition_hydrogen_mass(args.hydrogen_mass)
            respa_starts, hmr = (starts[0], starts[1] * np.sqrt(mol.masses / respa_mol.masses)[:, None]), \
                f", H {args.hydrogen_mass:g} amu"
        mollifier, molly = (xh_mollifier(respa_mol), " + MOLLY") if args.mollify else (None, "")
        every = f", fast every {args.fast_every}" if args.fast_every > 1 else ""
        runs = [(k, label + hmr + molly + ("" if label == "MMFF94" else every),
                 jkstep.respa(fast, pot, respa_mol.masses, k, 0.25, mollifier=mollifier,
                              **({} if label == "MMFF94" else three_levels(respa_mol, fast, args.fast_every))),
                 respa_mol.masses, respa_starts, args.mollify) for k in args.k for label, fast in fasts.items()]
        runs += [(round(dt / 0.25), f"Verlet {dt:g} fs", jkstep.verlet(pot, mol.masses, dt), mol.masses, starts,
                  False) for dt in args.verlet_dt]
        for k, label, (init, apply), masses, starts_k, mollified in runs:
            cfg = EvalConfig(k=k, dt=0.25, ps=args.ps, n_replicas=4, seed=0)
            run = run_contender(lambda x, v, init=init: init(x, v), apply, 1, starts_k, cfg, lambda: pot.calls)
            frames = run["frames"]
            total, std, drift = replica_energies(frames, masses, k * 0.25)
            temp = float(np.mean(analysis.temperature(frames.velocities, masses)))
            fallbacks = int(np.sum(getattr(run["state"], "fallbacks", 0)))
            true_std = None
            if mollified:  # the true energy, every 5th frame (calls not counted)
                x = np.asarray(frames.positions)[:, ::5]
                e_true = np.asarray(jax.vmap(jax.vmap(pot.energy))(x)) \
                    + analysis.kinetic_energy(np.asarray(frames.velocities)[:, ::5], masses)
                true_std = [analysis.energy_std(e) for e in e_true]
            print(f"| {name} | {k} | {label} | {np.mean(std):.3f}; {' '.join(f'{x:.3f}' for x in std)} | "
                  f"{np.mean(drift):+.3f}; {' '.join(f'{x:+.3f}' for x in drift)} | {temp:.1f} | "
                  f"{fallbacks} | {'—' if true_std is None else f'{np.mean(true_std):.3f}'} |", flush=True)
            rows.append({"molecule": name, "k": k, "fast": label, "ps": args.ps,
                         "hydrogen_mass": None if masses is mol.masses else args.hydrogen_mass,
                         "energy_std_kj_mol": [analysis.finite_or_none(x) for x in std],
                         "drift_kj_mol_ps": [analysis.finite_or_none(x) for x in drift],
                         "mean_temperature_k": analysis.finite_or_none(temp),
                         "mollified": mollified,
                         "true_energy_std_kj_mol": None if true_std is None
                         else [analysis.finite_or_none(x) for x in true_std],
                         "fallbacks": fallbacks, "xtb_calls": int(run["xtb_calls"]),
                         "blew_up": bool(not np.all(np.isfinite(total)))})
    if args.json:
        write_json(args.json, {"command": " ".join(sys.argv), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
