"""The layering, walked from the source: every `import` statement counts, function-local and
`TYPE_CHECKING` ones included.

    render (+ clippo.fonts, clippo.atomic, clippo.errors)  <-  model  <-  data  <-  train / embed
        <-  eval  <-  commands (clippo.commands, clippo.cli, clippo.__main__)

`clippo.atomic` (stdlib-only atomic file writes) and `clippo.errors` (the stdlib-only DataError
that the corpus reader's errors subclass) are the clippo modules the renderer may use besides
the fonts. The stdlib-only helpers `clippo.typed_config` and `clippo.registry` sit below
everything except the renderer; `clippo.errors` below everything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> package name, as pyproject's package-dir maps them
FOLDERS = {"clippo": "clippo", "render": "clippo.render", "eval": "clippo.eval"}

COMMANDS = ("clippo.commands", "clippo.cli", "clippo.__main__")
UTILITIES = ("clippo.atomic", "clippo.typed_config", "clippo.registry", "clippo.errors")
MODEL = ("clippo.model", "clippo.prompts", "clippo.preprocess")


def module_files() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported clippo module, line) for every import statement in `module`'s file.
    `from pkg import name` counts as importing `pkg.name` when that is a module."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            if _within(t, "clippo"):
                yield t, node.lineno


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        edges[module] = set()
        for target, _ in imports(module):
            # an explicit import of a parent package is an edge (its __init__ runs the names
            # it re-exports); the implicit run of parents before a submodule is not
            if target != module:
                edges[module].add(target)
    return edges


def test_the_walk_sees_every_room():
    for name in (
        "clippo.render.unifont",
        "clippo.model.one_tower",
        "clippo.train.loop",
        "clippo.data.mixer",
        "clippo.eval.suites",
        "clippo.commands.demo",
    ):
        assert name in MODULES
    # a function-local import is seen: the command layer imports training inside a function
    assert any(t.startswith("clippo.train") for t, _ in imports("clippo.commands.train"))


def _violations(rule) -> list[str]:
    found = []
    for module in MODULES:
        for target, line in imports(module):
            if rule(module, target):
                found.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    return found


def test_render_imports_only_fonts_atomic_and_errors():
    allowed = ("clippo.render", "clippo.fonts", "clippo.atomic", "clippo.errors")
    assert _violations(lambda m, t: _within(m, "clippo.render") and not _within(t, allowed)) == []


def test_utilities_import_nothing_of_clippo():
    assert _violations(lambda m, t: _within(m, UTILITIES) and not _within(t, m)) == []


def test_model_imports_no_data_training_or_evaluation():
    below = (*MODEL, "clippo.render", "clippo.fonts", *UTILITIES)
    assert _violations(lambda m, t: _within(m, MODEL) and not _within(t, below)) == []


def test_data_imports_no_training():
    assert _violations(lambda m, t: _within(m, "clippo.data") and _within(t, "clippo.train")) == []


def test_library_imports_no_evaluation_or_commands():
    def rule(m: str, t: str) -> bool:
        if _within(m, COMMANDS) or _within(m, "clippo.eval") or m == "clippo":
            return False
        return _within(t, ("clippo.eval", *COMMANDS))

    assert _violations(rule) == []


def test_evaluation_imports_no_commands():
    assert _violations(lambda m, t: _within(m, "clippo.eval") and _within(t, COMMANDS)) == []


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt in edges and nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert [" -> ".join(c) for c in cycles] == []


@pytest.mark.parametrize(
    "source, module, target",
    [
        ("from clippo.model import CLIPPO\n", "clippo.render.layout", "clippo.model"),
        (
            "def f():\n    from clippo.train import loop\n",
            "clippo.model.config",
            "clippo.train.loop",
        ),
        ("from . import loop\n", "clippo.train.step", "clippo.train.loop"),
        ("from ..eval import suites\n", "clippo.train.step", "clippo.eval.suites"),
    ],
)
def test_imports_resolves_local_relative_and_from_imports(
    tmp_path, monkeypatch, source, module, target
):
    path = tmp_path / "m.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, module, path)
    assert target in [t for t, _ in imports(module)]
