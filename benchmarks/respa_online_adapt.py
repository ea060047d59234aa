"""RESPA with the fast force re-adapted during the run on its own macro-step xTB frames, NVE.

The per-run adaptation (``jkstep evaluate --adapt``) fits the learned fast force to the molecule on
its 1 ps thermalisation and keeps it fixed; a run that leaves the region the thermalisation sampled
(alanine dipeptide's side chains, cysteine's rotamers) meets it where it was not fitted. Every
macro-step of RESPA makes one xTB call at the new positions: labelled frames of exactly the region
the run is in. Here the run is cut into segments of ``--segment-ps``; after each, the shipped fast
force is adapted again (``jkstep.model.adapt.adapt_potential``, the same settings, from the shipped
weights) on the thermalisation's frames plus every macro-step frame of all replicas so far
(``extra``), and the next segment runs with it. Within a segment the integrator is RESPA with a
fixed force (symplectic, reversible); at a switch positions, velocities and the xTB force carry
over and only the fast force at the boundary is recomputed, so no xTB call is added. The total
energy (kinetic + xTB at the macro-step boundaries) is what is judged, across the switches.

For each molecule: ``jkstep evaluate``'s starts (seed 0), the once-adapted force and the re-adapted
one from the same starts (the first segment is the same run), k = 8, three levels (MMFF94 every
0.25 fs, the network's correction every ``--fast-every`` inner steps), 4 replicas × ``--ps``.
Prints E std and drift per replica, the E std of each segment (mean over replicas), fallbacks,
xTB calls and the adaptations' CPU time.

    python benchmarks/respa_online_adapt.py --molecules 1-propanol cytosine --json outputs/online/val.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jkstep  # noqa: E402
from jkstep import analysis  # noqa: E402
from jkstep.data.store import write_json  # noqa: E402
from jkstep.evaluate.compare import THERMALISE_DT_FS, EvalConfig, run_contender  # noqa: E402
from jkstep.md import three_levels  # noqa: E402
from jkstep.model.adapt import adapt_potential  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import evaluation_start, positive_float, positive_int, qm_smiles, replica_energies  # noqa: E402

DT = 0.25


def segmented_run(mol, pot, fasts, starts, k, segment_ps, fast_every):
    """RESPA from ``starts`` over ``fasts.n_segments`` segments of ``segment_ps`` ps, segment i with
    the fast force ``fasts(i, frames so far)`` (``Frames`` of the run so far, the start included,
    each array (R, T, ...)). Returns (frames of the whole run, xTB calls, fallbacks)."""
    state, chunks, calls = None, [], 0
    for i in range(fasts.n_segments):
        so_far = None if not chunks else jax.tree.map(lambda *a: np.concatenate(a, axis=1), *chunks)
        fast = fasts(i, so_far)
        init, apply = jkstep.respa(fast, pot, mol.masses, k, DT, **three_levels(mol, fast, fast_every))
        cfg = EvalConfig(k=k, dt=DT, ps=segment_ps, n_replicas=starts[0].shape[0], seed=0)
        if state is None:
            start, begin = starts, (lambda x, v: init(x, v))
        else:    # carry the state over; only the fast force at the boundary is the new force's
            def begin(s, fast=fast):
                e, f = fast(s.positions)
                return s.replace(fast_forces=f, fast_energy=e)
            start = (state,)
        run = run_contender(begin, apply, 1, start, cfg, lambda: pot.calls)
        state, fr = run["state"], run["frames"]
        calls += run["xtb_calls"]
        fr = fr if not chunks else jax.tree.map(lambda a: a[:, 1:], fr)   # its first frame ends the last segment
        chunks.append(fr)
    frames = jax.tree.map(lambda *a: np.concatenate(a, axis=1), *chunks)
    return frames, calls, int(np.sum(state.fallbacks))


class Once:
    """The same (once-adapted) fast force in every segment."""

    def __init__(self, fast, n_segments):
        self.fast, self.n_segments, self.reports = fast, n_segments, []

    def __call__(self, i, so_far):
        return self.fast


class Online:
    """Segment 0: the once-adapted force; segment i > 0: the shipped force adapted on the
    thermalisation plus every macro-step frame so far."""

    def __init__(self, shipped, first, therm, n_segments):
        self.shipped, self.first, self.therm, self.n_segments, self.reports = shipped, first, therm, n_segments, []

    def __call__(self, i, so_far):
        if i == 0:
            return self.first
        extra = tuple(np.asarray(a).reshape((-1,) + np.asarray(a).shape[2:])
                      for a in (so_far.positions, so_far.energy, so_far.forces))
        fast, report = adapt_potential(self.shipped, self.therm["positions"], self.therm["energy"],
                                       self.therm["forces"], spacing_fs=THERMALISE_DT_FS, extra=extra)
        self.reports.append(report)
        print(f"  re-adapted after segment {i} on {report['extra_frames']} run frames in {report['wall_s']:.0f} s",
              flush=True)
        return fast


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", default="gfn2-fast", help="a learned fast force: shipped name or checkpoint path")
    parser.add_argument("--molecules", nargs="+", default=["1-propanol", "cytosine"],
                        help="names of data/qm_molecules.smi (default: validation molecules)")
    parser.add_argument("--k", type=positive_int, default=8)
    parser.add_argument("--ps", type=positive_float, default=2.0, help="NVE length per replica, ps (2)")
    parser.add_argument("--segment-ps", type=positive_float, default=0.5, help="re-adapt every this many ps (0.5)")
    parser.add_argument("--fast-every", type=positive_int, default=2)
    parser.add_argument("--json", default=None, help="write every run's figures as JSON here")
    args = parser.parse_args(argv)
    n_segments = round(args.ps / args.segment_ps)
    if abs(n_segments * args.segment_ps - args.ps) > 1e-9:
        parser.error(f"--ps {args.ps} must be a whole number of --segment-ps {args.segment_ps}")
    smiles = qm_smiles(parser, args.molecules)
    print("| molecule | fast force | E std kJ/mol (mean; per replica) | per segment | drift kJ/mol/ps (mean; per "
          "replica) | mean T K | xTB calls | fallbacks | adaptation CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.molecules:
        mol, pot, x0, v0, therm = evaluation_start(smiles[name], record=True)
        shipped = jkstep.learned_potential(args.fast, mol)
        first, report = adapt_potential(shipped, therm["positions"], therm["energy"], therm["forces"],
                                        spacing_fs=THERMALISE_DT_FS)
        for label, fasts in (("adapted once", Once(first, n_segments)),
                             (f"re-adapted every {args.segment_ps:g} ps", Online(shipped, first, therm, n_segments))):
            t0 = time.perf_counter()
            frames, calls, fallbacks = segmented_run(mol, pot, fasts, (x0, v0), args.k, args.segment_ps,
                                                     args.fast_every)
            wall = time.perf_counter() - t0
            total, std, drift = replica_energies(frames, mol.masses, args.k * DT)
            per = (total.shape[1] - 1) // n_segments
            seg = [float(np.mean([analysis.energy_std(e[i * per:(i + 1) * per + 1]) for e in total]))
                   for i in range(n_segments)]
            temp = float(np.mean(analysis.temperature(frames.velocities, mol.masses)))
            cpu = report["wall_s"] + sum(r["wall_s"] for r in fasts.reports)
            print(f"| {name} | {label} | {np.mean(std):.3f}; {' '.join(f'{x:.3f}' for x in std)} | "
                  f"{' '.join(f'{x:.3f}' for x in seg)} | {np.mean(drift):+.3f}; "
                  f"{' '.join(f'{x:+.3f}' for x in drift)} | {temp:.1f} | {calls} | {fallbacks} | {cpu:.0f} |",
                  flush=True)
            rows.append({"molecule": name, "fast": label, "ps": args.ps, "segment_ps": args.segment_ps, "k": args.k,
                         "energy_std_kj_mol": [analysis.finite_or_none(x) for x in std],
                         "segment_energy_std_kj_mol": seg,
                         "drift_kj_mol_ps": [analysis.finite_or_none(x) for x in drift],
                         "mean_temperature_k": analysis.finite_or_none(temp), "xtb_calls": int(calls),
                         "fallbacks": fallbacks, "wall_s": wall, "adaptation_cpu_s": cpu,
                         "adaptations": [report] + fasts.reports,
                         "blew_up": bool(not np.all(np.isfinite(total)))})
    if args.json:
        write_json(args.json, {"command": " ".join(sys.argv), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
