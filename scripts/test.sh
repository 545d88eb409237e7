#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), lint, and run the default test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
ruff check src tests experiments examples
python -m pytest "$@"
