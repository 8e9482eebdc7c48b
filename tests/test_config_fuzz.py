"""Config files under fuzzing: a saved model's `config.json` (read by
`clippo.model.checkpoint.read_config`) and a training TOML (`clippo.train.config.load_train_config`
over the demo preset, plus an `[[eval]]` table as `clippo train` reads it).

Each case changes one thing in a valid file: a value anywhere replaced by one of another type, an
out-of-range number, null, a nested list or a table; an unknown key added to any table; a key
removed. Every case must either load, and then every value given is the value loaded with the
type declared (no silent cast: `"1"` is no integer, `true` no number, `1.5` no integer), or raise
ConfigError/CheckpointError whose message names the changed key. Never any other exception.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clippo.eval.spec import specs_from_tables
from clippo.model.bigvision import CheckpointError
from clippo.model.checkpoint import read_config
from clippo.model.config import ModelConfig
from clippo.model.files import CONFIG_FILE, FORMAT, FORMAT_VERSION
from clippo.train.config import load_train_config, preset
from clippo.train.optim import OptimConfig
from clippo.train.schedule import ScheduleConfig
from clippo.typed_config import ConfigError, to_plain

Path_ = tuple[str | int, ...]
INT64 = 2**63 - 1

# ---- values ----------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)  # no lone surrogates
# unknown keys (messages show keys with repr(), so plain names keep the check simple)
_KEYS = st.from_regex(r"zz[a-z0-9_]{0,5}", fullmatch=True)


def _scalars(nulls: bool, huge: bool) -> st.SearchStrategy[Any]:
    ints = st.integers(-INT64 - 1, INT64) | st.sampled_from([0, 1, -1, 2, 3, 16, 2**53 + 1])
    if huge:  # JSON integers have no size limit; TOML's are 64-bit
        ints = ints | st.sampled_from([10**30, -(10**30)])
    special = st.sampled_from(["", "1", "true", "nan", "auto", "B/16", "map", "0.5", "retrieval"])
    out = st.booleans() | ints | st.floats() | _TEXT | special
    return st.none() | out if nulls else out


def _values(nulls: bool, huge: bool) -> st.SearchStrategy[Any]:
    return st.recursive(
        _scalars(nulls, huge),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=2),
        max_leaves=5,
    )


def _nodes(doc: Any, path: Path_ = ()) -> list[Path_]:
    """Every path below the root, tables and lists included."""
    out = [path] if path else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _nodes(v, (*path, i))
    return out


def _tables(doc: Any, path: Path_ = ()) -> list[Path_]:
    """Every table's path, the root's included."""
    out = [path] if isinstance(doc, dict) else []
    children = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for k, v in children:
        out += _tables(v, (*path, k))
    return out


def _get(doc: Any, path: Path_) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def mutations(draw: st.DrawFn, base: dict[str, Any], nulls: bool, huge: bool) -> tuple:
    """(mutated copy of `base`, the changed path, what was done)."""
    doc = json.loads(json.dumps(base))  # a deep copy
    kind = draw(st.sampled_from(["replace", "replace", "number", "add", "delete"]))
    if kind == "add":
        table = draw(st.sampled_from(_tables(doc)))
        key = draw(_KEYS)
        _get(doc, table)[key] = draw(_values(nulls, huge))
        return doc, (*table, key), kind
    path = draw(st.sampled_from(_nodes(doc)))
    parent = _get(doc, path[:-1])
    if kind == "delete":
        if isinstance(parent, dict):
            del parent[path[-1]]
            return doc, path, kind
        kind = "replace"
    if kind == "number":  # near and far from a valid number: off-by-one, zero, negative, huge
        value = draw(
            st.integers(-3, 3)
            | st.sampled_from([-1e9, 1e9, 0.5, -0.0, 1e308, math.inf, -math.inf, math.nan])
        )
    else:
        value = draw(_values(nulls, huge))
    parent[path[-1]] = value
    return doc, path, kind


# ---- checks ----------------------------------------------------------------------------------------


def names_key(message: str, path: Path_) -> bool:
    """Whether `message` names the key at `path`: the whole dotted key, or for a check across
    fields of one table the key relative to the table (`vit.image_size`) or the table's key and
    the field (`model.vit.width 64 is not divisible by num_heads 3`)."""
    parts = [str(p) for p in path]
    if ".".join(parts) in message:
        return True
    if len(parts) < 2:
        return False
    if ".".join(parts[-2:]) in message:
        return True
    leaf = re.compile(rf"(?<![\w]){re.escape(parts[-1])}(?![\w])")
    return ".".join(parts[:-1]) in message and bool(leaf.search(message))


def same(given: Any, loaded: Any, path: Path_ = ()) -> None:
    """Every value in `given` is in `loaded` unchanged and of its type (null: the default)."""
    where = ".".join(map(str, path))
    if given is None:
        return
    if isinstance(given, dict):
        assert isinstance(loaded, dict), where
        for k, v in given.items():
            assert k in loaded, f"{where}.{k} vanished"
            same(v, loaded[k], (*path, k))
    elif isinstance(given, list):
        assert isinstance(loaded, list) and len(loaded) == len(given), where
        for i, (a, b) in enumerate(zip(given, loaded)):
            same(a, b, (*path, i))
    elif isinstance(given, bool):
        assert type(loaded) is bool and loaded == given, where
    elif isinstance(given, int):  # an int where a float is declared is that float, exactly
        assert type(loaded) in (int, float) and loaded == given, where
    elif isinstance(given, float):
        assert type(loaded) is float, where
        assert loaded == given or (math.isnan(given) and math.isnan(loaded)), where
    else:
        assert type(loaded) is type(given) and loaded == given, where


def check(load: Any, doc: dict[str, Any], path: Path_, kind: str, prefix: str) -> None:
    """Run `load`: a ConfigError/CheckpointError naming `path` (its message may start with
    `prefix`, the file), or the values of `doc` loaded as they are."""
    try:
        loaded = load()
    except (ConfigError, CheckpointError) as e:
        event(f"{kind}: rejected")  # `pytest --hypothesis-show-statistics` shows the mix
        message = str(e).removeprefix(prefix)
        assert names_key(message, path), (kind, path, str(e))
        return
    event(f"{kind}: accepted")
    # anything else (TypeError, KeyError, a bare ValueError, ...) fails the test as it is
    if kind == "add" and not _opaque(path):
        pytest.fail(f"unknown key {'.'.join(map(str, path))} accepted")
    same(doc, loaded)


def _opaque(path: Path_) -> bool:
    """Tables that are free-form by design: a source's `options` (checked by the source)."""
    return "options" in path[:-1]


# ---- config.json -------------------------------------------------------------------------------


MODEL_META = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "model": ModelConfig.from_variant("tiny-test", image_size=32).to_dict(),
}


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=mutations(MODEL_META, nulls=True, huge=True))
def test_model_config_json_fuzz(tmp_path, case):
    doc, path, kind = case
    (tmp_path / CONFIG_FILE).write_text(json.dumps(doc), encoding="utf-8")

    def load() -> dict[str, Any]:
        cfg = read_config(tmp_path)
        return {**doc, "model": to_plain(cfg)}  # what was read; the other keys are checked

    check(load, doc, path, kind, prefix=f"{tmp_path / CONFIG_FILE}: ")


# ---- training TOML -----------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return _toml_key(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _toml_key(s: str) -> str:
    # a TOML basic string: JSON's escapes, plus DEL, which TOML wants escaped too
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml(doc: dict[str, Any]) -> str:
    """Every top-level key as `key = value`, tables inline (TOML has no null)."""
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def _without_nulls(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _without_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_without_nulls(v) for v in doc]
    return doc


# the demo preset written out in full (TOML has no null: None values are left to the defaults)
TRAIN_DOC = {
    "preset": "demo",
    **_without_nulls(preset("demo").to_dict()),
    "eval": [{"kind": "retrieval", "path": "pairs.csv", "batch_size": 8, "templates": ["a {}"]}],
}


def test_the_unchanged_documents_load_and_the_toml_writer_round_trips(tmp_path):
    import tomllib

    assert tomllib.loads(to_toml(TRAIN_DOC)) == TRAIN_DOC
    (tmp_path / "run.toml").write_text(to_toml(TRAIN_DOC), encoding="utf-8")
    assert load_train_config(tmp_path / "run.toml") == preset("demo").replace(
        eval=tuple(TRAIN_DOC["eval"])
    )
    (tmp_path / CONFIG_FILE).write_text(json.dumps(MODEL_META), encoding="utf-8")
    assert to_plain(read_config(tmp_path)) == MODEL_META["model"]


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=mutations(TRAIN_DOC, nulls=False, huge=False))
def test_train_toml_fuzz(tmp_path, case):
    doc, path, kind = case
    toml = tmp_path / "run.toml"
    toml.write_text(to_toml(doc), encoding="utf-8")

    def load() -> dict[str, Any]:
        cfg = load_train_config(toml)
        specs = specs_from_tables(cfg.eval)  # as `clippo train` reads its [[eval]] tables
        for section in ("optim", "schedule"):  # a NaN or inf there must not load
            _finite_numbers(cfg.to_dict()[section], section)
        return {"preset": doc.get("preset"), **cfg.to_dict(), "eval": to_plain(specs)}

    check(load, doc, path, kind, prefix=f"{toml}: ")


# ---- [optim] and [schedule] numbers ------------------------------------------------------------

# Every float of these sections: none may be NaN or infinite, none negative (a negative
# decay_rate is Hugging Face's sign convention, not big_vision's; a negative shift, linear_end or
# power breaks the [0, 1] multiplier). Found from the annotations, so a new field is covered too.
NUMBER_FIELDS = [
    (section, f"{f.name}.{i}" if get_origin(tp) is tuple else f.name)
    for section, cls in (("optim", OptimConfig), ("schedule", ScheduleConfig))
    for f in dataclasses.fields(cls)
    for tp in [get_type_hints(cls)[f.name]]
    if float in (get_args(tp) or (tp,))
    for i in range(len(get_args(tp)) if get_origin(tp) is tuple else 1)
]


def test_the_number_fields_are_found():
    assert set(NUMBER_FIELDS) == {
        *[("optim", k) for k in ("lr", "wd", "decay_rate", "beta2_cap", "momentum", "eps")],
        *[("optim", k) for k in ("clipping_threshold", "betas.0", "betas.1", "adam_eps")],
        *[("schedule", k) for k in ("timescale", "shift", "linear_end", "power")],
    }


def _finite_numbers(section: dict[str, Any], where: str) -> None:
    for key, value in section.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            assert not isinstance(v, float) or math.isfinite(v), f"{where}.{key} = {v} accepted"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(NUMBER_FIELDS),
    value=st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e-9])
    | st.floats(max_value=-5e-324),  # any negative number (not -0.0, which is 0)
    how=st.sampled_from(["toml", "--set"]),
)
def test_optim_and_schedule_refuse_nan_inf_and_negative_numbers(tmp_path, field, value, how):
    section, name = field
    doc = json.loads(json.dumps(TRAIN_DOC))  # a deep copy
    key, _, index = name.partition(".")
    if index:
        doc[section][key][int(index)] = value
    else:
        doc[section][key] = value
    toml = tmp_path / "run.toml"
    overrides = []
    if how == "toml":
        toml.write_text(to_toml(doc), encoding="utf-8")
    else:
        toml.write_text(to_toml(TRAIN_DOC), encoding="utf-8")
        overrides = [f"{section}.{key}={_toml_value(doc[section][key])}"]
    with pytest.raises(ConfigError) as info:
        load_train_config(toml, overrides)
    # the message starts with the dotted key (after the file name or the --set item)
    assert re.search(rf"(^|: ){re.escape(section)}\.{re.escape(name)} must be ", str(info.value))
