#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then run the main job: train and evaluate relu-ape on MNIST
# with the CPU `quick` preset and print its metrics. Extra arguments go to `rpevit train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
rpevit train --model relu-ape --dataset mnist --preset quick --out runs "$@"
