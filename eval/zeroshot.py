"""Zero-shot classification with prompt-ensemble class embeddings (big_vision's protocol).

Class embeddings come from the model room's `prompt_ensemble` (`CLIPPO.class_embeddings` uses it
too): each class's prompts are embedded and L2-normalised, averaged, and the mean re-normalised.
An image is assigned the class of highest cosine similarity (ties go to the lower class index,
`np.argmax`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clippo.eval.encoders import as_encoders, embed, to_numpy
from clippo.eval.metrics import accuracy, per_class_accuracy, top_k_accuracy
from clippo.model.one_tower import prompt_ensemble


def evaluate_zeroshot(
    model_or_encoders: Any,
    images: Any,
    labels: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot accuracy. `model_or_encoders`: a CLIPPO model or (encode_images, encode_texts);
    images: sliceable batch source (uint8 [N, H, W, 3] for a model); labels int [N] indexing
    class_names. Returns {"accuracy", "mean_per_class_accuracy", "top5_accuracy" (when there are
    more than 5 classes), "per_class": {name: accuracy or None when a class has no images}, "n"}."""
    encode_images, encode_texts = as_encoders(model_or_encoders)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"labels must be 1-D with one entry per image ({len(images)}), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must be in [0, {len(class_names)})")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be distinct: {list(class_names)}")
    zcls = to_numpy(prompt_ensemble(encode_texts, class_names, templates, progress=progress))
    zimg = embed(encode_images, images, batch_size, desc="zero-shot images", progress=progress)
    if zimg.shape[1] != zcls.shape[1]:
        raise ValueError(
            f"image embeddings are {zimg.shape[1]}-d but text embeddings {zcls.shape[1]}-d"
        )
    scores = zimg @ zcls.T
    pred = scores.argmax(axis=1)
    per = per_class_accuracy(pred, labels, len(class_names))
    out: dict[str, Any] = {
        "accuracy": accuracy(pred, labels),
        "mean_per_class_accuracy": float(np.nanmean(per)),
    }
    if len(class_names) > 5:
        out["top5_accuracy"] = top_k_accuracy(scores, labels, 5)
    out["per_class"] = {
        name: (None if np.isnan(a) else float(a)) for name, a in zip(class_names, per)
    }
    out["n"] = int(len(labels))
    return out
