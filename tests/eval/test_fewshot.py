"""Few-shot linear probe (big_vision's fewshot_lsr): the closed form against naive ridge solvers,
the shot draw, the preprocessing, and end-to-end runs through `run_fewshot` and the command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from clippo.commands.eval import _common
from clippo.commands.eval_fewshot import add_fewshot
from clippo.data.images import decode_image
from clippo.eval.datasets import read_imagefolder
from clippo.eval.fewshot import (
    BIAS_CONSTANT,
    L2_REG,
    FewshotOptions,
    augment,
    central_crop,
    fewshot_accuracies,
    fit_probe,
    parse_shots,
    probe_accuracy,
    run_fewshot,
    sample_shots,
)
from clippo.preprocess import images_to_pixels, resize_uint8


def _data(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # features with different scales and offsets, as network features have
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, d) + rng.normal(size=d) * 3
    return x.astype(np.float32), rng.integers(0, c, n)


def _naive(x: np.ndarray, y: np.ndarray, c: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge written out: standardise with numpy, append the bias column, solve
    min ||A W - T||^2 + l2 ||W||^2 by lstsq on [A; sqrt(l2) I] and by sklearn's Ridge."""
    x = x.astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-5
    a = np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])
    t = np.where(np.arange(c)[None] == y[:, None], 1.0, -1.0)
    stacked = np.vstack([a, np.sqrt(l2) * np.eye(a.shape[1])])
    w_lstsq = np.linalg.lstsq(stacked, np.vstack([t, np.zeros((a.shape[1], c))]), rcond=None)[0]
    w_ridge = Ridge(alpha=l2, fit_intercept=False).fit(a, t).coef_.T
    return w_lstsq, w_ridge


@pytest.mark.parametrize(
    "n, d, c, l2",
    [(200, 16, 5, L2_REG), (12, 40, 4, L2_REG), (30, 29, 3, 1.0), (3, 8, 3, 0.5)],
    ids=["more-points", "fewer-points", "points-equal-dim+1", "weak-l2"],
)
def test_closed_form_equals_naive_ridge(n, d, c, l2):
    x, y = _data(n, d, c)
    probe = fit_probe(x, y, c, l2)
    w_lstsq, w_ridge = _naive(x, y, c, l2)
    scale = np.abs(w_lstsq).max()
    np.testing.assert_allclose(probe.weights, w_lstsq, atol=1e-9 * scale, rtol=1e-7)
    np.testing.assert_allclose(probe.weights, w_ridge, atol=1e-9 * scale, rtol=1e-7)
    np.testing.assert_allclose(probe.mean, x.astype(np.float64).mean(0))
    np.testing.assert_allclose(probe.std, x.astype(np.float64).std(0) + 1e-5)


def test_folded_scores_equal_the_augmented_product():
    x, y = _data(100, 12, 6)
    x_test, _ = _data(300, 12, 6, seed=1)
    probe = fit_probe(x, y, 6)
    reference = augment(x_test, probe.mean, probe.std) @ probe.weights  # float64
    assert augment(x_test[:1], probe.mean, probe.std)[0, -1] == BIAS_CONSTANT
    np.testing.assert_allclose(probe.scores(x_test, chunk=7), reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(probe.predict(x_test), reference.argmax(1))


def test_a_constant_feature_is_harmless():
    # std 0 -> divided by 1e-5 only: the column is all zeros after centring, so its weight is 0
    x, y = _data(50, 6, 3)
    x[:, 2] = 7.0
    probe = fit_probe(x, y, 3)
    assert probe.weights[2].tolist() == [0.0, 0.0, 0.0]
    assert 0.0 <= probe_accuracy(probe, x, y) <= 1.0


def test_separable_clusters_are_learned_from_one_shot():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 32)) * 10
    y_train = np.repeat(np.arange(10), 30)
    y_test = np.repeat(np.arange(10), 20)
    x_train = centres[y_train] + rng.normal(size=(300, 32))
    x_test = centres[y_test] + rng.normal(size=(200, 32))
    acc = fewshot_accuracies(x_train, y_train, x_test, y_test, 10, shots=(1, 5), seeds=3)
    assert list(acc) == [1, 5] and all(len(v) == 3 for v in acc.values())
    assert min(acc[5]) == 1.0 and min(acc[1]) > 0.9
    # chance level on labels that carry no information
    shuffled = rng.permutation(y_test)
    acc = fewshot_accuracies(x_train, y_train, x_test, shuffled, 10, shots=(5,), seeds=1)
    assert acc[5][0] < 0.25


def test_bad_input_is_a_clear_error():
    x, y = _data(10, 4, 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        fit_probe(x, y, 2)
    with pytest.raises(ValueError, match="NaN"):
        fit_probe(np.full((3, 2), np.nan, np.float32), np.zeros(3, int), 2)
    probe = fit_probe(x, y, 3)
    with pytest.raises(ValueError, match="5-d, the probe was fit on 4"):
        probe.scores(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="shots"):
        sample_shots(y, 3, (0,), 0)


# ---- the shot draw -------------------------------------------------------------------------------


def test_shots_follow_big_vision_draw():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    # big_vision: rng = default_rng(seed); a permutation of each class's indices, class by class
    got = sample_shots(labels, 3, (1, 2), seed=0)
    assert {k: v.tolist() for k, v in got.items()} == {1: [2, 5, 6], 2: [2, 0, 5, 4, 6, 7]}


def test_shots_are_deterministic_balanced_and_nested():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500)
    labels[labels == 6] = 5  # class 6 has no image, class 5 has twice as many
    labels[np.flatnonzero(labels == 4)[3:]] = 0  # class 4 has 3 images
    counts = np.bincount(labels, minlength=7)
    shots = (1, 5, 10, 25)
    a, b = sample_shots(labels, 7, shots, 1), sample_shots(labels, 7, shots, 1)
    other = sample_shots(labels, 7, shots, 2)
    for k in shots:
        np.testing.assert_array_equal(a[k], b[k])
        assert len(np.unique(a[k])) == len(a[k])
        per_class = np.bincount(labels[a[k]], minlength=7)
        np.testing.assert_array_equal(per_class, np.minimum(counts, k))
    assert not np.array_equal(a[10], other[10])
    for small, big in zip(shots, shots[1:]):
        assert set(a[small]) <= set(a[big])


def test_parse_shots():
    assert parse_shots("25, 1,5,5") == (1, 5, 25)
    for bad in ("", "0", "a,1", "-1"):
        with pytest.raises(ValueError, match="positive integers"):
            parse_shots(bad)


def test_central_crop_offsets():
    image = np.arange(256 * 256).reshape(256, 256, 1)
    crop = central_crop(image, 224)
    assert crop.shape == (224, 224, 1) and crop[0, 0, 0] == 16 * 256 + 16
    odd = np.arange(25).reshape(5, 5, 1)
    assert central_crop(odd, 2)[..., 0].tolist() == [[6, 7], [11, 12]]  # offset (5-2)//2 = 1
    with pytest.raises(ValueError, match="cannot crop"):
        central_crop(odd, 6)


# ---- end to end ----------------------------------------------------------------------------------


def _folder(root: Path, classes: int = 3, per_class: int = 6, noise: int = 40) -> None:
    rng = np.random.default_rng(7)
    from PIL import Image

    for c in range(classes):
        base = rng.integers(0, 256, 3)
        for i in range(per_class):
            jitter = rng.integers(-noise, noise, (20, 28, 3))
            pixels = np.clip(base + jitter, 0, 255).astype(np.uint8)
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"class{c}" / f"im{i}.png")


def _direct_features(model, paths) -> np.ndarray:
    """pre_logits by hand: decode, resize(36), central_crop(32), value_range, model.pooled."""
    crops = [resize_uint8(decode_image(p), 36)[2:34, 2:34] for p in paths]
    with torch.no_grad():
        return model.pooled(images_to_pixels(np.stack(crops))).numpy()


def test_run_fewshot_equals_the_protocol_on_every_feature(model, tmp_path):
    # noisy classes: accuracies between chance and 1 that move with the shots and seeds
    _folder(tmp_path / "train", classes=4, per_class=7, noise=120)
    _folder(tmp_path / "test", classes=4, per_class=6, noise=120)
    train, test = read_imagefolder(tmp_path / "train"), read_imagefolder(tmp_path / "test")
    options = FewshotOptions(shots=(1, 2, 5), seeds=2, batch_size=4, num_workers=1)
    result = run_fewshot(model, train, test, options, log=lambda m: None)
    # big_vision's way: featurise the whole train split, then draw
    x_tr, x_te = _direct_features(model, train.images), _direct_features(model, test.images)
    expected = fewshot_accuracies(x_tr, train.labels, x_te, test.labels, 4, (1, 2, 5), 2)
    for k, values in expected.items():
        assert result["metrics"][f"{k}shot"]["seeds"] == pytest.approx(values, abs=1e-12)
        assert result["metrics"][f"{k}shot"]["mean"] == pytest.approx(np.mean(values))
    assert len({v for m in result["metrics"].values() for v in m["seeds"]}) > 1  # informative
    assert result["train"]["featurised"] < len(train)  # only the drawn images
    assert result["train"]["classes_short_of_shots"] == []
    assert result["protocol"]["preprocess"] == "resize(36)|central_crop(32)|value_range(-1,1)"


def test_an_undecodable_train_image_is_dropped_and_the_shots_drawn_again(model, tmp_path):
    _folder(tmp_path / "train", per_class=4)
    _folder(tmp_path / "test", per_class=3)
    options = FewshotOptions(shots=(1, 4), seeds=2, batch_size=8, num_workers=1)
    test = read_imagefolder(tmp_path / "test")
    clean = run_fewshot(model, read_imagefolder(tmp_path / "train"), test, options, log=print)
    (tmp_path / "train" / "class1" / "bad.png").write_bytes(b"not an image")
    dirty = run_fewshot(model, read_imagefolder(tmp_path / "train"), test, options, log=print)
    assert dirty["metrics"] == clean["metrics"]  # every draw that needed it was redone
    assert [name for name, _ in dirty["train"]["skipped"]] == ["class1/bad.png"]
    assert dirty["train"]["n_skipped"] == 1 and clean["train"]["n_skipped"] == 0


def test_sides_must_have_the_same_classes(model, tmp_path):
    _folder(tmp_path / "train", classes=3, per_class=2)
    _folder(tmp_path / "test", classes=2, per_class=2)
    train, test = read_imagefolder(tmp_path / "train"), read_imagefolder(tmp_path / "test")
    with pytest.raises(ValueError, match="same classes"):
        run_fewshot(model, train, test, FewshotOptions(shots=(1,), seeds=1))


def _parser() -> argparse.ArgumentParser:
    # `clippo eval`'s shape: the common options before and after the suite name
    parser = argparse.ArgumentParser(prog="clippo eval")
    _common(parser, defaults=True)
    add_fewshot(parser.add_subparsers(dest="suite", required=True), _common)
    return parser


def test_command_writes_results_and_a_table(model, tmp_path, capsys):
    _folder(tmp_path / "train", per_class=5)
    _folder(tmp_path / "test", per_class=3)
    model.save(tmp_path / "model")
    out = tmp_path / "out"
    args = _parser().parse_args(
        ["--model", str(tmp_path / "model"), "--device", "cpu", "fewshot", "--out", str(out)]
        + ["--train-imagefolder", str(tmp_path / "train")]
        + ["--eval-imagefolder", str(tmp_path / "test"), "--shots", "2,1", "--seeds", "2"]
        + ["--batch-size", "4", "--num-workers", "1"]
    )
    assert args.func(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "fewshot"
    assert list(results["metrics"]) == ["1shot", "2shot"]
    assert results["options"]["shots"] == [1, 2] and results["options"]["seeds"] == 2
    assert results["data"]["train"]["layout"] == "imagefolder"
    assert results["eval"]["images"] == 9 and results["train"]["classes"] == 3
    # the same numbers as the library on the same data
    direct = run_fewshot(
        model,
        read_imagefolder(tmp_path / "train"),
        read_imagefolder(tmp_path / "test"),
        FewshotOptions(shots=(1, 2), seeds=2),
        log=lambda m: None,
    )
    for name, m in direct["metrics"].items():
        assert results["metrics"][name]["seeds"] == pytest.approx(m["seeds"])
    table = capsys.readouterr().out
    assert "| shots |" in table and f"{100 * direct['metrics']['2shot']['mean']:.2f}" in table


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval-imagefolder", "x"], "one of the arguments --train-imagefolder"),
        (
            ["--train-imagefolder", "x", "--train-cifar100", "y", "--eval-imagefolder", "z"],
            "not allowed",
        ),
        (["--train-imagefolder", "x", "--eval-imagefolder", "z", "--shots", "0"], "positive"),
    ],
)
def test_command_usage_errors(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["--model", "m", "--out", "o", "fewshot", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_clippo_eval_fewshot_reads_every_classification_layout(model, tmp_path):
    # Oxford-IIIT Pets through `clippo eval fewshot` (trainval shots, test scored): the layout
    # reader the zero-shot suite uses, and the same numbers as the library on its output
    from PIL import Image

    from clippo.cli import main
    from clippo.eval.datasets_classification import classification_source

    rng = np.random.default_rng(3)
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("yorkshire_terrier", 37)]
    (tmp_path / "pets" / "annotations").mkdir(parents=True)
    (tmp_path / "pets" / "images").mkdir()
    for split, count in (("trainval", 4), ("test", 2)):
        lines = []
        for b, (breed, class_id) in enumerate(breeds):
            base = np.array([60 * b, 200 - 50 * b, 90])
            for i in range(count):
                name = f"{breed}_{split}{i}"
                lines.append(f"{name} {class_id} 1 1")
                jitter = rng.integers(-30, 30, (20, 28, 3))
                pixels = np.clip(base + jitter, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "pets" / "images" / f"{name}.jpg")
        (tmp_path / "pets" / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    model.save(tmp_path / "model")
    out = tmp_path / "out"
    pets = str(tmp_path / "pets")
    argv = ["eval", "--model", str(tmp_path / "model"), "--device", "cpu", "--out", str(out)]
    argv += ["fewshot", "--train-pets", pets, "--train-split", "trainval", "--eval-pets", pets]
    assert main([*argv, "--shots", "1,3", "--seeds", "2", "--num-workers", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["train"]["layout"] == "pets" and results["eval"]["images"] == 6
    train = classification_source("pets", pets, split="trainval")
    test = classification_source("pets", pets, split="test")
    direct = run_fewshot(model, train, test, FewshotOptions(shots=(1, 3), seeds=2), log=print)
    for name, m in direct["metrics"].items():
        assert results["metrics"][name]["seeds"] == pytest.approx(m["seeds"])
