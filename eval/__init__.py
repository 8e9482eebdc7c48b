"""clippo.eval: evaluation suites (zero-shot, retrieval, GLUE, VQA) and pure metric functions.

Evaluators are looked up by name in a registry (`get_evaluator("retrieval")`); a name can be
registered once only. Entries may be given as "package.module:function" strings, imported on
first use, so `import clippo.eval` stays light (no torch) whatever the suites need.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-/]*$")


class EvaluatorRegistry:
    """name -> evaluator callable (or a lazy "module:attr" import path). Duplicates refused."""

    def __init__(self) -> None:
        self._entries: dict[str, Callable[..., Any] | str] = {}

    def register(self, name: str, target: Callable[..., Any] | str | None = None) -> Any:
        """Register `target` under `name`; without `target`, return a decorator.

        Raises ValueError for a name already registered or not matching [a-z0-9][a-z0-9_.-/]*.
        """
        if target is None:

            def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
                self.register(name, fn)
                return fn

            return decorator
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"evaluator name {name!r} must match {_NAME.pattern}")
        if name in self._entries:
            raise ValueError(f"evaluator {name!r} is already registered")
        if isinstance(target, str):
            if target.count(":") != 1 or not all(target.split(":")):
                raise ValueError(f"lazy evaluator target {target!r} must be 'package.module:attr'")
        elif not callable(target):
            raise TypeError(f"evaluator {name!r} must be callable or a 'module:attr' string")
        self._entries[name] = target
        return target

    def get(self, name: str) -> Callable[..., Any]:
        """The evaluator registered as `name` (imported now if it was registered lazily)."""
        try:
            target = self._entries[name]
        except KeyError:
            raise KeyError(f"no evaluator {name!r}; registered: {self.names()}") from None
        if isinstance(target, str):
            module, attr = target.split(":")
            target = getattr(importlib.import_module(module), attr)
            if not callable(target):
                raise TypeError(f"evaluator {name!r} ({self._entries[name]}) is not callable")
            self._entries[name] = target
        return target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


# The built-in suites. Applications may register more here or keep their own registry.
EVALUATORS = EvaluatorRegistry()
EVALUATORS.register("retrieval", "clippo.eval.retrieval:evaluate_retrieval")
EVALUATORS.register("zeroshot", "clippo.eval.zeroshot:evaluate_zeroshot")


def register_evaluator(name: str, target: Callable[..., Any] | str | None = None) -> Any:
    """`EVALUATORS.register` (usable as a decorator)."""
    return EVALUATORS.register(name, target)


def get_evaluator(name: str) -> Callable[..., Any]:
    return EVALUATORS.get(name)


# Convenience names, imported on first access so this module stays light.
_LAZY = {
    "evaluate_retrieval": "clippo.eval.retrieval",
    "evaluate_zeroshot": "clippo.eval.zeroshot",
    "as_encoders": "clippo.eval.encoders",
    "format_table": "clippo.eval.results",
    "write_json": "clippo.eval.results",
    "save_retrieval_examples": "clippo.eval.results",
}

__all__ = ["EVALUATORS", "EvaluatorRegistry", "get_evaluator", "register_evaluator", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clippo.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
