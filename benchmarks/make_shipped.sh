#!/usr/bin/env bash
# One command per shipped model: remakes jkstep/pretrained/NAME from nothing (data, every training
# stage, the evaluations of its record and `jkstep export`). Every step resumes if interrupted
# (generation, training and the evaluations keep what they finished).
#   bash benchmarks/make_shipped.sh gfn2-k8      # stages 1-2 (2 h), 20 ps data (hours), stage 3 (H100
#                                                # 140 s; 2 CPU cores about 4 h), its record (1.5 h)
#   bash benchmarks/make_shipped.sh gfn2-k16     # the same base and data, its own stage 3, record (30 min)
#   bash benchmarks/make_shipped.sh gfn2-k8-mm   # make_gfn2_k8_mm.sh (about 8 h on 2 CPU cores)
#   bash benchmarks/make_shipped.sh gfn2-fast    # make_gfn2_fast.sh: the learned fast force (about 35 min)
# JKSTEP and PYTHON name the jkstep command and the Python the scripts use (default: .venv/bin/).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: make_shipped.sh gfn2-k8|gfn2-k16|gfn2-k8-mm|gfn2-fast}
case $NAME in
    gfn2-k8) K=8 ;;
    gfn2-k16) K=16 ;;
    gfn2-k8-mm) exec bash benchmarks/make_gfn2_k8_mm.sh ;;
    gfn2-fast) exec bash benchmarks/make_gfn2_fast.sh ;;
    *) echo "make_shipped.sh: unknown model $NAME (gfn2-k8, gfn2-k16, gfn2-k8-mm or gfn2-fast)" >&2; exit 2 ;;
esac
bash benchmarks/make_gfn2_k8.sh                  # stages 1-2 -> outputs/qm_k8_ft
# stage 3 reads compact windows of the 20 ps production runs (generation: several hours; it extends
# the 5 ps runs of stages 1-2 in the same store, data/qm)
[ -d gpuw ] || ${JKSTEP:-.venv/bin/jkstep} generate --config configs/qm.yaml
KS=$K bash benchmarks/make_gfn2_gpu.sh           # packs gpuw if absent; stage 3 -> outputs/gpu_k$K
SOURCE=outputs/gpu_k$K bash benchmarks/record_shipped.sh "$NAME"
