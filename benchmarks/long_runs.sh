#!/usr/bin/env bash
# 10 ps NVE runs of the shipped gfn2-k8 on validation molecules, from the same 1 ps Langevin start
# per seed: the 0.25 fs reference (Verlet, 40,001 calls), the hybrid with its default guards, and
# the hybrid with the weak energy coupling (--energy-relaxation TAU fs), with and without the
# total-energy excursion guard. Over 10 ps the cost is set by how often that guard rejects jumps,
# which a 1 ps evaluation does not show. Then the fallback: N Verlet steps of 2 fs / N per
# fallback macro-step (--fallback-steps N; the default is N = 4, steps of 0.5 fs; before it was
# N = 8, steps of 0.25 fs, and the runs measured then pin --fallback-steps 8). Then the tables:
#   bash benchmarks/long_runs.sh [OUT=outputs/long] ; python benchmarks/long_runs_table.py outputs/long
# (The last runs, before the tables: plain Verlet at the equal-cost step of each default run, from
# its start: benchmarks/equal_cost_runs.py.)
# About 4 h on 2 CPU cores in all (the 10 ps references and the evaluations take most of it).
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
    [ -f "${P}_default.json" ] || $R --fallback-steps 8 --summary "${P}_default.json" > "${P}_default.log" 2>&1
    for T in 1000 500; do
      [ -f "${P}_t$T.json" ] || $R --fallback-steps 8 --energy-relaxation $T --summary "${P}_t$T.json" > "${P}_t$T.log" 2>&1
    done
    # the fallback: 4 steps of 0.5 fs (the default now), 2 of 1 fs, 1 of 2 fs, and 2 of 1 fs without retries
    for N in 4 2 1; do
      [ -f "${P}_fb$N.json" ] || $R --fallback-steps $N --summary "${P}_fb$N.json" > "${P}_fb$N.log" 2>&1
    done
    [ -f "${P}_fb2_a1.json" ] || $R --fallback-steps 2 --max-attempts 1 --summary "${P}_fb2_a1.json" > "${P}_fb2_a1.log" 2>&1
  done
  # the coupling in place of the excursion guard: seed 0 only
  for T in 1000 500 250; do
    P="$OUT/$1_s0"
    [ -f "${P}_t${T}_noguard.json" ] || $J run --smiles $2 --ps 10 --equilibrate-ps 1 --seed 0 --energy-relaxation $T \
        --fallback-steps 8 --max-energy-drift -1 --summary "${P}_t${T}_noguard.json" > "${P}_t${T}_noguard.log" 2>&1
  done
done
# k = 16 (gfn2-k16): the fallback as 16 steps of 0.25 fs against the default 8 of 0.5 fs, 2 ps each
for pair in "1-propanol CCCO" "cytosine Nc1cc[nH]c(=O)n1"; do
  set -- $pair
  for N in 16 8; do
    P="$OUT/k16_$1_fb$N"
    [ -f "$P.json" ] || $J run --model gfn2-k16 --smiles $2 --ps 2 --equilibrate-ps 1 --fallback-steps $N \
        --summary "$P.json" > "$P.log" 2>&1
  done
done
# distributions against Verlet at 2 fs and the 0.25 fs reference, 2 replicas x 5 ps (kstep_relaxed
# with the excursion guard off at 250 fs, then on at 1000 fs; then the fallback at 0.5 and 1 fs):
for pair in "1-propanol CCCO" "cytosine Nc1cc[nH]c(=O)n1"; do
  set -- $pair
  E="$J evaluate --smiles $2 --model gfn2-k8 --ps 5 --replicas 2"
  [ -f "$OUT/eval_$1_t250.json" ] || $E --fallback-steps 8 --energy-relaxation 250 \
      --summary "$OUT/eval_$1_t250.json" > "$OUT/eval_$1_t250.log" 2>&1
  [ -f "$OUT/eval_$1_t1000.json" ] || $E --fallback-steps 8 --energy-relaxation 1000 --relaxed-max-energy-drift 0.05 \
      --summary "$OUT/eval_$1_t1000.json" > "$OUT/eval_$1_t1000.log" 2>&1
  for N in 4 2; do
    [ -f "$OUT/eval_$1_fb$N.json" ] || $E --fallback-steps $N --summary "$OUT/eval_$1_fb$N.json" > "$OUT/eval_$1_fb$N.log" 2>&1
  done
done
# plain Verlet at the equal-cost step of each default (fb4) run, from its start
.venv/bin/python benchmarks/equal_cost_runs.py "$OUT"
