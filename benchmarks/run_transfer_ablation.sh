#!/usr/bin/env bash
# MM -> QM transfer against training from scratch, on the same QM windows and the same number of
# steps (issue 5). Prints the validation curves of both. About 1 h on 2 CPU cores.
#   bash benchmarks/run_transfer_ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
J=.venv/bin/jkstep
$J generate-mm --config configs/mm_small.yaml
$J train --model-config configs/model_mm_k8.yaml --train-config configs/train_mm_small_k8.yaml --out outputs/mm_k8s
$J dataset --data data/qm --out data/qm_windows
$J train --model-config configs/model_qm_k8.yaml --train-config configs/ablation_qm_k8.yaml --out outputs/abl_scratch
$J train --model-config configs/model_qm_k8.yaml --train-config configs/ablation_qm_k8.yaml --out outputs/abl_transfer \
    --pretrained outputs/mm_k8s
.venv/bin/python - <<'PY'
from jkstep.model.pretrained import read_meta
runs = {name: {h["step"]: h for h in read_meta(f"outputs/{name}")["history"]} for name in ("mm_k8s", "abl_scratch", "abl_transfer")}
print("MM model on held-out MM molecules:", {s: (round(h["rmse_x_a"], 6), round(h["rmse_v"], 6)) for s, h in runs["mm_k8s"].items()})
print(f"{'step':>6s} {'scratch val loss':>17s} {'transfer val loss':>18s} {'scratch rmse_x Å':>17s} {'transfer rmse_x Å':>18s}")
for step in sorted(runs["abl_scratch"]):
    a, b = runs["abl_scratch"][step], runs["abl_transfer"].get(step, {})
    print(f"{step:6d} {a['loss']:17.5f} {b.get('loss', float('nan')):18.5f} {a['rmse_x_a']:17.3e} {b.get('rmse_x_a', float('nan')):18.3e}")
PY
