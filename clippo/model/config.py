"""Model configuration: frozen dataclasses and the big_vision ViT variant table.

`ViTConfig` describes the one tower, `ModelConfig` the whole CLIPPO model (tower, projection,
temperature and the renderer settings texts are drawn with). Both round-trip through plain dicts
(`to_dict`/`from_dict`, through `clippo.typed_config`); unknown or missing keys and values of
the wrong type are `ConfigError`s (ValueErrors) naming the key. The renderer is named beside its
settings (`"renderer": "unifont" | "text"`, Unifont when absent, as in every older config.json). `VARIANTS` is a read-only
`clippo.registry.Registry` of the named tower sizes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clippo import typed_config
from clippo.registry import Registry
from clippo.render import (
    AnyRenderConfig,
    RenderConfig,
    RendererName,
    TextRenderConfig,
    config_class,
    image_shape,
    renderer_name,
)

POOL_TYPES = ("map", "gap")  # big_vision names: attention-probe pooling, global average pooling


@dataclass(frozen=True)
class ViTConfig:
    """The Vision Transformer tower (big_vision `vit.py` with `rep_size=False`, no class token)."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    image_size: int
    pool_type: str = "map"

    def __post_init__(self) -> None:
        for name in ("width", "depth", "num_heads", "mlp_dim", "patch_size", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ViTConfig.{name} must be a positive int, got {value!r}")
        # messages start with the field (see typed_config.from_dict, which adds its dotted key)
        if self.width % self.num_heads:
            raise ValueError(
                f"ViTConfig.width {self.width} is not divisible by num_heads {self.num_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}"
            )
        if self.pool_type not in POOL_TYPES:
            raise ValueError(
                f"ViTConfig.pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ViTConfig:
        return typed_config.from_dict(cls, data)

    @classmethod
    def from_variant(cls, name: str, image_size: int = 224, pool_type: str = "map") -> ViTConfig:
        """`ViTConfig.from_variant("B/16", 224)`; names are the keys of `VARIANTS` (an unknown
        one is a `clippo.registry.UnknownNameError`, a ValueError listing the known names)."""
        return cls(**VARIANTS[name].to_dict(), image_size=image_size, pool_type=pool_type)


@dataclass(frozen=True)
class Variant:
    """Tower sizes of one named variant (image size and pooling are chosen separately)."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# big_vision `vit.decode_variant` sizes: (width, depth, heads, mlp_dim), Table 2 of arXiv 2106.04560.
_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 2, 128),
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "So400m": (1152, 27, 16, 4304),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
    "G": (1664, 48, 16, 8192),
    "e": (1792, 56, 16, 15360),
}
_PATCHES = (8, 14, 16, 32)

# "B/16" style names as big_vision spells them, plus "tiny-test" (the public fixture's tower).
VARIANTS: Registry[Variant] = Registry(
    "ViT variant",
    {
        f"{size}/{patch}": Variant(w, d, h, m, patch)
        for size, (w, d, h, m) in _SIZES.items()
        for patch in _PATCHES
    },
)
VARIANTS.register("tiny-test", Variant(width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=16))


@dataclass(frozen=True)
class ModelConfig:
    """CLIPPO one-tower model: ViT -> `head` Linear(width, out_dim) -> L2 norm; logit scale exp(t).

    `render` holds the settings texts are drawn with: a `RenderConfig` (big_vision's Unifont
    renderer, the default) or a `TextRenderConfig` (`clippo.render.TextRenderer`); `renderer`
    names which ("unifont" or "text"). Either may be left out: the name follows the settings,
    the settings default to the named renderer's defaults at the tower's image size (Unifont
    when neither is given). The images must be square, of the tower's image size.

    Token dropping (`CLIPPO.forward`; both saved in config.json, so a loaded model keeps them):
    `ink_only_text` encodes rendered texts from their inked patches only, in training and (unless
    told otherwise) in `encode_texts`; `patch_dropout` is the fraction of a photo's patch tokens
    dropped at random in training (FLIP), never a rendered text's; all are kept at evaluation.
    """

    vit: ViTConfig
    out_dim: int = 768
    temperature_init: float = 10.0
    # None: filled in by __post_init__ (see above); the ignores keep the None defaults, which
    # typed_config.from_dict needs to read a null `renderer`/`render` as "the default"
    renderer: RendererName = field(default=None)  # type: ignore[arg-type]
    render: AnyRenderConfig = field(default=None)  # type: ignore[assignment]
    ink_only_text: bool = False
    patch_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.vit, ViTConfig):
            raise TypeError(f"ModelConfig.vit must be a ViTConfig, got {type(self.vit).__name__}")
        if not isinstance(self.ink_only_text, bool):
            raise ValueError(
                f"ModelConfig.ink_only_text must be a bool, got {self.ink_only_text!r}"
            )
        dropout = self.patch_dropout
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"ModelConfig.patch_dropout must be in [0, 1), got {dropout!r}")
        if (self.ink_only_text or dropout) and self.vit.pool_type != "map":
            # padded token rows are masked out of attention; "gap" would average them in
            raise ValueError(
                "ModelConfig.ink_only_text and patch_dropout need vit.pool_type 'map', got "
                f"{self.vit.pool_type!r}"
            )
        if not isinstance(self.out_dim, int) or isinstance(self.out_dim, bool) or self.out_dim <= 0:
            raise ValueError(f"ModelConfig.out_dim must be a positive int, got {self.out_dim!r}")
        # the logit scale is exp(t): an infinite or NaN t makes every logit inf or NaN
        if not 0 < self.temperature_init < math.inf:
            raise ValueError(
                f"ModelConfig.temperature_init must be finite and > 0, got {self.temperature_init}"
            )
        if self.render is None:
            render_cls = config_class("unifont" if self.renderer is None else self.renderer)
            object.__setattr__(self, "render", render_cls(image_size=self.vit.image_size))
        name = renderer_name(self.render)
        if self.renderer is None:
            object.__setattr__(self, "renderer", name)
        elif self.renderer != name:
            raise ValueError(
                f"ModelConfig.renderer is {self.renderer!r} but render holds "
                f"{type(self.render).__name__} settings (the {name!r} renderer's)"
            )
        size = self.vit.image_size
        h, w = image_shape(self.render)
        if (h, w) != (size, size):  # the tower reads square images
            got = h if h == w else f"{w}x{h}"
            raise ValueError(f"ModelConfig.render.image_size {got} != vit.image_size {size}")

    @classmethod
    def from_variant(
        cls,
        name: str,
        image_size: int = 224,
        out_dim: int | None = None,
        temperature_init: float = 10.0,
        render: AnyRenderConfig | None = None,
        ink_only_text: bool = False,
        patch_dropout: float = 0.0,
    ) -> ModelConfig:
        """Named variant; `out_dim` defaults to the tower width (CLIPPO B/16: 768)."""
        vit = ViTConfig.from_variant(name, image_size=image_size)
        dim = vit.width if out_dim is None else out_dim
        drop: dict[str, Any] = {"ink_only_text": ink_only_text, "patch_dropout": patch_dropout}
        if render is None:  # the default renderer at the tower's image size
            return cls(vit=vit, out_dim=dim, temperature_init=temperature_init, **drop)
        return cls(vit=vit, out_dim=dim, temperature_init=temperature_init, render=render, **drop)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vit": self.vit.to_dict(),
            "out_dim": self.out_dim,
            "temperature_init": self.temperature_init,
            "renderer": self.renderer,
            "render": self.render.to_dict(),
            "ink_only_text": self.ink_only_text,
            "patch_dropout": self.patch_dropout,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> ModelConfig:
        """The `to_dict` form back; `vit` and `render` are converted as nested tables. A missing
        or null `renderer` is "unifont"; a missing or null `render` is the named renderer's
        default at the tower's image size; missing `ink_only_text`/`patch_dropout` (configs
        written before them) are off. `prefix` is the dotted key errors are named under.

        `render` is read as the settings of the renderer `renderer` names: the two settings
        tables share keys, so a partial table alone could not say which it is.
        """
        render = data.get("render") if isinstance(data, Mapping) else None
        if render is not None and not isinstance(render, RenderConfig | TextRenderConfig):
            key = f"{prefix}.renderer" if prefix else "renderer"
            name = data.get("renderer")
            try:
                render_cls = config_class("unifont" if name is None else name)
            except ValueError as e:
                raise typed_config.ConfigError(f"{key}: {e}") from None
            render_key = f"{prefix}.render" if prefix else "render"
            data = {**data, "render": typed_config.from_dict(render_cls, render, render_key)}
        return typed_config.from_dict(cls, data, prefix)
