"""The renderer protocol the rest of the toolkit calls, and the names of the renderers.

Two renderers implement it: `UnifontRenderer` ("unifont", big_vision's, bit-exact: the default
and what Google's checkpoints were trained with) and `TextRenderer` ("text", shaped and
bidi-ordered, every script). A renderer's settings say which one it is: `RenderConfig` or
`TextRenderConfig`; `renderer_name` and `build_renderer` go from one to the other, and saved
configs store the name beside the settings (`config_class` reads them back).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

import numpy as np

from clippo.render.text import TextRenderConfig, TextRenderer
from clippo.render.unifont import RenderConfig, UnifontRenderer

if TYPE_CHECKING:
    import torch

RendererName = Literal["unifont", "text"]
AnyRenderConfig = RenderConfig | TextRenderConfig
# name -> settings class; the first is the default (a config without a name is Unifont's)
CONFIG_CLASSES: dict[str, type[RenderConfig] | type[TextRenderConfig]] = {
    "unifont": RenderConfig,
    "text": TextRenderConfig,
}
RENDERER_NAMES: tuple[RendererName, ...] = ("unifont", "text")


class RowLayout(Protocol):
    """What `render_pair` reads of a layout: `rows_used`, int64 [B], the 16-px rows each text
    covers down to its last drawn line's bottom (0 for an empty text)."""

    @property
    def rows_used(self) -> np.ndarray: ...


class Renderer(Protocol):
    """Text -> uint8 [H, W, 3] images with fixed settings (`config`); picklable."""

    @property
    def config(self) -> AnyRenderConfig: ...

    def __call__(self, text: str | bytes) -> np.ndarray:
        """One text -> uint8 [H, W, 3]."""
        ...

    def render_batch(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """Texts -> uint8 [B, H, W, 3]."""
        ...

    def layout(self, texts: Sequence[str | bytes]) -> RowLayout: ...

    @overload
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = ..., return_ink: Literal[False] = ...
    ) -> torch.Tensor: ...
    @overload
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = ..., *, return_ink: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = ..., return_ink: bool = ...
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = "cpu", return_ink: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """-> float32 [B, 3, H, W] in [-1, 1] on `device` (and ink bool [B, H/16, W/16])."""
        ...


def renderer_name(config: AnyRenderConfig) -> RendererName:
    """ "unifont" for a `RenderConfig`, "text" for a `TextRenderConfig`."""
    if isinstance(config, TextRenderConfig):
        return "text"
    if isinstance(config, RenderConfig):
        return "unifont"
    raise TypeError(f"expected a RenderConfig or TextRenderConfig, got {type(config).__name__}")


def config_class(name: str) -> type[RenderConfig] | type[TextRenderConfig]:
    """The settings class of the renderer called `name` (a ValueError lists the known names)."""
    try:
        return CONFIG_CLASSES[name]
    except (KeyError, TypeError):
        known = " | ".join(repr(n) for n in RENDERER_NAMES)
        raise ValueError(f"renderer must be one of {known}, got {name!r}") from None


def build_renderer(config: AnyRenderConfig) -> Renderer:
    """The renderer these settings belong to."""
    if isinstance(config, TextRenderConfig):
        return TextRenderer.from_config(config)
    if isinstance(config, RenderConfig):
        return UnifontRenderer.from_config(config)
    raise TypeError(f"expected a RenderConfig or TextRenderConfig, got {type(config).__name__}")


def image_shape(config: AnyRenderConfig) -> tuple[int, int]:
    """(height, width) of the images a renderer with these settings draws."""
    if isinstance(config, TextRenderConfig):
        return config.shape
    return config.image_size, config.image_size
