#!/usr/bin/env bash
# Remakes the learned fast force gfn2-fast from nothing: its labelled frames (GFN2-xTB and MMFF94
# energies and forces; resumable), the compact copy, MMFF94 pretraining, the transfer to xTB, the
# scratch run of the ablation, and `jkstep export` of the route with the lower validation force
# RMSE (the record names it: configs/fast/gfn2-fast_notes.yaml). About 1 h on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JKSTEP:-.venv/bin/jkstep}
[ -s data/fast_frames.npz ] || {
    $J generate-fast --config configs/fast/data.yaml
    $J generate-fast --config configs/fast/data.yaml --compact data/fast_frames.npz
}
$J train --model-config configs/fast/model.yaml --train-config configs/fast/train_mm.yaml --out outputs/fast_mm
$J train --model-config configs/fast/model.yaml --train-config configs/fast/train_xtb.yaml \
    --pretrained outputs/fast_mm --out outputs/fast_transfer
$J train --model-config configs/fast/model.yaml --train-config configs/fast/train_xtb.yaml --out outputs/fast_scratch
$J export --from outputs/fast_scratch --name gfn2-fast --notes configs/fast/gfn2-fast_notes.yaml
