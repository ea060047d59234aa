#!/usr/bin/env bash
# 10 ps NVE runs of the shipped gfn2-k8 on validation molecules, from the same 1 ps Langevin start
# per seed: the 0.25 fs reference (Verlet, 40,001 calls), the hybrid with its default guards, and
# the hybrid with the weak energy coupling (--energy-relaxation TAU fs), with and without the
# total-energy excursion guard. Over 10 ps the cost is set by how often that guard rejects jumps,
# which a 1 ps evaluation does not show. Then the table:
#   bash benchmarks/long_runs.sh [OUT=outputs/long] ; python benchmarks/long_runs_table.py outputs/long
# About 3 h on 2 CPU cores in all (the 10 ps references and the evaluations take most of it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/long}
mkdir -p "$OUT"
J=.venv/bin/jkstep
for pair in "1-propanol CCCO" "cytosine Nc1cc[nH]c(=O)n1"; do
  set -- $pair
  for SEED in 0 1; do
    R="$J run --smiles $2 --ps 10 --equilibrate-ps 1 --seed $SEED"
    P="$OUT/$1_s$SEED"
    [ -f "${P}_ref.json" ] || $R --integrator verlet --dt 0.25 --save-every 8 --summary "${P}_ref.json" > "${P}_ref.log" 2>&1
    [ -f "${P}_default.json" ] || $R --summary "${P}_default.json" > "${P}_default.log" 2>&1
    for T in 1000 500; do
      [ -f "${P}_t$T.json" ] || $R --energy-relaxation $T --summary "${P}_t$T.json" > "${P}_t$T.log" 2>&1
    done
  done
  # the coupling in place of the excursion guard: seed 0 only
  for T in 1000 500 250; do
    P="$OUT/$1_s0"
    [ -f "${P}_t${T}_noguard.json" ] || $J run --smiles $2 --ps 10 --equilibrate-ps 1 --seed 0 --energy-relaxation $T \
        --max-energy-drift -1 --summary "${P}_t${T}_noguard.json" > "${P}_t${T}_noguard.log" 2>&1
  done
done
# distributions against Verlet at 2 fs and the 0.25 fs reference, 2 replicas x 5 ps (kstep_relaxed
# with the excursion guard off at 250 fs, then on at 1000 fs):
for pair in "1-propanol CCCO" "cytosine Nc1cc[nH]c(=O)n1"; do
  set -- $pair
  [ -f "$OUT/eval_$1_t250.json" ] || $J evaluate --smiles $2 --model gfn2-k8 --ps 5 --replicas 2 \
      --energy-relaxation 250 --summary "$OUT/eval_$1_t250.json" > "$OUT/eval_$1_t250.log" 2>&1
  [ -f "$OUT/eval_$1_t1000.json" ] || $J evaluate --smiles $2 --model gfn2-k8 --ps 5 --replicas 2 \
      --energy-relaxation 1000 --relaxed-max-energy-drift 0.05 --summary "$OUT/eval_$1_t1000.json" > "$OUT/eval_$1_t1000.log" 2>&1
done
