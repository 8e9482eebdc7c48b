"""Rank candidate images against a prompt with the model's similarity (the library side of
`clippo rank`): DALL-E's reranking, with one pixels-only tower. Many prompts at once:
`read_prompts_file` (NAME<TAB>PROMPT lines, NAME a sub-folder of candidates) and `rank_prompts`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clippo.embed import embed_image_dir, embed_texts
from clippo.errors import DataError, read_utf8
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


def read_prompts_file(path: str | os.PathLike, root: str | os.PathLike) -> list[tuple[str, str]]:
    """A prompts file for `rank_prompts`: one `NAME<TAB>PROMPT` line per prompt, NAME a
    sub-folder of `root` holding that prompt's candidates (blank lines are skipped). Every
    sub-folder of `root` must be named once. Returns (name, prompt) in file order; errors name
    the file and line."""
    path, root = Path(path), Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        name, tab, prompt = line.partition("\t")
        name, prompt = name.strip(), prompt.strip()
        if not tab or not name or not prompt:
            raise DataError(
                f"{path}:{number}: expected NAME<TAB>PROMPT (a sub-folder of {root}, a tab, the "
                f"prompt), got {line[:60]!r}"
            )
        if name in seen:
            raise DataError(f"{path}:{number}: folder {name!r} already named on line {seen[name]}")
        if not (root / name).is_dir():
            raise DataError(f"{path}:{number}: no candidate folder {root / name}")
        seen[name] = number
        pairs.append((name, prompt))
    if not pairs:
        raise DataError(f"{path}: no prompts")
    unnamed = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in seen)
    if unnamed:
        raise DataError(f"{path}: sub-folders of {root} without a prompt line: {unnamed[:5]}")
    return pairs


def rank_prompts(
    model: CLIPPO,
    prompts: list[tuple[str, str]],
    root: str | os.PathLike,
    **embed_kwargs: Any,
) -> dict[str, tuple[list[Ranked], list[tuple[str, str]]]]:
    """`rank_folder` for each (name, prompt): the candidates in root/name against the prompt
    (all prompts embedded in one pass). Returns name -> (ranking, skipped)."""
    image_kwargs = dict(embed_kwargs)
    embed_kwargs.pop("num_workers", None)
    texts = embed_texts(model, [p for _, p in prompts], **embed_kwargs)
    out = {}
    for (name, _), prompt_vec in zip(prompts, texts.vectors):
        images = embed_image_dir(model, Path(root) / name, **image_kwargs)
        if not images.ids:
            raise ValueError(f"{Path(root) / name}: no readable candidate images")
        out[name] = (rank_candidates(images.vectors, prompt_vec, images.ids), images.skipped)
    return out
