#!/usr/bin/env bash
# Type-check the library, the renderer and the suites with mypy (config: pyproject.toml).
# `render/`, `eval/` and `fonts/` are installed as `clippo.render`, `clippo.eval` and
# `clippo.fonts` (pyproject's package-dir); an editable install maps them with an import hook
# that type checkers do not follow. So mypy reads a tree of symlinks laid out as the installed
# package, and its messages are rewritten back to the repository's paths.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir "$TREE/clippo"
for entry in clippo/*; do ln -s "$ROOT/$entry" "$TREE/clippo/"; done
for folder in render eval fonts; do ln -s "$ROOT/$folder" "$TREE/clippo/$folder"; done
status=0
(cd "$TREE" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" -p clippo "$@") \
  | sed -e "s#^clippo/render/#render/#" -e "s#^clippo/eval/#eval/#" -e "s#^clippo/fonts/#fonts/#" \
  || status=$?
exit "$status"
