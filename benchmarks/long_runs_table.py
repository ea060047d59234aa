"""Table of benchmarks/long_runs.sh: per molecule and seed, each setting's xTB calls, fallbacks,
calls per ps in the first and last fifth of the run, energy drift and fluctuation, and mean
kinetic temperature against the 0.25 fs reference from the same start (blown-up runs: how far
they got). Then the 2 × 5 ps evaluations.

    python benchmarks/long_runs_table.py outputs/long
    python benchmarks/long_runs_table.py --test outputs/test10     (benchmarks/test_long_runs.sh)

Runs with the energy rescale and their equal-cost Verlet (benchmarks/rescaled_long_runs.sh) are
shown where they exist.
"""

import glob
import json
import os
import re

from jkstep.md import call_rates

SETTINGS = [("ref", "reference (Verlet 0.25 fs)"),
            ("fb4", "kstep, defaults (fallback 4 × 0.5 fs)"),
            ("eq", "Verlet at {dt_fs:.2f} fs (equal cost to the defaults)"),   # benchmarks/equal_cost_runs.py
            ("rs", "kstep, energy rescale"),                                  # benchmarks/rescaled_long_runs.sh
            ("rs_eq", "Verlet at {dt_fs:.2f} fs (equal cost to the energy rescale)"),
            ("default", "kstep, fallback 8 × 0.25 fs (the defaults before)"),
            ("fb2", "kstep, fallback 2 × 1 fs"), ("fb1", "kstep, fallback 1 × 2 fs"),
            ("fb2_a1", "kstep, fallback 2 × 1 fs, no retries"),
            ("t1000", "kstep, fallback 8 × 0.25 fs, relaxation 1000 fs"),
            ("t500", "kstep, fallback 8 × 0.25 fs, relaxation 500 fs"),
            ("t1000_noguard", "kstep, fallback 8 × 0.25 fs, relaxation 1000 fs, no excursion guard"),
            ("t500_noguard", "kstep, fallback 8 × 0.25 fs, relaxation 500 fs, no excursion guard"),
            ("t250_noguard", "kstep, fallback 8 × 0.25 fs, relaxation 250 fs, no excursion guard")]


def _rate(summary: dict) -> str:
    """'first → last' calls per ps of a kstep run's timeline ('' for runs without one)."""
    rates = call_rates(summary["timeline"]) if "timeline" in summary else None
    return f"{rates[0]:.0f} → {rates[1]:.0f}" if rates else ""


def _vs_reference(summary: dict, reference: dict) -> str:
    """' (+x.x %)': a run's mean temperature against the reference's from the same start."""
    return f" ({100.0 * (summary['mean_temperature_k'] / reference['mean_temperature_k'] - 1.0):+.1f} %)"


def main(directory: str) -> None:
    runs = sorted({os.path.basename(p).rsplit("_ref.json", 1)[0] for p in glob.glob(f"{directory}/*_ref.json")})
    print("| run | setting | xTB calls | fallbacks | calls/ps first → last fifth | drift kJ/mol/ps | "
          "fluct. kJ/mol | mean T K (vs ref) |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        ref = json.load(open(f"{directory}/{run}_ref.json"))
        for key, label in SETTINGS:
            path = f"{directory}/{run}_{key}.json"
            if not os.path.exists(path):
                continue
            s = json.load(open(path))
            rate = _rate(s)
            label = label.format(dt_fs=s["dt_fs"])   # the equal-cost run's own step
            if s["blew_up"]:
                print(f"| {run} | {label} | {s['xtb_calls']} | {s['fallbacks']} | {rate} | blew up "
                      f"(stopped at {s['simulated_fs'] / 1000:.2f} ps) | | |")
                continue
            vs = "" if key == "ref" else _vs_reference(s, ref)
            print(f"| {run} | {label} | {s['xtb_calls']} | {s['fallbacks'] if s['k'] else ''} | {rate} | "
                  f"{s['drift_kj_mol_ps']:+.3f} | {s['energy_std_kj_mol']:.2f} | {s['mean_temperature_k']:.1f}{vs} |")


def evaluations(directory: str) -> None:
    """The 2 × 5 ps evaluations: Verlet at 2 fs, the hybrid and, where run, with the coupling
    (eval_<molecule>_<setting>.json; fb4 and fb2: fallback 4 × 0.5 fs and 2 × 1 fs, the others 8 × 0.25 fs)."""
    keys = ("xtb_calls", "energy_std_kj_mol", "bond_js", "angle_js", "dihedral_js", "spectrum_overlap",
            "xh_band_shift_cm1")
    print("\n| evaluation | contender | xTB calls | E std kJ/mol | mean T (vs ref) | bond JS | angle JS | "
          "dihedral JS | spectrum overlap | X–H shift cm⁻¹ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(f"{directory}/eval_*.json")):
        r = json.load(open(path))
        t_ref = r["contenders"]["reference"]["mean_temperature_k"]
        name = os.path.basename(path)[5:-5]
        for c in ("reference", "verlet_kdt", "kstep", "verlet_equal_cost", "kstep_relaxed"):
            x = r["contenders"].get(c)
            if x is None:
                continue
            t = x["mean_temperature_k"]
            cells = [f"{x[k]:.3g}" if isinstance(x[k], float) else str(x[k]) for k in keys]
            cells.insert(2, f"{t:.1f}" + ("" if c == "reference" else f" ({100 * (t / t_ref - 1):+.1f} %)"))
            print(f"| {name} | {c} | " + " | ".join(cells) + " |")
        floor = r["noise_floor"]
        print(f"| {name} | noise floor | | | | " + " | ".join(f"{floor[k]:.3g}" for k in keys[2:]) + " |")


def k16(directory: str) -> None:
    """gfn2-k16, 2 ps: the fallback as 16 × 0.25 fs and as 8 × 0.5 fs (the default)."""
    paths = sorted(glob.glob(f"{directory}/k16_*.json"))
    if not paths:
        return
    print("\n| k = 16 run | xTB calls | accepted / rejected / fallbacks | drift kJ/mol/ps | fluct. kJ/mol | mean T K |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        s = json.load(open(path))
        print(f"| {os.path.basename(path)[4:-5]} | {s['xtb_calls']} | {s['accepted']} / {s['rejected']} / "
              f"{s['fallbacks']} | {s['drift_kj_mol_ps']:+.3f} | {s['energy_std_kj_mol']:.2f} | "
              f"{s['mean_temperature_k']:.1f} |")


def test_runs(directory: str) -> None:
    """benchmarks/test_long_runs.sh: the test molecules, fallback 4 × 0.5 fs against 8 × 0.25 fs,
    and (benchmarks/equal_cost_runs.py) plain Verlet with as many calls as the 4 × 0.5 fs run."""
    print("| molecule, seed | run | xTB calls (Verlet 2 fs: 5001) | rejected / fallbacks | "
          "calls/ps first → last fifth | drift kJ/mol/ps | fluct. kJ/mol | mean T K (vs reference, where run) |")
    print("|---|---|---|---|---|---|---|---|")
    paths = glob.glob(f"{directory}/*_s*_fb*.json") + glob.glob(f"{directory}/*_s*_eq.json")
    paths += glob.glob(f"{directory}/*_s*_ref.json") + glob.glob(f"{directory}/*_s*_rs.json")
    for path in sorted(paths):
        s = json.load(open(path))
        run, n = re.match(r"(.*_s\d+)_(.+)$", os.path.basename(path)[:-5]).groups()
        rate = _rate(s)
        label = {"fb4": "kstep, fallback 4 × 0.5 fs (default)", "fb8": "kstep, fallback 8 × 0.25 fs (before)",
                 "eq": f"Verlet at {s['dt_fs']:.2f} fs (equal cost to the default)",
                 "rs": "kstep, energy rescale",
                 "rs_eq": f"Verlet at {s['dt_fs']:.2f} fs (equal cost to the energy rescale)",
                 "ref": "reference (Verlet 0.25 fs)"}.get(n, n)
        ref = f"{directory}/{run}_ref.json"   # where a reference was run from the same start: T against it
        vs = ""
        if n != "ref" and os.path.exists(ref) and not s["blew_up"]:
            vs = _vs_reference(s, json.load(open(ref)))
        if s["blew_up"]:
            print(f"| {run} | {label} | {s['xtb_calls']} | blew up at {s['simulated_fs'] / 1000:.2f} ps | | | | |")
            continue
        counts = f"{s['rejected']} / {s['fallbacks']}" if s["k"] else ""
        print(f"| {run} | {label} | {s['xtb_calls']} | {counts} | {rate} | "
              f"{s['drift_kj_mol_ps']:+.3f} | {s['energy_std_kj_mol']:.2f} | {s['mean_temperature_k']:.1f}{vs} |")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", help="the runs' directory (default outputs/long; "
                        "with --test, outputs/test10)")
    parser.add_argument("--test", action="store_true", help="the test molecules' runs (benchmarks/test_long_runs.sh)")
    args = parser.parse_args()
    directory = args.directory or ("outputs/test10" if args.test else "outputs/long")
    if not os.path.isdir(directory):
        parser.error(f"no directory {directory}: run benchmarks/{'test_' if args.test else ''}long_runs.sh first")
    if args.test:
        test_runs(directory)
    else:
        main(directory)
        evaluations(directory)
        k16(directory)
