#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then the budget study (rpevit.experiments.budget): per-kernel
# tuning on the validation split, CIFAR-10 at 3 and 9 epochs (15 study variants + Luo's
# normalised FAVOR+ rows, 3 seeds), the declared 27-epoch subset; then one report per budget and
# the gap-by-budget report, all in docs/results/budget-study/. Two single-threaded workers.
# ~16-18 hours of a 2-core machine in all: stop it at any time and run it again to continue, also
# on a fresh clone (finished runs' records in docs/results/budget-study/ count as done).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
STUDY=docs/results/budget-study
python -m rpevit.experiments.budget --jobs "${RPEVIT_JOBS:-2}"
for EPOCHS in 3 9 27; do
    rpevit report "$STUDY/e$EPOCHS" --tuned frpe_terms --out "$STUDY/report-e$EPOCHS"
done
rpevit report --by-budget --tuned frpe_terms "$STUDY/e3" "$STUDY/e9" "$STUDY/e27" --out "$STUDY"
cat "$STUDY/budgets.md"
