#!/usr/bin/env bash
# Every contender, mmff_respa included, on the four test molecules from the same starts:
# `jkstep evaluate --ps 2 --replicas 4` (seed 0: the same starting states as the shipped models' records), two at a time, one xTB thread
# each. Summaries go to outputs/respa_eval/NAME.json; one that exists is not run again.
#   bash benchmarks/respa_eval.sh [molecule names of data/qm_molecules.smi ...]
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JKSTEP:-.venv/bin/jkstep}
OUT=${OUT:-outputs/respa_eval}
ARGS=${ARGS:---ps 2 --replicas 4}
MOLECULES=("${@:-alanine_dipeptide cysteine adenine paracetamol}")
read -r -a MOLECULES <<< "${MOLECULES[*]}"
mkdir -p "$OUT"
evaluate() {
    local smiles
    smiles=$(awk -v n="$1" '$2 == n {print $1}' data/qm_molecules.smi)
    [ -s "$OUT/$1.json" ] || OMP_NUM_THREADS=1 $J evaluate --smiles "$smiles" $ARGS \
        --summary "$OUT/$1.json" > "$OUT/$1.log" 2>&1
}
lane() { for ((i = $1; i < ${#MOLECULES[@]}; i += 2)); do evaluate "${MOLECULES[$i]}"; done; }
lane 0 & lane 1 & wait
