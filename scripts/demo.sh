#!/usr/bin/env bash
# The demo: set up .venv if needed, then run Bulwark end to end on the real corpora.
# Usage: scripts/demo.sh [--corpora DIR] [other scripts/demo.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
HF_HUB_OFFLINE=1 exec .venv/bin/python scripts/demo.py "$@"
