"""GLUE data: read any split of any task in either layout; write predictions and submissions.

    split = read_split("glue_data", "mrpc", "dev")       # GlueSplit: examples in file order
    write_predictions(split, preds, out / "predictions" / predictions_filename("mrpc", "dev"))

Layouts, detected per task folder (`DIR/<folder>`, where `<folder>` is the task's `glue_data`
folder `CoLA`, ..., `WNLI`, or else its name `cola`, ..., `wnli`; AX: `diagnostic`, else `ax`):

1. `dataset_dict.json` there: a Hugging Face `DatasetDict.save_to_disk` folder;
2. else any `*.tsv`: the original `glue_data` layout, `<split>.tsv` (`train`, `dev`,
   `dev_matched`, `test_mismatched`, ...; AX `diagnostic/diagnostic.tsv`), see `glue_tsv`;
3. else any `*.parquet` (`<split>.parquet` or `<split>-*.parquet` shards), else any `*.jsonl`
   (`<split>.jsonl`): Hugging Face split files, see `glue_hf`.

Splits are always named as in glue_data; the HF layouts map them (`dev` -> `validation`, MNLI
`dev_matched` -> `validation_matched`, AX `diagnostic` -> the `ax` folder's `test`).

A bad row (wrong number of fields, a label outside the task's set, text that is not UTF-8) is a
GlueDataError naming the file and 1-based line; with `skip_bad_rows=True` it is skipped and its
line number kept in `GlueSplit.skipped`. A missing folder or file is a FileNotFoundError naming
the file expected and the layout.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from clippo.atomic import write_bytes_atomic, write_text_atomic
from clippo.eval.glue_hf import hf_layout, hf_rows, hf_source
from clippo.eval.glue_tasks import (
    GLUE_TASKS,
    GlueDataError,
    GlueExample,
    GlueSplit,
    GlueTask,
    eval_names,
    hf_split_name,
)
from clippo.eval.glue_tsv import Row, tsv_rows

__all__ = [
    "GLUE_TASKS",
    "SUBMISSION_FILES",
    "GlueDataError",
    "GlueExample",
    "GlueSplit",
    "GlueTask",
    "eval_names",
    "find_task_folder",
    "format_label",
    "predictions_filename",
    "read_split",
    "write_predictions",
    "write_submission",
]

# The files the GLUE server expects in submission.zip, in its order.
SUBMISSION_FILES = tuple(
    f"{stem}.tsv" for t in GLUE_TASKS.values() for stem, split in t.test if split != "diagnostic"
) + ("AX.tsv",)


def find_task_folder(data_dir: str | os.PathLike, task: GlueTask, split: str) -> tuple[Path, str]:
    """(folder, layout) holding `task`'s `split` under `data_dir` (see the module docstring)."""
    data_dir = Path(data_dir)
    names = ("diagnostic", "ax", "AX") if split == "diagnostic" else (task.folder, task.name)
    for name in names:
        folder = data_dir / name
        if not folder.is_dir():
            continue
        if (folder / "dataset_dict.json").is_file():
            return folder, "hf_disk"
        layout = "glue_data" if any(folder.glob("*.tsv")) else hf_layout(folder)
        if layout is not None:
            return folder, layout
    tsv = "diagnostic/diagnostic.tsv" if split == "diagnostic" else f"{task.folder}/{split}.tsv"
    hf = f"{names[1]}/{hf_split_name(split)}"
    raise FileNotFoundError(
        f"{data_dir / tsv}: no such file; GLUE {task.name} {split} is read from "
        f"DIR/{tsv} (glue_data layout) or DIR/{names[1]}/ holding a datasets.save_to_disk "
        f"folder or {hf}.parquet / {hf}.jsonl (Hugging Face layout)"
    )


def read_split(
    data_dir: str | os.PathLike,
    task: str,
    split: str,
    *,
    skip_bad_rows: bool = False,
    max_examples: int = 0,
) -> GlueSplit:
    """Read one split of one GLUE task (`read_split(d, "mnli", "dev_matched")`).

    max_examples > 0 keeps the first N good rows in file order (and stops reading there); 0 keeps
    all. Unknown task: UnknownNameError (a ValueError) listing the tasks.
    """
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 (0: all rows), got {max_examples}")
    spec = GLUE_TASKS[task]
    if split not in spec.splits:
        raise GlueDataError(f"GLUE {task} has no split {split!r}; splits: {', '.join(spec.splits)}")
    folder, layout = find_task_folder(data_dir, spec, split)
    rows: Iterable[tuple[int, int, Row | str]]
    if layout == "glue_data":
        path = folder / f"{split}.tsv"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file (GLUE {task} {split}, glue_data layout: "
                f"DIR/{folder.name}/{split}.tsv)"
            )
        rows = tsv_rows(spec, split, path)
    else:
        sources = hf_source(folder, layout, hf_split_name(split))
        path = sources[0] if len(sources) == 1 else folder
        rows = hf_rows(spec, split, layout, sources)
    examples: list[GlueExample] = []
    skipped: list[int] = []
    where = "line" if layout in ("glue_data", "jsonl") else "row"
    for lineno, index, row in rows:
        if isinstance(row, str):
            if not skip_bad_rows:
                raise GlueDataError(f"{path}: {where} {lineno}: {row}")
            skipped.append(lineno)
            continue
        examples.append(GlueExample(index, *row))
        if 0 < max_examples <= len(examples):
            break
    return GlueSplit(task, split, str(path), layout, tuple(examples), tuple(skipped))


def format_label(task: GlueTask, value: int | float | None) -> str:
    """GLUE's label string for a class index (`"entailment"`), a float for STS-B; "" for None.

    Class indices must be integers in range (numpy ints and integral floats are accepted)."""
    if value is None:
        return ""
    if task.kind == "regression":
        x = float(value)
        if math.isnan(x):
            raise ValueError(f"{task.name}: prediction is NaN")
        return repr(x)
    i = int(value)
    if i != value or not 0 <= i < len(task.labels):
        raise ValueError(f"{task.name}: {value!r} is not a class index in [0, {len(task.labels)})")
    return task.labels[i]


def predictions_filename(eval_name: str, split: str) -> str:
    """`<evaluation name>.<split>.tsv`, e.g. `mnli_m.dev_matched.tsv`, `cola.dev.tsv`."""
    return f"{eval_name}.{split}.tsv"


def _check_length(split: GlueSplit, predictions: Sequence[int | float]) -> None:
    if len(predictions) != len(split.examples):
        raise ValueError(
            f"{split.task} {split.split}: {len(predictions)} predictions for "
            f"{len(split.examples)} rows"
        )


def write_predictions(
    split: GlueSplit, predictions: Sequence[int | float], path: str | os.PathLike
) -> Path:
    """Write `index<TAB>label<TAB>prediction` rows, one per example in file order, with GLUE's
    label strings (STS-B floats), atomically. predictions: class indices or scores [N]."""
    task = GLUE_TASKS[split.task]
    _check_length(split, predictions)
    lines = ["index\tlabel\tprediction"]
    for ex, p in zip(split.examples, predictions):
        lines.append(f"{ex.index}\t{format_label(task, ex.label)}\t{format_label(task, p)}")
    return write_text_atomic(path, "\n".join(lines) + "\n")


def write_submission(
    out_dir: str | os.PathLike,
    results: Sequence[tuple[GlueSplit, Sequence[int | float]]],
) -> Path:
    """Write the GLUE server's files for the given test splits to `out_dir` (`CoLA.tsv`,
    `MNLI-m.tsv`, `AX.tsv`, ...: `index<TAB>prediction`, index being the test file's own
    index/id column) and `out_dir/submission.zip` holding them, each atomically. Returns the
    zip's path. The server wants all of `SUBMISSION_FILES`; only the splits given are written.
    """
    out_dir = Path(out_dir)
    files: dict[str, str] = {}
    for split, predictions in results:
        task = GLUE_TASKS[split.task]
        stem = next((s for s, sp in task.test if sp == split.split), None)
        if stem is None:
            raise ValueError(f"{split.task} {split.split} is not a GLUE test split")
        if f"{stem}.tsv" in files:
            raise ValueError(f"{stem}.tsv is given twice")
        _check_length(split, predictions)
        lines = ["index\tprediction"]
        for ex, p in zip(split.examples, predictions):
            key = ex.file_id if ex.file_id is not None else str(ex.index)
            lines.append(f"{key}\t{format_label(task, p)}")
        files[f"{stem}.tsv"] = "\n".join(lines) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files, key=lambda n: SUBMISSION_FILES.index(n)):
            write_text_atomic(out_dir / name, files[name])
            zf.writestr(name, files[name])
    return write_bytes_atomic(out_dir / "submission.zip", buffer.getvalue())
