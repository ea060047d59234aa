"""Fast forces on the triplets of the training data: force error and energy-error curvature, per split.

For each fast force (a checkpoint directory or a shipped name) and each triplet of ``--triplets``
(``jkstep.data.triplets``: a dynamics frame and its neighbours one 0.5 fs step before and after
along a 300 K velocity), split by the train config's molecule split into the molecules training
held out ("validation") and those it fitted ("training"), and by the kind of dynamics the centre
came from (MMFF94 or xTB Langevin): the RMS second time difference of the energy error (eV/fs²;
RESPA at macro-step τ fluctuates in energy by about τ²/12 times it along the true motion) and the
force RMSE at the centres (eV/Å), against xTB; MMFF94 alone beside them. Triplets whose labels are
wild (an xTB − MMFF94 force component above ``max_label_force``, 20 eV/Å: a zwitterion whose
proton moved) are left out, as training leaves them out.

    python benchmarks/fast_force_val.py gfn2-fast outputs/fast_delta_curv --json outputs/curv_train/val_figures.json
"""

from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

import jkstep  # noqa: F401  (float64)
from jkstep.data.fastforce import SOURCES, load_frames
from jkstep.model.config import load_train_config
from jkstep.model.potential import (EnergyNet, energy_and_forces, energy_error_curvature, read_potential_checkpoint,
                                    split_molecules)


def errors(name, molecules, cap: float) -> dict:
    """{(split, source): (curvature (T,) eV/fs², centre force errors (T·N·3,) eV/Å)} of one fast force."""
    if name != "MMFF94":
        params, _, config = read_potential_checkpoint(name)
        net = EnergyNet(config)
    out = {}
    for split, m in molecules:
        t = len(m["positions"]) // 3
        label_e, label_f = m["xtb_energy"] - m["mmff_energy"], m["xtb_forces"] - m["mmff_forces"]
        ok = np.abs(label_f).max(axis=(1, 2)).reshape(3, t).max(0) <= cap
        if name == "MMFF94":      # the Δ network's part at zero
            e, f = np.zeros_like(label_e), np.zeros_like(label_f)
        else:
            z = np.broadcast_to(m["numbers"], (3 * t, len(m["numbers"])))
            e, f = (np.asarray(a) for a in energy_and_forces(net, params, jnp.asarray(z), None,
                                                             jnp.asarray(m["positions"])))
        curvature = np.asarray(energy_error_curvature(e - label_e, m["spacing_fs"]))
        df = (f - label_f)[t:2 * t]
        for code in np.unique(m["source"][:t]):
            keep = ok & (m["source"][:t] == code)
            c, d = out.setdefault((split, SOURCES[code]), ([], []))
            c.append(curvature[keep]), d.append(df[keep].ravel())
    return {key: (np.concatenate(c), np.concatenate(d)) for key, (c, d) in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fast", nargs="+", help="Δ fast forces on MMFF94: shipped names or checkpoint directories")
    parser.add_argument("--train-config", default="configs/fast/train_delta_curv.yaml",
                        help="the train config whose molecule split is used (configs/fast/train_delta_curv.yaml)")
    parser.add_argument("--triplets", default="data/fast_triplets.npz", help="the triplet file")
    parser.add_argument("--json", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    data = load_train_config(args.train_config).data
    triplets = load_frames(args.triplets)
    if any(m.get("blocks") != 3 for m in triplets):
        parser.error(f"{args.triplets} is not a triplet file (jkstep generate-fast --triplets)")
    _, val = split_molecules([m["name"] for m in triplets], data)
    molecules = [("validation" if m["name"] in set(val) else "training", m) for m in triplets]
    cap = float(data.get("max_label_force", 20.0))
    table = {}
    print(f"{'fast force':<28} {'molecules':<11} {'dynamics':<8} {'triplets':>8} {'curvature RMS 1e-3 eV/fs²':>26} "
          f"{'force RMSE eV/Å':>16}")
    for name in ["MMFF94", *args.fast]:
        for (split, source), (c, d) in sorted(errors(name, molecules, cap).items()):
            row = {"triplets": int(c.size), "curvature_rms_ev_fs2": float(np.sqrt(np.mean(c**2))),
                   "force_rmse_ev_a": float(np.sqrt(np.mean(d**2)))}
            table.setdefault(name, {})[f"{split}/{source}"] = row
            print(f"{name:<28} {split:<11} {source:<8} {row['triplets']:>8} {1e3 * row['curvature_rms_ev_fs2']:>26.2f} "
                  f"{row['force_rmse_ev_a']:>16.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
