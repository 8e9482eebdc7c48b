"""Pair sources by registry name, for configs: `build_source("csv", "pairs.csv", {...})`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from clippo.data import image_text, text_pairs

SOURCES: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        "webdataset": image_text.TarShards,
        "parquet": image_text.ParquetImageText,
        "hf_dataset": image_text.HFImageText,
        "csv": image_text.CSVImageText,
        "sentences": text_pairs.ConsecutiveSentences,
        "word_dropout": text_pairs.WordDropoutPairs,
        "pair_file": text_pairs.PairFile,
        "aligned_files": text_pairs.AlignedFiles,
    }
)
SOURCE_KINDS = tuple(SOURCES)


def build_source(kind: str, path: Any, options: Mapping[str, Any] | None = None):
    """Make a source by registry name (exact match): `build_source("csv", "pairs.csv", {...})`.

    Unknown kinds and unknown option names are ValueErrors that list what is accepted.
    """
    if kind not in SOURCES:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {sorted(SOURCES)}")
    factory = SOURCES[kind]
    options = dict(options or {})
    params = inspect.signature(factory).parameters
    allowed = [
        n
        for n, p in params.items()
        if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    unknown = sorted(set(options) - set(allowed[1:]))
    if unknown:
        raise ValueError(f"source {kind!r}: unknown options {unknown}; accepted: {allowed[1:]}")
    return factory(path, **options)
