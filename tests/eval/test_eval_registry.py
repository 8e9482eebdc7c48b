"""Evaluator registry: lookups, lazy entries, duplicates refused; `import clippo.eval` is light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import clippo.eval as E


def test_builtins_resolve():
    from clippo.eval.retrieval import evaluate_retrieval
    from clippo.eval.zeroshot import evaluate_zeroshot

    assert E.get_evaluator("retrieval") is evaluate_retrieval
    assert E.get_evaluator("zeroshot") is evaluate_zeroshot
    assert {"retrieval", "zeroshot"} <= set(E.EVALUATORS.names())
    assert E.evaluate_retrieval is evaluate_retrieval  # lazy convenience name


def test_register_refuses_duplicates_and_bad_names():
    reg = E.EvaluatorRegistry()

    @reg.register("toy")
    def toy():
        return 1

    assert reg.get("toy") is toy and "toy" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("toy", lambda: 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("toy", "json:dumps")
    assert reg.get("toy") is toy  # unchanged
    with pytest.raises(ValueError, match="must match"):
        reg.register("Bad Name", toy)
    with pytest.raises(TypeError, match="callable"):
        reg.register("notcallable", 3)
    with pytest.raises(KeyError, match="registered: \\['toy'\\]"):
        reg.get("missing")
    with pytest.raises(ValueError, match="already registered"):
        E.register_evaluator("retrieval", toy)


def test_lazy_entries_import_on_first_get():
    reg = E.EvaluatorRegistry()
    reg.register("dumps", "json:dumps")
    import json

    assert reg.get("dumps") is json.dumps
    with pytest.raises(ValueError, match="module:attr"):
        reg.register("broken", "no_colon_here")


def test_import_clippo_eval_does_not_import_torch():
    code = "import sys, clippo.eval; clippo.eval.get_evaluator('retrieval'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
