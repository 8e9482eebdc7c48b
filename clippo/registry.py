"""`Registry`: the one name -> entry table behind every registry of clippo.

    SUITES = Registry("evaluation suite", {"retrieval": "clippo.eval.suites:retrieval_suite"})
    SUITES["retrieval"]                   # imported now, on first use
    @SUITES.register("mine")              # or SUITES.register("mine", fn)
    def mine(model, spec): ...

A registry is a read-only `Mapping` (lookup, `in`, iteration in registration order, `len`);
`register` is its only way in. A name can be registered once: a second registration is a
ValueError naming the entry. An unknown name raises `UnknownNameError`, whose message lists the
known names. An entry given as a "package.module:attr" string is imported on first lookup, so
registries of heavy things stay cheap to import and to list. Stdlib only; imports nothing of
clippo, so every layer may use it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")
_LAZY_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry; the message lists the known names.

    A KeyError because a `Mapping` lookup must raise one (`registry.get(name)` and `in` rely on
    it); a ValueError because the name is a bad value someone wrote (a config key, a command-line
    argument), and the config and command layers report ValueErrors as such.
    """

    def __str__(self) -> str:
        # KeyError would show the repr of the message, quotes and escapes included
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """name -> entry, entries registered once, lazy "package.module:attr" entries resolved on use.

    kind: what an entry is, for messages ("unknown preset 'x'; known: ...").
    entries: registered in order at construction.
    pattern: a regular expression every name must match in full (default: any non-empty name).
    callables: entries must be callable (checked at registration, or when a lazy one resolves).
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T | str] | None = None,
        *,
        pattern: str | None = None,
        callables: bool = False,
    ) -> None:
        self.kind = kind
        self._pattern = re.compile(pattern) if pattern is not None else None
        self._callables = callables
        self._entries: dict[str, T | str] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T | str) -> T | str: ...

    def register(self, name: str, entry: T | str | None = None) -> Any:
        """Register `entry` under `name` and return it; without `entry`, return a decorator.

        ValueError for a name already registered or not matching the pattern, or a lazy target
        that is not "package.module:attr"; TypeError for a non-callable entry where the registry
        wants callables.
        """
        self._check_name(name)
        if entry is None:

            def decorator(obj: T) -> T:
                self.register(name, obj)
                return obj

            return decorator
        if isinstance(entry, str):
            if not _LAZY_TARGET.match(entry):
                raise ValueError(
                    f"{self.kind} {name!r}: lazy target {entry!r} must be 'package.module:attr'"
                )
        elif self._callables and not callable(entry):
            raise TypeError(
                f"{self.kind} {name!r} must be callable or a 'package.module:attr' string, "
                f"got {entry!r}"
            )
        self._entries[name] = entry
        return entry

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if self._pattern is not None and not self._pattern.fullmatch(name):
            raise ValueError(f"{self.kind} name {name!r} must match {self._pattern.pattern}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")

    def __getitem__(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name is unknown too
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self._entries) or '(none)'}"
            ) from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            resolved = getattr(importlib.import_module(module), attr)
            if self._callables and not callable(resolved):
                raise TypeError(f"{self.kind} {name!r} ({entry}) is not callable")
            self._entries[name] = resolved
            return resolved
        return entry

    def __contains__(self, name: object) -> bool:
        # Mapping's default looks the entry up, which would import a lazy one
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, [{', '.join(map(repr, self._entries))}])"
