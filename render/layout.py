"""Layouts built from the Unifont renderer: sentence pairs and text-on-image (GLUE, VQA)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clippo.render.unifont import UnifontRenderer


def render_pair(renderer: UnifontRenderer, a: str | bytes, b: str | bytes) -> np.ndarray:
    """One image: `a`, then `b` starting on the line after `a` ends -> uint8 [H, W, 3].

    Unifont draws `\\n` as a glyph, so the break is a layout step: both texts are laid out on
    their own (each with the reference wrap rule) and stacked by whole 16-px lines.
    """
    size = renderer.config.image_size
    images = renderer.render_batch([a, b])
    top = int(renderer.layout([a]).rows_used[0]) * 16
    out = images[1].copy()
    out[:] = renderer.config.background_brightness
    top = min(top, size)
    out[:top] = images[0][:top]
    out[top:] = images[1][: size - top]
    return out


def render_on_image(
    renderer: UnifontRenderer,
    photo: np.ndarray | Image.Image,
    text: str | bytes,
    band: int | None = None,
) -> np.ndarray:
    """The text in a band of `band` px at the top, the photo squashed into the rest -> uint8 [H, W, 3].

    The photo is resized with Pillow's bilinear filter; `band` defaults to H // 2.
    """
    size = renderer.config.image_size
    band = size // 2 if band is None else band
    if not 0 <= band <= size:
        raise ValueError(f"band={band} must be within [0, {size}]")
    out = np.empty((size, size, 3), np.uint8)
    out[:band] = renderer(text)[:band]
    if band < size:
        img = (
            photo
            if isinstance(photo, Image.Image)
            else Image.fromarray(np.asarray(photo, np.uint8))
        )
        img = img.convert("RGB").resize((size, size - band), Image.Resampling.BILINEAR)
        out[band:] = np.asarray(img)
    return out
