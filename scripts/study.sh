#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then the CPU study: the 15 variants (12 core + the linear-cost
# Fourier RPE rows) x 3 seeds on CIFAR-10 (64 tokens) and on MNIST (49 tokens) with the
# `study` preset, two single-threaded workers (--jobs auto). Every finished run's records
# (config, metrics, per-image predictions, CSV logs; no checkpoints) go to
# docs/results/<data set>-study/runs/ and the report is built from the grid folder (those records
# plus checkpoints where present, for the attention maps) into
# docs/results/<data set>-study/. Resumable, also on a fresh clone: re-run to continue;
# committed records count as finished runs.
# Extra arguments go to both `rpevit grid` calls; RPEVIT_OUT sets the runs folder (runs/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
OUT="${RPEVIT_OUT:-runs}"
# RPEVIT_STUDY_DATASETS picks the grids, e.g. "mnist" (each takes up to ~100 min).
for DATASET in ${RPEVIT_STUDY_DATASETS:-cifar10 mnist}; do
    START=$SECONDS
    REPORT="docs/results/$DATASET-study"
    rpevit grid --dataset "$DATASET" --preset study --seeds 42,43,44 --models study \
        --jobs auto --no-progress --out "$OUT/$DATASET-study" --records "$REPORT/runs" "$@"
    find "$REPORT" -maxdepth 1 -type f -delete  # the previous report, not the records
    rpevit report "$OUT/$DATASET-study" --out "$REPORT"  # records + checkpoints where present
    ELAPSED=$((SECONDS - START))
    printf '%s study (grid + report): %d min %02d s\n' "$DATASET" $((ELAPSED / 60)) \
        $((ELAPSED % 60)) | tee -a "$OUT/study-wall-times.txt"
done
for DATASET in ${RPEVIT_STUDY_DATASETS:-cifar10 mnist}; do
    cat "docs/results/$DATASET-study/results.md"
done
cat "$OUT/study-wall-times.txt"
