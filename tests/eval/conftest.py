"""Shared helpers for the eval tests: a tiny model, random PNGs, and retrieval metrics computed
directly with `evaluate_retrieval` on images decoded one by one (no suite code)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.data.images import decode_image
from clippo.eval.encoders import as_encoders
from clippo.eval.retrieval import evaluate_retrieval
from clippo.model.one_tower import CLIPPO
from clippo.preprocess import resize_uint8

# At 32 px a rendered text shows its first ~8 characters (2 lines): captions differ early.
CAPTIONS = [["red 1", "sun"], ["blue 2"], ["cat 3", "big"], ["dog 4"], ["owl 5", "far"]]


def write_image(path: Path, seed: int, size: tuple[int, int] = (24, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def direct_retrieval(model, folder: Path, captions=CAPTIONS, batch_size: int = 2) -> dict:
    """evaluate_retrieval on `folder/im{i}.png` (captions[i] each), decoded and resized to 32."""
    images = np.stack(
        [resize_uint8(decode_image(folder / f"im{i}.png"), 32) for i in range(len(captions))]
    )
    texts = [c for caps in captions for c in caps]
    ids = np.array([i for i, caps in enumerate(captions) for _ in caps])
    return evaluate_retrieval(*as_encoders(model), images, texts, ids, batch_size=batch_size)


@pytest.fixture(scope="module")
def model():
    """The tiny-test tower at 32 px (4 tokens), seeded."""
    torch.manual_seed(0)
    return CLIPPO.from_variant("tiny-test", image_size=32).eval()


@pytest.fixture
def helpers():
    return SimpleNamespace(
        captions=CAPTIONS, write_image=write_image, direct_retrieval=direct_retrieval
    )
