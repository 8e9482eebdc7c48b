"""Hugging Face datasets as users save them, read into `CaptionedImages` / `LabelledImages`.

    coco = read_hf_captions("coco_karpathy", split="test", caption_column="sentences")
    pets = read_hf_labels("pets_hf", split="test", label_column="label")

`path` is a `datasets.save_to_disk` folder (a Dataset, or a DatasetDict whose `split` is used),
a `.parquet` file, or a folder of parquet files (`<split>.parquet`, `<split>-*.parquet` shards,
or the hub's `data/<split>-*.parquet`). The image column is an `Image()` feature (its
`{"bytes", "path"}` struct, read undecoded) or a file path relative to `path`; images stay
encoded in the table (`EncodedImages`) until the suite decodes them, so an undecodable one is
skipped and listed like a bad file. Labels: an int `ClassLabel` column (its names are the
classes), other ints (class names must be given), or strings (the sorted distinct strings).
Nothing is downloaded; `datasets` is imported on use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clippo.eval.datasets import CaptionedImages, CaptionRows, EncodedImages, LabelledImages

__all__ = ["read_hf_captions", "read_hf_labels"]

HF_LAYOUT = (
    "a datasets.save_to_disk folder, a .parquet file, or a folder of <split>.parquet / "
    "<split>-*.parquet / data/<split>-*.parquet files"
)


class _Column:
    """`column[row]` -> encoded bytes or an image path (relative paths resolved against root)."""

    def __init__(self, values: Any, root: Path, where: str) -> None:
        self.values, self.root, self.where = values, root, where

    def __getitem__(self, row: int) -> bytes | str:
        value = self.values[row]
        if hasattr(value, "as_py"):  # a pyarrow scalar
            value = value.as_py()
        if isinstance(value, dict):
            if value.get("bytes"):
                return bytes(value["bytes"])
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value:
            return value if os.path.isabs(value) else str(self.root / value)
        # an empty cell: decoding it fails, so the image is skipped with this reason
        return f"{self.where}[{row}]: no image"


def _parquet_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    for folder in (path, path / "data"):
        files = [*folder.glob(f"{split}.parquet"), *sorted(folder.glob(f"{split}-*.parquet"))]
        if files:
            return files
    return []


def _table(path: str | os.PathLike, split: str, columns: Sequence[str]) -> tuple[Any, Any, Path]:
    """(column name -> values (a list-like), the features (or None), root) of one split."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Hugging Face dataset not found: {path} (expected {HF_LAYOUT})")
    root = path if path.is_dir() else path.parent
    if path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    ):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable datasets folder ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r} (splits: {list(ds)}); pass --split")
            ds = ds[split]
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} (columns: {ds.column_names})")
        features = ds.features
        ds = ds.select_columns(list(columns))
        for c in columns:
            if isinstance(features[c], datasets.Image):
                ds = ds.cast_column(c, datasets.Image(decode=False))
        return {c: _LazyColumn(ds, c) for c in columns}, features, root
    files = _parquet_files(path, split)
    if not files:
        raise FileNotFoundError(f"{path}: no parquet files for split {split!r} ({HF_LAYOUT})")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        tables = [pq.read_table(f) for f in files]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ValueError(f"{files[0]}: not a readable parquet file ({e})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{files[0]}: no column(s) {missing} (columns: {table.column_names})")
    features = None
    meta = (table.schema.metadata or {}).get(b"huggingface")
    if meta:  # datasets writes its features into the parquet schema
        try:
            features = json.loads(meta)["info"]["features"]
        except (ValueError, KeyError, TypeError):
            features = None
    return {c: table.column(c) for c in columns}, features, root


class _LazyColumn:
    """One column of a `datasets.Dataset`, read a row at a time (images stay on disk)."""

    def __init__(self, ds: Any, column: str) -> None:
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, row: int) -> Any:
        return self.ds[int(row)][self.column]

    def to_list(self) -> list[Any]:
        return list(self.ds[self.column])


def _values(column: Any) -> list[Any]:
    if isinstance(column, _LazyColumn):
        return column.to_list()
    return list(column.to_pylist())


def read_hf_captions(
    path: str | os.PathLike,
    *,
    split: str = "test",
    image_column: str = "image",
    caption_column: str = "caption",
) -> CaptionedImages:
    """A Hugging Face image-caption table -> CaptionedImages (a caption cell may be a string or
    a list of strings; every caption is kept)."""
    cols, _, root = _table(path, split, [image_column, caption_column])
    captions = _values(cols[caption_column])
    rows = CaptionRows()
    for row, cell in enumerate(captions):
        caps = cell if isinstance(cell, list) else [cell]
        if isinstance(cell, dict) and "raw" in cell:  # Karpathy-style {"raw": ...}
            caps = [cell["raw"]]
        for c in caps:
            c = c.get("raw") if isinstance(c, dict) else c
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"{path}: row {row}: empty or non-text caption {c!r:.80}")
            rows.add(row, [c.strip()])
        if not caps:
            raise ValueError(f"{path}: row {row}: no caption")
    if not captions:
        raise ValueError(f"{path}: split {split!r} has no rows")
    n = len(captions)
    return rows.captioned(
        EncodedImages(_Column(cols[image_column], root, str(path)), np.arange(n)),
        [f"{Path(path).name}[{i}]" for i in range(n)],
        str(path),
    )


def _class_label_names(features: Any, column: str) -> list[str] | None:
    if features is None:
        return None
    feature = features.get(column)
    names = getattr(feature, "names", None)  # datasets.ClassLabel
    if names is None and isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        names = feature.get("names")
    return list(names) if names else None


def read_hf_labels(
    path: str | os.PathLike,
    *,
    split: str = "test",
    image_column: str = "image",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
) -> LabelledImages:
    """A Hugging Face image-label table -> LabelledImages (classes: `class_names`, else the
    ClassLabel's names, else the sorted distinct string labels)."""
    cols, features, root = _table(path, split, [image_column, label_column])
    raw = _values(cols[label_column])
    if not raw:
        raise ValueError(f"{path}: split {split!r} has no rows")
    if all(isinstance(v, str) for v in raw):
        names = list(class_names) if class_names is not None else sorted(set(raw))
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted(set(raw) - set(index))
        if unknown:
            raise ValueError(f"{path}: labels {unknown[:5]} are not among the class names")
        labels = np.asarray([index[v] for v in raw], dtype=np.int64)
    else:
        bad = [i for i, v in enumerate(raw) if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise ValueError(f"{path}: row {bad[0]}: label {raw[bad[0]]!r} is not a class index")
        labels = np.asarray(raw, dtype=np.int64)
        names_found = class_names if class_names is not None else None
        names = list(names_found or _class_label_names(features, label_column) or [])
        if not names:
            raise ValueError(
                f"{path}: column {label_column!r} holds integers without ClassLabel names; "
                "give the class names (--class-names FILE)"
            )
        if labels.min() < 0 or labels.max() >= len(names):
            raise ValueError(
                f"{path}: labels {int(labels.min())}..{int(labels.max())} outside the "
                f"{len(names)} class names"
            )
    n = len(raw)
    return LabelledImages(
        images=EncodedImages(_Column(cols[image_column], root, str(path)), np.arange(n)),
        names=tuple(f"{Path(path).name}[{i}]" for i in range(n)),
        labels=labels,
        class_names=tuple(names),
        source=str(path),
    )
