#!/usr/bin/env bash
# Create .venv (if missing) and install the package with its dev extras into it.
# Sourced by scripts/test.sh and scripts/main.sh so each works on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/.venv"
fi
VENV_PY="$ROOT/.venv/bin/python"
if ! "$VENV_PY" -c "import rpevit, pytest, ruff" >/dev/null 2>&1 \
    || [ "$ROOT/pyproject.toml" -nt "$ROOT/.venv/.installed" ]; then
    "$VENV_PY" -m pip install --quiet --upgrade pip
    "$VENV_PY" -m pip install --quiet -e "$ROOT[dev]"
    touch "$ROOT/.venv/.installed"
fi
# Offline data beside the repository (as on the project's machines), unless the user chose one.
if [ -z "${RPEVIT_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
    export RPEVIT_DATA_DIR="$ROOT/../shared/data"
fi
export PATH="$ROOT/.venv/bin:$PATH"
