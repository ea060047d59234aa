#!/usr/bin/env bash
# The learned fast force's remaining targets on the four test molecules (reporting only), from
# `jkstep evaluate`'s starts (seed 0), two lanes of one xTB thread each; outputs/fast_targets/:
#   long_NAME.json   RESPA at k = 8, 4 replicas x 10 ps NVE (drift over 10 ps)
#   k16_NAME.json    RESPA at k = 16 with MMFF94 and with the fast force, and Verlet at 1 fs, 2 ps NVE
#   k32_NAME.json    RESPA at k = 32 in NVT (both thermostat placements) against a 0.5 fs Langevin reference
#   rmse.json        force RMSE against xTB on the 0.25 fs reference frames, MMFF94 beside it
# A file that exists is not remade. About 1 h on 2 CPU cores.
# FAST_EVERY: the network's kicks every N inner steps (three-level RESPA; default 2, as jkstep run).
#   FAST=gfn2-fast bash benchmarks/fast_force_targets.sh [molecule names ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
FAST=${FAST:-gfn2-fast}
FAST_EVERY=${FAST_EVERY:-2}
OUT=${OUT:-outputs/fast_targets}
MOLECULES=("${@:-alanine_dipeptide cysteine adenine paracetamol}")
read -r -a MOLECULES <<< "${MOLECULES[*]}"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
one() {
    local m=$1
    [ -s "$OUT/long_$m.json" ] || $PY benchmarks/respa_fast_compare.py --fast "$FAST" --no-mmff --ps 10 \
        --fast-every "$FAST_EVERY" --molecules "$m" --json "$OUT/long_$m.json" > "$OUT/long_$m.log" 2>&1
    [ -s "$OUT/k16_$m.json" ] || $PY benchmarks/respa_fast_compare.py --fast "$FAST" --k 16 --verlet-dt 1 \
        --fast-every "$FAST_EVERY" --molecules "$m" --json "$OUT/k16_$m.json" > "$OUT/k16_$m.log" 2>&1
    [ -s "$OUT/k32_$m.json" ] || $PY benchmarks/respa_k_sweep.py --molecules "$m" --ks --nvt-ks 32 --fast "$FAST" \
        --fast-every "$FAST_EVERY" --out "$OUT/k32_$m.json" > "$OUT/k32_$m.log" 2>&1
}
lane() { for ((i = $1; i < ${#MOLECULES[@]}; i += 2)); do one "${MOLECULES[$i]}"; done; }
lane 0 & lane 1 & wait
[ -s "$OUT/rmse.json" ] || $PY benchmarks/fast_force_rmse.py --fast mmff "$FAST" --ps 0.25 \
    --molecules "${MOLECULES[@]}" --json "$OUT/rmse.json" > "$OUT/rmse.log" 2>&1
echo "done: $OUT"
