"""GLUE's metrics and its two averages, as pure functions over numpy arrays.

Per task, as GLUE defines them (all fractions; correlations in [-1, 1]):
CoLA `matthews_corrcoef`; STS-B `pearson` and `spearman`; MRPC and QQP `f1` (positive class 1)
and `accuracy`; SST-2, MNLI-m, MNLI-mm, QNLI, RTE, WNLI `accuracy`.

Averages, over the per-entry metrics keyed by evaluation name (`cola`, ..., `mnli_m`, `mnli_mm`):
- `average_clippo`: the average CLIPPO and PIXEL report: the mean of nine numbers, CoLA MCC,
  SST-2 acc, MRPC F1, STS-B Spearman, QQP F1, MNLI-m acc, MNLI-mm acc, QNLI acc, RTE acc (WNLI
  excluded). It reproduces the CLIPPO README's GLUE averages from its table.
- `average_glue`: the GLUE leaderboard's formula on the same numbers: nine tasks including WNLI,
  MNLI as the mean of m and mm, MRPC/QQP/STS-B as the mean of their two metrics (AX excluded).
  On dev it is the leaderboard's formula, not its test-set score.

When an entry (or a metric of it) is absent, an average is not computed: its `value` is None and
`missing` lists the absent entries, so a subset is never reported under the full average's name.
A NaN component (e.g. Pearson of a constant prediction) makes the average NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clippo.eval import metrics as M
from clippo.eval.glue_tasks import GLUE_TASKS, eval_names

__all__ = [
    "CLIPPO_AVERAGE",
    "GLUE_AVERAGE",
    "GlueAverage",
    "average_clippo",
    "average_glue",
    "evaluate_module_path",
    "metric_names",
    "task_metrics",
]

_METRICS = {
    "cola": ("matthews_corrcoef",),
    "stsb": ("pearson", "spearman"),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
}

# (entry, metric) of each of the nine numbers CLIPPO/PIXEL average
CLIPPO_AVERAGE: tuple[tuple[str, str], ...] = (
    ("cola", "matthews_corrcoef"),
    ("sst2", "accuracy"),
    ("mrpc", "f1"),
    ("stsb", "spearman"),
    ("qqp", "f1"),
    ("mnli_m", "accuracy"),
    ("mnli_mm", "accuracy"),
    ("qnli", "accuracy"),
    ("rte", "accuracy"),
)
# task -> the (entry, metric) pairs whose mean is its leaderboard score
GLUE_AVERAGE: dict[str, tuple[tuple[str, str], ...]] = {
    "cola": (("cola", "matthews_corrcoef"),),
    "sst2": (("sst2", "accuracy"),),
    "mrpc": (("mrpc", "f1"), ("mrpc", "accuracy")),
    "stsb": (("stsb", "pearson"), ("stsb", "spearman")),
    "qqp": (("qqp", "f1"), ("qqp", "accuracy")),
    "mnli": (("mnli_m", "accuracy"), ("mnli_mm", "accuracy")),
    "qnli": (("qnli", "accuracy"),),
    "rte": (("rte", "accuracy"),),
    "wnli": (("wnli", "accuracy"),),
}


def _task_of(name: str) -> str:
    """The GLUE task of a task or evaluation name (`mnli_m` -> `mnli`)."""
    if name in GLUE_TASKS:
        return name
    entries = eval_names()
    if name in entries:
        return entries[name][0]
    raise ValueError(
        f"unknown GLUE task {name!r}; known: {', '.join([*GLUE_TASKS, 'mnli_m', 'mnli_mm'])}"
    )


def metric_names(task: str) -> tuple[str, ...]:
    """The metric names `task_metrics` returns for a task or evaluation name."""
    return _METRICS.get(_task_of(task), ("accuracy",))


def task_metrics(
    task: str, predictions: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[float]
) -> dict[str, float]:
    """GLUE's metrics of one task (or evaluation name, `mnli_m`) as fractions.

    predictions, labels: [N] class indices (STS-B: float scores), same length, N >= 1 (2 for
    STS-B's correlations). MRPC/QQP F1 is of class 1 (`equivalent`, `duplicate`).
    """
    name = _task_of(task)
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if GLUE_TASKS[name].kind == "regression":
        pred, gold = pred.astype(np.float64), gold.astype(np.float64)
    out: dict[str, float] = {}
    for metric in metric_names(name):
        if metric == "matthews_corrcoef":
            out[metric] = M.matthews_corrcoef(pred, gold)
        elif metric == "f1":
            out[metric] = M.f1_score(pred, gold, average="binary", positive=1)
        elif metric == "accuracy":
            out[metric] = M.accuracy(pred, gold)
        elif metric == "pearson":
            out[metric] = M.pearson(pred, gold)
        else:
            out[metric] = M.spearman(pred, gold)
    return out


@dataclass(frozen=True)
class GlueAverage:
    """An average over GLUE entries. value: the mean, or None when `missing` is not empty;
    missing: the entries (evaluation names) that were not given; parts: each averaged number
    (CLIPPO: `cola.matthews_corrcoef`, ...; GLUE: the task scores `cola`, `mnli`, ...)."""

    value: float | None
    missing: tuple[str, ...] = ()
    parts: Mapping[str, float] = field(default_factory=dict)


def _get(metrics: Mapping[str, Mapping[str, float]], entry: str, metric: str) -> float | None:
    value = metrics.get(entry, {}).get(metric)
    return None if value is None else float(value)


def _missing(metrics: Mapping[str, Mapping[str, float]], pairs: Sequence[tuple[str, str]]) -> list:
    return list(dict.fromkeys(e for e, m in pairs if _get(metrics, e, m) is None))


def average_clippo(metrics: Mapping[str, Mapping[str, float]]) -> GlueAverage:
    """The nine-number average of CLIPPO and PIXEL (see the module docstring).
    metrics: evaluation name -> {metric: value} (`task_metrics` per entry)."""
    missing = _missing(metrics, CLIPPO_AVERAGE)
    if missing:
        return GlueAverage(None, tuple(missing))
    parts = {f"{e}.{m}": float(metrics[e][m]) for e, m in CLIPPO_AVERAGE}
    return GlueAverage(math.fsum(parts.values()) / len(parts), (), parts)


def average_glue(metrics: Mapping[str, Mapping[str, float]]) -> GlueAverage:
    """The GLUE leaderboard's average over its nine tasks (see the module docstring)."""
    pairs = [p for task_pairs in GLUE_AVERAGE.values() for p in task_pairs]
    missing = _missing(metrics, pairs)
    if missing:
        return GlueAverage(None, tuple(missing))
    parts = {
        task: math.fsum(float(metrics[e][m]) for e, m in task_pairs) / len(task_pairs)
        for task, task_pairs in GLUE_AVERAGE.items()
    }
    return GlueAverage(math.fsum(parts.values()) / len(parts), (), parts)


def evaluate_module_path() -> Path:
    """The folder of the local `evaluate` GLUE metric module, for
    `evaluate.load(str(evaluate_module_path()), "mrpc")` (offline; config name = task or
    evaluation name)."""
    return Path(__file__).resolve().parent / "metric_modules" / "glue"
