"""The nine GLUE tasks as data: names, folders, columns, label vocabularies, splits; the records.

`GLUE_TASKS["mnli"]` is a `GlueTask`. Labels are GLUE's own label strings, listed in the order of
the Hugging Face `glue` dataset's integer labels, so a TSV label string and an HF integer label
map to the same index (`labels.index("neutral") == 1` is HF's `neutral`). STS-B is a regression
task: its label is a float score in [0, 5] and `labels` is empty.

Split names are those of the original `glue_data` files: `train`, `dev` (MNLI: `dev_matched`,
`dev_mismatched`), `test` (MNLI: `test_matched`, `test_mismatched`) and `diagnostic` (AX, the
diagnostic set predicted by the MNLI head, so it is a split of `mnli` here). The Hugging Face
layout's names are mapped by `hf_split_name`.
"""

from __future__ import annotations

from dataclasses import dataclass

from clippo.errors import DataError
from clippo.registry import Registry

__all__ = [
    "GLUE_TASKS",
    "GlueDataError",
    "GlueExample",
    "GlueSplit",
    "GlueTask",
    "eval_names",
    "hf_split_name",
    "parse_label",
]


class GlueDataError(DataError):
    """A GLUE file that cannot be read as its task says (wrong number of fields, a label outside
    the task's set, a missing column or split); the message names the file and line."""


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    name: the command-line name (`cola`, ..., `wnli`). folder: its `glue_data` folder (`CoLA`).
    kind: "classification" or "regression" (STS-B). labels: GLUE's label strings in HF's integer
    order (empty for regression). text_columns / label_column: header names in the `glue_data`
    TSV files (text_b None for single-sentence tasks). implicit_header: the column names of a
    file without a header (CoLA train/dev), used when the first line is not a header.
    hf_text_columns: the Hugging Face columns. dev: (evaluation name, split) for each evaluated
    dev split. test: (GLUE server file stem, split) for each test split.
    """

    name: str
    folder: str
    kind: str
    labels: tuple[str, ...]
    text_columns: tuple[str, str | None]
    label_column: str
    hf_text_columns: tuple[str, str | None]
    dev: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]
    implicit_header: tuple[str, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split name this task reads: train, the dev splits, the test splits."""
        return ("train", *(s for _, s in self.dev), *(s for _, s in self.test))


@dataclass(frozen=True)
class GlueExample:
    """One row. index: the 0-based data row in its file (header excluded; skipped bad rows still
    count, so it always points at the file's row); text_b None for single-sentence tasks; label:
    class index into `GlueTask.labels`, float score for STS-B, None for test rows. file_id: the
    file's own `index`/`id`/`idx` column where it has one (GLUE submissions are keyed by it)."""

    index: int
    text_a: str
    text_b: str | None
    label: int | float | None
    file_id: str | None = None


@dataclass(frozen=True)
class GlueSplit:
    """The examples of one split of one task, in file order. path: the file (or folder) read;
    layout: "glue_data", "hf_disk", "parquet" or "jsonl"; skipped: 1-based line numbers (row
    numbers for the HF layouts) of the bad rows skipped with skip_bad_rows."""

    task: str
    split: str
    path: str
    layout: str
    examples: tuple[GlueExample, ...]
    skipped: tuple[int, ...] = ()

    def labels(self) -> list[int | float]:
        """The labels in order; GlueDataError when a row has none (a test split)."""
        out = []
        for ex in self.examples:
            if ex.label is None:
                raise GlueDataError(f"{self.path}: {self.split} row {ex.index} has no label")
            out.append(ex.label)
        return out


def _task(
    name: str,
    folder: str,
    labels: tuple[str, ...],
    text: tuple[str, str | None],
    label: str,
    hf_text: tuple[str, str | None],
    *,
    dev: tuple[tuple[str, str], ...] | None = None,
    test: tuple[tuple[str, str], ...] | None = None,
    implicit_header: tuple[str, ...] = (),
) -> GlueTask:
    kind = "classification" if labels else "regression"
    dev = dev or ((name, "dev"),)
    test = test or ((folder, "test"),)
    return GlueTask(name, folder, kind, labels, text, label, hf_text, dev, test, implicit_header)


_BINARY = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")

GLUE_TASKS: Registry[GlueTask] = Registry(
    "GLUE task",
    {
        "cola": _task(
            "cola", "CoLA", _BINARY, ("sentence", None), "label", ("sentence", None),
            implicit_header=("source", "label", "original_label", "sentence"),
        ),
        "sst2": _task("sst2", "SST-2", _BINARY, ("sentence", None), "label", ("sentence", None)),
        "mrpc": _task("mrpc", "MRPC", _BINARY, ("#1 String", "#2 String"), "Quality", _PAIR),
        "stsb": _task("stsb", "STS-B", (), _PAIR, "score", _PAIR),
        "qqp": _task("qqp", "QQP", _BINARY, ("question1", "question2"), "is_duplicate",
                     ("question1", "question2")),
        "mnli": _task(
            "mnli", "MNLI", _NLI3, _PAIR, "gold_label", ("premise", "hypothesis"),
            dev=(("mnli_m", "dev_matched"), ("mnli_mm", "dev_mismatched")),
            test=(("MNLI-m", "test_matched"), ("MNLI-mm", "test_mismatched"), ("AX", "diagnostic")),
        ),
        "qnli": _task("qnli", "QNLI", _NLI2, ("question", "sentence"), "label",
                      ("question", "sentence")),
        "rte": _task("rte", "RTE", _NLI2, _PAIR, "label", _PAIR),
        "wnli": _task("wnli", "WNLI", _BINARY, _PAIR, "label", _PAIR),
    },
)  # fmt: skip

# The HF `glue` dataset's split names for the glue_data ones (AX is the `ax` config's `test`).
_HF_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
    "test": "test",
    "test_matched": "test_matched",
    "test_mismatched": "test_mismatched",
    "diagnostic": "test",
}


def hf_split_name(split: str) -> str:
    """The Hugging Face split name of a glue_data split name (`dev` -> `validation`)."""
    return _HF_SPLITS[split]


def eval_names() -> dict[str, tuple[str, str]]:
    """Every evaluated dev entry: name (`cola`, ..., `mnli_m`, `mnli_mm`, ...) -> (task, split)."""
    return {ev: (t.name, split) for t in GLUE_TASKS.values() for ev, split in t.dev}


def parse_label(task: GlueTask, value: object) -> int | float:
    """A label as read from a file (a TSV string, or an HF int/float) -> class index or float
    score. ValueError with a one-clause reason for a value outside the task's set."""
    if task.kind == "regression":
        try:
            score = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"label {value!r} is not a number") from None
        if not 0.0 <= score <= 5.0:  # also rejects NaN
            raise ValueError(f"label {value!r} is outside STS-B's range [0, 5]")
        return score
    if isinstance(value, str):
        if value in task.labels:
            return task.labels.index(value)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(task.labels):
        return value
    raise ValueError(f"label {value!r} is not one of {task.name}'s labels {list(task.labels)}")
