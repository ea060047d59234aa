#!/usr/bin/env bash
# Stage 3 of the shipped k = 8 and k = 16 models: compact windows of the 20 ps xTB data, then two
# fine-tunings that start from the CPU-trained stage 2 (BASE, default outputs/qm_k8_ft from
# benchmarks/make_gfn2_k8.sh; for k = 16 its weights are converted: jkstep.model.transfer rescales
# the input layers for the longer jump). The shipped models were stopped on one H100 by a 140 s
# timeout, k = 8 at step 9000 and k = 16 at step 6000 of 16000; --max-steps stops at those steps
# on any machine (one H100: about 140 s each; 2 CPU cores: about 4 h each). KS picks the models.
#   bash benchmarks/make_gfn2_gpu.sh            # both, into outputs/gpu_k8 and outputs/gpu_k16
#   KS=16 bash benchmarks/make_gfn2_gpu.sh      # only k = 16
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JKSTEP:-.venv/bin/jkstep}
[ -d gpuw ] || ${PYTHON:-.venv/bin/python} benchmarks/pack_windows.py --ps 15 --out gpuw
for k in ${KS:-8 16}; do
    case $k in 8) steps=9000 ;; 16) steps=6000 ;; *) echo "make_gfn2_gpu.sh: KS holds 8 and/or 16, not $k" >&2; exit 2 ;; esac
    $J train --model-config configs/model_qm_k$k.yaml --train-config configs/ship/gfn2-k${k}_gpu.yaml \
        --out outputs/gpu_k$k --pretrained "${BASE:-outputs/qm_k8_ft}" --max-steps $steps
done
