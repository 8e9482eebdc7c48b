"""Reading text corpora for `clippo render`: plain text, jsonl, csv/tsv, parquet, saved datasets.

Every reader yields the corpus in fixed-size chunks of rows (one chunk per output shard). A row is
either its text (`str`) or a `BadRow` saying why it cannot be rendered; a bad row never stops the
read. Row numbers are 0-based input positions: the line number for text/jsonl files, the record
number (header excluded) for csv, the table row for parquet and datasets.

A file that cannot be read as a whole (truncated .gz, corrupt parquet, broken CSV quoting, a
header that is not UTF-8) raises CorpusError naming the file (and line, where there is one). A CSV
record that spans lines (a quoted line break, or an unclosed quote swallowing the lines after it)
gives a CorpusWarning naming the file and the lines.

pyarrow and `datasets` are imported only when a file of that kind is read.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import io
import json
import os
import re
import sys
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from clippo.errors import DataError

INPUT_FORMATS = ("text", "jsonl", "csv", "tsv", "parquet", "dataset")
_SUFFIX_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_FORMATS = ("text", "jsonl")
_MAX_SPAN_WARNINGS = 5  # multi-line CSV records listed one by one; the rest are counted


class CorpusError(DataError):
    """A corpus file that cannot be read; the message names the file (and line where known).
    A DataError (so a ValueError), the project's type for bad data."""


class CorpusWarning(UserWarning):
    """Something in a corpus that is read but probably not meant (e.g. a CSV record over lines)."""


@contextlib.contextmanager
def _decompressing(path: str) -> Iterator[None]:
    """Name the file when a .gz stream is cut short or corrupt (gzip raises EOFError, zlib.error
    or BadGzipFile, none of which says which file)."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        detail = str(e) or type(e).__name__
        raise CorpusError(f"{path}: truncated or corrupt gzip file ({detail})") from None


@dataclass(frozen=True)
class BadRow:
    """Why one input row was skipped."""

    reason: str


Row = str | BadRow


@dataclass(frozen=True)
class CorpusSource:
    """Where the texts come from.

    input_format: one of INPUT_FORMATS, or "auto" (from the suffix; a directory is a saved
    dataset, or a folder of .parquet files). text_column: the field holding the text (all formats
    but "text"; default "text"). split: which split of a saved DatasetDict.
    """

    path: str
    input_format: str = "auto"
    text_column: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.input_format != "auto" and self.input_format not in INPUT_FORMATS:
            raise ValueError(
                f"unknown input format {self.input_format!r}; expected auto or one of {INPUT_FORMATS}"
            )


def coerce_text(value: Any) -> Row:
    """A raw field value -> the text to render, or a BadRow (null, non-string, bad UTF-8)."""
    if value is None:
        return BadRow("null value")
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return BadRow(f"undecodable UTF-8 at byte {e.start}")
    if not isinstance(value, str):
        return BadRow(f"not a string ({type(value).__name__})")
    # A lone surrogate cannot be written as UTF-8; the renderer draws it as U+FFFD, so store that.
    return _SURROGATE.sub("\ufffd", value)


def resolve_format(source: CorpusSource) -> str:
    """The concrete input format of `source` (raises naming the path when it cannot tell)."""
    path = Path(source.path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {source.path}")
    if source.input_format != "auto":
        return source.input_format
    if path.is_dir():
        if any((path / n).exists() for n in ("dataset_dict.json", "state.json")):
            return "dataset"
        if any(path.glob("*.parquet")):
            return "parquet"
        raise CorpusError(
            f"{source.path}: a directory that is neither a saved dataset (datasets.save_to_disk) "
            "nor a folder of .parquet files"
        )
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    fmt = _SUFFIX_FORMATS.get(suffixes[0].lower()) if suffixes else None
    if fmt is None or (path.suffix == ".gz" and fmt not in (*_LINE_FORMATS, "csv", "tsv")):
        raise CorpusError(
            f"{source.path}: cannot tell the input format from the file name; "
            f"pass input_format (one of {INPUT_FORMATS})"
        )
    return fmt


def open_reader(source: CorpusSource) -> CorpusReader:
    """A reader for `source`, with the text column checked up front (file-level errors raise)."""
    fmt = resolve_format(source)
    if fmt == "text" and source.text_column is not None:
        raise ValueError(f"{source.path}: a plain text file has no columns (drop text_column)")
    column = source.text_column or "text"
    if source.split is not None and fmt != "dataset":
        raise ValueError(f"{source.path}: split only applies to saved datasets")
    readers: dict[str, Callable[[], CorpusReader]] = {
        "text": lambda: _LineReader(source.path, _parse_text_line),
        "jsonl": lambda: _LineReader(source.path, _JsonField(column)),
        "csv": lambda: _CsvReader(source.path, column, ","),
        "tsv": lambda: _CsvReader(source.path, column, "\t"),
        "parquet": lambda: _ParquetReader(source.path, column),
        "dataset": lambda: _DatasetReader(source.path, column, source.split),
    }
    return readers[fmt]()


class CorpusReader:
    """Base: `num_rows` (None if unknown without a full parse) and chunked iteration."""

    num_rows: int | None = None

    def chunks(
        self, rows_per_chunk: int, wanted: Callable[[int], bool]
    ) -> Iterator[tuple[int, list[Row]]]:
        """Yield (chunk index, rows) for every chunk `wanted(index)` accepts, in order.

        Chunk c holds rows [c * rows_per_chunk, (c + 1) * rows_per_chunk); unwanted chunks are
        skipped as cheaply as the format allows (never parsed or decoded).
        """
        raise NotImplementedError

    def rows(self) -> Iterator[tuple[int, Row]]:
        """Every (row number, row), in order."""
        for c, rows in self.chunks(4096, lambda _: True):
            yield from enumerate(rows, start=c * 4096)


def _group(
    records: Iterable[Any],
    rows_per_chunk: int,
    wanted: Callable[[int], bool],
    parse: Callable[[Any], Row],
) -> Iterator[tuple[int, list[Row]]]:
    """Split a sequential record stream into chunks, parsing only the records of wanted chunks."""
    # wanted(c) is asked once per chunk, on the chunk's first record (never past the end).
    chunk, keep = -1, False
    rows: list[Row] = []
    for i, record in enumerate(records):
        c = i // rows_per_chunk
        if c != chunk:
            if keep:
                yield chunk, rows
            chunk, rows, keep = c, [], wanted(c)
        if keep:
            rows.append(parse(record))
    if keep:
        yield chunk, rows


def _open_binary(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))  # a GzipFile reads like any binary file
    return open(path, "rb")


def _count_lines(path: str) -> int | None:
    """Rows of a line-based file (a last line without newline counts); None for compressed files."""
    if path.endswith(".gz"):
        return None
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _strip_newline(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _parse_text_line(line: bytes) -> Row:
    return coerce_text(_strip_newline(line))


class _JsonField:
    """Parse one jsonl line and take the text column (picklable, unlike a closure)."""

    def __init__(self, column: str) -> None:
        self.column = column

    def __call__(self, line: bytes) -> Row:
        line = _strip_newline(line)
        try:
            record = json.loads(line)
        except UnicodeDecodeError as e:
            return BadRow(f"undecodable UTF-8 at byte {e.start}")
        except ValueError as e:
            return BadRow("empty line" if not line.strip() else f"invalid JSON: {e}")
        if not isinstance(record, dict):
            return BadRow(f"not a JSON object ({type(record).__name__})")
        if self.column not in record:
            return BadRow(f"missing column {self.column!r}")
        return coerce_text(record[self.column])


class _LineReader(CorpusReader):
    """One record per line (split on b'\\n' only, so U+2028 and lone '\\r' stay inside a text)."""

    def __init__(self, path: str, parse: Callable[[bytes], Row]) -> None:
        self.path, self.parse = path, parse

    # the ignore: mypy takes a cached_property for a read-only property, but at runtime it is
    # writable like the base class's `num_rows` attribute
    @functools.cached_property
    def num_rows(self) -> int | None:  # type: ignore[override]
        # Counted on first use only: a preview of a huge file should not scan all of it.
        return _count_lines(self.path)

    def chunks(
        self, rows_per_chunk: int, wanted: Callable[[int], bool]
    ) -> Iterator[tuple[int, list[Row]]]:
        with _decompressing(self.path), _open_binary(self.path) as f:
            yield from _group(f, rows_per_chunk, wanted, self.parse)


@contextlib.contextmanager
def _csv_field_limit() -> Iterator[None]:
    """Lift the csv module's 128 KiB field limit for one read (texts may be longer)."""
    old = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(old)


class _CsvReader(CorpusReader):
    """CSV/TSV with a header row; texts decoded per field so one bad byte only loses its row."""

    def __init__(self, path: str, column: str, delimiter: str) -> None:
        self.path, self.column, self.delimiter = path, column, delimiter
        with _csv_field_limit(), self._open() as f:
            header = next(self._records(f, warn=False), None)
        if header is None:
            raise CorpusError(f"{path}: empty file (expected a header row)")
        if any(_SURROGATE.search(name) for name in header):
            raise CorpusError(f"{path}: line 1 (the header) is not UTF-8 text: {header}")
        if column not in header:
            raise CorpusError(f"{path}: no column {column!r}; columns are {header}")
        self.index = header.index(column)

    def _open(self) -> IO[str]:
        # surrogateescape keeps undecodable bytes as U+DC80..U+DCFF so they can be reported per row.
        return io.TextIOWrapper(
            _open_binary(self.path), encoding="utf-8", errors="surrogateescape", newline=""
        )

    def _records(self, f: IO[str], warn: bool = True) -> Iterator[list[str]]:
        """The csv records of `f` (the header first), warning about records that span lines."""
        reader = csv.reader(f, delimiter=self.delimiter)
        spans, line = 0, 0
        with _decompressing(self.path):
            try:
                for fields in reader:
                    first, line = line + 1, reader.line_num
                    if line > first and warn:
                        spans += 1
                        if spans <= _MAX_SPAN_WARNINGS:
                            warnings.warn(
                                f"{self.path}: lines {first}-{line} are one record (a quoted "
                                "field spans lines; an unclosed quote swallows the lines after it)",
                                CorpusWarning,
                                stacklevel=2,
                            )
                    yield fields
            except csv.Error as e:
                raise CorpusError(f"{self.path}:{reader.line_num}: {e}") from None
        if spans > _MAX_SPAN_WARNINGS:
            warnings.warn(
                f"{self.path}: {spans} records span lines in all "
                f"(the first {_MAX_SPAN_WARNINGS} were listed)",
                CorpusWarning,
                stacklevel=2,
            )

    def _parse(self, fields: list[str]) -> Row:
        if self.index >= len(fields):
            return BadRow(f"missing column {self.column!r} ({len(fields)} fields)")
        text = fields[self.index]
        if _SURROGATE.search(text):
            return BadRow("undecodable UTF-8")
        return text

    def chunks(
        self, rows_per_chunk: int, wanted: Callable[[int], bool]
    ) -> Iterator[tuple[int, list[Row]]]:
        with _csv_field_limit(), self._open() as f:
            records = self._records(f)
            next(records, None)  # header
            yield from _group(records, rows_per_chunk, wanted, self._parse)


class _RangeReader(CorpusReader):
    """Random-access tables: unwanted chunks are never read."""

    def read_range(self, start: int, stop: int) -> list[Any]:
        raise NotImplementedError

    def chunks(
        self, rows_per_chunk: int, wanted: Callable[[int], bool]
    ) -> Iterator[tuple[int, list[Row]]]:
        assert self.num_rows is not None
        for c in range(-(-self.num_rows // rows_per_chunk)):
            if wanted(c):
                start = c * rows_per_chunk
                values = self.read_range(start, min(start + rows_per_chunk, self.num_rows))
                yield c, [coerce_text(v) for v in values]


def _open_parquet(path: Path) -> Any:
    """A pyarrow ParquetFile; an empty or corrupt file is a CorpusError naming it."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError, ... none name the file
        raise CorpusError(f"{path}: not a readable parquet file ({e})") from None


class _ParquetReader(_RangeReader):
    """A .parquet file or a folder of them (sorted by name, rows numbered across files)."""

    def __init__(self, path: str, column: str) -> None:
        root = Path(path)
        files = sorted(root.glob("*.parquet")) if root.is_dir() else [root]
        if not files:
            raise CorpusError(f"{path}: a folder without .parquet files")
        self.column, self.files, self.groups = column, [_open_parquet(f) for f in files], []
        start = 0
        for name, pf in zip(files, self.files):
            if column not in pf.schema_arrow.names:
                raise CorpusError(
                    f"{name}: no column {column!r}; columns are {pf.schema_arrow.names}"
                )
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                self.groups.append((start, start + n, pf, g, name))
                start += n
        self.num_rows = start
        self._cache: tuple[int, list[Any]] | None = None

    def _group_values(self, i: int) -> list[Any]:
        # Chunks rarely align with row groups: keep the last group read for the next chunk.
        if self._cache is None or self._cache[0] != i:
            _, _, pf, g, name = self.groups[i]
            try:
                column = pf.read_row_group(g, columns=[self.column]).column(0)
            except Exception as e:  # noqa: BLE001 - pyarrow's errors for bad pages vary
                raise CorpusError(
                    f"{name}: row group {g} cannot be read ({type(e).__name__}: {e})"
                ) from None
            self._cache = (i, column.to_pylist())
        return self._cache[1]

    def read_range(self, start: int, stop: int) -> list[Any]:
        out: list[Any] = []
        for i, (lo, hi, *_) in enumerate(self.groups):
            if hi > start and lo < stop:
                out.extend(self._group_values(i)[max(start, lo) - lo : min(stop, hi) - lo])
        return out


class _DatasetReader(_RangeReader):
    """A folder written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""

    def __init__(self, path: str, column: str, split: str | None) -> None:
        import datasets

        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            names = list(ds)
            if split is None and len(names) == 1:
                split = names[0]
            if split not in ds:
                raise CorpusError(f"{path}: pick a split with split=...; the dataset has {names}")
            ds = ds[split]
        elif split is not None:
            raise CorpusError(f"{path}: a single Dataset has no splits (drop split={split!r})")
        if column not in ds.column_names:
            raise CorpusError(f"{path}: no column {column!r}; columns are {ds.column_names}")
        self.dataset = ds.select_columns([column]).with_format("arrow")
        self.column, self.num_rows = column, len(ds)

    def read_range(self, start: int, stop: int) -> list[Any]:
        return self.dataset[start:stop].column(self.column).to_pylist()


def shard_path(output_dir: str | os.PathLike[str], prefix: str, shard: int, suffix: str) -> Path:
    """`{output_dir}/{prefix}-{shard:06d}{suffix}`."""
    return Path(output_dir) / f"{prefix}-{shard:06d}{suffix}"
