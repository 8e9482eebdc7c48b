"""clippo.render: text -> pixels. Never imports torch at module import time."""

from clippo.render.layout import render_on_image, render_pair
from clippo.render.text import TextLayout, TextRenderConfig, TextRenderer
from clippo.render.unifont import (
    RenderConfig,
    UnifontRenderer,
    codepoints,
    ink_mask,
    load_glyphs,
    to_pixels,
)

__all__ = [
    "RenderConfig",
    "TextLayout",
    "TextRenderConfig",
    "TextRenderer",
    "UnifontRenderer",
    "codepoints",
    "ink_mask",
    "load_glyphs",
    "render_on_image",
    "render_pair",
    "to_pixels",
]
