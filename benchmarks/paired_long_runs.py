"""Paired 10 ps NVE runs of several k = 8 models from the same starts, the way to choose between them.

    python benchmarks/paired_long_runs.py --model gfn2-k8 outputs/ew/k8_w50 --out outputs/paired

For every molecule and seed, each model runs ``jkstep run --smiles S --ps 10 --equilibrate-ps 1
--seed N --model M`` (the same 1 ps Langevin start for all: it does not depend on the model), two
runs at a time, one thread each; runs whose summary exists are skipped, so an interrupted
comparison resumes. The table gives each run's xTB calls (Verlet at 2 fs: 5001), fallbacks,
energy fluctuation and drift, and the mean temperature against the 0.25 fs reference from the
same start where ``--references`` holds one (``NAME_sSEED_ref.json``, as benchmarks/long_runs.sh
writes them), then each model's totals, and each further model's calls minus the first model's
with the standard error of that difference (10 ps runs are chaotic: over the 16-run comparisons so far it was 2.3-2.8 % of
the total). Validation molecules only by default: a model is chosen
on them; the test molecules are for reporting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from jkstep.data.generate import read_molecules, read_splits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_float, positive_int  # noqa: E402

SMILES = {name: smiles for smiles, name in read_molecules("data/qm_molecules.smi")}
VALIDATION = read_splits("data/qm_splits.json", names=list(SMILES))["val"]


def label(model: str) -> str:
    """A file-name-safe label of a model name or path."""
    return model.strip("/").replace("/", "_")


def summary_path(out: str, name: str, seed: int, model: str) -> str:
    """Where the run of ``model`` on molecule ``name`` from seed ``seed``'s start keeps its summary."""
    return os.path.join(out, f"{name}_s{seed}_{label(model)}.json")


def run(job) -> str:
    path, command = job
    if not os.path.exists(path):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        with open(path[:-5] + ".log", "w") as log:
            subprocess.run(command + ["--summary", path], stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", required=True, help="shipped names or checkpoint directories")
    ap.add_argument("--molecules", nargs="+", default=VALIDATION,
                    help="names in data/qm_molecules.smi (default: the validation split)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--ps", type=positive_float, default=10.0)
    ap.add_argument("--out", default="outputs/paired")
    ap.add_argument("--references", default="outputs/long", help="directory of 0.25 fs reference summaries")
    ap.add_argument("--jobs", type=positive_int, default=2)
    ap.add_argument("--extra", default="", help="more `jkstep run` flags for every run, one string")
    args = ap.parse_args()
    unknown = set(args.molecules) - set(SMILES)
    if unknown:
        raise SystemExit(f"unknown molecule(s) {sorted(unknown)}: data/qm_molecules.smi names {sorted(SMILES)}")
    os.makedirs(args.out, exist_ok=True)
    jkstep = os.path.join(os.path.dirname(sys.executable), "jkstep")
    jobs = []
    for name in args.molecules:
        for seed in args.seeds:
            for model in args.model:
                path = summary_path(args.out, name, seed, model)
                jobs.append((path, [jkstep, "run", "--smiles", SMILES[name], "--ps", str(args.ps), "--equilibrate-ps",
                                    "1", "--seed", str(seed), "--model", model, *args.extra.split()]))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, jobs))

    print("| molecule, seed | model | xTB calls | fallbacks | E std kJ/mol | drift kJ/mol/ps | mean T vs reference |")
    print("|---|---|---|---|---|---|---|")
    totals = {m: {} for m in args.model}  # (molecule, seed) -> summary
    for name in args.molecules:
        for seed in args.seeds:
            ref_path = os.path.join(args.references, f"{name}_s{seed}_ref.json")
            ref = json.load(open(ref_path)) if os.path.exists(ref_path) else None
            for model in args.model:
                path = summary_path(args.out, name, seed, model)
                if not os.path.exists(path):
                    print(f"| {name}, {seed} | {model} | failed: see {path[:-5]}.log | | | | |")
                    continue
                s = json.load(open(path))
                t = (f"{100 * (s['mean_temperature_k'] / ref['mean_temperature_k'] - 1):+.1f} %" if ref
                     else f"{s['mean_temperature_k']:.1f} K")
                blew = " (blew up)" if s["blew_up"] else ""
                print(f"| {name}, {seed} | {model} | {s['xtb_calls']}{blew} | {s['fallbacks']} | "
                      f"{s['energy_std_kj_mol']:.2f} | {s['drift_kj_mol_ps']:+.2f} | {t} |")
                totals[model][name, seed] = s
    print()
    for model, by_run in totals.items():
        runs = list(by_run.values())
        if runs:
            calls = sum(s["xtb_calls"] for s in runs)
            print(f"{model}: {len(runs)} runs, {calls} xTB calls in all ({calls / len(runs):.0f} per run), "
                  f"{sum(s['blew_up'] for s in runs)} blew up, "
                  f"mean E std {sum(s['energy_std_kj_mol'] for s in runs) / len(runs):.2f} kJ/mol")
    first = args.model[0]
    for model in args.model[1:]:
        print(paired_difference({key: s["xtb_calls"] for key, s in totals[model].items()},
                                {key: s["xtb_calls"] for key, s in totals[first].items()}, model, first))


def paired_difference(calls_a: dict, calls_b: dict, a: str, b: str) -> str:
    """A line: model a's xTB calls minus model b's over the runs both finished, with the standard
    error of that total (the spread of the per-run differences × √n: a 10 ps run is chaotic, so
    two models from the same start differ by chance as well as by what they are)."""
    both = sorted(set(calls_a) & set(calls_b))
    if len(both) < 2:
        return f"{a} - {b}: fewer than two runs in common"
    diffs = [calls_a[key] - calls_b[key] for key in both]
    mean = sum(diffs) / len(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) * len(diffs)) ** 0.5
    base = sum(calls_b[key] for key in both)
    return (f"{a} - {b}: {sum(diffs):+d} xTB calls over {len(both)} paired runs ({100 * sum(diffs) / base:+.1f} %), "
            f"standard error {se:.0f} ({100 * se / base:.1f} %)")


if __name__ == "__main__":
    main()
