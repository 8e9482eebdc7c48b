"""CIFAR-100 binary reader, the zero-shot suite on it, and the opt-in colab regression check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import clippo
from clippo.eval.datasets import read_cifar100, read_cifar100_bin, read_class_names
from clippo.eval.spec import EvalSpec
from clippo.eval.suites import run_suite
from clippo.preprocess import preprocess
from clippo.prompts import CLIP_BEST_TEMPLATES

FIXTURE_NPZ = Path(__file__).resolve().parents[1] / "fixtures" / "clippo_tiny_public.npz"


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
    assert read_class_names(tmp_path / "names.txt") == ["apple", "aquarium_fish", "baby"]


def test_zeroshot_suite_on_cifar_matches_naive(tmp_path):
    write_fake_bin(tmp_path / "test.bin", 6, seed=1)
    images, _, fine = read_cifar100_bin(tmp_path / "test.bin")
    names = ["apple", "aquarium_fish", "baby"]
    (tmp_path / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    model = clippo.load(FIXTURE_NPZ)
    # the colab's protocol: 8 uncanonicalised prompts, TFDS names, resize to the model's size
    spec = EvalSpec("zeroshot", str(tmp_path), templates="clip_best", batch_size=4)
    acc = run_suite(model, spec)["accuracy"]
    with torch.no_grad():
        classes = model.class_embeddings(names, CLIP_BEST_TEMPLATES)
        pred = (model.encode(preprocess(list(images), 64)) @ classes.T).argmax(1).numpy()
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
    with the 8 `clip_best` prompts uncanonicalised, TFDS class names and resize(224)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = clippo.load(CKPT)
    data = read_cifar100(CIFAR)
    assert len(data.class_names) == 100 and len(data) == 10_000
    spec = EvalSpec("zeroshot", CIFAR, templates="clip_best", canonicalize=False, batch_size=128)
    acc = run_suite(model, spec, data=data, device=device, progress=True)["accuracy"]
    assert abs(acc - 0.4535) <= 0.01, acc
