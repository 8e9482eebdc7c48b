"""CIFAR-100 binary reader, zero-shot accuracy, and the opt-in colab regression check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import clippo
from clippo.cifar100 import read_cifar100_bin, read_label_names, zero_shot_accuracy
from clippo.preprocess import preprocess
from clippo.prompts import CLIP_BEST_TEMPLATES


def write_fake_bin(path: Path, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, (n, 3074), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 20, n)
    records[:, 1] = rng.integers(0, 3, n)
    path.write_bytes(records.tobytes())
    return records


def test_reader_layout(tmp_path):
    records = write_fake_bin(tmp_path / "test.bin", 3)
    images, coarse, fine = read_cifar100_bin(tmp_path / "test.bin")
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    for n in range(3):
        assert coarse[n] == records[n, 0] and fine[n] == records[n, 1]
        for y, x, c in [(0, 0, 0), (5, 17, 1), (31, 31, 2), (31, 0, 1)]:
            assert images[n, y, x, c] == records[n, 2 + c * 1024 + y * 32 + x]
    (tmp_path / "short.bin").write_bytes(records.tobytes()[:-1])
    with pytest.raises(ValueError, match="short.bin"):
        read_cifar100_bin(tmp_path / "short.bin")
    (tmp_path / "names.txt").write_text("apple\naquarium_fish\n\nbaby\n")
    assert read_label_names(tmp_path / "names.txt") == ["apple", "aquarium_fish", "baby"]


def test_zero_shot_accuracy_matches_naive(tmp_path, fixture_model):
    write_fake_bin(tmp_path / "test.bin", 6, seed=1)
    images, _, fine = read_cifar100_bin(tmp_path / "test.bin")
    names = ["apple", "aquarium_fish", "baby"]
    acc = zero_shot_accuracy(fixture_model, images, fine, names, batch_size=4, progress=False)
    with torch.no_grad():
        classes = fixture_model.class_embeddings(names, CLIP_BEST_TEMPLATES)
        pred = (fixture_model.encode(preprocess(list(images), 64)) @ classes.T).argmax(1).numpy()
    assert acc == pytest.approx((pred == fine).mean())


CKPT = os.environ.get("CLIPPO_B16_YFCC100M_NPZ", "")
CIFAR = os.environ.get("CLIPPO_CIFAR100_DIR", "")


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.path.isfile(CKPT) and os.path.isfile(os.path.join(CIFAR, "test.bin"))),
    reason="set CLIPPO_B16_YFCC100M_NPZ and CLIPPO_CIFAR100_DIR (with test.bin) to run",
)
def test_colab_cifar100_zero_shot_regression():
    """The CLIPPO colab's check: clippo_b16_yfcc100m.npz scores 0.4535 zero-shot on CIFAR-100
    with 8 uncanonicalised prompts, TFDS class names and resize(224) (REFERENCE.md 4.2)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = clippo.load(CKPT)
    images, _, fine = read_cifar100_bin(os.path.join(CIFAR, "test.bin"))
    names = read_label_names(os.path.join(CIFAR, "fine_label_names.txt"))
    assert len(names) == 100 and len(images) == 10_000
    acc = zero_shot_accuracy(model, images, fine, names, CLIP_BEST_TEMPLATES, device=device)
    assert abs(acc - 0.4535) <= 0.01, acc
