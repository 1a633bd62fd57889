#!/usr/bin/env bash
# Set up .venv if needed, check style, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "$@"
