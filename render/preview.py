"""A grid PNG of rendered samples, for looking at renderer settings before a long run."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from clippo.atomic import atomic_file


def image_grid(
    images: np.ndarray, columns: int | None = None, gap: int = 4, gap_value: int = 255
) -> np.ndarray:
    """np.uint8 [N, H, W] or [N, H, W, 3] (channel 0 used) -> one np.uint8 greyscale grid.

    Cells are laid out row-major, `columns` wide (default ceil(sqrt(N))), separated and framed by
    `gap` pixels of `gap_value` (white, so the grey backgrounds of neighbours stay distinguishable).
    Shape: [rows * (H + gap) + gap, columns * (W + gap) + gap].
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 [N, H, W] or [N, H, W, 3], got {images.dtype} {images.shape}"
        )
    n, h, w = images.shape
    if n == 0:
        raise ValueError("no images to put in a grid")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap), gap_value, np.uint8)
    for i, img in enumerate(images):
        y, x = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
        grid[y : y + h, x : x + w] = img
    return grid


class BatchRenderer(Protocol):
    """Anything that renders a list of texts to np.uint8 [N, H, W] or [N, H, W, 3]."""

    def render_batch(self, texts: list[str], /) -> np.ndarray: ...


def write_preview(
    renderer: BatchRenderer,
    texts: Sequence[str],
    path: str | os.PathLike[str],
    columns: int | None = None,
) -> np.ndarray:
    """Render `texts` with `renderer` (anything with render_batch), save the grid PNG atomically.

    Returns the grid (np.uint8 [H', W']).
    """
    if not texts:
        raise ValueError("no texts to preview")
    grid = image_grid(renderer.render_batch(list(texts)), columns=columns)
    with atomic_file(path) as f:
        Image.fromarray(grid).save(f, format="PNG")
    return grid
