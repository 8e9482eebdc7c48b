"""Image/alt-text pair sources: webdataset tar shards, parquet, `datasets` dirs and CSV files.

Each yields `ImageTextPair(image np.uint8 [S, S, 3], caption str, key str)` to the mixer, the
image decoded with `decode_image` and resized to S = `image_size` with the reference
preprocessing (`clippo.preprocess.resize_uint8`: bilinear, no antialias, squash, truncate;
pass `resize=` to use another `(PIL image, size) -> np.uint8 [S, S, 3]` callable).

A bad sample (missing/corrupt/truncated/zero-byte/bomb image, an unconvertible mode, a missing
or empty caption, a malformed row) raises `SkipSample`; the mixer counts it by kind and carries
on. Odd modes (CMYK, palette, alpha, 16-bit) are converted (see `clippo.data.images`).

    TarShards("data/shard-{000000..000099}.tar")        # sharded: one tar at a time per worker
    TarShards("pipe:aws s3 cp s3://b/shard-{0000..4095}.tar -")   # streamed (clippo.data.streams)
    TarShards("https://host/shard-{0000..0099}.tar")    # streamed through fsspec
    ParquetImageText("data/*.parquet")                   # sharded by row group
    HFImageText("data/coco_train", split="train")        # random access (datasets.load_from_disk)
    CSVImageText("data/pairs.csv")                        # random access; paths relative to the CSV
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from clippo.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from clippo.data.sources import (
    ImageTextPair,
    RandomAccessSource,
    ShardedSource,
    SkipSample,
    text_or_skip,
)
from clippo.data.streams import StreamedTar, check_stream_spec, is_stream_spec, split_member
from clippo.errors import DataError

__all__ = [
    "ImagePrep",
    "expand_paths",
    "TarShards",
    "ParquetImageText",
    "HFImageText",
    "CSVImageText",
    "CSVRow",
    "caption_text",
    "image_value",
    "open_parquet",
]

Resize = Callable[[Any, int], np.ndarray]


@dataclass(frozen=True)
class ImagePrep:
    """How encoded images become model input: decode (see `decode_image`), then resize."""

    image_size: int = 224
    resize: Resize | None = None  # None: clippo.preprocess.resize_uint8 (the reference)
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha_background: tuple[int, int, int] | None = None
    exif_transpose: bool = False

    def __call__(self, data: bytes | str | os.PathLike, where: str) -> np.ndarray:
        """Encoded image -> np.uint8 [S, S, 3]; raises SkipSample naming `where`."""
        try:
            img = decode_image(
                data,
                max_pixels=self.max_pixels,
                alpha_background=self.alpha_background,
                exif_transpose=self.exif_transpose,
            )
        except ImageDecodeError as e:
            raise SkipSample(f"image_{e.kind}", f"{where}: {e}") from None
        resize = self.resize
        if resize is None:
            from clippo.preprocess import resize_uint8

            resize = resize_uint8
        out = np.asarray(resize(img, self.image_size))
        if out.dtype != np.uint8 or out.shape != (self.image_size, self.image_size, 3):
            raise TypeError(
                f"resize returned {out.dtype} {out.shape}; expected uint8 "
                f"({self.image_size}, {self.image_size}, 3)"
            )
        return out


def caption_text(text: Any, where: str) -> str:
    """A caption cell or member -> its text; SkipSample naming `where` for a missing (None),
    undecodable or empty caption."""
    if text is None:
        raise SkipSample("missing_caption", f"{where}: no caption")
    return text_or_skip(text, where, what="caption", bad="bad_caption", empty="empty_caption")


def _require_columns(where: str, columns: Sequence[str], *wanted: str) -> None:
    for col in wanted:
        if col not in columns:
            raise ValueError(f"{where}: no column {col!r}; columns are {list(columns)}")


_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_BRACE_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def _expand_braces(spec: str) -> list[str]:
    m = _BRACE_RANGE.search(spec)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo) if lo.startswith("0") else 0
        return [
            out
            for i in range(int(lo), int(hi) + 1)
            for out in _expand_braces(spec[: m.start()] + str(i).zfill(width) + spec[m.end() :])
        ]
    m = _BRACE_LIST.search(spec)
    if m:
        return [
            out
            for alt in m.group(1).split(",")
            for out in _expand_braces(spec[: m.start()] + alt + spec[m.end() :])
        ]
    return [spec]


def expand_paths(
    spec: str | os.PathLike | Sequence[str | os.PathLike], *, streams: bool = False
) -> list[str]:
    """Paths from a list, a glob ("*.tar") or braces ("shard-{0000..0099}.tar", "{a,b}.tar").

    Globs are sorted; a path that does not exist (or a glob matching nothing) is an error.
    streams=True also accepts `pipe:` commands and URLs (braces expanded, never globbed; see
    `clippo.data.streams`); otherwise they are an error that says which sources read them.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for one in specs:
        for path in _expand_braces(os.fspath(one)):
            if is_stream_spec(path):
                if not streams:
                    raise ValueError(
                        f"{path!r}: pipe: commands and URLs are read by webdataset (tar) "
                        "sources only; this source needs local files"
                    )
                check_stream_spec(path)
                out.append(path)
            elif glob.has_magic(path):
                matches = sorted(glob.glob(path))
                if not matches:
                    raise FileNotFoundError(f"no files match {path!r}")
                out.extend(matches)
            elif os.path.exists(path):
                out.append(path)
            else:
                raise FileNotFoundError(f"no such file: {path!r}")
    if not out:
        raise ValueError(f"no paths given in {spec!r}")
    return out


# ---- webdataset tar shards ---------------------------------------------------------------------


class _TarReader:
    """Records of one shard: (key, {ext: TarInfo}) grouped by consecutive key; data read lazily."""

    def __init__(self, path: str, keep: frozenset[str]) -> None:
        self.path = path
        self.problems: list[tuple[str, str]] = []
        self.records: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
        self._tar: tarfile.TarFile | None = None
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 -- open while the unit is read
            for member in self._tar:
                if not member.isfile():
                    continue
                key, ext = split_member(member.name)
                if ext not in keep:
                    continue
                if not self.records or self.records[-1][0] != key:
                    self.records.append((key, {}))
                self.records[-1][1][ext] = member
        except (tarfile.TarError, OSError, EOFError) as e:
            # keep what was indexed before the damage; the rest of the shard is lost
            # tarfile's "could not be opened" lists every method tried, one per line
            why = " ".join(str(e).split())
            self.problems.append(("bad_shard", f"{path}: {type(e).__name__}: {why}"))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[str, dict[str, bytes | Exception], str]:
        key, members = self.records[i]
        if self._tar is None:
            raise ValueError(f"{self.path}: read from a closed shard")
        data: dict[str, bytes | Exception] = {}
        for ext, member in members.items():
            try:
                f = self._tar.extractfile(member)
                data[ext] = f.read() if f is not None else b""
            except (tarfile.TarError, OSError, EOFError) as e:
                data[ext] = e  # decode() reports it as a skip
        return key, data, self.path

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


class _ListUnit:
    """A streamed shard's records held in memory (for `read_unit` on a stream)."""

    def __init__(self, records: list[Any], problems: list[tuple[str, str]]) -> None:
        self.records, self.problems = records, problems

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Any:
        return self.records[i]

    def close(self) -> None:
        pass


class TarShards(ShardedSource):
    """webdataset tar shards: members KEY.jpg|jpeg|png|webp + KEY.txt or KEY.json (caption field).

    Members of one sample must be consecutive (webdataset's convention). Shards are read one at a
    time (tarfile, seekable; uncompressed .tar reads fastest); each worker/rank reads its own
    shards (see `clippo.data.mixer`). Kinds of skip: no_image, missing_caption, empty_caption,
    bad_caption, image_* (decode errors), bad_shard (a damaged tar: records before it are kept).

    Specs may be `pipe:CMD` commands or URLs (`clippo.data.streams`); a source with any of them
    is `streamed`: its shards are read front to back in stream mode (see `clippo.data.sources`).
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        image_size: int = 224,
        resize: Resize | None = None,
        image_exts: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
        caption_exts: Sequence[str] = ("txt", "json"),
        caption_fields: Sequence[str] = ("caption", "text"),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha_background: tuple[int, int, int] | None = None,
        exif_transpose: bool = False,
        shuffle: bool = True,
        name: str = "webdataset",
    ) -> None:
        self.paths = expand_paths(paths, streams=True)
        self.streamed = any(is_stream_spec(p) for p in self.paths)
        self.prep = ImagePrep(image_size, resize, max_pixels, alpha_background, exif_transpose)
        self.image_exts = tuple(e.lower() for e in image_exts)
        self.caption_exts = tuple(e.lower() for e in caption_exts)
        self.caption_fields = tuple(caption_fields)
        self.shuffle = shuffle
        self.name = name
        self._keep = frozenset(self.image_exts + self.caption_exts)
        self._lengths: dict[int, int] = {}

    def num_units(self) -> int:
        return len(self.paths)

    def unit_length(self, unit: int) -> int:
        if unit not in self._lengths:
            reader = self.read_unit(unit)
            reader.close()
        return self._lengths[unit]

    def read_unit(self, unit: int) -> _TarReader | _ListUnit:
        """A seekable shard indexed in place; a streamed one read whole into memory."""
        path = self.paths[unit]
        reader: _TarReader | _ListUnit
        if is_stream_spec(path):
            stream = self.iter_unit(unit)
            reader = _ListUnit(list(stream), stream.problems)
        else:
            reader = _TarReader(path, self._keep)
        self._lengths[unit] = len(reader)
        return reader

    def iter_unit(self, unit: int) -> StreamedTar:
        return StreamedTar(self.paths[unit], self._keep)

    def caption_of(self, data: dict[str, Any], where: str) -> str:
        """The caption of one record's members (`data`: extension -> bytes, or the Exception
        that reading it raised): the first of `caption_exts` present, a .json member read
        through `caption_fields`. SkipSample (naming `where`) when there is none usable."""
        for ext in self.caption_exts:
            if ext not in data:
                continue
            raw = data[ext]
            if isinstance(raw, Exception):
                raise SkipSample("bad_caption", f"{where}.{ext}: {raw}")
            if ext == "json":
                try:
                    obj = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    raise SkipSample("bad_caption", f"{where}.json: invalid JSON: {e}") from None
                if not isinstance(obj, dict):
                    raise SkipSample("bad_caption", f"{where}.json: not a JSON object")
                for field in self.caption_fields:
                    if obj.get(field) is not None:
                        return caption_text(obj[field], f"{where}.json")
                continue
            return caption_text(raw, f"{where}.{ext}")
        raise SkipSample("missing_caption", f"{where}: no caption ({'/'.join(self.caption_exts)})")

    def image_and_caption(self, data: dict[str, Any], where: str) -> tuple[bytes, str, str]:
        """(encoded image bytes, caption, image extension) of one record's members, not decoded:
        the first of `image_exts` present. SkipSample (naming `where`) for a record without an
        image member, with an unreadable one, or without a usable caption."""
        ext = next((e for e in self.image_exts if e in data), None)
        if ext is None:
            raise SkipSample("no_image", f"{where}: no image member ({'/'.join(self.image_exts)})")
        caption = self.caption_of(data, where)
        raw = data[ext]
        if isinstance(raw, Exception):
            raise SkipSample("image_unreadable", f"{where}.{ext}: {raw}")
        return raw, caption, ext

    def decode(self, record: tuple[str, dict[str, Any], str], item_seed: int) -> ImageTextPair:
        key, data, path = record
        where = f"{path}:{key}"
        raw, caption, ext = self.image_and_caption(data, where)
        return ImageTextPair(self.prep(raw, f"{where}.{ext}"), caption, key)


# ---- parquet -----------------------------------------------------------------------------------


def image_value(value: Any, root: str, where: str) -> bytes | str:
    """An image cell -> encoded bytes or a file path: bytes, {"bytes": ..., "path": ...}
    (datasets' Image) or a path (relative ones joined to `root`). SkipSample naming `where` for
    a cell with no image."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value:
        return value if os.path.isabs(value) else os.path.join(root, value)
    raise SkipSample("no_image", f"{where}: no image in cell ({type(value).__name__})")


def open_parquet(path: str) -> Any:
    """pyarrow's ParquetFile; an empty or damaged file is a DataError naming it (pyarrow's own
    "Parquet file size is 0 bytes" names no file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


class _ParquetUnit:
    def __init__(self, images: list[Any], texts: list[Any], first_row: int, path: str, root: str):
        self.images, self.texts, self.first_row = images, texts, first_row
        self.path, self.root = path, root

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, Any, str, str]:
        key = f"{os.path.basename(self.path)}:{self.first_row + i}"
        return self.images[i], self.texts[i], key, self.root


class ParquetImageText(ShardedSource):
    """Parquet files with an image column (bytes, {"bytes", "path"} struct, or a path relative to
    `image_root`, default the file's folder) and a caption column. One unit = one row group."""

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        image_column: str = "image",
        text_column: str = "caption",
        image_root: str | None = None,
        image_size: int = 224,
        resize: Resize | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha_background: tuple[int, int, int] | None = None,
        exif_transpose: bool = False,
        shuffle: bool = True,
        name: str = "parquet",
    ) -> None:
        self.paths = expand_paths(paths)
        self.image_column, self.text_column = image_column, text_column
        self.image_root = image_root
        self.prep = ImagePrep(image_size, resize, max_pixels, alpha_background, exif_transpose)
        self.shuffle = shuffle
        self.name = name
        self._units: list[tuple[int, int, int, int]] = []  # (file, row group, rows, first row)
        for f, path in enumerate(self.paths):
            meta = open_parquet(path).metadata
            names = meta.schema.to_arrow_schema().names
            _require_columns(path, names, image_column, text_column)
            first = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                self._units.append((f, g, rows, first))
                first += rows

    def num_units(self) -> int:
        return len(self._units)

    def unit_length(self, unit: int) -> int:
        return self._units[unit][2]

    def read_unit(self, unit: int) -> _ParquetUnit:
        import pyarrow as pa

        f, g, _, first = self._units[unit]
        path = self.paths[f]
        try:
            table = open_parquet(path).read_row_group(
                g, columns=[self.image_column, self.text_column]
            )
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: row group {g} is corrupt ({e})") from None
        return _ParquetUnit(
            table.column(self.image_column).to_pylist(),
            table.column(self.text_column).to_pylist(),
            first,
            path,
            self.image_root or os.path.dirname(os.path.abspath(path)),
        )

    def decode(self, record: tuple[Any, Any, str, str], item_seed: int) -> ImageTextPair:
        image, text, key, root = record
        where = f"{self.name}:{key}"
        caption = caption_text(text, where)
        return ImageTextPair(self.prep(image_value(image, root, where), where), caption, key)


# ---- datasets.load_from_disk -------------------------------------------------------------------


class HFImageText(RandomAccessSource):
    """A `datasets.load_from_disk` folder (a Dataset, or a DatasetDict with `split`) with image and
    caption columns. An `Image()` column is read undecoded and decoded here (robustly)."""

    def __init__(
        self,
        path: str,
        *,
        split: str | None = None,
        image_column: str = "image",
        text_column: str = "caption",
        image_root: str | None = None,
        image_size: int = 224,
        resize: Resize | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha_background: tuple[int, int, int] | None = None,
        exif_transpose: bool = False,
        shuffle: bool = True,
        name: str = "hf_dataset",
    ) -> None:
        import datasets

        ds = datasets.load_from_disk(os.fspath(path))
        if isinstance(ds, datasets.DatasetDict):
            if split is None or split not in ds:
                raise ValueError(f"{path} holds splits {list(ds)}; pass split= one of them")
            ds = ds[split]
        elif split is not None:
            raise ValueError(f"{path} holds a single Dataset; split={split!r} does not apply")
        _require_columns(os.fspath(path), ds.column_names, image_column, text_column)
        ds = ds.select_columns([image_column, text_column])
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = ds
        self.path = os.fspath(path)
        self.image_column, self.text_column = image_column, text_column
        self.image_root = image_root or self.path
        self.prep = ImagePrep(image_size, resize, max_pixels, alpha_background, exif_transpose)
        self.shuffle = shuffle
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int, item_seed: int) -> ImageTextPair:
        row = self.dataset[index]
        where = f"{self.path}[{index}]"
        caption = caption_text(row[self.text_column], where)
        image = image_value(row[self.image_column], self.image_root, where)
        return ImageTextPair(self.prep(image, where), caption, str(index))


# ---- CSV -----------------------------------------------------------------------------------------


class CSVRow(NamedTuple):
    """One checked CSV data row: its file line, "file:line" for messages, the image path as
    written, the path to open (relative ones joined to the image root), and the caption."""

    line: int
    where: str
    image: str
    path: str
    caption: str


class CSVImageText(RandomAccessSource):
    """A CSV of (image path, caption). `columns` are header names, or ints for a file without a
    header. Relative image paths are relative to the CSV file's folder (or `image_root`)."""

    def __init__(
        self,
        path: str,
        *,
        columns: tuple[str, str] | tuple[int, int] = ("image", "caption"),
        delimiter: str = ",",
        image_root: str | None = None,
        image_size: int = 224,
        resize: Resize | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha_background: tuple[int, int, int] | None = None,
        exif_transpose: bool = False,
        shuffle: bool = True,
        name: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.image_root = image_root or os.path.dirname(os.path.abspath(self.path))
        self.prep = ImagePrep(image_size, resize, max_pixels, alpha_background, exif_transpose)
        self.shuffle = shuffle
        self.name = name or f"csv:{os.path.basename(self.path)}"
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
        first_line = 1
        a, b = columns if len(columns) == 2 else (None, None)
        if isinstance(a, str) and isinstance(b, str):
            if not rows:
                raise ValueError(f"{self.path}: empty CSV (expected a header with {[a, b]})")
            header = rows[0]
            missing = [c for c in (a, b) if c not in header]
            if missing:
                raise ValueError(f"{self.path}: header {header} lacks column(s) {missing}")
            self._cols = (header.index(a), header.index(b))
            rows, first_line = rows[1:], 2
        elif isinstance(a, int) and isinstance(b, int):
            self._cols = (a, b)
        else:
            raise TypeError(f"columns must be two header names or two ints, got {columns!r}")
        self._rows = rows
        self._first_line = first_line
        if not rows:
            raise ValueError(f"{self.path}: no data rows")

    def __len__(self) -> int:
        return len(self._rows)

    def fields(self, index: int) -> list[str]:
        """Data row `index` as read: every field, unchanged (the header is not a data row)."""
        return self._rows[index]

    def line_number(self, index: int) -> int:
        """The file line (1-based) of data row `index`."""
        return index + self._first_line

    def row(self, index: int) -> CSVRow:
        """Data row `index` checked, its image not read: SkipSample naming the file and line for
        a row with too few fields, an empty image path or an unusable caption."""
        fields = self._rows[index]
        line = self.line_number(index)
        where = f"{self.path}:{line}"
        need = max(self._cols) + 1
        if len(fields) < need:
            raise SkipSample("bad_row", f"{where}: {len(fields)} fields, need {need}")
        image, text = fields[self._cols[0]].strip(), fields[self._cols[1]]
        if not image:
            raise SkipSample("no_image", f"{where}: empty image path")
        caption = caption_text(text, where)
        full = image if os.path.isabs(image) else os.path.join(self.image_root, image)
        return CSVRow(line, where, image, full, caption)

    def load(self, index: int, item_seed: int) -> ImageTextPair:
        r = self.row(index)
        return ImageTextPair(self.prep(r.path, f"{r.where} ({r.image})"), r.caption, str(r.line))
