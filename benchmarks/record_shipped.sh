#!/usr/bin/env bash
# The record beside a shipped model (jkstep/pretrained/NAME/provenance.json): its evaluations,
# `jkstep evaluate` with 4 replicas on the validation molecules cytosine and 1-propanol (for
# gfn2-k8 and gfn2-k8-mm, 2 ps each, also on the four test molecules; for gfn2-k16, 1 ps), then
# `jkstep export` with them and the notes in configs/ship/NAME_record.yaml. The summaries go to
# outputs/ship_eval/NAME/<SOURCE with / as _>/; one that exists there is not run again, so an
# interrupted run resumes (and a new SOURCE gets its own). Two evaluations run at a time, one xTB
# thread each (2 CPU cores: about 15 min per molecule).
#   SOURCE=outputs/gpu_k8 bash benchmarks/record_shipped.sh gfn2-k8   # ship a newly trained model
#   bash benchmarks/record_shipped.sh gfn2-k16                        # re-record the shipped one
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JKSTEP:-.venv/bin/jkstep}
NAME=${1:?usage: record_shipped.sh gfn2-k8|gfn2-k8-mm|gfn2-k16}
SOURCE=${SOURCE:-jkstep/pretrained/$NAME}
OUT=outputs/ship_eval/$NAME/${SOURCE//\//_}
case $NAME in
    gfn2-k8 | gfn2-k8-mm) PS=2; MOLECULES=(cytosine 1-propanol alanine_dipeptide cysteine adenine paracetamol) ;;
    gfn2-k16) PS=1; MOLECULES=(cytosine 1-propanol) ;;
    *) echo "record_shipped.sh: unknown model $NAME (gfn2-k8, gfn2-k8-mm or gfn2-k16)" >&2; exit 2 ;;
esac
mkdir -p "$OUT"

evaluate() {   # name of data/qm_molecules.smi
    local smiles
    smiles=$(awk -v n="$1" '$2 == n {print $1}' data/qm_molecules.smi)
    [ -s "$OUT/$1.json" ] || OMP_NUM_THREADS=1 $J evaluate --smiles "$smiles" --model "$SOURCE" --ps $PS \
        --replicas 4 --energy-rescale --summary "$OUT/$1.json" > "$OUT/$1.log" 2>&1
}
lane() {       # every second molecule from index $1
    for ((i = $1; i < ${#MOLECULES[@]}; i += 2)); do evaluate "${MOLECULES[$i]}"; done
}
lane 0 & lane 1 & wait

summaries=()
for m in "${MOLECULES[@]}"; do summaries+=("$OUT/$m.json"); done
$J export --from "$SOURCE" --name "$NAME" --notes "configs/ship/${NAME}_record.yaml" --evaluation "${summaries[@]}"
