"""The GLUE and VQA suites on the token baselines (CLIP*, 1T-CLIP): `clippo eval glue` and
`clippo eval vqa` on a tiny checkpoint saved here, the features they cache equal to the model's
own outputs (text side `txt/pre_logits`, image tower `pooled` of the whole photo), the options
that do not apply to a token model refused by name, and a cache key that tells tokenizers
apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import clippo
from clippo.cli import main
from clippo.data.images import decode_image
from clippo.eval.features import (
    combine_photo_question,
    extract_features,
    extract_text_features,
    model_key,
)
from clippo.eval.glue import GlueOptions, run_glue
from clippo.eval.vqa import VqaOptions, run_vqa
from clippo.model.architectures import build_model
from clippo.model.token_model import TokenModel, TokenModelConfig
from clippo.model.tokenizer import TextTokenizer
from clippo.preprocess import images_to_pixels

from .test_glue_suite import _glue_folder, _sentence
from .test_vqa_suite import QUESTIONS, VAL_ROWS
from .test_vqa_suite import vqa_dir as vqa_dir  # the fixture: a tiny VQAv2 folder

SIZE = 32  # tiny-test tower at 32 px: 4 patches
MAX_LEN = 16
TOKEN_ARCHS = ("clip-star", "1t-clip")


def _tokenizer(vocab_size: int = 120, extra: tuple[str, ...] = ()) -> TextTokenizer:
    corpus = [_sentence(y, i) for y in (0, 1) for i in range(40)] + ["a hypothesis", *QUESTIONS]
    return TextTokenizer.train([*corpus, *extra], vocab_size=vocab_size, max_length=MAX_LEN)


def _tiny(arch: str, tok: TextTokenizer, seed: int = 0) -> TokenModel:
    torch.manual_seed(seed)
    cfg = TokenModelConfig.from_variant(
        "tiny-test", vocab_size=tok.vocab_size, image_size=SIZE, max_length=MAX_LEN, out_dim=8
    )
    model = build_model(arch, cfg, tok)
    assert isinstance(model, TokenModel)
    return model.eval()


@pytest.fixture(scope="module", params=TOKEN_ARCHS)
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny token model of each architecture, saved (config, weights, tokenizer.json)."""
    path = tmp_path_factory.mktemp("model") / request.param
    _tiny(request.param, _tokenizer()).save(path)
    return path


@torch.no_grad()
def _text_side(model: Any, texts: list[str]) -> np.ndarray:
    """The reference: the model's own pooled text representation, float32 [N, width]."""
    ids, mask = model.tokenize(texts)
    return model(texts=ids, texts_mask=mask, intermediates=True)["txt/pre_logits"].numpy()


def _cached(cache: Path) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Every cached feature array under `cache`, by its sidecar's description."""
    out = {}
    for sidecar in cache.glob("features-*.json"):
        meta = json.loads(sidecar.read_text())
        out[meta["desc"]] = (meta["key"], np.load(sidecar.with_suffix(".npy")))
    return out


def test_clippo_eval_glue_on_a_token_model(tmp_path: Path, saved: Path) -> None:
    data = _glue_folder(tmp_path / "glue_data", n_train=40, n_dev=12)
    out = tmp_path / "out"
    argv = ["eval", "--model", str(saved), "--out", str(out), "glue", "--data-dir", str(data)]
    argv += ["--tasks", "sst2,rte,stsb", "--pair-mode", "concat", "--seeds", "2"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["architecture"] == saved.name
    assert results["options"]["pair_mode"] == "concat"
    for entry, metric in (("sst2", "accuracy"), ("rte", "accuracy"), ("stsb", "pearson")):
        seeds = results["metrics"][entry]["seeds"]
        assert len(seeds) == 2 and all(np.isfinite(s[metric]) for s in seeds)
    # the class is in the words (runs of "XXXX" vs "ii"): the text side's features carry it
    majority = results["baseline"]["majority"]["sst2"]["accuracy"]
    assert results["metrics"]["sst2"]["mean"]["accuracy"] > majority

    # the features the heads were trained on are the text side's own pooled outputs
    model = clippo.load(saved).eval()
    cached = _cached(out / "cache")

    def column(path: str, k: int) -> list[str]:  # the first 4 rows' k-th column
        return [line.split("\t")[k] for line in (data / path).read_text().splitlines()[1:5]]

    # (RTE's first sentences are SST-2's here: the cache holds them once, as "sst2 ...")
    for desc, texts in (
        ("sst2 train", column("SST-2/train.tsv", 0)),
        ("rte dev (second)", column("RTE/dev.tsv", 2)),
        ("stsb train (first)", column("STS-B/train.tsv", 7)),
    ):
        key, feats = cached[desc]
        assert key["extra"]["input"] == "tokens" and key["renderer"] is None
        assert key["tokenizer"] == model_key(model)["tokenizer"]
        assert feats.shape[1] == model.config.vit.width
        np.testing.assert_allclose(feats[:4], _text_side(model, texts), rtol=1e-5, atol=1e-6)


def test_render_pair_mode_and_finetune_on_a_token_model_are_errors_naming_the_option(
    tmp_path: Path, saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _glue_folder(tmp_path / "glue_data", n_train=20, n_dev=6)
    out = tmp_path / "out"
    argv = ["eval", "--model", str(saved), "--out", str(out), "glue", "--data-dir", str(data)]
    assert main([*argv, "--tasks", "sst2,rte", "--seeds", "1"]) == 1  # render: the default
    err = capsys.readouterr().err
    assert "--pair-mode concat" in err and "rte" in err and "sst2" not in err
    assert not (out / "results.json").exists()
    # single sentences need no pair mode: the default runs
    assert main([*argv, "--tasks", "sst2", "--seeds", "1"]) == 0
    model = clippo.load(saved)
    finetune = GlueOptions(str(data), tasks=("sst2",), mode="finetune")
    with pytest.raises(ValueError, match="mode 'finetune'"):
        run_glue(model, finetune, tmp_path / "ft")
    for bad in (VqaOptions(str(tmp_path), band=8), VqaOptions(str(tmp_path), mode="finetune")):
        with pytest.raises(ValueError, match="--band|--mode finetune"):
            run_vqa(model, bad, tmp_path / "vqa")


def test_clippo_eval_vqa_on_a_token_model(tmp_path: Path, saved: Path, vqa_dir: Path) -> None:
    out = tmp_path / "out"
    argv = ["eval", "--model", str(saved), "--out", str(out), "vqa", "--data-dir", str(vqa_dir)]
    assert main([*argv, "--seeds", "2", "--answers", "8", "--num-workers", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["architecture"] == saved.name and results["band"] is None
    overall = results["metrics"]["overall"]
    assert len(overall["seeds"]) == 2 and all(0.0 <= s <= 1.0 for s in overall["seeds"])
    assert set(results["metrics"]["per_answer_type"]) == {"yes/no", "other"}
    # the answer needs both halves: the question (colour or brightness?) and the photo (about
    # half the yes/no photos are bright: one answer for all of them scores about 0.5)
    assert results["metrics"]["per_answer_type"]["yes/no"]["mean"] >= 0.9
    assert overall["mean"] > results["baseline"]["majority"]["overall"]

    model = clippo.load(saved).eval()
    cached = _cached(out / "cache")
    # one row per photo (each question here has its own), the photo whole: no question band
    key, photos = cached["vqa val2014 photos"]
    assert photos.shape == (len(VAL_ROWS), model.config.vit.width)
    folder = vqa_dir / "val2014"
    first = [
        np.asarray(
            decode_image(folder / f"COCO_val2014_{r['image_id']:012d}.jpg").resize(
                (SIZE, SIZE), Image.Resampling.BILINEAR
            )
        )
        for r in VAL_ROWS[:3]
    ]
    with torch.no_grad():
        want = model.pooled(images_to_pixels(np.stack(first))).numpy()
    np.testing.assert_allclose(photos[:3], want, rtol=1e-5, atol=1e-6)
    # one row per distinct question, in order of appearance, through the text side; both
    # splits ask the same four, so they share one cache entry
    assert [d for d in cached if d.endswith("questions")] == ["vqa train2014 questions"]
    key, questions = cached["vqa train2014 questions"]
    assert key["extra"] == {"suite": "vqa", "part": "question", "input": "tokens"}
    asked = list(dict.fromkeys(r["question"] for r in VAL_ROWS))
    np.testing.assert_allclose(questions, _text_side(model, asked), rtol=1e-5, atol=1e-6)

    # a second run reads every feature from the cache: same answers
    again = tmp_path / "again"
    argv[4] = str(again)
    cache = ["--cache-dir", str(out / "cache")]
    assert main([*argv, "--seeds", "2", "--answers", "8", "--num-workers", "0", *cache]) == 0
    assert json.loads((again / "results.json").read_text())["metrics"] == results["metrics"]


def test_combine_photo_question_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    photos, questions = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    rows_p, rows_q = [2, 0, 2, 1], [1, 1, 0, 0]
    got = combine_photo_question(photos, rows_p, questions, rows_q)
    want = np.stack([np.r_[photos[p], questions[q]] for p, q in zip(rows_p, rows_q)])
    assert got.dtype == np.float32 and got.shape == (4, 8)
    np.testing.assert_allclose(got, want.astype(np.float32))
    with pytest.raises(ValueError, match="one photo row per question row"):
        combine_photo_question(photos, [0, 1], questions, [0])


def test_the_cache_key_tells_tokenizers_apart(tmp_path: Path) -> None:
    """Same weights, another tokenizer (same vocabulary size): other ids for the same texts, so
    other features; the cache must not hand back the first model's."""
    texts = ["a red cube", "two green cats", "the small yellow sphere"]
    tok_a = _tokenizer(vocab_size=60)
    tok_b = _tokenizer(vocab_size=60, extra=("zebra quokka " * 3,) * 20)
    assert tok_a.vocab_size == tok_b.vocab_size and tok_a.to_json() != tok_b.to_json()
    model_a = _tiny("clip-star", tok_a)
    model_b = _tiny("clip-star", tok_b)
    model_b.load_state_dict(model_a.state_dict())
    assert model_key(model_a)["model"] == model_key(model_b)["model"]  # same tensors
    assert model_key(model_a) != model_key(model_b)
    first = extract_text_features(model_a, texts, cache_dir=tmp_path)
    second = extract_text_features(model_b, texts, cache_dir=tmp_path)
    np.testing.assert_allclose(first, _text_side(model_a, texts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second, _text_side(model_b, texts), rtol=1e-5, atol=1e-6)
    assert not np.allclose(first, second)
    assert len(list(tmp_path.glob("features-*.npy"))) == 2
    # the image tower's features of the same pixels are another key than the texts'
    pixels = np.zeros((3, SIZE, SIZE, 3), np.uint8)
    extract_features(model_a, texts, lambda batch: pixels[: len(batch)], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.npy"))) == 3


def test_a_clippo_models_text_features_are_its_rendered_ones(model: clippo.CLIPPO) -> None:
    texts = ["red 1", "blue 2", "cat 3"]
    got = extract_text_features(model, texts, batch_size=2)
    want = extract_features(model, texts, model.renderer.render_batch, batch_size=2)
    np.testing.assert_array_equal(got, want)
