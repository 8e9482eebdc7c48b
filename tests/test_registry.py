"""`clippo.registry.Registry`: a read-only mapping, names registered once, unknown names answered
with the known ones, lazy "module:attr" entries imported on first lookup; and every registry of
clippo is one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

import pytest

from clippo.registry import Registry, UnknownNameError


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """A module `registry_probe` on sys.path that is not imported yet."""
    (tmp_path / "registry_probe.py").write_text("def probe():\n    return 'probed'\n\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "registry_probe", raising=False)
    yield "registry_probe"
    sys.modules.pop("registry_probe", None)


def test_a_read_only_mapping_in_registration_order():
    reg = Registry("colour", {"red": 1, "green": 2})
    reg.register("blue", 3)
    assert isinstance(reg, Mapping)
    assert reg["green"] == 2 and "blue" in reg and "pink" not in reg and [] not in reg
    assert list(reg) == ["red", "green", "blue"] and len(reg) == 3
    assert dict(reg) == {"red": 1, "green": 2, "blue": 3}
    assert reg.get("pink") is None and reg.get("red") == 1
    with pytest.raises(TypeError):
        reg["pink"] = 4  # read-only: `register` is the only way in
    assert "blue" in repr(reg) and "colour" in repr(reg)


def test_duplicates_are_refused_naming_the_entry():
    reg = Registry("colour", {"red": 1})
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.register("red", 2)
    with pytest.raises(ValueError, match="colour 'red' is already registered"):

        @reg.register("red")
        def red() -> None: ...

    assert reg["red"] == 1
    with pytest.raises(ValueError, match="non-empty"):
        reg.register("", 5)


def test_unknown_names_list_the_known_ones():
    reg = Registry("colour", {"red": 1, "green": 2})
    with pytest.raises(UnknownNameError) as info:
        reg["pink"]
    assert str(info.value) == "unknown colour 'pink'; known: red, green"  # no KeyError quotes
    # one error type that both kinds of callers catch: lookups (KeyError) and bad values
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match=r"known: \(none\)"):
        Registry("colour")["red"]


def test_decorator_registers_and_returns_the_function():
    reg = Registry("hook", callables=True, pattern=r"[a-z]+")

    @reg.register("hello")
    def hello() -> str:
        return "hi"

    assert hello() == "hi" and reg["hello"] is hello
    with pytest.raises(ValueError, match="must match"):
        reg.register("Hello")  # refused at the decorator line, before any function exists
    with pytest.raises(TypeError, match="callable"):
        reg.register("number", 3)
    assert Registry("size", {"s": 3})["s"] == 3  # plain values where callables are not asked for


def test_lazy_entries_are_imported_on_first_lookup_only(lazy_module):
    reg = Registry("probe", {"probe": f"{lazy_module}:probe"}, callables=True)
    reg.register("value", f"{lazy_module}:VALUE")
    assert "probe" in reg and list(reg) == ["probe", "value"] and len(reg) == 2
    assert lazy_module not in sys.modules  # listing and `in` import nothing
    first = reg["probe"]
    assert first() == "probed" and lazy_module in sys.modules and reg["probe"] is first
    with pytest.raises(TypeError, match="not callable"):
        reg["value"]
    assert Registry("probe", {"v": f"{lazy_module}:VALUE"})["v"] == 3
    for bad in ("no_colon", "a:b:c", ":attr", "module:", "my module:attr"):
        with pytest.raises(ValueError, match="package.module:attr"):
            reg.register("bad", bad)
    broken = Registry("probe", {"gone": "no_such_module_here:x"})
    with pytest.raises(ModuleNotFoundError):
        broken["gone"]


def test_every_registry_is_a_registry():
    from clippo.cli import COMMANDS
    from clippo.data.registry import SOURCES
    from clippo.eval import SUITES
    from clippo.model.config import VARIANTS
    from clippo.train.config import PRESETS

    for reg, known in (
        (VARIANTS, "B/16"),
        (PRESETS, "demo"),
        (SOURCES, "csv"),
        (SUITES, "retrieval"),
        (COMMANDS, "train"),
    ):
        assert isinstance(reg, Registry) and known in reg
        with pytest.raises(UnknownNameError, match=f"known: .*{known}"):
            reg["no-such-name"]
        with pytest.raises(ValueError, match="already registered"):
            reg.register(known, reg[known])


def test_a_command_run_imports_only_its_own_command():
    code = (
        "import sys; from clippo.cli import build_parser; "
        "build_parser('render').parse_args(['render', 'in.txt', 'out']); "
        "from clippo.cli import COMMANDS; "
        "print(sorted(m for m in sys.modules if m.startswith('clippo.commands.') and m.rpartition('.')[2] in COMMANDS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # shared helpers (clippo.commands.args) may load; no other command's module does
    assert out.stdout.strip() == "['clippo.commands.render']"


def test_help_lists_every_command(capsys):
    from clippo.cli import COMMANDS, main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
