#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then the FAVOR+ redraw-policy measurement (issue 21): favor-ape
# and favor-rope on CIFAR-10, seeds 42,43,44, the `study` model at 3 and 9 epochs, under each
# policy (redraw_interval:redraw_stop), two single-threaded workers; after each grid, every
# run's validation accuracy under 5 fresh evaluation draws, its records (no checkpoints) in
# docs/results/redraw-policy/records/ and the table docs/results/redraw-policy/policy.md.
# Resumable, also on a fresh clone: committed records count as finished runs.
# RPEVIT_OUT sets the runs folder (runs/); extra arguments go to every `rpevit grid`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
STUDY="${RPEVIT_OUT:-runs}/redraw-policy"
REPORT=docs/results/redraw-policy
mkdir -p "$STUDY"
if [ -d "$REPORT/records" ]; then cp -rn "$REPORT/records/." "$STUDY/"; fi
# epochs:name:interval:stop. "old" is the recipe before the fix (every 1000 steps, to the end).
GRIDS="3:old:1000:1.0 3:none:0:1.0 3:stop50:100:0.5 3:every:1:1.0
       9:none:0:1.0 9:stop50:100:0.5 9:every:1:1.0"
for GRID in $GRIDS; do
    IFS=: read -r EPOCHS NAME INTERVAL STOP <<<"$GRID"
    rpevit grid --dataset cifar10 --preset study --epochs "$EPOCHS" --seeds 42,43,44 \
        --models favor-ape,favor-rope --redraw-interval "$INTERVAL" --redraw-stop "$STOP" \
        --jobs auto --no-progress --out "$STUDY/e$EPOCHS-$NAME" "$@"
    python -m rpevit.experiments.redraw "$STUDY" --out "$REPORT" --records "$REPORT/records"
done
