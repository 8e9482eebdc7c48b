"""The three architectures of the paper's comparison, in one registry.

    ARCHITECTURES["clippo"]     CLIPPO: one ViT for images and rendered text (`one_tower`)
    ARCHITECTURES["clip-star"]  CLIP*: the same image ViT + a text transformer (`two_tower`)
    ARCHITECTURES["1t-clip"]    1T-CLIP: one ViT shared by image patches and text tokens
                                (`shared_tower`)

Each entry pairs a config class (a typed frozen dataclass with `from_dict(data, prefix)`, read
through `clippo.typed_config`) with its model class. A saved model's config.json names its
architecture (`clippo.model.files`; absent means "clippo"), and `clippo.load` builds it from
here. All three models share CLIPPO's contract: `encode_images`, `encode_texts`, `forward`
(same keys, same named intermediates), `logit_scale`/`t` and `save`; what of it is the same code
is written once in `clippo.model.contract.ContrastiveModel`, their common base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from clippo.model.config import ModelConfig
from clippo.model.files import DEFAULT_ARCHITECTURE
from clippo.model.one_tower import CLIPPO
from clippo.model.shared_tower import OneTowerCLIP
from clippo.model.token_model import TokenModel, TokenModelConfig
from clippo.model.tokenizer import TextTokenizer
from clippo.model.two_tower import CLIPStar
from clippo.registry import Registry

__all__ = [
    "ARCHITECTURES",
    "AnyConfig",
    "AnyModel",
    "Architecture",
    "architecture_of",
    "build_model",
]

AnyConfig = ModelConfig | TokenModelConfig
AnyModel = CLIPPO | CLIPStar | OneTowerCLIP


@dataclass(frozen=True)
class Architecture:
    """One architecture: its config class, its model class and whether it reads tokens (and so
    needs a tokenizer, saved beside its weights)."""

    config_class: type[ModelConfig] | type[TokenModelConfig]
    model_class: type[CLIPPO] | type[CLIPStar] | type[OneTowerCLIP]
    tokens: bool
    summary: str

    def read_config(self, data: Mapping[str, Any], prefix: str = "") -> AnyConfig:
        """A config dict (as in config.json's "model") -> this architecture's config."""
        return self.config_class.from_dict(data, prefix)


ARCHITECTURES: Registry[Architecture] = Registry(
    "architecture",
    {
        DEFAULT_ARCHITECTURE: Architecture(
            ModelConfig, CLIPPO, False, "one ViT for images and rendered text (pixels only)"
        ),
        CLIPStar.architecture: Architecture(
            TokenModelConfig, CLIPStar, True, "image ViT + separate text transformer on tokens"
        ),
        OneTowerCLIP.architecture: Architecture(
            TokenModelConfig, OneTowerCLIP, True, "one ViT shared by image patches and tokens"
        ),
    },
)


def build_model(name: str, config: AnyConfig, tokenizer: TextTokenizer | None = None) -> AnyModel:
    """A freshly initialised model of architecture `name` (an `UnknownNameError` lists the
    known ones). Token architectures take their `tokenizer` (needed to encode strings and to
    save); CLIPPO takes none."""
    arch = ARCHITECTURES[name]
    if not isinstance(config, arch.config_class):
        raise TypeError(
            f"architecture {name!r} takes a {arch.config_class.__name__}, "
            f"got {type(config).__name__}"
        )
    cls = arch.model_class
    if issubclass(cls, TokenModel) and isinstance(config, TokenModelConfig):
        return cls(config, tokenizer)
    if tokenizer is not None:
        raise ValueError(f"architecture {name!r} reads rendered text; it takes no tokenizer")
    assert cls is CLIPPO and isinstance(config, ModelConfig)  # the registry's one pixel model
    return CLIPPO(config)


def architecture_of(model: nn.Module) -> str:
    """The registry name of `model`'s architecture."""
    for name, arch in ARCHITECTURES.items():
        if type(model) is arch.model_class:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered architecture")
