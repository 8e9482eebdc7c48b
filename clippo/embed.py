"""Batch embedding of image folders and text files (the library side of `clippo embed`).

Images are decoded and resized with `clippo.data.images.load_image` (big_vision's bilinear
resize without antialias to the model's size, uint8), mapped to [-1, 1] and encoded; files that cannot be decoded are skipped and reported. Texts are rendered with the
model's own renderer. Results are written as `.npy` plus a row-aligned `.ids.txt`, or as one
`.parquet` file with `id` and `embedding` columns.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clippo.atomic import atomic_path, write_text_atomic
from clippo.data.images import list_images, load_image
from clippo.errors import read_utf8
from clippo.model.one_tower import CLIPPO
from clippo.preprocess import images_to_pixels

OUTPUT_SUFFIXES = (".npy", ".parquet")


@dataclass
class Embeddings:
    """`vectors` float32 [N, D] with `ids[i]` naming row i; `skipped` holds (id, reason)."""

    vectors: np.ndarray
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_texts(path: str | os.PathLike) -> list[str]:
    """One text per line (UTF-8, line breaks removed; empty lines kept, so rows match lines)."""
    lines = read_utf8(path).split("\n")  # bad bytes: a DataError naming file and line
    if lines[-1] == "":  # the final line break ends the last text, it starts none
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _check_batch_size(batch_size: int) -> None:
    # a batch size below 1 gives no batches: an empty array would be written beside the ids
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bfloat16 autocast on `device` when `bf16`, else a no-op (the encoders' inference mode here
    and in `clippo.eval.features`)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def _prefetched(
    pool: ThreadPoolExecutor, batches: list[list[Path]], load: Callable[[Path], np.ndarray | str]
) -> Iterator[tuple[list[Path], list[np.ndarray | str]]]:
    """Decode batch i+1 in the pool while the caller encodes batch i."""
    pending: list[Future] | None = None
    for i in range(len(batches) + 1):
        ready = pending
        pending = [pool.submit(load, p) for p in batches[i]] if i < len(batches) else None
        if ready is not None:
            yield batches[i - 1], [f.result() for f in ready]


@torch.no_grad()
def embed_images(
    model: CLIPPO,
    paths: Sequence[str | os.PathLike],
    ids: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    num_workers: int = 4,
    progress: bool = True,
) -> Embeddings:
    """Encode image files; undecodable ones are skipped and listed in `.skipped`."""
    _check_batch_size(batch_size)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    files = [Path(p) for p in paths]
    ids = [str(p) for p in files] if ids is None else list(ids)
    if len(ids) != len(files):
        raise ValueError(f"{len(ids)} ids for {len(files)} paths")
    device = torch.device(device)
    model = model.to(device).eval()
    size = model.config.vit.image_size
    id_of = dict(zip(files, ids))
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    vectors, kept, skipped = [], [], []
    with (
        ThreadPoolExecutor(max(1, num_workers)) as pool,
        tqdm(total=len(files), desc="images", unit="img", disable=not progress) as bar,
    ):
        for batch, loaded in _prefetched(pool, batches, lambda p: load_image(p, size)):
            good = [(p, a) for p, a in zip(batch, loaded) if not isinstance(a, str)]
            skipped += [(id_of[p], a) for p, a in zip(batch, loaded) if isinstance(a, str)]
            if good:
                pixels = images_to_pixels([a for _, a in good]).to(device)
                with autocast(device, bf16):
                    vectors.append(model.encode_images(pixels).float().cpu().numpy())
                kept += [id_of[p] for p, _ in good]
            bar.update(len(batch))
    out = np.concatenate(vectors) if vectors else np.zeros((0, model.config.out_dim), np.float32)
    return Embeddings(out, kept, skipped)


def embed_image_dir(model: CLIPPO, directory: str | os.PathLike, **kwargs: Any) -> Embeddings:
    """`embed_images` over `list_images(directory)`; ids are paths relative to `directory`."""
    paths = list_images(directory)
    ids = [p.relative_to(directory).as_posix() for p in paths]
    return embed_images(model, paths, ids, **kwargs)


@torch.no_grad()
def embed_texts(
    model: CLIPPO,
    texts: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    progress: bool = True,
) -> Embeddings:
    """Render each text with the model's renderer and encode it. Ids default to 1-based lines."""
    _check_batch_size(batch_size)
    ids = [str(i) for i in range(1, len(texts) + 1)] if ids is None else list(ids)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
    device = torch.device(device)
    model = model.to(device).eval()
    vectors = []
    with tqdm(total=len(texts), desc="texts", unit="text", disable=not progress) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = list(texts[i : i + batch_size])
            with autocast(device, bf16):
                vectors.append(model.encode(model.render_texts(chunk)).float().cpu().numpy())
            bar.update(len(chunk))
    out = np.concatenate(vectors) if vectors else np.zeros((0, model.config.out_dim), np.float32)
    return Embeddings(out, ids)


def ids_path(out: str | os.PathLike) -> Path:
    """`emb.npy` -> `emb.ids.txt`, the row-aligned ids beside an `.npy` output."""
    return Path(out).with_suffix(".ids.txt")


def write_embeddings(result: Embeddings, out: str | os.PathLike) -> list[Path]:
    """Write `.npy` (+ `.ids.txt`, one id per line) or `.parquet` (columns id, embedding),
    each file atomically. Returns the files written."""
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{out}: output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    bad = [i for i in result.ids if "\n" in i or "\r" in i]
    if bad:
        raise ValueError(f"ids with line breaks cannot be written: {bad[:3]!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, result.vectors.astype(np.float32, copy=False))
        write_text_atomic(ids_path(out), "".join(f"{i}\n" for i in result.ids))
        return [out, ids_path(out)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = result.vectors.shape[1]
    flat = pa.array(result.vectors.astype(np.float32, copy=False).reshape(-1))
    table = pa.table(
        {
            "id": pa.array(result.ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return [out]


def summary(result: Embeddings, written: Sequence[Path] = ()) -> str:
    """Human-readable report: counts, files written, and every skipped input with its reason."""
    lines = [f"embedded {len(result.ids)} inputs -> {result.vectors.shape}"]
    lines += [f"wrote {p}" for p in written]
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} unreadable inputs:")
        lines += [f"  {i}: {reason}" for i, reason in result.skipped]
    return "\n".join(lines)


def read_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read back what `write_embeddings` wrote: (float32 [N, D], ids)."""
    path = Path(path)
    if path.suffix == ".npy":
        vectors = np.load(path, allow_pickle=False)
        ids = ids_path(path).read_text(encoding="utf-8").splitlines()
        return vectors, ids
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32)
    return vectors.reshape(table.num_rows, -1), table.column("id").to_pylist()
