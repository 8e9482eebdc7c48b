"""Rows of a GLUE split in a Hugging Face layout, in one task folder:

- "hf_disk": a `DatasetDict.save_to_disk` folder (`dataset_dict.json` and one folder per split);
- "parquet": `<split>.parquet` or shards `<split>-00000-of-00002.parquet` ... (the hub's layout);
- "jsonl": `<split>.jsonl`, one JSON object per line (`Dataset.to_json`).

Split names are HF's (`train`, `validation`, `validation_matched`, `test`, ...). Columns are HF's
(`sentence`, `sentence1`/`sentence2`, `question`/`sentence`, `question1`/`question2`,
`premise`/`hypothesis`, `label`, `idx`); labels are class indices (-1 in test splits) or STS-B
floats. Row numbers are 1-based within the split (for jsonl: the line number).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from clippo.eval.glue_tasks import GlueDataError, GlueTask, parse_label
from clippo.eval.glue_tsv import Row

__all__ = ["HF_LAYOUTS", "hf_layout", "hf_rows", "hf_source"]

HF_LAYOUTS = ("hf_disk", "parquet", "jsonl")
_BATCH = 1024


def hf_layout(folder: Path) -> str | None:
    """The HF layout of a task folder, or None when it holds none of them."""
    if (folder / "dataset_dict.json").is_file():
        return "hf_disk"
    if any(folder.glob("*.parquet")):
        return "parquet"
    if any(folder.glob("*.jsonl")):
        return "jsonl"
    return None


def hf_source(folder: Path, layout: str, hf_split: str) -> list[Path]:
    """The split folder (hf_disk) or files (parquet shards in name order, jsonl) of a split;
    FileNotFoundError naming what was expected and the splits that are there."""
    if layout == "hf_disk":
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text("utf-8"))["splits"]
        except (ValueError, KeyError, TypeError) as e:
            raise GlueDataError(f"{folder / 'dataset_dict.json'}: not a DatasetDict ({e})") from e
        if hf_split in splits and (folder / hf_split).is_dir():
            return [folder / hf_split]
        raise FileNotFoundError(
            f"{folder / hf_split}: no split {hf_split!r} in this datasets.save_to_disk folder "
            f"(splits: {', '.join(splits)})"
        )
    if layout == "parquet":
        files = [*folder.glob(f"{hf_split}.parquet"), *sorted(folder.glob(f"{hf_split}-*.parquet"))]
    else:
        files = [folder / f"{hf_split}.jsonl"] if (folder / f"{hf_split}.jsonl").is_file() else []
    if not files:
        present = sorted(p.name for p in folder.glob(f"*.{layout}"))
        raise FileNotFoundError(
            f"{folder / f'{hf_split}.{layout}'}: no such file (Hugging Face {layout} layout: "
            f"<split>.{layout}{' or <split>-*.parquet shards' if layout == 'parquet' else ''}; "
            f"found {', '.join(present) or 'none'})"
        )
    return files


def _records(layout: str, sources: Sequence[Path], columns: list[str]) -> Iterator[Any]:
    """dict per row (or the reason a jsonl line is bad), in split order. `columns` must exist in
    the arrow layouts; `idx` is read where present."""
    if layout == "jsonl":
        with open(sources[0], "rb") as f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except ValueError as e:  # UnicodeDecodeError and JSONDecodeError alike
                    yield f"not a JSON object ({e})"
                    continue
                yield record if isinstance(record, dict) else "not a JSON object"
        return
    for source in sources:
        try:
            for batch in _batches(layout, source, columns):
                names = list(batch)
                yield from (dict(zip(names, values)) for values in zip(*batch.values()))
        except GlueDataError:
            raise
        except (OSError, ValueError) as e:
            raise GlueDataError(f"{source}: cannot read it as {layout} ({e})") from e


def _batches(layout: str, source: Path, columns: list[str]) -> Iterator[dict[str, list[Any]]]:
    if layout == "hf_disk":
        import datasets  # heavy: imported on use

        ds = datasets.load_from_disk(str(source))
        ds = ds.select_columns(_columns(source, ds.column_names, columns))
        for start in range(0, len(ds), _BATCH):
            yield ds[start : start + _BATCH]
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(source)
        wanted = _columns(source, pf.schema_arrow.names, columns)
        for batch in pf.iter_batches(batch_size=_BATCH, columns=wanted):
            yield batch.to_pydict()


def _columns(source: Path, present: list[str], columns: list[str]) -> list[str]:
    missing = [c for c in columns if c not in present]
    if missing:
        raise GlueDataError(f"{source}: no column(s) {missing} (columns: {', '.join(present)})")
    return columns + (["idx"] if "idx" in present else [])


def hf_rows(
    task: GlueTask, split: str, layout: str, sources: Sequence[Path]
) -> Iterator[tuple[int, int, Row | str]]:
    """(1-based row number, 0-based row, parsed row or the reason it is bad) per row of a split
    (`split` is the glue_data name, for telling test splits). Test rows get label None."""
    test = split.startswith("test") or split == "diagnostic"
    text_a, text_b = task.hf_text_columns
    texts = [text_a] + ([text_b] if text_b else [])
    columns = texts + ([] if test else ["label"])  # a test split may come without labels
    for i, record in enumerate(_records(layout, sources, columns)):
        if isinstance(record, str):
            yield i + 1, i, record
            continue
        missing = [c for c in columns if c not in record]
        if missing:
            yield i + 1, i, f"no field(s) {missing}"
            continue
        not_text = [c for c in texts if not isinstance(record[c], str)]
        if not_text:
            yield i + 1, i, f"field(s) {not_text} are not text"
            continue
        label: int | float | None = None
        if not test:
            try:
                label = parse_label(task, record["label"])
            except ValueError as e:
                yield i + 1, i, str(e)
                continue
        idx = record.get("idx")
        b = record[text_b] if text_b else None
        yield i + 1, i, (record[text_a], b, label, None if idx is None else str(idx))
