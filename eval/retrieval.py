"""Image<->text and text<->text retrieval: recall@k in both directions.

`evaluate_retrieval(*as_encoders(model), images, texts, image_ids_for_text)` for a CLIPPO model;
any pair of callables returning [B, D] embeddings works (they are L2-normalised here, so the
score is the cosine similarity, as in big_vision's retrieval evaluator).

The metrics are computed from the embeddings in blocks of queries (`retrieval_recalls`,
`translation_recalls`; `clippo.eval.metrics.ranks_by_group`), so 5k images x 25k captions never
build the 5k x 25k score matrix; `similarity` + `retrieval_metrics` is the full-matrix form the
tests hold them to. A query hits when any of its positives is in the top k; ties count against
the query (deterministic; CLIP_benchmark's `topk` order decides instead, so the two agree except
where scores tie).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clippo.eval.encoders import Encoder, embed
from clippo.eval.metrics import (
    image_to_text_recall,
    modality_gap,
    ranks_by_group,
    recall_from_ranks,
    text_to_image_recall,
)

# scores held at once by the blocked metrics: 4M float32 scores (+ a bool mask) ~ 40 MB
MAX_SCORES = 1 << 22


def _check_ids(image_ids_for_text: np.ndarray, n_img: int) -> np.ndarray:
    ids = np.asarray(image_ids_for_text)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"image_ids_for_text must be 1-D integers, got {ids.dtype} {ids.shape}")
    if len(ids) and (ids.min() < 0 or ids.max() >= n_img):
        raise ValueError(f"image_ids_for_text must be in [0, {n_img})")
    missing = np.setdiff1d(np.arange(n_img), ids)
    if missing.size:
        raise ValueError(f"images {missing[:5].tolist()}... have no text; every image needs one")
    return ids


def similarity(
    encode_images: Encoder,
    encode_texts: Encoder,
    images: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Cosine similarities float32 [N_img, N_txt] (the full matrix: for a few queries, a demo, or
    as the reference the blocked `retrieval_recalls` is tested against)."""
    zimg, ztxt = _embeddings(encode_images, encode_texts, images, texts, batch_size, progress)
    return zimg @ ztxt.T


def _embeddings(
    encode_images: Encoder,
    encode_texts: Encoder,
    images: Any,
    texts: Sequence[str],
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    zimg = embed(encode_images, images, batch_size, desc="retrieval images", progress=progress)
    ztxt = embed(encode_texts, list(texts), batch_size, desc="retrieval texts", progress=progress)
    if zimg.shape[1] != ztxt.shape[1]:
        raise ValueError(
            f"image embeddings are {zimg.shape[1]}-d but text embeddings {ztxt.shape[1]}-d"
        )
    return zimg, ztxt


def _both_ways(*directions: tuple[str, dict[int, float]]) -> dict[str, float]:
    """{"<direction>/r@<k>": recall} over each (direction, {k: recall}): the one metric naming."""
    return {f"{name}/r@{k}": v for name, recalls in directions for k, v in recalls.items()}


def retrieval_metrics(
    sim_img_txt: np.ndarray, image_ids_for_text: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """{"img2txt/r@k", "txt2img/r@k"} for each k, from sim [N_img, N_txt]; ties count against."""
    ids = _check_ids(image_ids_for_text, np.asarray(sim_img_txt).shape[0])
    i2t = image_to_text_recall(sim_img_txt, ids, ks)
    t2i = text_to_image_recall(sim_img_txt, ids, ks)
    return _both_ways(("img2txt", i2t), ("txt2img", t2i))


def retrieval_recalls(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    image_ids_for_text: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    max_scores: int = MAX_SCORES,
) -> dict[str, float]:
    """`retrieval_metrics(zimg @ ztxt.T, ids)` computed in blocks of at most `max_scores` scores.

    image_embeddings [N, D], text_embeddings [M, D], image_ids_for_text int [M]."""
    zimg, ztxt = np.asarray(image_embeddings), np.asarray(text_embeddings)
    ids = _check_ids(image_ids_for_text, len(zimg))
    if len(ids) != len(ztxt):
        raise ValueError(f"{len(ztxt)} text embeddings but {len(ids)} image_ids_for_text")
    own = np.arange(len(zimg))
    i2t = recall_from_ranks(ranks_by_group(zimg, ztxt, own, ids, max_elements=max_scores), ks)
    t2i = recall_from_ranks(ranks_by_group(ztxt, zimg, ids, own, max_elements=max_scores), ks)
    return _both_ways(("img2txt", i2t), ("txt2img", t2i))


def translation_recalls(
    src_embeddings: np.ndarray,
    tgt_embeddings: np.ndarray,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    *,
    max_scores: int = MAX_SCORES,
) -> dict[str, float]:
    """Text->text retrieval over aligned translation pairs (src_texts[i] translates to
    tgt_texts[i]): each source sentence against all targets ("src2tgt/r@k") and each target
    against all sources ("tgt2src/r@k"). Embeddings [N, D]; a target identical (as a string) to
    the query's own translation counts as a hit too, as its embedding is the same."""
    if not (len(src_texts) == len(tgt_texts) == len(src_embeddings) == len(tgt_embeddings)):
        raise ValueError(
            f"translation pairs disagree in length: {len(src_texts)} sources, {len(tgt_texts)} "
            f"targets, {len(src_embeddings)} and {len(tgt_embeddings)} embeddings"
        )
    _, tgt_group = np.unique(np.asarray(tgt_texts, dtype=object), return_inverse=True)
    _, src_group = np.unique(np.asarray(src_texts, dtype=object), return_inverse=True)
    tg, sg = tgt_group.ravel(), src_group.ravel()
    s2t = ranks_by_group(src_embeddings, tgt_embeddings, tg, tg, max_elements=max_scores)
    t2s = ranks_by_group(tgt_embeddings, src_embeddings, sg, sg, max_elements=max_scores)
    return _both_ways(
        ("src2tgt", recall_from_ranks(s2t, ks)), ("tgt2src", recall_from_ranks(t2s, ks))
    )


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
    Returns {"img2txt/r@1", ..., "txt2img/r@10", "n_images", "n_texts", "modality_gap"}."""
    if len(texts) != len(image_ids_for_text):
        raise ValueError(f"{len(texts)} texts but {len(image_ids_for_text)} image_ids_for_text")
    zimg, ztxt = _embeddings(encode_images, encode_texts, images, texts, batch_size, progress)
    out: dict[str, float] = retrieval_recalls(zimg, ztxt, np.asarray(image_ids_for_text), ks)
    out["n_images"], out["n_texts"] = len(zimg), len(ztxt)
    out["modality_gap"] = modality_gap(zimg, ztxt)
    return out
