"""CLIP_benchmark (`pip install clip-benchmark`) runs clippo models.

CLIP_benchmark's model registry (`clip_benchmark.models.TYPE2FUNC`) maps a `--model_type` to a
loader `(model_name, pretrained, cache_dir, device) -> (model, transform, tokenizer)`; the model
needs `encode_image` and `encode_text` (a `CLIPPO` has both, under open_clip's names), the tokenizer turns a list of strings into what
`encode_text` reads. For a pixels-only model that is the renderer: `get_tokenizer(model)` maps
strings to rendered pixels float32 [B, 3, S, S] in [-1, 1], `get_transform(model)` a PIL image to
[3, S, S] (big_vision's zero-shot/retrieval preprocessing `resize(S)|value_range(-1, 1)`,
squashed, no antialias), and `load` returns both with the model. `register()` adds `clippo` to
the registry; run as a module, this file registers it and hands its arguments to CLIP_benchmark's
own command line:

    python -m clippo.eval.clip_benchmark eval --model_type clippo --model clippo \\
        --pretrained clippo_b16_yfcc100m.npz --dataset cifar100 --dataset_root data/cifar100 \\
        --task zeroshot_classification --no_amp --output "{dataset}_{model}_{pretrained}.json"

`--pretrained` is the checkpoint (a big_vision `.npz`, a `CLIPPO.save` folder or a trainer
checkpoint); `--model` is only a label in CLIP_benchmark's output. CLIP_benchmark itself may
download its datasets (`--dataset_root`); nothing here downloads. In Python:

    import clippo.eval.clip_benchmark as cb
    cb.register()                                   # then clip_benchmark.models.load_clip(...)
    model, transform, tokenizer = cb.load("clippo", "clippo_b16_yfcc100m.npz", device="cuda")

Same numbers as `clippo eval`: on the same images, class names and templates (CLIP_benchmark
fills `{c}` where ours take `{}`, and uses its own template lists, not big_vision's canonicalised
`clip_paper`), its zero-shot acc1 and mean per-class recall equal our accuracy and
`mean_per_class_accuracy`, and its `text_retrieval_recall@k` / `image_retrieval_recall@k` our
`img2txt/r@k` / `txt2img/r@k`, except where scores tie: we count a tie against the query
(deterministically), CLIP_benchmark's `torch.topk` order decides. Run with `--no_amp`: by default
CLIP_benchmark encodes under autocast (bfloat16 on a CPU, float16 on a GPU), which moves the
numbers slightly. `tests/eval/test_clip_benchmark.py` checks the equality.

CLIP_benchmark 1.6.2 under numpy >= 2.4: its top-k accuracy helper fails (`float()` of a
1-element array); the `python -m` runner replaces it with `topk_accuracy` (the same numbers).
Its dataset modules import `requests`, which it does not declare: install it beside it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clippo.model.one_tower import CLIPPO

__all__ = [
    "MODEL_TYPE",
    "ImageTransform",
    "RenderTokenizer",
    "get_tokenizer",
    "get_transform",
    "load",
    "register",
    "topk_accuracy",
]

MODEL_TYPE = "clippo"  # CLIP_benchmark's --model_type


class ImageTransform:
    """PIL image (or uint8 [H, W, 3]) -> float32 [3, S, S] in [-1, 1]: `resize(S)` squashed,
    bilinear without antialias, truncated to uint8, then `value_range(-1, 1)` (big_vision's
    zero-shot and retrieval preprocessing). A class, so that DataLoader workers can pickle it."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, image: Image.Image | np.ndarray) -> Tensor:
        from clippo.data.images import to_rgb
        from clippo.preprocess import preprocess

        if isinstance(image, Image.Image):
            image = to_rgb(image)  # the decoder's mode rules (alpha dropped, 16-bit high byte)
        return preprocess([image], self.image_size)[0]

    def __repr__(self) -> str:
        return f"ImageTransform(resize({self.image_size})|value_range(-1,1))"


class RenderTokenizer:
    """The "tokenizer" of a pixels-only model: a string or a list of B strings -> float32
    [B, 3, S, S] in [-1, 1] on the CPU, drawn by the model's own renderer."""

    def __init__(self, model: CLIPPO) -> None:
        self.renderer = model.renderer

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self.renderer.render_torch(batch, device="cpu")


def _clippo(model: Any) -> CLIPPO:
    if not isinstance(model, CLIPPO):
        raise TypeError(
            f"expected a CLIPPO model, got {type(model).__name__} (the token baselines read "
            "token ids, not rendered pixels)"
        )
    return model


def get_tokenizer(model: CLIPPO) -> RenderTokenizer:
    """The renderer as CLIP_benchmark's tokenizer: list of strings -> pixels [B, 3, S, S]."""
    return RenderTokenizer(_clippo(model))


def get_transform(model: CLIPPO) -> ImageTransform:
    """The image transform at the model's size S: PIL image -> [3, S, S] in [-1, 1]."""
    return ImageTransform(_clippo(model).config.vit.image_size)


def load(
    model_name: str = MODEL_TYPE,
    pretrained: str = "",
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> tuple[CLIPPO, ImageTransform, RenderTokenizer]:
    """CLIP_benchmark's loader signature -> (model, transform, tokenizer). `pretrained`: the
    checkpoint (big_vision `.npz`, `CLIPPO.save` folder, trainer checkpoint); `model_name` is
    a label; `cache_dir` is accepted and unused (nothing downloads). The model is in eval mode
    on `device`."""
    from clippo.model.checkpoint import load as load_checkpoint

    if not pretrained:
        raise ValueError(
            f"{model_name}: pass the clippo checkpoint as `pretrained` (CLIP_benchmark's "
            "--pretrained): a big_vision .npz or a saved model folder"
        )
    model = load_checkpoint(pretrained)
    if not isinstance(model, CLIPPO):
        raise ValueError(
            f"{pretrained}: a {type(model).__name__} checkpoint; CLIP_benchmark's clippo loader "
            "runs pixels-only CLIPPO models"
        )
    model = model.to(device).eval()
    return model, get_transform(model), get_tokenizer(model)


def register(name: str = MODEL_TYPE) -> None:
    """Add `load` to CLIP_benchmark's registry as `--model_type name` (for `load_clip` and its
    command line, whose `--model_type` choices are the same list object)."""
    # through importlib: CLIP_benchmark ships no type information (mypy would stop here)
    registry = importlib.import_module("clip_benchmark.models")
    registry.TYPE2FUNC[name] = load
    if name not in registry.MODEL_TYPES:
        registry.MODEL_TYPES.append(name)


def topk_accuracy(output: Tensor, target: Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """CLIP_benchmark's `zeroshot_classification.accuracy` (logits [N, C], targets [N] -> the
    top-k accuracy for each k, `torch.topk` deciding ties) ending in `.item()`: its release
    calls `float()` on a 1-element numpy array, which numpy >= 2.4 refuses. The `python -m`
    runner below puts this in its place."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


if __name__ == "__main__":  # `python -m clippo.eval.clip_benchmark eval ...`: CLIP_benchmark's CLI
    register()
    zeroshot: Any = importlib.import_module("clip_benchmark.metrics.zeroshot_classification")
    zeroshot.accuracy = topk_accuracy  # see topk_accuracy
    sys.exit(importlib.import_module("clip_benchmark.cli").main())
