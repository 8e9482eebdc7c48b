"""clippo.eval: evaluation suites (zero-shot, retrieval, GLUE, VQA) and pure metric functions.

`SUITES` names the suites: `SUITES["retrieval"](model, spec)` runs one on an `EvalSpec` and
returns its metrics. It is a `clippo.registry.Registry`: a name is registered once
(`SUITES.register("mine", fn)`, or as a decorator), and the built-in entries are
"package.module:function" strings imported on first use, so `import clippo.eval` stays light
(no torch) whatever the suites need.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from clippo.registry import Registry

# A suite's name is the `kind` of its specs, which prefixes their metrics (`eval/<kind>/...`)
# when a spec has no name of its own: hence the restricted spelling.
SUITES: Registry[Callable[..., dict[str, Any]]] = Registry(
    "evaluation suite",
    {
        "retrieval": "clippo.eval.suites:retrieval_suite",
        "zeroshot": "clippo.eval.suites:zeroshot_suite",
    },
    pattern=r"[a-z0-9][a-z0-9_.\-/]*",
    callables=True,
)


# Convenience names, imported on first access so this module stays light.
_LAZY = {
    "evaluate_retrieval": "clippo.eval.retrieval",
    "evaluate_zeroshot": "clippo.eval.zeroshot",
    "as_encoders": "clippo.eval.encoders",
    "format_table": "clippo.eval.results",
    "jsonable": "clippo.eval.results",
    "save_retrieval_examples": "clippo.eval.results",
}

__all__ = ["SUITES", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clippo.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
