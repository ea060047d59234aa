#!/usr/bin/env bash
# The MM-pretrained k = 8 model, shipped as gfn2-k8-mm beside the default gfn2-k8 (docs/results.md,
# "MM pretraining for gfn2-k8"), on CPU:
#   MMFF94 data -> stage 1: MM pretraining -> xTB data -> compact xTB windows
#   -> stage 2: MM -> QM transfer and fine-tuning on xTB (6000 steps at batch 32)
#   -> stage 3: gfn2-k8's GPU recipe (configs/ship/gfn2-k8_gpu.yaml, batch 256), 12000 of its 16000 steps
#   -> its evaluations (6 molecules x 4 replicas x 2 ps) and `jkstep export` into jkstep/pretrained/gfn2-k8-mm.
# As run, on 2 CPU cores: MM data 17 min, stage 1 38 min, stage 2 19 min, stage 3 about 5 h,
# evaluations about 1 h; the xTB data (configs/qm.yaml, 20 ps per training molecule) takes several
# hours if it is not there. Generation and training resume if interrupted (a finished run returns
# after loading its data), and so do the evaluations (record_shipped.sh keeps finished summaries).
#   bash benchmarks/make_gfn2_k8_mm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JKSTEP:-.venv/bin/jkstep}
$J generate-mm --config configs/mm.yaml
$J train --model-config configs/model_mm_k8.yaml --train-config configs/ship/gfn2-k8_mm.yaml --out outputs/mm_k8
$J generate --config configs/qm.yaml
[ -d gpuw ] || ${PYTHON:-.venv/bin/python} benchmarks/pack_windows.py --ps 15 --out gpuw
$J train --model-config configs/model_qm_k8.yaml --train-config configs/ship/gfn2-k8_transfer.yaml \
    --out outputs/qm_k8_tr --pretrained outputs/mm_k8
$J train --model-config configs/model_qm_k8.yaml --train-config configs/ship/gfn2-k8_gpu.yaml \
    --out outputs/qm_k8_mm --pretrained outputs/qm_k8_tr --max-steps 12000
SOURCE=outputs/qm_k8_mm bash benchmarks/record_shipped.sh gfn2-k8-mm
