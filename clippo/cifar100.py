"""CIFAR-100 in its binary layout, and the CLIPPO colab's zero-shot check on it.

`test.bin` holds 10,000 records of 3,074 bytes: coarse label, fine label, then 3,072 pixel
bytes (1,024 red, 1,024 green, 1,024 blue, each a row-major 32x32 plane).
`fine_label_names.txt` has the 100 fine class names, one per line, in label order (TFDS's
names: underscores kept, e.g. `aquarium_fish`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from clippo.model.one_tower import CLIPPO
from clippo.preprocess import images_to_pixels, resize_uint8
from clippo.prompts import CLIP_BEST_TEMPLATES

RECORD_BYTES = 2 + 3 * 32 * 32


def read_cifar100_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`test.bin`/`train.bin` -> (uint8 images [N,32,32,3], coarse [N], fine [N] int64)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte records"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    images = records[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return (
        np.ascontiguousarray(images),
        records[:, 0].astype(np.int64),
        records[:, 1].astype(np.int64),
    )


def read_label_names(path: str | os.PathLike) -> list[str]:
    """One class name per non-empty line."""
    return [s.strip() for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]


@torch.no_grad()
def zero_shot_accuracy(
    model: CLIPPO,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    templates: tuple[str, ...] | list[str] = CLIP_BEST_TEMPLATES,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> float:
    """Top-1 accuracy of `model.classify` on uint8 images [N,H,W,3], resized like big_vision's
    `resize(image_size)` (the colab's CIFAR-100 check: 8 uncanonicalised prompts)."""
    model = model.to(device).eval()
    size = model.config.vit.image_size
    class_emb = model.class_embeddings(class_names, templates)
    correct = 0
    for i in tqdm(range(0, len(images), batch_size), desc="zero-shot", disable=not progress):
        batch = images_to_pixels([resize_uint8(im, size) for im in images[i : i + batch_size]])
        pred = model.classify(batch.to(device), class_names, templates, class_embeddings=class_emb)
        correct += int((pred.cpu().numpy() == labels[i : i + batch_size]).sum())
    return correct / len(images)
