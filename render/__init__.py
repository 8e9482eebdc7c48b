"""clippo.render: text -> pixels. Never imports torch at module import time."""

from clippo.render.layout import render_on_image, render_pair
from clippo.render.protocol import (
    RENDERER_NAMES,
    AnyRenderConfig,
    Renderer,
    RendererName,
    build_renderer,
    config_class,
    image_shape,
    renderer_name,
)
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
    "RENDERER_NAMES",
    "AnyRenderConfig",
    "RenderConfig",
    "Renderer",
    "RendererName",
    "TextLayout",
    "TextRenderConfig",
    "TextRenderer",
    "UnifontRenderer",
    "build_renderer",
    "codepoints",
    "config_class",
    "image_shape",
    "ink_mask",
    "load_glyphs",
    "render_on_image",
    "render_pair",
    "renderer_name",
    "to_pixels",
]
