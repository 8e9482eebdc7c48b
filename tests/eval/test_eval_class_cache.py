"""The zero-shot class-embedding cache (per model, class names and templates) and trainer hooks
over translation pairs (text only, no image loading)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clippo.cli import main
from clippo.eval.encoders import as_encoders
from clippo.eval.hooks import make_hooks
from clippo.eval.retrieval import translation_recalls
from clippo.eval.spec import EvalSpec
from clippo.eval.suites import zeroshot_suite
from clippo.eval.zeroshot import class_embeddings
from clippo.model.one_tower import CLIPPO, prompt_ensemble


class CountingTexts:
    """Wraps a model's `encode_texts` and counts the calls (the real encoder runs)."""

    def __init__(self, model: CLIPPO, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = model.encode_texts

        def counted(texts, **kw):
            self.calls += 1
            return real(texts, **kw)

        monkeypatch.setattr(model, "encode_texts", counted)


@pytest.fixture()
def tree(tmp_path, helpers) -> Path:
    for c, cls in enumerate(["apple", "boat", "owl"]):
        for k in range(2):
            helpers.write_image(tmp_path / "tree" / cls / f"{k}.png", 10 * c + k)
    return tmp_path / "tree"


def test_second_run_loads_class_embeddings_without_encoding(model, tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    texts = CountingTexts(model, monkeypatch)
    spec = EvalSpec("zeroshot", str(tree), templates=("a photo of a {}.", "{}, drawn."))
    first = zeroshot_suite(model, spec, cache_dir=cache)
    assert texts.calls > 0
    (stored,) = cache.glob("class_embeddings-*.npy")
    key = json.loads(stored.with_suffix(".json").read_text())["key"]
    assert key["classes"] == ["apple", "boat", "owl"]
    assert key["templates"] == ["a photo of a {}.", "{}, drawn."]

    texts.calls = 0
    second = zeroshot_suite(model, spec, cache_dir=cache)
    assert texts.calls == 0  # loaded, not encoded
    assert second == first
    # what was stored is what the encoder gives
    with torch.no_grad():
        want = prompt_ensemble(as_encoders(model)[1], ["apple", "boat", "owl"], spec.templates)
    np.testing.assert_array_equal(np.load(stored), want.numpy())


def test_changed_templates_classes_or_weights_miss_the_cache(model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    texts = CountingTexts(model, monkeypatch)
    names, templates = ["apple", "boat"], ["a photo of a {}."]
    base = class_embeddings(model, names, templates, cache_dir=cache)
    texts.calls = 0
    np.testing.assert_array_equal(class_embeddings(model, names, templates, cache_dir=cache), base)
    assert texts.calls == 0

    other = class_embeddings(model, names, [*templates, "{}, drawn."], cache_dir=cache)
    assert texts.calls == 1 and not np.array_equal(other, base)
    class_embeddings(model, ["boat", "apple"], templates, cache_dir=cache)  # order is part of it
    assert texts.calls == 2
    assert len(list(cache.glob("class_embeddings-*.npy"))) == 3

    torch.manual_seed(5)
    changed = CLIPPO.from_variant("tiny-test", image_size=32).eval()
    changed_texts = CountingTexts(changed, monkeypatch)
    class_embeddings(changed, names, templates, cache_dir=cache)
    assert changed_texts.calls == 1


def test_damaged_cache_file_is_recomputed_with_a_warning(model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    base = class_embeddings(model, ["apple", "boat"], ["{}"], cache_dir=cache)
    (stored,) = cache.glob("class_embeddings-*.npy")
    stored.write_bytes(b"not numpy")
    texts = CountingTexts(model, monkeypatch)
    with pytest.warns(UserWarning, match="class-embedding cache not usable"):
        again = class_embeddings(model, ["apple", "boat"], ["{}"], cache_dir=cache)
    assert texts.calls == 1
    np.testing.assert_array_equal(again, base)


def test_cache_needs_a_model():
    pair = (lambda b: np.ones((len(b), 2)), lambda t: np.ones((len(t), 2)))
    with pytest.raises(ValueError, match="needs a model"):
        class_embeddings(pair, ["a"], ["{}"], cache_dir="unused")


def test_eval_zeroshot_cli_reuses_cache_dir(model, tree, tmp_path, monkeypatch):
    model_dir = tmp_path / "tiny"
    model.save(model_dir)
    tpl = tmp_path / "templates.txt"
    tpl.write_text("a photo of a {c}.\n")
    argv = ["eval", "--model", str(model_dir), "--device", "cpu", "zeroshot"]
    argv += ["--imagefolder", str(tree), "--templates", str(tpl)]
    cache = tmp_path / "shared_cache"
    assert main([*argv, "--out", str(tmp_path / "a"), "--cache-dir", str(cache)]) == 0
    a = json.loads((tmp_path / "a/results.json").read_text())
    assert a["options"]["cache_dir"] == str(cache.resolve())
    assert len(list(cache.glob("class_embeddings-*.npy"))) == 1

    import clippo.eval.zeroshot as zs

    def refuse(*a, **k):
        raise AssertionError("the class embeddings should come from the cache")

    monkeypatch.setattr(zs, "prompt_ensemble", refuse)
    assert main([*argv, "--out", str(tmp_path / "b"), "--cache-dir", str(cache)]) == 0
    b = json.loads((tmp_path / "b/results.json").read_text())
    assert b["metrics"] == a["metrics"]
    # without --cache-dir the cache sits in OUT/cache (a fresh one: computed again)
    monkeypatch.undo()
    assert main([*argv, "--out", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c/cache").glob("class_embeddings-*.npy"))) == 1


def test_hook_over_translation_pairs_loads_no_images(model, tmp_path, monkeypatch):
    import clippo.eval.hooks as hooks_mod

    def no_images(*a, **k):
        raise AssertionError("translation pairs have no images to load")

    monkeypatch.setattr(hooks_mod, "load_images", no_images)
    src = ["red 1", "blue 2", "cat 3", "dog 4"]
    tgt = ["rot 1", "blau 2", "Katze 3", "Hund 4"]
    tsv = tmp_path / "en-de.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)), encoding="utf-8")
    spec = EvalSpec(
        "retrieval", str(tsv), format="translations", name="en_de", src_lang="en", tgt_lang="de"
    )
    (hook,) = make_hooks([spec])
    got = hook(model, 100)

    _, encode_texts = as_encoders(model)
    zsrc = encode_texts(src).float().numpy()
    ztgt = encode_texts(tgt).float().numpy()
    zsrc /= np.linalg.norm(zsrc, axis=1, keepdims=True)
    ztgt /= np.linalg.norm(ztgt, axis=1, keepdims=True)
    want = translation_recalls(zsrc, ztgt, tuple(src), tuple(tgt))
    for k in ("src2tgt/r@1", "src2tgt/r@5", "tgt2src/r@1", "tgt2src/r@10"):
        assert got[f"eval/en_de/{k}"] == pytest.approx(want[k])
    assert got["eval/en_de/n_pairs"] == 4
    assert "eval/en_de/src_lang" not in got  # strings stay out of the training log
    assert got["eval/en_de/seconds"] >= 0


def test_hook_translations_missing_file_fails_at_build_time(tmp_path):
    spec = EvalSpec("retrieval", str(tmp_path / "none.tsv"), format="translations")
    with pytest.raises(FileNotFoundError, match=r"none\.tsv"):
        make_hooks([spec])
