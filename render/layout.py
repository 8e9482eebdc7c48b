"""Layouts built from a renderer: sentence pairs and text-on-image (GLUE, VQA).

Both take any `clippo.render.Renderer` (Unifont's or `TextRenderer`) and any image shape,
square or not: sizes come from the rendered arrays.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from clippo.render.protocol import Renderer
from clippo.render.text import TextLayout, TextRenderConfig


def _pair_rows(renderer: Renderer, a: str | bytes, height: int) -> tuple[int, int, int]:
    """(top, cut, end): the second text's image is shifted down by `top` px, the first one's
    pixels are kept down to `cut` (its last line's bottom) and win over the second's where
    inked; rows from `end` on are background (`height`: the images' height).

    Unifont: whole 16-px rows (its layout's `rows_used`), `top == cut`, nothing blanked.
    TextRenderer: its lines are `line_pitch` apart below a top margin that both images have, so
    shifting by the lines drawn puts the second text's first line exactly one pitch below the
    first's last; `cut` keeps that line's descenders, which reach into the margin rows; `end`
    is the top of the first line that does not fit (TextRenderer draws no partial line).
    """
    cfg, lay = renderer.config, renderer.layout([a])
    if isinstance(cfg, TextRenderConfig) and isinstance(lay, TextLayout):
        top = int(min(lay.lines[0], cfg.lines_fit)) * cfg.line_pitch
        end = cfg.margin + cfg.lines_fit * cfg.line_pitch
        return top, top + cfg.margin if top else 0, end
    top = int(lay.rows_used[0]) * 16
    return top, top, height


def render_pair(renderer: Renderer, a: str | bytes, b: str | bytes) -> np.ndarray:
    """One image: `a`, then `b` starting on the line after `a` ends -> uint8 [H, W, 3].

    A newline is no break for every renderer (Unifont draws `\\n` as a glyph), so the break is a
    layout step: both texts are laid out on their own (each with its renderer's wrap rule) and
    stacked by whole lines (`_pair_rows`). With `TextRenderer` this equals drawing
    `a + "\\n" + b` (for a non-empty `a`).
    """
    images = renderer.render_batch([a, b])
    h = images.shape[1]
    top, cut, end = (min(v, h) for v in _pair_rows(renderer, a, h))
    bg = np.asarray(renderer.config.background_brightness, np.uint8)
    out = np.empty_like(images[1])
    out[:top] = images[0][:top]
    out[top:] = images[1][: h - top]
    if cut > top:
        first = images[0][top:cut]
        ink = np.any(first != bg, axis=-1)
        out[top:cut][ink] = first[ink]
    out[max(end, cut) :] = bg
    return out


def render_on_image(
    renderer: Renderer,
    photo: np.ndarray | Image.Image,
    text: str | bytes,
    band: int | None = None,
) -> np.ndarray:
    """The text in a band of `band` px at the top, the photo squashed into the rest -> uint8 [H, W, 3].

    H and W are the renderer's image height and width. The photo is resized with Pillow's
    bilinear filter; `band` defaults to H // 2.
    """
    rendered = renderer(text)
    h, w = rendered.shape[:2]
    band = h // 2 if band is None else band
    if not 0 <= band <= h:
        raise ValueError(f"band={band} must be within [0, {h}]")
    out = np.empty((h, w, 3), np.uint8)
    out[:band] = rendered[:band]
    if band < h:
        img = (
            photo
            if isinstance(photo, Image.Image)
            else Image.fromarray(np.asarray(photo, np.uint8))
        )
        img = img.convert("RGB").resize((w, h - band), Image.Resampling.BILINEAR)
        out[band:] = np.asarray(img)
    return out
