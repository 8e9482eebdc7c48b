"""Typed dict <-> frozen-dataclass conversion for configs, and `--set key.sub=value` overrides.

Values are checked against the dataclass annotations (Literal, unions, tuples, nested
dataclasses); unknown keys and wrong types raise `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

__all__ = ["ConfigError", "apply_overrides", "deep_merge", "from_dict", "to_plain"]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (converting int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return from_dict(tp, value, key)
    if origin is Literal:
        # by type too: `True == 1` and `1.0 == 1` must not pass for Literal[1]
        if not any(type(value) is type(a) and value == a for a in get_args(tp)):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(v, t, f"{key}.{i}") for i, (v, t) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int) and float(value) != value:  # no silent rounding of 2**60 + 1
            raise ConfigError(f"{key}: {value} is not exactly representable as a float")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in this module


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """A dict (parsed TOML or JSON) -> dataclass `cls`, type-checked field by field.

    Lists become tuples, ints become floats where a float is declared, nested tables become
    nested dataclasses. Unknown keys, missing required keys, values of the wrong type and the
    class's own validation errors raise `ConfigError` naming the dotted key (under `prefix`).
    A null value for a field whose default is None means that default.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a table, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def where(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    # at the top level no dotted key says what was being read, so name the class
    at = "" if prefix else f" in {cls.__name__}"
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key {where(key)!r}{at} (known: {', '.join(fields)})")
    kwargs = {
        k: None if v is None and fields[k].default is None else _convert(v, hints[k], where(k))
        for k, v in data.items()
    }
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"missing key {where(name)!r}{at}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # the class's own validation (its __post_init__)
        raise ConfigError(_locate(cls, str(e), prefix)) from None


def _locate(cls: type, message: str, prefix: str) -> str:
    """A class's own validation message with the dotted key: one that starts with a field name
    (`width must be ...`, `ViTConfig.width must be ...`) gets that field's full key
    (`model.vit.width must be ...`); any other is prefixed with the table's key."""
    for f in dataclasses.fields(cls):
        for head in (f"{cls.__name__}.{f.name}", f.name):
            rest = message[len(head) :]
            if message.startswith(head) and rest[:1] in (" ", ":", ".", "="):
                return f"{prefix or cls.__name__}.{f.name}{rest}"
    return f"{prefix or cls.__name__}: {message}"


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


# ---- --set overrides --------------------------------------------------------------------------


def _field_type(root: type, path: list[str], full: str) -> Any:
    """The annotation at a dotted path, checking every step (unknown key -> ConfigError)."""
    tp: Any = root
    for i, part in enumerate(path):
        here = ".".join(path[: i + 1])
        if dataclasses.is_dataclass(tp):
            hints = get_type_hints(tp)
            if part not in hints:
                names = ", ".join(f.name for f in dataclasses.fields(tp))
                raise ConfigError(f"--set {full}: unknown key {here!r} (known: {names})")
            tp = hints[part]
        elif get_origin(tp) is tuple:
            args = get_args(tp)
            if not part.isdigit() or (args[-1] is not Ellipsis and int(part) >= len(args)):
                raise ConfigError(f"--set {full}: {here!r} must be a list index")
            tp = args[0] if args[-1] is Ellipsis else args[int(part)]
        elif get_origin(tp) is dict:
            tp = Any
        else:
            raise ConfigError(f"--set {full}: {'.'.join(path[:i])!r} has no sub-keys")
    return tp


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    if get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in get_args(tp))
    return False


def _parse_value(raw: str, tp: Any) -> Any:
    """TOML literal syntax (`3`, `1e-3`, `true`, `"x"`, `[1, 2]`, `{a = 1}`); for string fields a
    bare word is also accepted (`--set loop.precision=fp32`)."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: fine for string fields, a type error (naming the key) otherwise
    if _accepts_str(tp) and not isinstance(value, str):
        try:  # `--set model.init_from=123` still means the string "123" if str is allowed
            _convert(value, tp, "")
        except ConfigError:
            return raw
    return value


def apply_overrides(
    root: type, config: Mapping[str, Any], overrides: Sequence[str]
) -> dict[str, Any]:
    """Apply `key.sub=value` strings to a config dict, type-checked against dataclass `root`."""
    out = to_plain(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        path = key.split(".")
        tp = _field_type(root, path, key)
        try:
            value = _convert(_parse_value(raw.strip(), tp), tp, key)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None
        node: Any = out
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                nxt = node[int(part)] if int(part) < len(node) else None
            else:
                nxt = node.get(part)
            if nxt is None:
                raise ConfigError(f"--set {key}: {'.'.join(path[: i + 1])!r} is not set")
            node = nxt
        last = path[-1]
        if isinstance(node, list):
            idx = int(last)
            if idx >= len(node):
                raise ConfigError(f"--set {key}: index {idx} out of range ({len(node)} items)")
            node[idx] = to_plain(value)
        else:
            node[last] = to_plain(value)
    return out
