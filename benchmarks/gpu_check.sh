#!/usr/bin/env bash
# The GPU figures of the model issue, in one run on a machine with an NVIDIA GPU and JAX for CUDA
# (the network, training and batched inference on the GPU; xTB stays on the CPU):
#   1. inference cost per molecule-jump, single and batched up to 1024 replicas (bench_model.py);
#   2. training throughput in windows/s (bench_train.py);
#   3. a vmap'd hybrid rollout of 1024 alanine-dipeptide replicas with the shipped gfn2-k8,
#      the network on the GPU and the 1024 xTB calls per macro-step on all CPU threads;
#   4. the fast test suite on the CPU backend of this machine's Python and JAX (a compatibility check).
# Each part writes its log to $OUT (or outputs/gpu_check) and the script goes on if one fails.
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $py -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/env.log"
timeout 120 $py benchmarks/bench_model.py --threads 0 --batches 1 64 1024 --repeat 5 2>&1 | tee "$OUT/bench_model.log"
timeout 120 $py benchmarks/bench_train.py --batches 32 128 512 2>&1 | tee "$OUT/bench_train.log"
timeout 150 $py benchmarks/bench_kstep.py --model gfn2-k8 --skip-accuracy --skip-timing --batch 1024 \
    --workers "$(nproc)" 2>&1 | tee "$OUT/bench_kstep_batch.log"
xdist=$($py -c "import xdist" 2>/dev/null && echo "-n $(nproc)")   # pytest-xdist, where installed
JAX_PLATFORMS=cpu timeout "${TEST_TIMEOUT:-300}" $py -m pytest -q -p no:cacheprovider -W ignore $xdist 2>&1 \
    | tail -30 | tee "$OUT/pytest.log"
