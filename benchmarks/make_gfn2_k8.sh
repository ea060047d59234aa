#!/usr/bin/env bash
# Regenerates the shipped gfn2-k8 model from scratch: xTB data -> training -> evaluation -> export.
# About 1-2 h on 2 CPU cores (data generation dominates). Every step resumes if interrupted.
#   bash benchmarks/make_gfn2_k8.sh
set -euo pipefail
cd "$(dirname "$0")/.."
J=.venv/bin/jkstep
$J generate --config configs/ship/gfn2-k8_data.yaml
$J train --model-config configs/model_qm_k8.yaml --train-config configs/ship/gfn2-k8_train.yaml --out outputs/qm_k8
mkdir -p outputs/eval
for smiles in "CC(=O)NC(C)C(=O)NC" "NC(CS)C(=O)O" "CC(=O)Nc1ccc(O)cc1"; do
  name=$(echo "$smiles" | tr -c 'A-Za-z0-9' '_')
  $J evaluate --smiles "$smiles" --model outputs/qm_k8 --ps 2 --replicas 4 \
      --summary "outputs/eval/$name.json" --plots "outputs/eval/$name"
done
$J export --from outputs/qm_k8 --name gfn2-k8 --evaluation outputs/eval/*.json
