#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then run the main job: the study's 15 variants (12 core + the
# three linear-cost frpe rows) on MNIST with the CPU `quick` preset (resumable: re-run after a
# crash to continue), then its report.
# Extra arguments go to `rpevit grid`, e.g. `--dataset cifar10` or `--seeds 42,43,44`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
OUT="${RPEVIT_OUT:-runs/mnist-quick}"
rpevit grid --dataset mnist --preset quick --models study --out "$OUT" --no-progress "$@"
rpevit report "$OUT"
cat "$OUT/report/results.md"
