"""Rows of a GLUE file in the original `glue_data` layout (`DIR/CoLA/dev.tsv`, ...).

The files are read as they are distributed, quirks included:
- Quoting is off: a field is everything between two tabs. GLUE texts hold unbalanced quotes
  (QNLI, MRPC, RTE), which a CSV reader with quoting on would run across lines.
- Lines end at `\\n` only (a `\\r` before it is dropped); the last line may lack its newline
  (CoLA dev). A UTF-8 byte-order mark before the first line is dropped (MRPC).
- Columns are found by header name (STS-B's 10 columns, MNLI's 12 in train and 16 in dev,
  QQP's 6, ...). A file whose first line lacks the task's columns but which has an implicit
  header (CoLA train/dev: source, label, original-label mark, sentence) is read with that one,
  its first line being data. Test files (CoLA's included) have a header and no label column.
- Every data row must have as many fields as the header.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from clippo.eval.glue_tasks import GlueDataError, GlueTask, parse_label

__all__ = ["Row", "tsv_rows"]

# (text_a, text_b, label, file_id), or the reason the row is bad
Row = tuple[str, str | None, int | float | None, str | None]
_ID_COLUMNS = ("index", "id", "idx")


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, text or None when the line is not UTF-8), BOM and `\\r` dropped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            try:
                yield lineno, line.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, None


def _header(
    task: GlueTask, path: Path, first: str | None, wanted: list[str], test: bool
) -> tuple[tuple[str, ...], bool]:
    """(column names, whether the first line is the header)."""
    fields = first.split("\t") if first is not None else []
    if first is not None and all(c in fields for c in wanted):
        return tuple(fields), True
    if task.implicit_header and not test:
        return task.implicit_header, False
    missing = [c for c in wanted if c not in fields]
    raise GlueDataError(
        f"{path}: line 1: the header lacks {task.name}'s column(s) {missing} "
        f"(found {fields if first is not None else 'no UTF-8 text'})"
    )


def tsv_rows(task: GlueTask, split: str, path: Path) -> Iterator[tuple[int, int, Row | str]]:
    """(1-based line number, 0-based data row, parsed row or the reason it is bad) per data row.

    Test splits (`test*`, `diagnostic`) yield label None. GlueDataError for a file without the
    task's columns; OSError when it cannot be opened.
    """
    test = split.startswith("test") or split == "diagnostic"
    text_a, text_b = task.text_columns
    wanted = [text_a] + ([text_b] if text_b else []) + ([] if test else [task.label_column])
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise GlueDataError(f"{path}: the file is empty")
    header, has_header = _header(task, path, first[1], wanted, test)
    col = {name: i for i, name in reversed(list(enumerate(header)))}  # first of a repeated name
    ia, ib = col[text_a], (col[text_b] if text_b else None)
    il = None if test else col[task.label_column]
    iid = next((col[c] for c in _ID_COLUMNS if c in col), None)
    if not has_header:
        lines = itertools.chain([first], lines)
    start = 2 if has_header else 1
    for lineno, text in lines:
        index = lineno - start
        if text is None:
            yield lineno, index, "the line is not valid UTF-8"
            continue
        fields = text.split("\t")
        if len(fields) != len(header):
            yield (
                lineno,
                index,
                f"{len(fields)} fields, expected {len(header)} ({', '.join(header)})",
            )
            continue
        label: int | float | None = None
        if il is not None:
            try:
                label = parse_label(task, fields[il])
            except ValueError as e:
                yield lineno, index, str(e)
                continue
        b = fields[ib] if ib is not None else None
        yield lineno, index, (fields[ia], b, label, fields[iid] if iid is not None else None)
