"""Force error of fast forces against GFN2-xTB on a molecule's reference frames, per molecule.

For each molecule: ``jkstep evaluate``'s starting states (one 1 ps Langevin thermalisation at
300 K, 4 same-energy replicas, seed 0), then the 0.25 fs Verlet xTB reference from them for
``--ps`` ps; every ``--every``-th frame is a reference frame, with its xTB forces (the reference's
own, from the same calls). Each fast force (``mmff`` for MMFF94, or a learned fast force's name or
checkpoint path) is evaluated on those frames: force RMSE (eV/Å, over all components) and the RMS
of the force error's change between consecutive frames, per fs (eV/Å/fs), which is what an
impulse RESPA step feels: a fast force whose error is small but rough leaves a rough
difference force; and the energy fluctuation that error predicts for RESPA at macro-step τ
(``--tau``, fs), (τ²/12)·RMS(d²e/dt²) with de/dt = −(F_fast − F_xTB)·v along the reference
(docs/results.md, "The energy error's curvature"; give ``--every 1`` to resolve the X–H stretches). ``--adapt`` adds each learned fast force fine-tuned on the thermalisation's own
xTB frames (``jkstep.model.adapt``, as ``jkstep evaluate --adapt`` does), labelled "NAME (adapted)".
Test molecules are for reporting only.

    python benchmarks/fast_force_rmse.py --fast mmff gfn2-fast outputs/fast_delta \\
        --molecules alanine_dipeptide cysteine adenine paracetamol --json outputs/fast_force_rmse.json
    python benchmarks/fast_force_rmse.py --fast mmff gfn2-fast --adapt --json outputs/adapt_eval/rmse.json
    python benchmarks/fast_force_rmse.py --fast mmff gfn2-fast --adapt --every 1 --molecules 1-propanol cytosine
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep import units  # noqa: E402
from jkstep.data.store import write_json  # noqa: E402
from jkstep.evaluate.compare import THERMALISE_DT_FS, EvalConfig, run_contender, thermalise  # noqa: E402
from jkstep.model.adapt import AdaptConfig, adapt_potential  # noqa: E402
from jkstep.integrate import verlet  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int, qm_smiles  # noqa: E402


def fast_forces(name: str, mol):
    """(energy, forces) function of a fast force name: mmff or a learned one."""
    if name == "mmff":
        return jkstep.mmff_potential(mol)
    return jkstep.learned_potential(name, mol)


def reference_frames(mol, ps: float, every: int, record: bool = False):
    """(positions (R, F, N, 3) Å, xTB forces (R, F, N, 3) eV/Å, velocities (R, F, N, 3) Å/fs, frame
    spacing fs, the thermalisation's frames or None) of the 0.25 fs reference; ``record``: keep the
    thermalisation's frames (every step)."""
    pot = jkstep.xtb_potential(mol)
    cfg = EvalConfig(k=every, dt=0.25, ps=ps, n_replicas=4, seed=0)
    x, v, therm = thermalise(mol, pot, cfg, 1 if record else None)
    init, apply = verlet(pot, mol.masses, 0.25)
    run = run_contender(lambda x, v: init(x, v), apply, every, (x, v), cfg, lambda: pot.calls)
    frames = run["frames"]
    return (np.asarray(frames.positions), np.asarray(frames.forces), np.asarray(frames.velocities),
            every * 0.25, therm)


def errors(fast, positions, forces, velocities, spacing_fs: float, tau_fs: float) -> dict:
    """Force RMSE, the RMS change of the force error per fs between consecutive frames, and the
    RESPA energy fluctuation at macro-step ``tau_fs`` that the error's curvature predicts (kJ/mol,
    RMS over replicas of (τ²/12)·std over time of d²e/dt², de/dt = −(F_fast − F_xTB)·v)."""
    reps, n_frames = positions.shape[:2]
    flat = positions.reshape((-1,) + positions.shape[2:])
    predicted = np.asarray(jax.jit(jax.vmap(lambda x: fast(x)[1]))(flat)).reshape(forces.shape)
    err = predicted - forces
    change = np.diff(err, axis=1) / spacing_fs
    change_xtb = np.diff(forces, axis=1) / spacing_fs
    curvature = np.gradient(-np.sum(err * velocities, axis=(-1, -2)), spacing_fs, axis=1)    # eV/fs²
    e_std = tau_fs**2 / 12.0 * curvature.std(axis=1) / units.KJ_MOL
    return {"force_rmse_ev_a": float(np.sqrt(np.mean(err**2))),
            "error_change_rms_ev_a_fs": float(np.sqrt(np.mean(change**2))),
            "xtb_force_change_rms_ev_a_fs": float(np.sqrt(np.mean(change_xtb**2))),
            "predicted_respa_energy_std_kj_mol": float(np.sqrt(np.mean(e_std**2))), "tau_fs": tau_fs,
            "frames": int(reps * n_frames)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", nargs="+", default=["mmff", "gfn2-fast"], help="mmff and/or learned fast forces")
    parser.add_argument("--molecules", nargs="+", default=["alanine_dipeptide", "cysteine", "adenine", "paracetamol"],
                        help="names of data/qm_molecules.smi (default: the test molecules)")
    parser.add_argument("--ps", type=positive_float, default=0.5, help="reference length per replica, ps (0.5)")
    parser.add_argument("--every", type=positive_int, default=4, help="base steps between frames (4: 1 fs)")
    parser.add_argument("--adapt", action="store_true",
                        help="also each learned fast force adapted on the thermalisation's frames")
    parser.add_argument("--w-curvature", type=float, default=AdaptConfig.w_curvature,
                        help="the adaptation's curvature weight (AdaptConfig.w_curvature; 0: none)")
    parser.add_argument("--tau", type=positive_float, default=2.0,
                        help="RESPA macro-step for the predicted energy fluctuation, fs (2: k = 8)")
    parser.add_argument("--json", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    smiles = qm_smiles(parser, args.molecules)
    results = {}
    print("| molecule | fast force | frames | force RMSE eV/Å | error change RMS eV/Å/fs | xTB force change RMS eV/Å/fs "
          f"| predicted RESPA E std at {args.tau:g} fs, kJ/mol |")
    print("|---|---|---|---|---|---|---|")
    for name in args.molecules:
        mol = jkstep.Molecule.from_smiles(smiles[name])
        positions, forces, velocities, spacing, therm = reference_frames(mol, args.ps, args.every, args.adapt)
        results[name] = {}
        for fast_name in args.fast:
            fast = fast_forces(fast_name, mol)
            candidates = [(fast_name, fast)]
            if args.adapt and fast_name != "mmff":
                adapted, report = adapt_potential(fast, therm["positions"], therm["energy"], therm["forces"],
                                                  AdaptConfig(w_curvature=args.w_curvature),
                                                  spacing_fs=THERMALISE_DT_FS)
                candidates.append((f"{fast_name} (adapted)", adapted))
            for label, f in candidates:
                r = errors(f, positions, forces, velocities, spacing, args.tau)
                results[name][label] = r
                print(f"| {name} | {label} | {r['frames']} | {r['force_rmse_ev_a']:.3f} | "
                      f"{r['error_change_rms_ev_a_fs']:.3f} | {r['xtb_force_change_rms_ev_a_fs']:.3f} | "
                      f"{r['predicted_respa_energy_std_kj_mol']:.3f} |", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
