#!/usr/bin/env bash
# Create .venv (if missing) and install clippo editable with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
CONSTRAINTS=()
if [ -z "${CLIPPO_NO_CONSTRAINTS:-}" ]; then CONSTRAINTS=(-c constraints-ci.txt); fi
.venv/bin/python -m pip install -q --disable-pip-version-check "${CONSTRAINTS[@]}" -e '.[test]'
