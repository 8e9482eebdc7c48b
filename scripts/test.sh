#!/usr/bin/env bash
# Run the whole test suite offline (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
HF_HOME=$(mktemp -d)
export HF_HOME
trap 'rm -rf "$HF_HOME"' EXIT
exec .venv/bin/python -m pytest -n 2 "$@"
