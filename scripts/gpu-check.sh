#!/usr/bin/env bash
# The GPU check (issue 22), for a session lent a GPU: one command, a few minutes on one
# H100-class GPU, no download. Runs the device-parametrised tests on CUDA, then
# `python -m rpevit.bench.gpu_check`: one short run per kernel (softmax-rpe, favor-rope,
# relu-string) with the paper-size model in float32, bf16-mixed and 16-mixed on synthetic
# MNIST-format digits, finiteness, CPU/GPU float32 agreement, and gpu_check.json (images/s).
# Uses the GPU machine's own PyTorch/Lightning (the package runs from src/, no install).
# Output folder: $OUT if set (the device tool's), else runs/gpu-check.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST="${OUT:-runs/gpu-check}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/nvidia-smi.txt"
python -m pytest -q -p no:cacheprovider -k cuda tests/test_precision.py tests/test_positions.py \
    2>&1 | tee "$DEST/tests.log"
TESTS=${PIPESTATUS[0]}
python -m rpevit.bench.gpu_check --out "$DEST" --tests-exit-code "$TESTS"
