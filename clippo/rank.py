"""Rank candidate images against a prompt with the model's similarity (the library side of
`clippo rank`): DALL-E's reranking, with one pixels-only tower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from clippo.embed import embed_image_dir, embed_texts
from clippo.model.one_tower import CLIPPO


@dataclass(frozen=True)
class Ranked:
    """One candidate: its rank (1 = best), cosine similarity to the prompt, and id."""

    rank: int
    score: float
    id: str


def rank_candidates(image_vecs: np.ndarray, prompt_vec: np.ndarray, ids: list[str]) -> list[Ranked]:
    """Pure: image embeddings [N, D] and a prompt embedding [D] (both unit length, as the model
    returns them) -> candidates ordered by similarity, best first (ties keep input order)."""
    images = np.asarray(image_vecs, np.float32)
    prompt = np.asarray(prompt_vec, np.float32).reshape(-1)
    if images.ndim != 2 or images.shape[1] != prompt.shape[0]:
        raise ValueError(f"image embeddings {images.shape} do not match prompt {prompt.shape}")
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} image embeddings")
    scores = images @ prompt
    order = np.argsort(-scores, kind="stable")
    return [Ranked(r + 1, float(scores[i]), ids[i]) for r, i in enumerate(order)]


def rank_folder(
    model: CLIPPO, prompt: str, directory: str | os.PathLike, **embed_kwargs: Any
) -> tuple[list[Ranked], list[tuple[str, str]]]:
    """Embed every image under `directory` and `prompt`, rank the images. Returns (ranking,
    skipped (id, reason) for undecodable files). Ids are paths relative to `directory`."""
    images = embed_image_dir(model, directory, **embed_kwargs)
    if not images.ids:
        raise ValueError(f"{directory}: no readable candidate images")
    embed_kwargs.pop("num_workers", None)
    text = embed_texts(model, [prompt], **embed_kwargs)
    return rank_candidates(images.vectors, text.vectors[0], images.ids), images.skipped
