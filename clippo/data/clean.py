"""ALIGN's cleaning rules for image/alt-text shards (the library side of `clippo clean`).

ALIGN (Jia et al. 2021, section 3) keeps noisy web alt-text but drops, per pair:
  min_side        images whose shorter side is under 200 px
  aspect_ratio    images whose aspect ratio (long / short side) is over 3
  eval_duplicate  images that are exact or near duplicates of an evaluation set (optional here)
  image_alt_texts images associated with more than 1,000 distinct alt-texts
  alt_text_images alt-texts shared by more than 10 distinct images
  unigrams        alt-texts with fewer than 3 or more than 20 unigrams
  rare_token      alt-texts with a unigram or bigram seen fewer than `min_token_count` times in
                  the whole corpus (ALIGN keeps its 100M most frequent ones; a minimum count is
                  the form that scales to a user's corpus)
plus `unreadable`: records the trainer could not use either (no image, no caption, an image whose
header PIL cannot read). A removed pair is charged to the first rule in this order
(`RULES`), so the removed counts add up to input - kept.

Identity: an image is the blake2b-64 hash of its encoded bytes; an alt-text is its lower-cased,
whitespace-collapsed form. Unigrams are `\\w+` runs of the lower-cased text (Unicode-aware);
bigrams are adjacent unigram pairs. Rare-token counts are occurrences over all readable rows.

The global counts come from two phases, so a job array can run them shard by shard:
  count_shard(shard) -> COUNTS_DIR/<name>.counts.npz   (unique (image, alt-text) hash pairs and
                                                        token-hash counts of one shard)
  merge_counts(COUNTS_DIR) -> merged.npz                (per-image and per-alt-text distinct
                                                        counts, corpus token counts)
  filter_shard(shard, merged, out_dir)                  (the kept records, same format as the
                                                        input, plus a per-shard report)
Counting distinct (image, alt-text) pairs after the merge makes the result independent of how
the corpus is split into shards. Every file is written atomically (temp file, then rename); a
shard whose outputs exist is skipped on a re-run (`clippo render`'s resume rule).

Shards: webdataset `.tar` (every member of a kept key is copied), `.parquet` (every column, row
group by row group; a string image column's relative paths are rewritten like CSV's), `.csv`/
`.tsv` (every field; relative image paths are rewritten relative to the output folder so the
cleaned file still finds its images).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clippo.atomic import atomic_file, atomic_path, write_json_atomic
from clippo.data.image_text import (
    CSVImageText,
    ParquetImageText,
    TarShards,
    caption_text,
    image_value,
    open_parquet,
)
from clippo.data.images import ImageDecodeError, decode_image, list_images
from clippo.data.sources import SkipSample
from clippo.data.streams import split_member
from clippo.errors import DataError

__all__ = [
    "RULES",
    "CleanConfig",
    "CleanReport",
    "Record",
    "read_records",
    "count_shard",
    "merge_counts",
    "filter_shard",
    "clean",
    "phash",
    "EvalSet",
]

RULES = (
    "unreadable",
    "min_side",
    "aspect_ratio",
    "eval_duplicate",
    "image_alt_texts",
    "alt_text_images",
    "unigrams",
    "rare_token",
)
COUNTS_SUFFIX = ".counts.npz"
MERGED_FILE = "merged.npz"
REPORT_SUFFIX = ".report.json"
REPORT_FILE = "clean_report.json"
COUNTS_VERSION = 1
SHARD_SUFFIXES = (".tar", ".parquet", ".csv", ".tsv")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class CleanConfig:
    """The rules' thresholds (ALIGN's values by default) and how records are read.

    `min_token_count` (5; <= 1: off) has no ALIGN value: a unigram or bigram seen fewer than 5
    times in the corpus is mostly a typo, an id or a URL fragment; lower it on small corpora.
    `eval_images`: a folder of evaluation images; pairs whose image has the same bytes or a
    perceptual hash within `near_dup_bits` (of 64) of one of them are dropped (None: off)."""

    min_side: int = 200
    max_aspect_ratio: float = 3.0
    max_alt_texts_per_image: int = 1000
    max_images_per_alt_text: int = 10
    min_unigrams: int = 3
    max_unigrams: int = 20
    min_token_count: int = 5
    eval_images: str | None = None
    near_dup_bits: int = 10
    examples: int = 3
    image_column: str = "image"
    caption_column: str = "caption"

    def __post_init__(self) -> None:
        for name in ("min_side", "max_alt_texts_per_image", "max_images_per_alt_text"):
            if getattr(self, name) < 0:
                raise ValueError(f"CleanConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_aspect_ratio < 1:
            raise ValueError(
                f"CleanConfig.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}"
            )
        if not 0 <= self.min_unigrams <= self.max_unigrams:
            raise ValueError(
                f"CleanConfig: need 0 <= min_unigrams <= max_unigrams, got "
                f"{self.min_unigrams}, {self.max_unigrams}"
            )
        if not 0 <= self.near_dup_bits <= 64:
            raise ValueError(
                f"CleanConfig.near_dup_bits must be in [0, 64], got {self.near_dup_bits}"
            )


# ---- reading records -----------------------------------------------------------------------------


@dataclass
class Record:
    """One input pair. `row`: position in the shard; `image`: encoded bytes (None with `problem`);
    `problem`: why the record is unusable, else None."""

    row: int
    key: str
    image: bytes | None
    caption: str | None
    problem: str | None = None


def _kind(shard: str) -> str:
    suffix = Path(shard).suffix.lower()
    if suffix not in SHARD_SUFFIXES:
        raise ValueError(f"{shard}: unknown shard kind (expected {', '.join(SHARD_SUFFIXES)})")
    return {".tar": "tar", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}[suffix]


def _image_bytes(value: bytes | str, where: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise SkipSample("image_unreadable", f"{where}: {type(e).__name__}: {e}") from None


def _tar_records(shard: str) -> Iterator[Record]:
    source = TarShards(shard, shuffle=False)
    reader = source.read_unit(0)
    try:
        if reader.problems:
            raise DataError(f"{shard}: damaged tar ({reader.problems[0][1]})")
        for i in range(len(reader)):
            key, data, _ = reader[i]
            where = f"{shard}:{key}"
            try:
                raw, caption, _ = source.image_and_caption(data, where)
                yield Record(i, key, raw, caption)
            except SkipSample as e:
                yield Record(i, key, None, None, f"{e.kind}: {e.message}")
    finally:
        reader.close()


def _parquet_records(shard: str, config: CleanConfig) -> Iterator[Record]:
    source = ParquetImageText(
        shard, image_column=config.image_column, text_column=config.caption_column, shuffle=False
    )
    row = 0
    for unit in range(source.num_units()):
        part = source.read_unit(unit)
        for i in range(len(part)):
            image, text, key, root = part[i]
            where = f"{shard}:{key}"
            try:
                caption = caption_text(text, where)
                data = _image_bytes(image_value(image, root, where), where)
                yield Record(row, key, data, caption)
            except SkipSample as e:
                yield Record(row, key, None, None, f"{e.kind}: {e.message}")
            row += 1


def _csv_source(shard: str, config: CleanConfig) -> CSVImageText:
    delimiter = "\t" if shard.lower().endswith(".tsv") else ","
    return CSVImageText(
        shard,
        columns=(config.image_column, config.caption_column),
        delimiter=delimiter,
        shuffle=False,
    )


def _csv_records(shard: str, config: CleanConfig) -> Iterator[Record]:
    source = _csv_source(shard, config)
    for i in range(len(source)):
        line = source.line_number(i)
        try:
            r = source.row(i)
            yield Record(i, str(line), _image_bytes(r.path, f"{r.where} ({r.image})"), r.caption)
        except SkipSample as e:
            yield Record(i, str(line), None, None, f"{e.kind}: {e.message}")


def read_records(shard: str | os.PathLike, config: CleanConfig = CleanConfig()) -> Iterator[Record]:
    """The pairs of one shard in order; unusable ones carry `problem` instead of data."""
    shard = os.fspath(shard)
    if not os.path.isfile(shard):
        raise FileNotFoundError(f"{shard}: no such shard")
    kind = _kind(shard)
    if kind == "tar":
        return _tar_records(shard)
    if kind == "parquet":
        return _parquet_records(shard, config)
    return _csv_records(shard, config)


# ---- hashing and tokens ----------------------------------------------------------------------------


def hash64(data: bytes) -> int:
    """blake2b-64 of `data` as an unsigned int (image identity, alt-text identity, token ids)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def normalize_text(caption: str) -> str:
    """An alt-text's identity: lower-cased, whitespace collapsed."""
    return " ".join(caption.lower().split())


def unigrams(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def tokens(words: Sequence[str]) -> list[str]:
    """Unigrams and bigrams ("a b") of a unigram list, in order."""
    return [*words, *(f"{a} {b}" for a, b in zip(words, words[1:]))]


def _text_hash(caption: str) -> int:
    return hash64(normalize_text(caption).encode("utf-8"))


# ---- perceptual hash -------------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash: grey 32x32 (antialiased), 2-D DCT, the 8x8 lowest frequencies
    compared with their median. Re-encoding and resizing move few bits; unrelated images ~32."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits, bitorder="little").view("<u8")[0])


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    """Bit distances between uint64 hashes `a` [N] and one hash `b`."""
    x = np.ascontiguousarray(np.asarray(a, np.uint64) ^ np.uint64(b))
    # np.bitwise_count needs numpy 2; the floor here is 1.24
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1, dtype=np.int64)


@dataclass
class EvalSet:
    """Content hashes and perceptual hashes of an evaluation image folder."""

    sha: set[int]
    phashes: np.ndarray  # uint64 [M]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> EvalSet:
        sha, hashes = set(), []
        for path in list_images(folder):
            raw = path.read_bytes()
            try:
                hashes.append(phash(decode_image(raw)))
            except ImageDecodeError as e:
                raise DataError(f"{path}: evaluation image cannot be decoded ({e})") from None
            sha.add(hash64(raw))
        if not hashes:
            raise DataError(f"{folder}: no evaluation images found")
        return cls(sha, np.asarray(hashes, np.uint64))

    def matches(self, raw: bytes, image: Image.Image, max_bits: int) -> str | None:
        """Why the image duplicates the set (exact or near), or None."""
        if hash64(raw) in self.sha:
            return "exact duplicate of an evaluation image"
        dist = int(hamming(self.phashes, phash(image)).min())
        if dist <= max_bits:
            return f"near duplicate of an evaluation image ({dist} of 64 bits differ)"
        return None


# ---- phase 1: count ------------------------------------------------------------------------------


def shard_name(shard: str | os.PathLike) -> str:
    """A file-name-safe id for a shard, unique per absolute path (two folders may both hold
    shard-000.tar): "<file name>-<8 hex digits of the path's hash>"."""
    path = os.path.abspath(os.fspath(shard))
    return f"{os.path.basename(path)}-{hash64(path.encode()) & 0xFFFFFFFF:08x}"


def counts_path(counts_dir: str | os.PathLike, shard: str | os.PathLike) -> Path:
    return Path(counts_dir) / f"{shard_name(shard)}{COUNTS_SUFFIX}"


def count_shard(
    shard: str | os.PathLike, counts_dir: str | os.PathLike, config: CleanConfig = CleanConfig()
) -> tuple[Path, bool]:
    """Phase 1 over one shard: COUNTS_DIR/<name>.counts.npz with `pairs` uint64 [P, 2] (unique
    (image hash, alt-text hash)), `token_hash` uint64 [T] and `token_count` int64 [T].
    Returns (path, whether it was computed now: False when a finished file was there)."""
    out = counts_path(counts_dir, shard)
    if out.is_file():
        return out, False
    pairs: set[tuple[int, int]] = set()
    token_counts: Counter[int] = Counter()
    rows = 0
    for rec in read_records(shard, config):
        rows += 1
        if rec.problem is not None or rec.image is None or rec.caption is None:
            continue
        pairs.add((hash64(rec.image), _text_hash(rec.caption)))
        token_counts.update(hash64(t.encode("utf-8")) for t in tokens(unigrams(rec.caption)))
    pair_array = np.asarray(sorted(pairs), np.uint64).reshape(-1, 2)
    token_hash = np.asarray(list(token_counts), np.uint64)
    token_count = np.asarray([token_counts[t] for t in token_counts], np.int64)
    meta = json.dumps({"version": COUNTS_VERSION, "shard": os.path.abspath(shard), "rows": rows})
    Path(counts_dir).mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f:
        np.savez(
            f,
            pairs=pair_array,
            token_hash=token_hash,
            token_count=token_count,
            meta=np.asarray(meta),
        )
    return out, True


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"{path}: not a clean counts file (missing {missing})")
            out = {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: unreadable counts file ({e})") from None
    meta = json.loads(str(out["meta"])) if "meta" in out else {}
    if meta.get("version") != COUNTS_VERSION:
        raise DataError(
            f"{path}: counts version {meta.get('version')!r}, expected {COUNTS_VERSION}"
        )
    return out


# ---- phase 2: merge ------------------------------------------------------------------------------


@dataclass
class MergedCounts:
    """Sorted hash keys with their counts: distinct alt-texts per image, distinct images per
    alt-text, corpus occurrences per unigram/bigram."""

    image_hash: np.ndarray
    image_alt_texts: np.ndarray
    text_hash: np.ndarray
    text_images: np.ndarray
    token_hash: np.ndarray
    token_count: np.ndarray
    shards: list[str] = field(default_factory=list)

    @staticmethod
    def _lookup(keys: np.ndarray, values: np.ndarray, query: int) -> int:
        i = int(np.searchsorted(keys, np.uint64(query)))
        return int(values[i]) if i < len(keys) and int(keys[i]) == query else 0

    def alt_texts_of(self, image: int) -> int:
        return self._lookup(self.image_hash, self.image_alt_texts, image)

    def images_of(self, text: int) -> int:
        return self._lookup(self.text_hash, self.text_images, text)

    def token_counts(self, hashes: Sequence[int]) -> np.ndarray:
        q = np.asarray(hashes, np.uint64)
        i = np.minimum(np.searchsorted(self.token_hash, q), max(len(self.token_hash) - 1, 0))
        if len(self.token_hash) == 0:
            return np.zeros(len(q), np.int64)
        return np.where(self.token_hash[i] == q, self.token_count[i], 0)

    def save(self, path: str | os.PathLike) -> Path:
        meta = json.dumps({"version": COUNTS_VERSION, "shards": self.shards})
        with atomic_file(path) as f:
            np.savez(
                f,
                meta=np.asarray(meta),
                image_hash=self.image_hash,
                image_alt_texts=self.image_alt_texts,
                text_hash=self.text_hash,
                text_images=self.text_images,
                token_hash=self.token_hash,
                token_count=self.token_count,
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MergedCounts:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no merged counts (run `clippo clean merge` first)")
        keys = [
            "image_hash",
            "image_alt_texts",
            "text_hash",
            "text_images",
            "token_hash",
            "token_count",
            "meta",
        ]
        z = _load_npz(path, keys)
        shards = json.loads(str(z.pop("meta"))).get("shards", [])
        return cls(**z, shards=shards)


def merge_counts(
    counts_dir: str | os.PathLike, out: str | os.PathLike | None = None
) -> MergedCounts:
    """Phase 2: merge every COUNTS_DIR/*.counts.npz into `out` (default COUNTS_DIR/merged.npz)."""
    folder = Path(counts_dir)
    files = sorted(folder.glob(f"*{COUNTS_SUFFIX}"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *{COUNTS_SUFFIX} files to merge")
    pairs, thash, tcount, shards = [], [], [], []
    for path in files:
        z = _load_npz(path, ["pairs", "token_hash", "token_count", "meta"])
        pairs.append(z["pairs"].reshape(-1, 2))
        thash.append(z["token_hash"])
        tcount.append(z["token_count"])
        shards.append(json.loads(str(z["meta"]))["shard"])
    unique_pairs = np.unique(np.concatenate(pairs), axis=0)
    image_hash, image_alt_texts = np.unique(unique_pairs[:, 0], return_counts=True)
    text_hash, text_images = np.unique(unique_pairs[:, 1], return_counts=True)
    token_hash, inverse = np.unique(np.concatenate(thash), return_inverse=True)
    token_count = np.bincount(inverse, weights=np.concatenate(tcount), minlength=len(token_hash))
    merged = MergedCounts(
        image_hash.astype(np.uint64),
        image_alt_texts.astype(np.int64),
        text_hash.astype(np.uint64),
        text_images.astype(np.int64),
        token_hash.astype(np.uint64),
        token_count.astype(np.int64),
        shards,
    )
    merged.save(out if out is not None else folder / MERGED_FILE)
    return merged


# ---- phase 3: filter -----------------------------------------------------------------------------


@dataclass
class CleanReport:
    """Per rule: pairs removed and the first few examples {shard, key, caption, why}."""

    input: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    examples: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {r: [] for r in RULES}
    )

    def add(self, other: CleanReport, max_examples: int) -> None:
        self.input += other.input
        self.kept += other.kept
        for rule in RULES:
            self.removed[rule] += other.removed.get(rule, 0)
            room = max_examples - len(self.examples[rule])
            self.examples[rule] += other.examples.get(rule, [])[: max(room, 0)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "kept": self.kept,
            "removed": self.removed,
            "examples": self.examples,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CleanReport:
        return cls(
            d["input"],
            d["kept"],
            {**dict.fromkeys(RULES, 0), **d["removed"]},
            {**{r: [] for r in RULES}, **d["examples"]},
        )

    def table(self) -> str:
        lines = [f"{'rule':<16} {'removed':>10} {'share':>7}"]
        for rule in RULES:
            n = self.removed[rule]
            share = n / self.input if self.input else 0.0
            lines.append(f"{rule:<16} {n:>10} {share:>7.1%}")
        lines.append(
            f"{'kept':<16} {self.kept:>10} "
            f"{(self.kept / self.input if self.input else 0.0):>7.1%} of {self.input}"
        )
        return "\n".join(lines)


def _image_size(raw: bytes) -> tuple[int, int] | str:
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.size
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for a bad header
        return f"image header unreadable: {type(e).__name__}: {e}"


def judge(
    rec: Record, counts: MergedCounts, config: CleanConfig, eval_set: EvalSet | None = None
) -> tuple[str, str] | None:
    """(rule, why) for the first rule that drops `rec`, or None if it is kept."""
    if rec.problem is not None or rec.image is None or rec.caption is None:
        return "unreadable", rec.problem or "no data"
    size = _image_size(rec.image)
    if isinstance(size, str):
        return "unreadable", size
    w, h = size
    if min(w, h) < config.min_side:
        return "min_side", f"{w}x{h}: shorter side < {config.min_side}"
    ratio = max(w, h) / max(min(w, h), 1)
    if ratio > config.max_aspect_ratio:
        return "aspect_ratio", f"{w}x{h}: aspect ratio {ratio:.2f} > {config.max_aspect_ratio}"
    if eval_set is not None:
        try:
            why = eval_set.matches(rec.image, decode_image(rec.image), config.near_dup_bits)
        except ImageDecodeError as e:
            return "unreadable", f"image undecodable: {e}"
        if why is not None:
            return "eval_duplicate", why
    n = counts.alt_texts_of(hash64(rec.image))
    if n > config.max_alt_texts_per_image:
        return "image_alt_texts", f"image has {n} alt-texts > {config.max_alt_texts_per_image}"
    n = counts.images_of(_text_hash(rec.caption))
    if n > config.max_images_per_alt_text:
        return (
            "alt_text_images",
            f"alt-text shared by {n} images > {config.max_images_per_alt_text}",
        )
    words = unigrams(rec.caption)
    if not config.min_unigrams <= len(words) <= config.max_unigrams:
        return "unigrams", (
            f"{len(words)} unigrams, outside [{config.min_unigrams}, {config.max_unigrams}]"
        )
    toks = tokens(words)
    if toks and config.min_token_count > 1:
        found = counts.token_counts([hash64(t.encode("utf-8")) for t in toks])
        rare = [t for t, c in zip(toks, found) if c < config.min_token_count]
        if rare:
            return "rare_token", f"rare token(s) {rare[:3]} (< {config.min_token_count} in corpus)"
    return None


def output_path(out_dir: str | os.PathLike, shard: str | os.PathLike) -> Path:
    return Path(out_dir) / Path(shard).name


def _report_path(out_dir: str | os.PathLike, shard: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{Path(shard).name}{REPORT_SUFFIX}"


def _options(config: CleanConfig) -> dict[str, Any]:
    opts = asdict(config)
    opts.pop("examples")
    return opts


def _write_tar(shard: str, keep: set[str], dst: Any) -> None:
    """Copy every member of the kept keys (webdataset: consecutive members share a key)."""
    try:
        with tarfile.open(shard, "r:*") as src, tarfile.open(fileobj=dst, mode="w") as out:
            for member in src:
                if member.isfile() and split_member(member.name)[0] in keep:
                    out.addfile(member, src.extractfile(member))
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"{shard}: damaged tar ({e})") from None


def _relocate(path: str, src_root: str, out_dir: Path) -> str:
    """A relative image path of the input, made relative to the output folder."""
    if not path or os.path.isabs(path):
        return path
    return os.path.relpath(os.path.join(src_root, path), out_dir.resolve())


def _write_csv(shard: str, config: CleanConfig, keep_rows: set[int], dst: Path) -> None:
    source = _csv_source(shard, config)
    delimiter = "\t" if shard.lower().endswith(".tsv") else ","
    with open(shard, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f, delimiter=delimiter), [])
    image_col = header.index(config.image_column) if config.image_column in header else None
    root = os.path.dirname(os.path.abspath(shard))
    with atomic_path(dst) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        for i in range(len(source)):
            if i in keep_rows:
                fields = list(source.fields(i))
                if image_col is not None:
                    fields[image_col] = _relocate(fields[image_col].strip(), root, dst.parent)
                writer.writerow(fields)


def _write_parquet(shard: str, config: CleanConfig, keep_rows: set[int], dst: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = open_parquet(shard)
    root = os.path.dirname(os.path.abspath(shard))
    first = 0
    with atomic_path(dst) as tmp:
        writer = pq.ParquetWriter(tmp, src.schema_arrow)
        try:
            for g in range(src.metadata.num_row_groups):
                table = src.read_row_group(g)
                mask = [first + i in keep_rows for i in range(table.num_rows)]
                first += table.num_rows
                table = table.filter(pa.array(mask, pa.bool_()))
                col = table.column(config.image_column)
                if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                    moved = [_relocate(p, root, dst.parent) if p else p for p in col.to_pylist()]
                    index = table.schema.get_field_index(config.image_column)
                    table = table.set_column(index, config.image_column, pa.array(moved, col.type))
                writer.write_table(table)
        finally:
            writer.close()


def filter_shard(
    shard: str | os.PathLike,
    counts: MergedCounts,
    out_dir: str | os.PathLike,
    config: CleanConfig = CleanConfig(),
    eval_set: EvalSet | None = None,
) -> tuple[CleanReport, bool]:
    """Phase 3 over one shard: OUT_DIR/<shard file name> with the kept records and
    OUT_DIR/<name>.report.json. Returns (report, whether it ran now: False when both outputs
    were there, written with the same options)."""
    shard = os.fspath(shard)
    out_dir = Path(out_dir)
    dst, report_file = output_path(out_dir, shard), _report_path(out_dir, shard)
    if dst.is_file() and report_file.is_file():
        try:
            done = json.loads(report_file.read_text(encoding="utf-8"))
            report = CleanReport.from_dict(done["report"])
            options = done["options"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{report_file}: unreadable shard report ({e}); delete it") from None
        if options != _options(config):
            raise ValueError(
                f"{report_file}: this shard was cleaned with other options {options}; "
                "use a new output folder"
            )
        return report, False
    if eval_set is None and config.eval_images is not None:
        eval_set = EvalSet.from_folder(config.eval_images)
    report = CleanReport()
    keep_keys: set[str] = set()
    keep_rows: set[int] = set()
    for rec in read_records(shard, config):
        report.input += 1
        verdict = judge(rec, counts, config, eval_set)
        if verdict is None:
            report.kept += 1
            keep_keys.add(rec.key)
            keep_rows.add(rec.row)
            continue
        rule, why = verdict
        report.removed[rule] += 1
        if len(report.examples[rule]) < config.examples:
            report.examples[rule].append(
                {"shard": shard, "key": rec.key, "caption": rec.caption, "why": why}
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = _kind(shard)
    if kind == "tar":
        with atomic_file(dst) as f:
            _write_tar(shard, keep_keys, f)
    elif kind == "parquet":
        _write_parquet(shard, config, keep_rows, dst)
    else:
        _write_csv(shard, config, keep_rows, dst)
    # written last: a shard with its report is finished
    write_json_atomic({"options": _options(config), "report": report.to_dict()}, report_file)
    return report, True


def check_shards(shards: Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths, checked: known kinds, no two with the same file name (outputs would clash)."""
    paths = [os.fspath(s) for s in shards]
    if not paths:
        raise ValueError("no shards given")
    seen: dict[str, str] = {}
    for p in paths:
        _kind(p)
        name = Path(p).name
        if name in seen and os.path.abspath(seen[name]) != os.path.abspath(p):
            raise ValueError(f"{p} and {seen[name]}: two shards with one file name")
        seen[name] = p
    return paths


def filter_shards(
    shards: Sequence[str | os.PathLike],
    counts: MergedCounts,
    out_dir: str | os.PathLike,
    config: CleanConfig = CleanConfig(),
) -> tuple[CleanReport, int]:
    """`filter_shard` over each shard; writes OUT_DIR/clean_report.json (the total).
    Returns (total report, shards skipped as already finished)."""
    paths = check_shards(shards)
    eval_set = EvalSet.from_folder(config.eval_images) if config.eval_images else None
    total, skipped = CleanReport(), 0
    for shard in paths:
        report, ran = filter_shard(shard, counts, out_dir, config, eval_set)
        skipped += not ran
        total.add(report, config.examples)
    out = Path(out_dir)
    write_json_atomic(
        {"options": _options(config), "shards": paths, **total.to_dict()}, out / REPORT_FILE
    )
    return total, skipped


def clean(
    shards: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: CleanConfig = CleanConfig(),
    counts_dir: str | os.PathLike | None = None,
) -> tuple[CleanReport, int]:
    """All three phases (count, merge, filter); counts go to `counts_dir` (default
    OUT_DIR/counts). Each phase resumes. Returns what `filter_shards` returns."""
    paths = check_shards(shards)
    folder = Path(counts_dir) if counts_dir is not None else Path(out_dir) / "counts"
    for shard in paths:
        count_shard(shard, folder, config)
    stale = {str(p) for p in folder.glob(f"*{COUNTS_SUFFIX}")} - {
        str(counts_path(folder, s)) for s in paths
    }
    if stale:
        raise ValueError(
            f"{folder}: holds counts of shards not given ({sorted(stale)[:2]}...); "
            "use a fresh counts folder"
        )
    merged = merge_counts(folder)
    return filter_shards(paths, merged, out_dir, config)
