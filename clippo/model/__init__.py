"""The model room: configs and variants (`config`), the contract every architecture keeps
(`contract`), the one-tower module (`one_tower`), the token baselines (`tokenizer`,
`token_model`, `two_tower` for CLIP*, `shared_tower` for 1T-CLIP) and their registry
(`architectures`), the big_vision `.npz` mapping (`bigvision`), the saved-model folder (`files`)
and loading (`checkpoint`). Arrows point one way: config <- contract <- one_tower <- token_model
<- two_tower, shared_tower <- architectures <- checkpoint; nothing here imports training, data or
evaluation code."""

from clippo.model.architectures import ARCHITECTURES, Architecture, architecture_of, build_model
from clippo.model.bigvision import CheckpointError
from clippo.model.checkpoint import (
    convert,
    load,
    load_dir,
    load_image_init,
    load_npz,
    read_config,
    read_model_config,
)
from clippo.model.config import VARIANTS, ModelConfig, Variant, ViTConfig
from clippo.model.one_tower import CLIPPO, l2_normalize, vit_tower
from clippo.model.shared_tower import OneTowerCLIP
from clippo.model.token_model import TokenModel, TokenModelConfig
from clippo.model.tokenizer import TextTokenizer
from clippo.model.two_tower import CLIPStar

__all__ = [
    "ARCHITECTURES",
    "CLIPPO",
    "VARIANTS",
    "Architecture",
    "CLIPStar",
    "CheckpointError",
    "ModelConfig",
    "OneTowerCLIP",
    "TextTokenizer",
    "TokenModel",
    "TokenModelConfig",
    "Variant",
    "ViTConfig",
    "architecture_of",
    "build_model",
    "convert",
    "l2_normalize",
    "load",
    "load_dir",
    "load_image_init",
    "load_npz",
    "read_config",
    "read_model_config",
    "vit_tower",
]
