#!/usr/bin/env bash
# Run the whole test suite offline (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# two pytest workers on two cores: one math thread each (oversubscribed torch threads run ~10x slower)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
HF_HOME=$(mktemp -d)
export HF_HOME
trap 'rm -rf "$HF_HOME"' EXIT
exec .venv/bin/python -m pytest -n 2 "$@"
