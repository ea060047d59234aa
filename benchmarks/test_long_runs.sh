#!/usr/bin/env bash
# 10 ps NVE runs of the shipped gfn2-k8 on the four TEST molecules (reporting only, never model
# selection), from a 1 ps Langevin start per seed: the fallback as 4 steps of 0.5 fs (the default)
# and as 8 steps of 0.25 fs (the default before), two seeds. Then the table:
#   bash benchmarks/test_long_runs.sh [OUT=outputs/test10] ; python benchmarks/long_runs_table.py --test outputs/test10
# About 40 min on 2 CPU cores (two runs at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/test10}
mkdir -p "$OUT"
jobs=()
for pair in "alanine_dipeptide CC(=O)NC(C)C(=O)NC" "adenine Nc1ncnc2[nH]cnc12" "cysteine NC(CS)C(=O)O" \
            "paracetamol CC(=O)Nc1ccc(O)cc1"; do
  set -- $pair
  for SEED in 0 1; do
    for N in 4 8; do
      P="$OUT/$1_s${SEED}_fb$N"
      [ -f "$P.json" ] || jobs+=("OMP_NUM_THREADS=1 .venv/bin/jkstep run --smiles '$2' --ps 10 --equilibrate-ps 1 --seed $SEED --fallback-steps $N --summary $P.json > $P.log 2>&1")
    done
  done
done
[ ${#jobs[@]} -eq 0 ] || printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c "{}"
