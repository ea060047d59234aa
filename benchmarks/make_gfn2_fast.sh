#!/usr/bin/env bash
# Remakes the learned fast force gfn2-fast from nothing: its labelled frames (GFN2-xTB and MMFF94
# energies and forces; resumable) and their compact copy if absent, the training of the smooth
# Δ-potential on MMFF94 (configs/fast/model_delta_wide.yaml, 20,000 steps of
# train_delta_long_seed1.yaml), its evaluations on the validation
# molecules (jkstep evaluate --fast, the same starts as every record; three-level RESPA, --fast-every 2 by
# default) and `jkstep export` with its
# record (configs/fast/gfn2-fast_notes.yaml), then the test molecules' evaluations (reporting only) and
# the record again with them. About 45 min on 2 CPU cores with the committed frames.
# What it replaced: the same network with seed 0 (train_delta_long.yaml, outputs/fast_delta_wide), and
# before that model_delta_small.yaml (8 features), outputs/fast_delta_long.
# The earlier full network and its MM -> QM ablation: configs/fast/model.yaml, train_mm.yaml,
# train_xtb.yaml (docs/results.md, "The learned fast force").
set -euo pipefail
cd "$(dirname "$0")/.."
J=${JKSTEP:-.venv/bin/jkstep}
[ -s data/fast_frames.npz ] || {
    $J generate-fast --config configs/fast/data.yaml
    $J generate-fast --config configs/fast/data.yaml --compact data/fast_frames.npz
}
$J train --model-config configs/fast/model_delta_wide.yaml --train-config configs/fast/train_delta_long_seed1.yaml \
    --out outputs/fast_delta_seed1
mkdir -p outputs/fast_eval_m2
for pair in "1-propanol CCCO" "cytosine Nc1cc[nH]c(=O)n1"; do  # two at a time, one xTB thread each
    set -- $pair
    [ -s "outputs/fast_eval_m2/$1.json" ] || OMP_NUM_THREADS=1 $J evaluate --smiles "$2" --fast outputs/fast_delta_seed1 \
        --ps 2 --replicas 4 --summary "outputs/fast_eval_m2/$1.json" > "outputs/fast_eval_m2/$1.log" 2>&1 &
done
wait
$J export --from outputs/fast_delta_seed1 --name gfn2-fast --notes configs/fast/gfn2-fast_notes.yaml \
    --evaluation outputs/fast_eval_m2/1-propanol.json outputs/fast_eval_m2/cytosine.json
# the test molecules (reporting only) with the shipped weights, then the record with every evaluation
OUT=outputs/fast_eval_m2_test ARGS="--ps 2 --replicas 4 --fast gfn2-fast" bash benchmarks/respa_eval.sh
$J export --from outputs/fast_delta_seed1 --name gfn2-fast --notes configs/fast/gfn2-fast_notes.yaml \
    --evaluation outputs/fast_eval_m2/1-propanol.json outputs/fast_eval_m2/cytosine.json outputs/fast_eval_m2_test/*.json
