#!/usr/bin/env bash
# Stages 1-2 of the shipped gfn2-k8 and gfn2-k16 (their common CPU-trained base, outputs/qm_k8_ft):
# xTB data -> stage 1 (from scratch) -> stage 2 (fine-tuning with the per-jump energy loss). About
# 2 h on 2 CPU cores (data generation dominates). Every step resumes if interrupted. Stage 3 and the
# record follow in benchmarks/make_shipped.sh, the one command that remakes a shipped model.
#   bash benchmarks/make_gfn2_k8.sh
# The shipped stage 2 was trained while `jkstep generate --config configs/qm.yaml` was extending the
# training trajectories from 5 to 20 ps (see jkstep/pretrained/gfn2-k8/provenance.json, "stages"), so
# this script gives a close, not a bitwise identical, model.
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JKSTEP:-.venv/bin/jkstep}
$J generate --config configs/ship/gfn2-k8_data.yaml
$J train --model-config configs/model_qm_k8.yaml --train-config configs/ship/gfn2-k8_train.yaml --out outputs/qm_k8
$J train --model-config configs/model_qm_k8.yaml --train-config configs/ship/gfn2-k8_finetune.yaml \
    --out outputs/qm_k8_ft --pretrained outputs/qm_k8
