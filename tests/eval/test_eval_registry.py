"""The suites registry: lookups, lazy entries, duplicates refused; `import clippo.eval` is light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import clippo.eval as E
from clippo.registry import Registry, UnknownNameError


def test_builtins_resolve():
    from clippo.eval.retrieval import evaluate_retrieval
    from clippo.eval.suites import SUITES, retrieval_suite, zeroshot_suite

    assert E.SUITES["retrieval"] is retrieval_suite
    assert E.SUITES["zeroshot"] is zeroshot_suite
    assert SUITES is E.SUITES  # one registry, re-exported by the suites module
    assert {"retrieval", "zeroshot"} <= set(E.SUITES)
    assert E.evaluate_retrieval is evaluate_retrieval  # lazy convenience name


def test_register_refuses_duplicates_and_bad_names():
    reg = Registry("evaluation suite", pattern=r"[a-z0-9][a-z0-9_.\-/]*", callables=True)

    @reg.register("toy")
    def toy():
        return 1

    assert reg["toy"] is toy and "toy" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("toy", lambda: 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("toy", "json:dumps")
    assert reg["toy"] is toy  # unchanged
    with pytest.raises(ValueError, match="must match"):
        reg.register("Bad Name", toy)
    with pytest.raises(TypeError, match="callable"):
        reg.register("notcallable", 3)
    with pytest.raises(UnknownNameError, match="known: toy$"):
        reg["missing"]
    with pytest.raises(ValueError, match="'retrieval' is already registered"):
        E.SUITES.register("retrieval", toy)


def test_lazy_entries_import_on_first_get():
    reg = Registry("evaluation suite", callables=True)
    reg.register("dumps", "json:dumps")
    import json

    assert reg["dumps"] is json.dumps
    with pytest.raises(ValueError, match="module:attr"):
        reg.register("broken", "no_colon_here")


def test_import_clippo_eval_does_not_import_torch():
    code = (
        "import sys, clippo.eval; s = clippo.eval.SUITES; "
        "assert 'retrieval' in s and list(s) == ['retrieval', 'zeroshot']; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
