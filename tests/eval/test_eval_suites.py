"""Spec-level suites (retrieval, zero-shot) and trainer hooks, against direct computations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.data.images import decode_image
from clippo.eval.datasets import load_images, read_pairs
from clippo.eval.hooks import EvalHook, make_hooks
from clippo.eval.spec import EvalSpec
from clippo.eval.suites import (
    SUITES,
    TEMPLATE_SETS,
    image_embeddings,
    read_spec_data,
    resolve_prompts,
    retrieval_suite,
    run_suite,
    zeroshot_suite,
)
from clippo.model.one_tower import CLIPPO
from clippo.preprocess import preprocess, resize_uint8
from clippo.prompts import CLIP_PAPER_TEMPLATES


@pytest.fixture()
def pairs(tmp_path, helpers) -> Path:
    rows = ["image,caption"]
    for i, caps in enumerate(helpers.captions):
        helpers.write_image(tmp_path / f"im{i}.png", i)
        rows += [f"im{i}.png,{c}" for c in caps]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append("broken.png,lost")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


def test_retrieval_suite_matches_evaluate_retrieval(model, pairs, tmp_path, helpers):
    want = helpers.direct_retrieval(model, tmp_path)
    spec = EvalSpec("retrieval", str(pairs), batch_size=3)
    got = retrieval_suite(model, spec, num_workers=2, examples_png=tmp_path / "ex.png")
    assert got["n_skipped"] == 1 and got["skipped"][0][0] == "broken.png"
    assert got["n_images"] == 5 and got["n_texts"] == 8
    for key, value in want.items():  # the gap is a float32 sum: embedded in other batches
        assert got[key] == pytest.approx(value, abs=1e-6 if key == "modality_gap" else 1e-9), key
    assert Image.open(tmp_path / "ex.png").size[1] > 5 * 128  # one row per query image
    # the same numbers from images decoded into memory first (what the hooks do)
    decoded = load_images(read_spec_data(spec), 32)
    again = retrieval_suite(model, spec, data=decoded)
    assert {k: again[k] for k in want} == pytest.approx({k: got[k] for k in want}, abs=1e-6)


def test_image_embeddings_files_and_memory_match_the_model(model, pairs, tmp_path):
    data = read_spec_data(EvalSpec("retrieval", str(pairs)))
    z, kept = image_embeddings(model, data, batch_size=4, num_workers=2)
    assert kept.names == tuple(f"im{i}.png" for i in range(5)) and len(kept.skipped) == 1
    raw = [decode_image(tmp_path / f"im{i}.png") for i in range(5)]
    with torch.no_grad():
        want = model.encode_images(preprocess(raw, 32)).numpy()
    np.testing.assert_allclose(z, want, atol=1e-5)
    # uint8 pixels of another size in memory: resized batch by batch with big_vision's resize
    big = np.stack([np.asarray(im.resize((40, 40))) for im in raw])
    z2, same = image_embeddings(model, replace(kept, images=big), batch_size=2)
    assert same.names == kept.names
    with torch.no_grad():
        want2 = model.encode_images(preprocess(list(big), 32)).numpy()
    np.testing.assert_allclose(z2, want2, atol=1e-5)
    assert not np.allclose(z2, want, atol=1e-3)  # the inputs did differ


def test_retrieval_max_examples_takes_evenly_spaced_images(model, pairs, tmp_path, helpers):
    spec = EvalSpec("retrieval", str(pairs), max_examples=3)  # of 6 images: 0, 2, 4
    got = run_suite(model, spec)
    assert got["n_images"] == 3 and got["n_skipped"] == 0
    subset = [helpers.captions[0], helpers.captions[2], helpers.captions[4]]
    for i, j in enumerate((0, 2, 4)):
        helpers.write_image(tmp_path / "sub" / f"im{i}.png", j)
    want = helpers.direct_retrieval(model, tmp_path / "sub", subset)
    assert {k: got[k] for k in want} == pytest.approx(want)


def test_resolve_prompts():
    names = ("aquarium_fish", "Tench, Tinca tinca", "maple_tree")
    spec = EvalSpec("zeroshot", "x")  # clip_paper: canonicalised, as big_vision evaluates it
    got_names, templates = resolve_prompts(spec, names)
    assert got_names == ["aquarium fish", "tench", "maple tree"]
    assert len(templates) == len(CLIP_PAPER_TEMPLATES) == 81
    assert templates[CLIP_PAPER_TEMPLATES.index("a photo of a {}.")] == "a photo of a {}"
    assert templates[CLIP_PAPER_TEMPLATES.index("a close-up photo of a {}.")] == (
        "a closeup photo of a {}"
    )
    # the colab's clip_best and user lists: as given, unless asked
    best = resolve_prompts(EvalSpec("zeroshot", "x", templates="clip_best"), names)
    assert best == (list(names), list(TEMPLATE_SETS["clip_best"]))
    mine = EvalSpec("zeroshot", "x", templates=("A {}!",), canonicalize=True)
    assert resolve_prompts(mine, names)[1] == ["a {}"]
    off = EvalSpec("zeroshot", "x", canonicalize=False)
    assert resolve_prompts(off, names)[1][0] == CLIP_PAPER_TEMPLATES[0]
    with pytest.raises(ValueError, match="not one of .*clip_best.* and no such file"):
        resolve_prompts(EvalSpec("zeroshot", "x", templates="clip_papr"), names)
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        EvalSpec("zeroshot", "x", templates=("no placeholder",))


def naive_zeroshot(model, images_u8, labels, names, templates):
    """Per-class prompt means, re-normalised; argmax of cosine (torch, no suite code)."""
    with torch.no_grad():
        cls = []
        for name in names:
            z = model.encode_texts([t.replace("{}", name) for t in templates])
            m = z.mean(0)
            cls.append(m / m.norm())
        zimg = model.encode_images(preprocess(list(images_u8), 32))
        pred = (zimg @ torch.stack(cls).T).argmax(1).numpy()
    return float((pred == labels).mean()), pred


def test_zeroshot_suite_imagefolder_matches_naive(model, tmp_path, helpers):
    classes = ["red_apple", "Blue Car", "owl"]
    for c, cls in enumerate(classes):
        for k in range(3):
            helpers.write_image(tmp_path / "tree" / cls / f"{k}.png", 10 * c + k, (20 + 4 * k, 36))
    (tmp_path / "tree/owl/corrupt.jpg").write_bytes(b"\xff\xd8 nope")
    templates = ("a photo of a {}.", "{}, drawn.")
    spec = EvalSpec("zeroshot", str(tmp_path / "tree"), templates=templates, canonicalize=True)
    got = zeroshot_suite(model, spec, num_workers=2)
    assert got["n_skipped"] == 1 and got["skipped"][0][0] == "owl/corrupt.jpg"
    assert got["n"] == 9 and got["n_classes"] == 3 and got["n_templates"] == 2

    files = [tmp_path / "tree" / cls / f"{k}.png" for cls in sorted(classes) for k in range(3)]
    images = [resize_uint8(decode_image(f), 32) for f in files]
    labels = np.repeat(np.arange(3), 3)
    names = ["blue car", "owl", "red apple"]  # sorted folders, canonicalised
    acc, pred = naive_zeroshot(model, images, labels, names, ["a photo of a {}", "{} drawn"])
    assert got["accuracy"] == pytest.approx(acc)
    per = {n: float((pred[labels == i] == i).mean()) for i, n in enumerate(names)}
    assert got["per_class"] == pytest.approx(per)


def test_zeroshot_suite_cifar_resizes_in_memory(tmp_path):
    torch.manual_seed(1)
    model = CLIPPO.from_variant("tiny-test", image_size=48).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0, 2, 2])
    records = np.zeros((7, 3074), dtype=np.uint8)
    records[:, 1] = labels
    records[:, 2:] = images.transpose(0, 3, 1, 2).reshape(7, -1)
    (tmp_path / "test.bin").write_bytes(records.tobytes())
    (tmp_path / "fine_label_names.txt").write_text("apple\naquarium_fish\nbaby\n")
    spec = EvalSpec("zeroshot", str(tmp_path), templates="clip_best", batch_size=3)
    got = run_suite(model, spec)
    assert read_spec_data(spec).class_names == ("apple", "aquarium_fish", "baby")
    with torch.no_grad():  # the colab's check: clip_best, names as TFDS spells them
        cls = model.class_embeddings(["apple", "aquarium_fish", "baby"], TEMPLATE_SETS["clip_best"])
        pred = (model.encode(preprocess(list(images), 48)) @ cls.T).argmax(1).numpy()
    assert got["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert got["n"] == 7 and got["n_skipped"] == 0


def test_registry_and_kind_checks(model, pairs):
    assert list(SUITES) == ["retrieval", "zeroshot"]
    assert SUITES.get("retrieval") is retrieval_suite
    with pytest.raises(TypeError, match="labelled images"):
        zeroshot_suite(model, EvalSpec("zeroshot", "x"), data=read_pairs(pairs))


def test_hooks_prefix_scalars_and_cache_decoded_images(
    model, pairs, tmp_path, monkeypatch, helpers
):
    import clippo.eval.hooks as hooks_mod

    calls = []
    real = hooks_mod.load_images
    monkeypatch.setattr(
        hooks_mod, "load_images", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    (hook,) = make_hooks([EvalSpec("retrieval", str(pairs), name="coco")])
    first = hook(model, 10)
    second = hook(model, 20)
    assert calls == [32]  # decoded once, at the model's size
    want = helpers.direct_retrieval(model, tmp_path)
    for k in ("img2txt/r@1", "img2txt/r@5", "txt2img/r@1", "txt2img/r@10"):
        assert first[f"eval/coco/{k}"] == pytest.approx(want[k])
    assert first["eval/coco/n_skipped"] == 1 and first["eval/coco/seconds"] >= 0
    assert "eval/coco/skipped" not in first  # lists stay out of the training log
    assert all(isinstance(v, (int, float)) for v in first.values())
    assert {k: v for k, v in first.items() if "seconds" not in k} == {
        k: v for k, v in second.items() if "seconds" not in k
    }


def test_hooks_fail_at_build_time(tmp_path, pairs, helpers):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        make_hooks([EvalSpec("retrieval", str(tmp_path / "missing.csv"))])
    with pytest.raises(ValueError, match="share the name"):
        make_hooks([EvalSpec("retrieval", str(pairs)), EvalSpec("retrieval", str(pairs))])
    helpers.write_image(tmp_path / "tree/a/0.png", 0)
    (tmp_path / "t.txt").write_text("a {}\nbad\n")
    with pytest.raises(ValueError, match=r"t\.txt:2"):
        EvalHook(EvalSpec("zeroshot", str(tmp_path / "tree"), templates=str(tmp_path / "t.txt")))
