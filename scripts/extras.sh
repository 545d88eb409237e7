#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then the small MNIST study of the further variants: seed-report
# kernels/positions, a random-feature ablation, softmax -> Performer fine-tuning at equal total
# epochs, and resolution transfer; then their reports. Every step is resumable (re-run to
# continue). Sized for a CPU: 2 epochs on a 20,000-image training subset.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
OUT="${RPEVIT_OUT:-runs/mnist-extras}"
COMMON=(--dataset mnist --preset quick --max-train-samples 20000 --no-progress)

# 1. further variants, 2 epochs each, beside core ones as references; RoPE/STRING without APE
rpevit grid "${COMMON[@]}" --epochs 2 --out "$OUT/variants" --models \
  softmax-ape,softmax-rope,favor-ape,favor-rpe,favor-string,favor-rope,favor-rope-mixed,\
linformer-ape,exp-ape,exp-rope,learnable-ape,learnable-rope,favor-irpe-gate,favor-string-gate
rpevit grid "${COMMON[@]}" --epochs 2 --out "$OUT/no-ape" --no-ape \
  --models softmax-rope,favor-string,favor-rope
# 2. random-feature ablation, m = 16..128, softmax-ape as the exact reference
rpevit grid "${COMMON[@]}" --epochs 2 --out "$OUT/ablation" \
  --models softmax-ape,favor-ape,learnable-ape --nb-features 16,32,64,128
# 3. softmax for 1 epoch, then 1 more epoch after switching attention (2 in total, as in 1.)
rpevit grid "${COMMON[@]}" --epochs 1 --out "$OUT/softmax-1ep" --models softmax-ape,softmax-rope
rpevit grid "${COMMON[@]}" --epochs 1 --out "$OUT/finetune" --init-from "$OUT/softmax-1ep" \
  --models favor-ape,favor-rope,softmax-ape
# 4. resolution transfer of every run of 1. (trained at 28 px, patch 7; zero-padded test images)
rpevit evaluate "$OUT/variants" "$OUT/no-ape" --image-size 28,35,42,56 || true  # Linformer: skipped

rpevit report "$OUT/variants" "$OUT/no-ape" "$OUT/finetune" --out "$OUT/report"
rpevit report "$OUT/ablation" --out "$OUT/ablation-report"
cat "$OUT/report/results.md" "$OUT/ablation-report/results.md"
