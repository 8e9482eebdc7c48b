"""Pair sources by registry name, for configs: `build_source("csv", "pairs.csv", {...})`.

`SOURCES` is a `clippo.registry.Registry`: `SOURCES.register("mine", MySource)` adds a kind;
a factory takes the source path first, then keyword options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from clippo.data import image_text, text_pairs
from clippo.registry import Registry

__all__ = ["SOURCES", "build_source"]

SOURCES: Registry[Callable[..., Any]] = Registry(
    "source kind",
    {
        "webdataset": image_text.TarShards,
        "parquet": image_text.ParquetImageText,
        "hf_dataset": image_text.HFImageText,
        "csv": image_text.CSVImageText,
        "sentences": text_pairs.ConsecutiveSentences,
        "word_dropout": text_pairs.WordDropoutPairs,
        "pair_file": text_pairs.PairFile,
        "aligned_files": text_pairs.AlignedFiles,
    },
    callables=True,
)


def build_source(kind: str, path: Any, options: Mapping[str, Any] | None = None) -> Any:
    """Make a source by registry name (exact match): `build_source("csv", "pairs.csv", {...})`.

    Unknown kinds (`clippo.registry.UnknownNameError`) and unknown option names are ValueErrors
    that list what is accepted.
    """
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
