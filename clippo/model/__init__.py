"""The model room: configs and variants (`config`), the one-tower module (`one_tower`), the
big_vision `.npz` mapping (`bigvision`), the saved-model folder (`files`) and loading
(`checkpoint`). Arrows point one way: config <- one_tower <- checkpoint; nothing here imports
training, data or evaluation code."""

from clippo.model.bigvision import CheckpointError
from clippo.model.checkpoint import convert, load, load_dir, load_image_init, load_npz, read_config
from clippo.model.config import VARIANTS, ModelConfig, Variant, ViTConfig
from clippo.model.one_tower import CLIPPO, l2_normalize, vit_tower

__all__ = [
    "CLIPPO",
    "VARIANTS",
    "CheckpointError",
    "ModelConfig",
    "Variant",
    "ViTConfig",
    "convert",
    "l2_normalize",
    "load",
    "load_dir",
    "load_image_init",
    "load_npz",
    "read_config",
    "vit_tower",
]
