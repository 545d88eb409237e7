#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then the bf16 accuracy check (issue 22): softmax-ape, favor-ape
# and relu-ape on CIFAR-10 with the `study` preset in bf16-mixed, seeds 42, 43, 44, compared by
# seed with the float32 runs of the published CIFAR-10 study (docs/results/cifar10-study/runs,
# from scripts/study.sh). Resumable: records in docs/results/bf16-accuracy/records count as done.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
REPORT=docs/results/bf16-accuracy
rpevit grid --dataset cifar10 --preset study --seeds 42,43,44 \
    --models softmax-ape,favor-ape,relu-ape --precision bf16-mixed --jobs auto --no-progress \
    --out "${RPEVIT_OUT:-runs}/bf16-accuracy" --records "$REPORT/records"
python -m rpevit.experiments.precision "$REPORT/records" docs/results/cifar10-study/runs \
    --out "$REPORT"
