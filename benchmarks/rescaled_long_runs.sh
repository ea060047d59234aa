#!/usr/bin/env bash
# 10 ps NVE runs of the shipped gfn2-k8 with the energy rescale (--energy-rescale: velocities
# rescaled to the initial total energy after each accepted jump), from the same 1 ps Langevin
# starts as the long runs with a 0.25 fs reference: alanine dipeptide (test, outputs/test10) and
# the validation molecules cytosine and 1-propanol (outputs/long), seeds 0 and 1; then plain Verlet
# at each run's equal-cost step from its start (equal_cost_runs.py --setting rs). Tables:
#   bash benchmarks/rescaled_long_runs.sh
#   python benchmarks/long_runs_table.py --test outputs/test10 ; python benchmarks/long_runs_table.py outputs/long
# About 40 min on 2 CPU cores (two runs at a time). Runs whose summary exists are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {   # run DIR NAME SMILES SEED
  local P="$1/$2_s$4_rs"
  [ -f "$P.json" ] || OMP_NUM_THREADS=1 .venv/bin/jkstep run --smiles "$3" --ps 10 --equilibrate-ps 1 --seed "$4" \
      --energy-rescale --summary "$P.json" > "$P.log" 2>&1
}
lane() {  # all three molecules for one seed
  run outputs/test10 alanine_dipeptide "CC(=O)NC(C)C(=O)NC" "$1"
  run outputs/long cytosine "Nc1cc[nH]c(=O)n1" "$1"
  run outputs/long 1-propanol CCCO "$1"
}
lane 0 & lane 1 & wait
.venv/bin/python benchmarks/equal_cost_runs.py --setting rs outputs/test10 outputs/long
