"""clippo: pixels-only vision-language models (CLIPPO) in PyTorch.

This file stays lazy: `import clippo.render` runs it first and must not pull in torch.
Model names are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "CLIPPO": "clippo.model",
    "load": "clippo.model",
    "load_image_init": "clippo.model",
    "ViTConfig": "clippo.model",
    "ModelConfig": "clippo.model",
    "VARIANTS": "clippo.model",
    "CLIPStar": "clippo.model",
    "OneTowerCLIP": "clippo.model",
    "TokenModelConfig": "clippo.model",
    "TextTokenizer": "clippo.model",
    "ARCHITECTURES": "clippo.model",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clippo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
