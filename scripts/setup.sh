#!/usr/bin/env bash
# Create .venv inside the repository and install Bulwark with its dev extras.
# Torch goes first, pinned (set BULWARK_TORCH_VERSION to change it), so that the
# project's own torch range installs nothing more: on a machine without CUDA the
# pinned CPU build is used and no multi-gigabyte CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.bulwark-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi

.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==${BULWARK_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
touch "$stamp"
