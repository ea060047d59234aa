"""Plain Verlet at the equal-cost time step of each 10 ps hybrid run, from the same start.

    python benchmarks/equal_cost_runs.py outputs/long outputs/test10 [--setting fb4] [--jobs 2]

For every ``<name>_s<seed>_<setting>.json`` (a ``jkstep run`` summary of the shipped gfn2-k8 from
a 1 ps Langevin start at 0.25 fs: ``fb4``, the default settings, made by ``long_runs.sh`` /
``test_long_runs.sh``; ``rs``, with the energy rescale, by ``rescaled_long_runs.sh``) it runs
``jkstep run --integrator verlet`` at dt = simulated time / (xTB calls − 1), the step that makes
exactly as many xTB calls, from the same thermalised state (``--equilibrate-dt 0.25``), frames
every step, into ``<name>_s<seed>_eq.json`` (``fb4``) or ``<name>_s<seed>_<setting>_eq.json``.
Runs that exist are skipped. ``long_runs_table.py`` then shows them beside the hybrid ("Verlet at ... fs (equal
cost ...)").
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from jkstep.integrate import equal_cost_dt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import existing_dir, positive_int  # noqa: E402


def command(summary_path: str, setting: str = "fb4") -> tuple[list[str], str] | None:
    """(command line, output summary path) of the equal-cost Verlet run, or None if it exists."""
    stem = summary_path[: -len(f"_{setting}.json")]
    out = stem + ("_eq.json" if setting == "fb4" else f"_{setting}_eq.json")
    if os.path.exists(out):
        return None
    s = json.load(open(summary_path))
    seed = int(re.search(r"_s(\d+)$", stem).group(1))
    dt = equal_cost_dt(s["xtb_calls"], 1, s["simulated_fs"])
    jkstep = os.path.join(os.path.dirname(sys.executable), "jkstep")
    return ([jkstep, "run", "--smiles", s["molecule"], "--integrator", "verlet", "--dt", repr(dt),
             "--ps", repr(s["simulated_fs"] / 1000.0), "--equilibrate-ps", "1", "--equilibrate-dt", "0.25",
             "--seed", str(seed), "--save-every", "1", "--summary", out], out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directories", type=existing_dir, nargs="+")
    p.add_argument("--setting", default="fb4", help="the hybrid runs to match: fb4 (default settings) or rs "
                                                      "(energy rescale)")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs at a time (default 2)")
    args = p.parse_args()
    todo = [c for d in args.directories for path in sorted(glob.glob(f"{d}/*_s*_{args.setting}.json"))
            if (c := command(path, args.setting)) is not None]

    def run(item):
        cmd, out = item
        with open(out[: -len(".json")] + ".log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
        print(f"{out}: exit {rc}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, todo))


if __name__ == "__main__":
    main()
