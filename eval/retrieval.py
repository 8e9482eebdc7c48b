"""Image<->text retrieval: recall@k in both directions from two encoders.

`evaluate_retrieval(*as_encoders(model), images, texts, image_ids_for_text)` for a CLIPPO model;
any pair of callables returning [B, D] embeddings works (they are L2-normalised here, so the
score is the cosine similarity, as in big_vision's retrieval evaluator).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clippo.eval.encoders import Encoder, embed
from clippo.eval.metrics import image_to_text_recall, text_to_image_recall


def similarity(
    encode_images: Encoder,
    encode_texts: Encoder,
    images: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Cosine similarities float32 [N_img, N_txt]."""
    zimg = embed(encode_images, images, batch_size, desc="retrieval images", progress=progress)
    ztxt = embed(encode_texts, list(texts), batch_size, desc="retrieval texts", progress=progress)
    if zimg.shape[1] != ztxt.shape[1]:
        raise ValueError(
            f"image embeddings are {zimg.shape[1]}-d but text embeddings {ztxt.shape[1]}-d"
        )
    return zimg @ ztxt.T


def retrieval_metrics(
    sim_img_txt: np.ndarray, image_ids_for_text: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """{"img2txt/r@k", "txt2img/r@k"} for each k, from sim [N_img, N_txt]; ties count against."""
    ids = np.asarray(image_ids_for_text)
    n_img = np.asarray(sim_img_txt).shape[0]
    if ids.ndim == 1 and len(ids) and (ids.min() < 0 or ids.max() >= n_img):
        raise ValueError(f"image_ids_for_text must be in [0, {n_img})")
    missing = np.setdiff1d(np.arange(n_img), ids)
    if missing.size:
        raise ValueError(f"images {missing[:5].tolist()}... have no text; every image needs one")
    i2t = image_to_text_recall(sim_img_txt, ids, ks)
    t2i = text_to_image_recall(sim_img_txt, ids, ks)
    out = {f"img2txt/r@{k}": v for k, v in i2t.items()}
    out.update({f"txt2img/r@{k}": v for k, v in t2i.items()})
    return out


def evaluate_retrieval(
    encode_images: Encoder,
    encode_texts: Encoder,
    images: Any,
    texts: Sequence[str],
    image_ids_for_text: np.ndarray,
    batch_size: int = 64,
    *,
    ks: Sequence[int] = (1, 5, 10),
    progress: bool = False,
) -> dict[str, float]:
    """Recall@k both ways. images: sliceable batch source (e.g. uint8 [N, H, W, 3]) for
    `encode_images`; texts [M]; image_ids_for_text int [M] (several texts may share an image).
    Returns {"img2txt/r@1", ..., "txt2img/r@10", "n_images", "n_texts"}."""
    if len(texts) != len(image_ids_for_text):
        raise ValueError(f"{len(texts)} texts but {len(image_ids_for_text)} image_ids_for_text")
    sim = similarity(encode_images, encode_texts, images, texts, batch_size, progress=progress)
    out: dict[str, float] = retrieval_metrics(sim, np.asarray(image_ids_for_text), ks)
    out["n_images"], out["n_texts"] = int(sim.shape[0]), int(sim.shape[1])
    return out
