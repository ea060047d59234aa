"""Per-replica energy drift of RESPA with MMFF94 (``mmff_respa``) over a long NVE run, and which
atoms take up the energy where a replica heats.

From ``jkstep evaluate``'s starting states (seed 0: one 1 ps Langevin thermalisation at 300 K, 4
same-energy replicas), RESPA at k inner steps of 0.25 fs for ``--ps`` ps. Prints each replica's
drift (kJ/mol/ps) over the whole run and over consecutive 2 ps segments (the first one is what a
2 ps evaluation reports), its energy fluctuation, and, for the replica with the largest total
energy change, each atom's mean kinetic energy in its last 2 ps segment over that in its first.

    python benchmarks/respa_replica_drift.py cysteine --ps 10 [--k 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase.data import chemical_symbols  # noqa: E402

import jkstep  # noqa: E402
from jkstep import analysis, units  # noqa: E402
from jkstep.data.generate import read_molecules  # noqa: E402
from jkstep.data.store import write_json  # noqa: E402
from jkstep.evaluate.compare import EvalConfig, run_contender, thermalised_starts  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int  # noqa: E402

SEGMENT_FS = 2000.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("molecule", help="a name of data/qm_molecules.smi")
    parser.add_argument("--ps", type=positive_float, default=10.0, help="NVE length per replica, ps (10)")
    parser.add_argument("--k", type=positive_int, default=8, help="inner steps of 0.25 fs per xTB call (8)")
    parser.add_argument("--json", default=None, help="write the per-replica figures as JSON here")
    args = parser.parse_args(argv)
    smiles = {name: s for s, name in read_molecules("data/qm_molecules.smi")}
    if args.molecule not in smiles:
        parser.error(f"{args.molecule!r} is not in data/qm_molecules.smi")
    mol = jkstep.Molecule.from_smiles(smiles[args.molecule])
    pot = jkstep.xtb_potential(mol)
    cfg = EvalConfig(k=args.k, dt=0.25, ps=args.ps, n_replicas=4, seed=0)
    starts = thermalised_starts(mol, pot, cfg)
    init, apply = jkstep.respa(jkstep.mmff_potential(mol), pot, mol.masses, args.k, 0.25)
    run = run_contender(lambda x, v: init(x, v), apply, 1, starts, cfg, lambda: pot.calls)
    frames = run["frames"]
    velocities = np.asarray(frames.velocities)
    total = np.asarray(frames.energy) + analysis.kinetic_energy(velocities, mol.masses)
    t = np.arange(total.shape[1]) * args.k * 0.25
    per_segment = int(round(SEGMENT_FS / (args.k * 0.25)))
    starts_of = range(0, len(t) - per_segment, per_segment)
    out = {"molecule": args.molecule, "k": args.k, "ps": args.ps, "xtb_calls": run["xtb_calls"],
           "fallbacks": np.asarray(run["state"].fallbacks).tolist(), "replicas": []}
    for r, e in enumerate(total):
        segments = [analysis.energy_drift(t[i:i + per_segment + 1], e[i:i + per_segment + 1]) for i in starts_of]
        row = {"drift_kj_mol_ps": analysis.energy_drift(t, e), "energy_std_kj_mol": analysis.energy_std(e),
               "segment_drifts_kj_mol_ps": segments,
               "change_kj_mol": float((e[-per_segment // 10:].mean() - e[:per_segment // 10].mean()) / units.KJ_MOL)}
        out["replicas"].append(row)
        print(f"replica {r}: drift {row['drift_kj_mol_ps']:+.3f} kJ/mol/ps, E std {row['energy_std_kj_mol']:.3f} "
              f"kJ/mol, change {row['change_kj_mol']:+.2f} kJ/mol; per 2 ps: "
              + " ".join(f"{d:+.3f}" for d in segments))
    worst = int(np.argmax([abs(row["change_kj_mol"]) for row in out["replicas"]]))
    kinetic = 0.5 * mol.masses[None, :] * np.sum(velocities[worst] ** 2, axis=-1)
    ratio = kinetic[-per_segment:].mean(0) / kinetic[:per_segment].mean(0)
    labels = [f"{chemical_symbols[z]}{i}" for i, z in enumerate(np.asarray(mol.numbers))]
    out["worst_replica"] = {"replica": worst, "kinetic_ratio_last_over_first": dict(zip(labels, ratio.tolist()))}
    print(f"replica {worst}, mean kinetic energy per atom, last 2 ps over first 2 ps: "
          + " ".join(f"{a} {x:.2f}" for a, x in zip(labels, ratio)))
    print(f"xTB calls {run['xtb_calls']}, fallbacks {out['fallbacks']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
