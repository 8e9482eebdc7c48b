"""Text/text pair sources (CLIPPO's C4 pairs and more). Each yields `TextPair(text_a, text_b, key)`.

    ConsecutiveSentences("c4/*.jsonl.gz")               # (s0, s1), (s2, s3), ... of each document
    WordDropoutPairs("wiki.txt", drop=0.15)             # (sentence, sentence minus 15% of words)
    PairFile("en-de.tsv")                               # any two-column TSV / jsonl of pairs
    AlignedFiles("train.en", "train.de")                # line i of one file <-> line i of the other

Corpora (`ConsecutiveSentences`, `WordDropoutPairs`) are plain text, where a blank line ends a
document, or jsonl with one document per line in `text_field`; `.gz` files are read transparently.
Pairs never cross documents. They are sharded sources (one file = one unit; see
`clippo.data.mixer`): keep files at most a few hundred MB, since a unit is split in memory.
Pair files are random-access sources held in memory as lines, parsed on use. Everything is
deterministic given the seed: word dropout draws from the per-position seed the mixer hands in.
Lines are split on "\\n" only (a stray U+2028 or \\r inside a line cannot misalign two files).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from clippo.data.image_text import expand_paths
from clippo.data.sentences import split_sentences
from clippo.data.sources import (
    RandomAccessSource,
    ShardedSource,
    SkipSample,
    TextPair,
    text_or_skip,
)
from clippo.errors import DataError

__all__ = [
    "read_lines",
    "read_documents",
    "drop_words",
    "ConsecutiveSentences",
    "WordDropoutPairs",
    "PairFile",
    "AlignedFiles",
]

CorpusFormat = Literal["text", "jsonl"]
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n\s*")


def _read_text(path: str) -> str:
    """The file's text (bad UTF-8 bytes become U+FFFD); a truncated or damaged .gz is a
    DataError naming the file, not a bare EOFError."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: truncated or damaged gzip file ({e})") from None


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a (possibly .gz) UTF-8 file, split on "\\n" only, without "\\r\\n" endings."""
    text = _read_text(os.fspath(path))
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _corpus_format(path: str, format: CorpusFormat | None) -> CorpusFormat:
    if format is not None:
        if format not in ("text", "jsonl"):
            raise ValueError(f"format must be 'text' or 'jsonl', got {format!r}")
        return format
    bare = path[:-3] if path.endswith(".gz") else path
    return "jsonl" if bare.endswith((".jsonl", ".json")) else "text"


def read_documents(
    path: str, format: CorpusFormat | None = None, text_field: str = "text"
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(doc_key, text)], [(skip kind, message)]) of one corpus file."""
    fmt = _corpus_format(path, format)
    base = os.path.basename(path)
    problems: list[tuple[str, str]] = []
    if fmt == "text":
        text = _read_text(path).replace("\r\n", "\n")
        docs = [d for d in _BLANK_LINE.split(text) if d.strip()]
        return [(f"{base}:{i}", d) for i, d in enumerate(docs)], problems
    out = []
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            problems.append(("bad_json", f"{path}:{n}: {e}"))
            continue
        value = obj.get(text_field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            problems.append(("missing_text", f"{path}:{n}: no string field {text_field!r}"))
            continue
        out.append((f"{base}:{n}", value))
    return out, problems


class _ListUnit(list):
    """A unit's records plus the problems found while reading it (see ShardedSource)."""

    def __init__(self, records: list[Any], problems: list[tuple[str, str]]) -> None:
        super().__init__(records)
        self.problems = problems


class _CorpusSource(ShardedSource):
    """Shared machinery: files are units; `_records(docs)` turns a file's documents into records."""

    def __init__(
        self,
        paths: str | Sequence[str],
        format: CorpusFormat | None,
        text_field: str,
        splitter: Callable[[str], list[str]],
        shuffle: bool,
        name: str,
    ) -> None:
        self.paths = expand_paths(paths)
        self.format, self.text_field = format, text_field
        self.splitter = splitter
        self.shuffle = shuffle
        self.name = name
        self._lengths: dict[int, int] = {}
        self._cache: tuple[int, _ListUnit] | None = None

    def _records(self, docs: list[tuple[str, str]]) -> list[Any]:
        raise NotImplementedError

    def num_units(self) -> int:
        return len(self.paths)

    def read_unit(self, unit: int) -> _ListUnit:
        if self._cache is not None and self._cache[0] == unit:
            return self._cache[1]
        docs, problems = read_documents(self.paths[unit], self.format, self.text_field)
        records = _ListUnit(self._records(docs), problems)
        self._lengths[unit] = len(records)
        self._cache = (unit, records)
        return records

    def unit_length(self, unit: int) -> int:
        if unit not in self._lengths:
            self.read_unit(unit)
        return self._lengths[unit]


class ConsecutiveSentences(_CorpusSource):
    """Pairs of consecutive sentences within each document: (s0, s1), (s2, s3), ... or, with
    `overlap=True`, (s0, s1), (s1, s2), ... Sentences shorter than `min_chars` are dropped first."""

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        format: CorpusFormat | None = None,
        text_field: str = "text",
        overlap: bool = False,
        min_chars: int = 1,
        splitter: Callable[[str], list[str]] = split_sentences,
        shuffle: bool = True,
        name: str = "sentences",
    ) -> None:
        super().__init__(paths, format, text_field, splitter, shuffle, name)
        self.overlap = overlap
        self.min_chars = min_chars

    def _records(self, docs: list[tuple[str, str]]) -> list[TextPair]:
        out = []
        step = 1 if self.overlap else 2
        for key, text in docs:
            sents = [s for s in self.splitter(text) if len(s) >= self.min_chars]
            for i in range(0, len(sents) - 1, step):
                out.append(TextPair(sents[i], sents[i + 1], f"{key}:{i}"))
        return out

    def decode(self, record: TextPair, item_seed: int) -> TextPair:
        return record


def drop_words(sentence: str, drop: float, rng: np.random.Generator) -> str:
    """`sentence` without round(drop * n) of its n whitespace-separated words (at least one word
    when drop > 0 and n >= 2; never all of them), chosen with `rng`; order is kept."""
    words = sentence.split()
    n = len(words)
    k = int(np.floor(drop * n + 0.5))
    if drop > 0:
        k = max(k, 1)
    k = min(k, n - 1) if n else 0
    if k <= 0:
        return " ".join(words)
    gone = set(rng.choice(n, size=k, replace=False).tolist())
    return " ".join(w for i, w in enumerate(words) if i not in gone)


class WordDropoutPairs(_CorpusSource):
    """(sentence, the same sentence with a fraction `drop` of its words removed). Sentences with
    fewer than `min_words` words are not used. Word-level only: scripts written without spaces
    (Chinese, Japanese, Thai) lose nothing."""

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        drop: float = 0.1,
        min_words: int = 2,
        format: CorpusFormat | None = None,
        text_field: str = "text",
        splitter: Callable[[str], list[str]] = split_sentences,
        shuffle: bool = True,
        name: str = "word_dropout",
    ) -> None:
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"drop must be in [0, 1), got {drop}")
        super().__init__(paths, format, text_field, splitter, shuffle, name)
        self.drop = drop
        self.min_words = min_words

    def _records(self, docs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            (s, f"{key}:{i}")
            for key, text in docs
            for i, s in enumerate(self.splitter(text))
            if len(s.split()) >= self.min_words
        ]

    def decode(self, record: tuple[str, str], item_seed: int) -> TextPair:
        sentence, key = record
        return TextPair(
            sentence, drop_words(sentence, self.drop, np.random.default_rng(item_seed)), key
        )


class PairFile(RandomAccessSource):
    """Any file of text pairs (translations, paraphrases, back-translations): TSV with `columns`
    as two column indices (default (0, 1); no quoting, tabs separate fields), or jsonl with
    `columns` as two keys (default ("text_a", "text_b")). Format from the suffix (.tsv, .txt ->
    tsv; .jsonl, .json -> jsonl; .gz allowed) unless given."""

    def __init__(
        self,
        path: str,
        *,
        format: Literal["tsv", "jsonl"] | None = None,
        columns: tuple[int, int] | tuple[str, str] | None = None,
        shuffle: bool = True,
        name: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        bare = self.path[:-3] if self.path.endswith(".gz") else self.path
        if format is None:
            if bare.endswith((".jsonl", ".json")):
                format = "jsonl"
            elif bare.endswith((".tsv", ".txt")):
                format = "tsv"
            else:
                raise ValueError(
                    f"{self.path}: cannot tell the format from the suffix; pass format="
                )
        if format not in ("tsv", "jsonl"):
            raise ValueError(f"format must be 'tsv' or 'jsonl', got {format!r}")
        self.format = format
        self.columns = columns or ((0, 1) if format == "tsv" else ("text_a", "text_b"))
        want = int if format == "tsv" else str
        if len(self.columns) != 2 or not all(isinstance(c, want) for c in self.columns):
            raise TypeError(f"{self.path}: columns for {format} must be two {want.__name__}s")
        self.shuffle = shuffle
        self.name = name or f"pairs:{os.path.basename(self.path)}"
        self._lines = read_lines(self.path)
        if not self._lines:
            raise ValueError(f"{self.path}: no lines")
        first = next((i for i, ln in enumerate(self._lines) if ln.strip()), None)
        if first is None:
            raise ValueError(f"{self.path}: only blank lines")
        try:  # a wrong column name or count is a config error: fail now, naming the line
            self.load(first, 0)
        except SkipSample as e:
            if e.kind in ("bad_row", "missing_column"):
                raise ValueError(f"{e.message} (columns={self.columns!r})") from None

    def __len__(self) -> int:
        return len(self._lines)

    def load(self, index: int, item_seed: int) -> TextPair:
        line = self._lines[index]
        where = f"{self.path}:{index + 1}"
        if self.format == "tsv":
            fields = line.split("\t")
            i, j = self.columns
            assert isinstance(i, int) and isinstance(j, int)  # __init__: ints for tsv
            if len(fields) <= max(i, j):
                raise SkipSample("bad_row", f"{where}: {len(fields)} tab-separated fields")
            a, b = fields[i], fields[j]
        else:
            if not line.strip():
                raise SkipSample("empty_text", f"{where}: blank line")
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise SkipSample("bad_row", f"{where}: invalid JSON: {e}") from None
            if not isinstance(obj, dict) or any(c not in obj for c in self.columns):
                raise SkipSample("missing_column", f"{where}: needs keys {list(self.columns)}")
            a, b = obj[self.columns[0]], obj[self.columns[1]]
        return TextPair(text_or_skip(a, where), text_or_skip(b, where), str(index + 1))


class AlignedFiles(RandomAccessSource):
    """Line i of `path` paired with line i of `path_b` (e.g. train.en / train.de). The files must
    have the same number of lines."""

    def __init__(
        self, path: str, path_b: str, *, shuffle: bool = True, name: str | None = None
    ) -> None:
        self.path_a, self.path_b = os.fspath(path), os.fspath(path_b)
        self._a, self._b = read_lines(self.path_a), read_lines(self.path_b)
        if len(self._a) != len(self._b):
            raise ValueError(
                f"aligned files differ in length: {self.path_a} has {len(self._a)} lines, "
                f"{self.path_b} has {len(self._b)}"
            )
        if not self._a:
            raise ValueError(f"aligned files {self.path_a} and {self.path_b} are empty")
        self.shuffle = shuffle
        self.name = name or f"aligned:{os.path.basename(self.path_a)}"

    def __len__(self) -> int:
        return len(self._a)

    def load(self, index: int, item_seed: int) -> TextPair:
        where = f"{self.path_a}|{self.path_b}:{index + 1}"
        return TextPair(
            text_or_skip(self._a[index], where),
            text_or_skip(self._b[index], where),
            str(index + 1),
        )
