"""Named evaluation suites: a model and an `EvalSpec` in, a dict of metrics out.

    metrics = SUITES["retrieval"](model, EvalSpec("retrieval", "coco_test.csv"))
    metrics = run_suite(model, EvalSpec("zeroshot", "cifar-100-binary", templates="clip_paper"))

Both follow big_vision's evaluators (retrieval, discriminative_classifier): images go through
`resize(size)` (bilinear, no antialias, squashed, truncated to uint8;
`clippo.preprocess.resize_uint8`) at the model's image size, then `value_range(-1, 1)`; texts are rendered by the model's own renderer. Zero-shot with
`clip_paper` canonicalises templates and class names as big_vision does. Metrics come from
`clippo.eval.retrieval` / `clippo.eval.zeroshot`; this module reads the data, embeds the images
(streamed in batches from files, or from pixels already in memory) and drops undecodable ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from clippo.data.images import load_image
from clippo.eval import SUITES
from clippo.eval.datasets import (
    CaptionedImages,
    LabelledImages,
    evenly_spaced,
    read_cifar100,
    read_class_names,
    read_imagefolder,
    read_pairs,
    read_templates,
)
from clippo.eval.encoders import as_encoders, embed
from clippo.eval.results import save_retrieval_examples
from clippo.eval.retrieval import retrieval_metrics, similarity
from clippo.eval.spec import EvalSpec
from clippo.eval.zeroshot import evaluate_zeroshot
from clippo.preprocess import resize_uint8
from clippo.prompts import (
    CLIP_BEST_TEMPLATES,
    CLIP_PAPER_TEMPLATES,
    canonical_class_names,
    canonical_templates,
)

__all__ = [
    "SUITES",
    "TEMPLATE_SETS",
    "read_spec_data",
    "resolve_prompts",
    "image_embeddings",
    "retrieval_suite",
    "zeroshot_suite",
    "run_suite",
]

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "clip_paper": CLIP_PAPER_TEMPLATES,
    "clip_best": CLIP_BEST_TEMPLATES,
}

Data = CaptionedImages | LabelledImages
_D = TypeVar("_D", CaptionedImages, LabelledImages)


# ---- data and prompts from a spec ----------------------------------------------------------------


def _zeroshot_format(spec: EvalSpec) -> str:
    if spec.format != "auto":
        return spec.format
    p = Path(spec.path)
    cifar = (p / f"{spec.split}.bin").is_file() or (p / "cifar-100-binary").is_dir()
    return "cifar100" if cifar else "imagefolder"


def read_spec_data(spec: EvalSpec) -> Data:
    """The spec's data (files listed, not decoded), cut to `max_examples` evenly spaced images."""
    if spec.kind == "retrieval":
        data: Data = read_pairs(
            spec.path, image_column=spec.image_column, caption_column=spec.caption_column
        )
    else:
        names = read_class_names(spec.class_names) if spec.class_names else None
        if _zeroshot_format(spec) == "cifar100":
            data = read_cifar100(spec.path, split=spec.split, class_names=names)
        else:
            data = read_imagefolder(spec.path, class_names=names)
    if spec.max_examples:
        data = data.subset(evenly_spaced(len(data), spec.max_examples))
    return data


def resolve_prompts(spec: EvalSpec, class_names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(class names, templates) as the zero-shot suite uses them (canonicalised when
    `spec.canonical`: "a photo of a {}." -> "a photo of a {}", "aquarium_fish" -> "aquarium fish")."""
    if isinstance(spec.templates, tuple):
        templates = list(spec.templates)
    elif spec.templates in TEMPLATE_SETS:
        templates = list(TEMPLATE_SETS[spec.templates])
    elif Path(spec.templates).is_file():
        templates = read_templates(spec.templates)
    else:
        raise ValueError(
            f"templates {spec.templates!r}: not one of {sorted(TEMPLATE_SETS)} and no such file"
        )
    names = list(class_names)
    if spec.canonical:
        templates, names = canonical_templates(templates), canonical_class_names(names)
    return names, templates


# ---- image embeddings ----------------------------------------------------------------------------


class _Resized:
    """uint8 [N, H, W, 3] seen as [N, size, size, 3], resized batch by batch when sliced."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, s: slice) -> np.ndarray:
        batch = self.images[s]
        if batch.shape[1:3] == (self.size, self.size):
            return batch
        return np.stack([resize_uint8(im, self.size) for im in batch])


def _device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    return device


def image_embeddings(
    model: Any,
    data: _D,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 4,
    progress: bool = False,
) -> tuple[np.ndarray, _D]:
    """(float32 [N', D] image embeddings, `data` without the images that could not be decoded).

    Files are decoded in `num_workers` threads one batch ahead of the model (only the
    embeddings are kept); in-memory pixels are resized batch by batch."""
    device = _device(model, device)
    size = model.config.vit.image_size
    if isinstance(data.images, np.ndarray):
        encode_images, _ = as_encoders(model, device=device)
        z = embed(
            encode_images, _Resized(data.images, size), batch_size, desc="images", progress=progress
        )
        return z, data
    from clippo.embed import embed_images

    out = embed_images(
        model,
        data.images,
        [str(i) for i in range(len(data))],
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )
    keep = [int(i) for i in out.ids]
    bad = tuple((data.names[int(i)], reason) for i, reason in out.skipped)
    if not keep:
        raise ValueError(
            f"{data.source}: none of the {len(data)} images could be decoded: {bad[:3]}"
        )
    data = replace(data.subset(keep), skipped=data.skipped + bad)
    return out.vectors, data


def _lookup(z: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """An "encoder" over precomputed embeddings: a batch of row indices -> their rows."""
    return lambda idx: z[np.asarray(idx)]


def _skipped(data: Data) -> dict[str, Any]:
    return {"n_skipped": len(data.skipped), "skipped": [list(s) for s in data.skipped]}


# ---- the suites ----------------------------------------------------------------------------------


def retrieval_suite(
    model: Any,
    spec: EvalSpec,
    *,
    data: CaptionedImages | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 4,
    progress: bool = False,
    examples_png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Image<->text Recall@{1,5,10} (big_vision's retrieval evaluator) on the spec's pairs.

    data: the spec's data already read (and possibly decoded; hooks cache it). examples_png:
    also write a PNG of the top captions for the first query images. Returns
    {"img2txt/r@k", "txt2img/r@k", "n_images", "n_texts", "n_skipped", "skipped"}."""
    given = read_spec_data(spec) if data is None else data
    if not isinstance(given, CaptionedImages):
        raise TypeError(f"retrieval needs (image, caption) pairs, got {type(given).__name__}")
    zimg, data = image_embeddings(
        model,
        given,
        batch_size=spec.batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )
    _, encode_texts = as_encoders(model)
    idx = np.arange(len(zimg))
    sim = similarity(
        _lookup(zimg), encode_texts, idx, data.texts, spec.batch_size, progress=progress
    )
    out: dict[str, Any] = retrieval_metrics(sim, data.image_ids_for_text)
    out["n_images"], out["n_texts"] = int(sim.shape[0]), int(sim.shape[1])
    out.update(_skipped(data))
    if examples_png is not None:
        shown = list(range(min(6, len(data))))
        size = model.config.vit.image_size
        if isinstance(data.images, np.ndarray):
            thumbs = _Resized(data.images, size)[: len(shown)]
        else:
            thumbs = np.stack([load_image(data.images[i], size) for i in shown])
        save_retrieval_examples(
            examples_png, thumbs, data.texts, sim[shown], data.image_ids_for_text, indices=shown
        )
    return out


def zeroshot_suite(
    model: Any,
    spec: EvalSpec,
    *,
    data: LabelledImages | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot classification (big_vision's discriminative_classifier): prompt-ensemble class
    embeddings, argmax of the cosine. Returns `evaluate_zeroshot`'s dict ("accuracy",
    "mean_per_class_accuracy", "top5_accuracy", "per_class", "n") plus "n_classes",
    "n_templates", "n_skipped", "skipped"."""
    given = read_spec_data(spec) if data is None else data
    if not isinstance(given, LabelledImages):
        raise TypeError(f"zero-shot needs labelled images, got {type(given).__name__}")
    names, templates = resolve_prompts(spec, given.class_names)
    zimg, data = image_embeddings(
        model,
        given,
        batch_size=spec.batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )
    _, encode_texts = as_encoders(model)
    out = evaluate_zeroshot(
        (_lookup(zimg), encode_texts),
        np.arange(len(zimg)),
        data.labels,
        names,
        templates,
        batch_size=spec.batch_size,
        progress=progress,
    )
    out["n_classes"], out["n_templates"] = len(names), len(templates)
    out.update(_skipped(data))
    return out


def run_suite(model: Any, spec: EvalSpec, **kwargs: Any) -> dict[str, Any]:
    """`SUITES[spec.kind](model, spec, **kwargs)`; `SUITES` (`clippo.eval.SUITES`, re-exported
    here) names this module's `retrieval_suite` and `zeroshot_suite`."""
    return SUITES[spec.kind](model, spec, **kwargs)
