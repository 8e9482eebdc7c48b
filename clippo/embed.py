"""Batch embedding of image folders and text files (the library side of `clippo embed`).

Images are decoded and resized with `clippo.data.images.load_image` (big_vision's bilinear
resize without antialias to the model's size, uint8), mapped to [-1, 1] and encoded; files that cannot be decoded are skipped and reported. Texts are rendered with the
model's own renderer. Results are written as `.npy` plus a row-aligned `.ids.txt`, or as one
`.parquet` file with `id` and `embedding` columns.
"""

from __future__ import annotations

import math
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


# ---- clip-retrieval's layout -------------------------------------------------------------------
#
# What clip-retrieval's inference writes (clip_retrieval/clip_inference/writer.py, mapper.py):
#   OUT/img_emb/img_emb_{P}.npy          float16 [n, D], each row L2-normalised (images)
#   OUT/text_emb/text_emb_{P}.npy        float16 [n, D] (texts)
#   OUT/metadata/metadata_{P}.parquet    columns image_path and/or caption, row-aligned
# one part per `part_size` inputs (its write_batch_size, 10**6 by default): part count
# C = ceil(N / part_size), P = the part number zero-padded to int(log10(C)) + 1 digits. Inputs
# that cannot be read are left out of their part. image_path is the folder as given joined to
# the image's relative path (its "files" reader) or, for a pair source, the sample key as its
# webdataset reader writes __key__ (clippo's sources: tar key, parquet FILE:ROW, CSV line number).

CLIP_RETRIEVAL_PART_SIZE = 10**6
CR_IMAGE, CR_TEXT, CR_METADATA = "img_emb", "text_emb", "metadata"


def part_label(part: int, part_count: int) -> str:
    """clip-retrieval's part number: zero-padded to int(log10(part_count)) + 1 digits."""
    return str(part).zfill(int(math.log10(max(part_count, 1))) + 1)


def clip_retrieval_paths(out: str | os.PathLike, part: int, part_count: int) -> dict[str, Path]:
    """The three files of one part: keys "image", "text", "metadata"."""
    label, root = part_label(part, part_count), Path(out)
    return {
        "image": root / CR_IMAGE / f"{CR_IMAGE}_{label}.npy",
        "text": root / CR_TEXT / f"{CR_TEXT}_{label}.npy",
        "metadata": root / CR_METADATA / f"{CR_METADATA}_{label}.parquet",
    }


def write_clip_retrieval_part(
    out: str | os.PathLike,
    part: int,
    part_count: int,
    *,
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
    image_path: Sequence[str] | None = None,
    caption: Sequence[str] | None = None,
) -> list[Path]:
    """One part: `image`/`text` [n, D] are L2-normalised and stored float16; metadata is written
    last (atomically, like each file), so a part with its metadata file is complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths, written = clip_retrieval_paths(out, part, part_count), []
    columns: dict[str, Any] = {}
    rows = {len(v) for v in (image, text, image_path, caption) if v is not None}
    if len(rows) != 1:
        raise ValueError(f"part {part}: arrays and metadata differ in length ({sorted(rows)})")
    for name, vectors in (("image", image), ("text", text)):
        if vectors is None:
            continue
        x = np.asarray(vectors, np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = (x / np.where(norms > 0, norms, 1.0)).astype(np.float16)
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths[name]) as tmp, open(tmp, "wb") as f:
            np.save(f, x)
        written.append(paths[name])
    if image_path is not None:
        columns["image_path"] = pa.array(list(image_path), pa.string())
    if caption is not None:
        columns["caption"] = pa.array(list(caption), pa.string())
    paths["metadata"].parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths["metadata"]) as tmp:
        pq.write_table(pa.table(columns), tmp)
    written.append(paths["metadata"])
    return written


def read_clip_retrieval(
    folder: str | os.PathLike, modality: str = "image"
) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Read a clip-retrieval embedding folder: (float32 [N, D] of `modality` "image"|"text",
    the metadata columns), the parts in part-number order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(folder)
    kind = {"image": CR_IMAGE, "text": CR_TEXT}[modality]
    metas = sorted(
        (root / CR_METADATA).glob(f"{CR_METADATA}_*.parquet"),
        key=lambda p: int(p.stem.rpartition("_")[2]) if p.stem.rpartition("_")[2].isdigit() else -1,
    )
    if not metas:
        raise FileNotFoundError(f"{root / CR_METADATA}: no metadata_*.parquet parts")
    vectors: list[np.ndarray] = []
    columns: dict[str, list[Any]] = {}
    for meta in metas:
        label = meta.stem.rpartition("_")[2]
        emb = root / kind / f"{kind}_{label}.npy"
        if not emb.is_file():
            raise FileNotFoundError(f"{emb}: missing for {meta.name} (no {modality} embeddings?)")
        try:
            x = np.load(emb, allow_pickle=False)
            table = pq.read_table(meta)
        except (ValueError, OSError, pa.ArrowException) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{emb} / {meta}: unreadable part ({e})") from None
        if x.ndim != 2 or len(x) != table.num_rows:
            raise ValueError(f"{emb}: {x.shape} embeddings for {table.num_rows} metadata rows")
        if vectors and x.shape[1] != vectors[0].shape[1]:
            raise ValueError(
                f"{emb}: embedding size {x.shape[1]}, earlier parts {vectors[0].shape[1]}"
            )
        if columns and set(table.column_names) != set(columns):
            raise ValueError(f"{meta}: columns {table.column_names}, earlier parts {list(columns)}")
        vectors.append(x.astype(np.float32))
        for name in table.column_names:
            columns.setdefault(name, []).extend(table.column(name).to_pylist())
    return np.concatenate(vectors), columns


def _encode_arrays(
    model: CLIPPO, images: Sequence[np.ndarray], batch_size: int, device: torch.device, bf16: bool
) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        pixels = images_to_pixels(list(images[i : i + batch_size])).to(device)
        with autocast(device, bf16):
            out.append(model.encode_images(pixels).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.out_dim), np.float32)


def _pairs_of(source: Any, start: int, stop: int) -> Iterator[tuple[int, Any]]:
    """(position, ImageTextPair or SkipSample) for input positions [start, stop) of a source
    (random access, or sharded: units in order, records in order)."""
    from clippo.data.sources import RandomAccessSource, SkipSample

    if isinstance(source, RandomAccessSource):
        for i in range(start, min(stop, len(source))):
            try:
                yield i, source.load(i, 0)
            except SkipSample as e:
                yield i, e
        return
    first = 0
    for unit in range(source.num_units()):
        n = source.unit_length(unit)
        if first + n > start and first < stop:
            records = source.read_unit(unit)
            try:
                for j in range(max(start - first, 0), min(stop - first, len(records))):
                    try:
                        yield first + j, source.decode(records[j], 0)
                    except SkipSample as e:
                        yield first + j, e
            finally:
                getattr(records, "close", lambda: None)()
        first += n
        if first >= stop:
            return


def source_length(source: Any) -> int:
    """Number of input positions of a pair source (random access or sharded)."""
    from clippo.data.sources import RandomAccessSource

    if isinstance(source, RandomAccessSource):
        return len(source)
    return sum(source.unit_length(u) for u in range(source.num_units()))


@dataclass
class ClipRetrievalRun:
    """What `embed_clip_retrieval` did: parts written now / found finished, rows embedded now,
    inputs skipped (id, reason)."""

    parts: int
    written: int = 0
    resumed: int = 0
    rows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, out: str | os.PathLike) -> str:
        """The run's report for stderr: parts written and resumed, rows, skipped inputs."""
        lines = [
            f"{out}: {self.parts} parts ({self.written} written, {self.resumed} already there), "
            f"{self.rows} rows embedded now"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable inputs:")
            lines += [f"  {i}: {reason}" for i, reason in self.skipped[:20]]
        return "\n".join(lines)


@torch.no_grad()
def embed_clip_retrieval(
    model: CLIPPO,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    texts: str | os.PathLike | None = None,
    pairs: Any = None,
    part_size: int = CLIP_RETRIEVAL_PART_SIZE,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    num_workers: int = 4,
    progress: bool = True,
) -> ClipRetrievalRun:
    """Embed a folder of images, a text file (one per line) or a pair source (a
    `clippo.data` image/caption source; both towers' inputs) into clip-retrieval's layout
    under `out`, `part_size` inputs per part. Parts already written are skipped (resume); only
    one part is held in memory."""
    if sum(x is not None for x in (images, texts, pairs)) != 1:
        raise ValueError("give exactly one of images, texts, pairs")
    _check_batch_size(batch_size)
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    device = torch.device(device)
    model = model.to(device).eval()
    common: dict[str, Any] = dict(batch_size=batch_size, device=device, bf16=bf16, progress=False)
    files: list[Path] = []
    lines: list[str] = []
    if images is not None:
        files = list_images(images)
        total = len(files)
    elif texts is not None:
        lines = read_texts(texts)
        total = len(lines)
    else:
        total = source_length(pairs)
    if total == 0:
        raise ValueError(f"{images or texts or pairs}: nothing to embed")
    count = math.ceil(total / part_size)
    run = ClipRetrievalRun(count)
    for part in tqdm(range(count), desc="parts", unit="part", disable=not progress):
        if clip_retrieval_paths(out, part, count)["metadata"].is_file():
            run.resumed += 1
            continue
        lo, hi = part * part_size, min((part + 1) * part_size, total)
        if images is not None:
            rel = [p.relative_to(images).as_posix() for p in files[lo:hi]]
            result = embed_images(
                model,
                files[lo:hi],
                rel,
                num_workers=num_workers,
                **common,
            )
            run.skipped += result.skipped
            write_clip_retrieval_part(
                out,
                part,
                count,
                image=result.vectors,
                image_path=[str(Path(images) / i) for i in result.ids],
            )
            n = len(result.ids)
        elif texts is not None:
            result = embed_texts(model, lines[lo:hi], **common)
            write_clip_retrieval_part(out, part, count, text=result.vectors, caption=lines[lo:hi])
            n = len(lines[lo:hi])
        else:
            good = []
            for pos, item in _pairs_of(pairs, lo, hi):
                if isinstance(item, Exception):
                    run.skipped.append((str(pos), str(item)))
                else:
                    good.append(item)
            captions = [p.text for p in good]
            write_clip_retrieval_part(
                out,
                part,
                count,
                image=_encode_arrays(model, [p.image for p in good], batch_size, device, bf16),
                text=embed_texts(model, captions, **common).vectors,
                image_path=[p.key for p in good],
                caption=captions,
            )
            n = len(good)
        run.written += 1
        run.rows += n
    return run
