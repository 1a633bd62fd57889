#!/usr/bin/env bash
# Serve a model repository with the tritonserver bundled in nvidia-pytriton (CPU), in
# the foreground; Ctrl-C stops it. Arguments go to `python -m serving.server`:
#   scripts/start_server.sh                                   # model_repository/, ports 8000-8002
#   scripts/start_server.sh --model-repository DIR --http-port 0 --grpc-port 0 --metrics-port 0
#   scripts/start_server.sh --model-control-mode explicit --load-model bulwark
# Metrics (Triton's nv_inference_* and Bulwark's verdicts and scores; docs/monitoring.md):
#   curl http://127.0.0.1:8002/metrics
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "no .venv here: run scripts/setup.sh first" >&2
    exit 1
fi
exec .venv/bin/python -m serving.server "$@"
