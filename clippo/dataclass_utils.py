"""Key checks for the config dataclasses' `from_dict` (unknown keys are errors). Stdlib only."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["check_keys"]


def check_keys(cls: type, data: Mapping[str, Any], *, require: bool = False) -> None:
    """Raise ValueError naming `cls` if `data` has a key that is not a field of dataclass `cls`
    or, with `require=True`, lacks a field that has no default."""
    fields = dataclasses.fields(cls)
    names = sorted(f.name for f in fields)
    unknown = sorted(set(data) - set(names))
    problems = [f"unknown {cls.__name__} keys {unknown}; known: {names}"] if unknown else []
    if require:
        missing = [
            f.name
            for f in fields
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            problems.append(f"missing {cls.__name__} keys {missing}")
    if problems:
        raise ValueError("; ".join(problems))
