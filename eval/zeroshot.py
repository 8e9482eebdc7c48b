"""Zero-shot classification with prompt-ensemble class embeddings (big_vision's protocol).

Class embeddings come from the model room's `prompt_ensemble` (`CLIPPO.class_embeddings` uses it
too): each class's prompts are embedded and L2-normalised, averaged, and the mean re-normalised.
An image is assigned the class of highest cosine similarity (ties go to the lower class index,
`np.argmax`). Class names may repeat (CLIP's ImageNet names hold "missile" and "sunglasses"
twice, as big_vision uses them): the repeats get the same embedding, so the lower index wins,
and their "per_class" entries are keyed "name [index]".

Class embeddings cost C x T text encodings (ImageNet's 1,000 classes x 80 templates: 80,000);
`class_embeddings(..., cache_dir=...)` stores them on disk keyed by the model's weights, its
renderer settings, the class names and the templates (`clippo.eval.features`' cache), so a
second run with the same model and prompts loads them instead of encoding again.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clippo.eval.encoders import as_encoders, embed, to_numpy
from clippo.eval.features import cache_path, json_key, load_cached, model_key, save_cached
from clippo.eval.metrics import accuracy, per_class_accuracy, top_k_accuracy
from clippo.model.one_tower import prompt_ensemble

CLASS_CACHE_VERSION = 1  # bump when the stored class embeddings change meaning


def class_embeddings(
    model_or_encoders: Any,
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Prompt-ensemble class embeddings, float32 [C, D] (`prompt_ensemble`), names and templates
    used as given.

    With `cache_dir` (a CLIPPO model only: the key needs its weights) the result is stored as
    `<cache_dir>/class_embeddings-<digest>.npy` beside a JSON sidecar holding the key: the model
    fingerprint, the renderer settings, the class names and the templates, in order. A matching
    file is loaded without encoding any text; one that cannot be trusted is recomputed with a
    warning."""
    _, encode_texts = as_encoders(model_or_encoders)
    path, key = None, None
    if cache_dir is not None:
        if not hasattr(model_or_encoders, "state_dict"):
            raise ValueError("a class-embedding cache needs a model (its weights key the cache)")
        key = json_key(
            {
                "version": CLASS_CACHE_VERSION,
                **model_key(model_or_encoders),
                "classes": list(class_names),
                "templates": list(templates),
            }
        )
        path = cache_path(cache_dir, key, "class_embeddings")
        shape = (len(class_names), int(model_or_encoders.config.out_dim))
        cached = load_cached(path, key, shape, "class-embedding cache")
        if cached is not None:
            return cached
    z = to_numpy(prompt_ensemble(encode_texts, class_names, templates, progress=progress))
    if path is not None and key is not None:
        save_cached(Path(path), key, z, "zero-shot class embeddings")
    return z


def evaluate_zeroshot(
    model_or_encoders: Any,
    images: Any,
    labels: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
    progress: bool = False,
    class_embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Zero-shot accuracy. `model_or_encoders`: a CLIPPO model or (encode_images, encode_texts);
    images: sliceable batch source (uint8 [N, H, W, 3] for a model); labels int [N] indexing
    class_names. class_embeddings: float32 [C, D] already computed (`class_embeddings`, e.g.
    from its cache); then no text is encoded. Returns {"accuracy", "mean_per_class_accuracy",
    "top5_accuracy" (when there are more than 5 classes), "per_class": {name: accuracy or None
    when a class has no images}, "n"}."""
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
    if class_embeddings is None:
        zcls = to_numpy(prompt_ensemble(encode_texts, class_names, templates, progress=progress))
    else:
        zcls = to_numpy(class_embeddings)
        if zcls.shape[:1] != (len(class_names),):
            raise ValueError(
                f"class_embeddings hold {zcls.shape[0]} rows for {len(class_names)} class names"
            )
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
    repeated = {n for n, count in Counter(class_names).items() if count > 1}
    out["per_class"] = {
        (f"{name} [{i}]" if name in repeated else name): (None if np.isnan(a) else float(a))
        for i, (name, a) in enumerate(zip(class_names, per))
    }
    out["n"] = int(len(labels))
    return out
