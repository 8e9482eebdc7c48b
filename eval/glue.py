"""The GLUE suite on frozen features: render, encode once (cached), train a head per seed, score.

`run_glue(model, options, out_dir)` reads each task's train and dev splits (`glue_data`
TSV or Hugging Face layouts, `clippo.eval.glue_data`), renders every row with the model's own
renderer (a pair as one image with `render_pair`, or, with `pair_mode="concat"`, each sentence
alone and the two encodings combined as [u, v, |u-v|, u*v]), takes `model.pooled` features
(`clippo.eval.features`, cached under `cache_dir`), and per seed fits a head on train with
model selection on a slice held out from train (`clippo.eval.heads`), then scores dev with
GLUE's metrics. Dev predictions of seed 0 go to `predictions/<name>.<split>.tsv`; with
`predict_test` the seed-0 heads also predict the test files and write the GLUE server's
submission (AX by the MNLI head).

Returns the `results.json` body: `metrics.<name>.{seeds, mean, std}` for every evaluated entry
(`mnli_m`, `mnli_mm`, ...), `metrics.average_clippo` / `metrics.average_glue` (null, with the
missing entries listed under `averages`, unless every task they need was run),
`baseline.majority.<name>` (the most frequent train label predicted for every row), and per
task the rows, the skipped bad lines and each seed's selection.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clippo.eval.features import combine_pair, extract_features
from clippo.eval.glue_data import (
    predictions_filename,
    read_split,
    write_predictions,
    write_submission,
)
from clippo.eval.glue_metrics import average_clippo, average_glue, task_metrics
from clippo.eval.glue_tasks import GLUE_TASKS, GlueSplit, GlueTask
from clippo.eval.heads import FittedHead, HeadConfig, HeadKind, fit_head
from clippo.model.one_tower import CLIPPO
from clippo.render import render_pair

PairMode = Literal["render", "concat"]
PREDICTIONS = "predictions"
SUBMISSION = "submission"
# The metric a head is selected on (on the held-out slice of train), per task.
_SELECT = {"cola": "matthews_corrcoef", "stsb": "spearman", "mrpc": "f1", "qqp": "f1"}


@dataclass(frozen=True)
class GlueOptions:
    """What `run_glue` evaluates and how. `max_examples` caps the train rows and the evaluated
    rows of each split (the first N, in file order); 0 = all."""

    data_dir: str
    tasks: tuple[str, ...] = tuple(GLUE_TASKS)
    pair_mode: PairMode = "render"
    seeds: int = 3
    max_examples: int = 0
    skip_bad_rows: bool = False
    predict_test: bool = False
    cache_dir: str | None = None
    batch_size: int = 64
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        for name in self.tasks:
            GLUE_TASKS[name]  # UnknownNameError listing the tasks
        if not self.tasks:
            raise ValueError("tasks: name at least one GLUE task")
        if self.pair_mode not in ("render", "concat"):
            raise ValueError(f"pair_mode={self.pair_mode!r}: expected 'render' or 'concat'")
        if self.seeds < 1 or self.batch_size < 1 or self.max_examples < 0:
            raise ValueError("seeds and batch_size must be >= 1, max_examples >= 0")


def parse_tasks(text: str) -> tuple[str, ...]:
    """`all` or a comma list (`cola,sst2`) -> task names in GLUE's order, checked."""
    if text.strip() == "all":
        return tuple(GLUE_TASKS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        GLUE_TASKS[name]
    return tuple(n for n in GLUE_TASKS if n in names)


class _Encoder:
    """Rows of a split -> features, in the suite's pair mode, cached per split."""

    def __init__(self, model: CLIPPO, options: GlueOptions, device: Any, bf16: bool) -> None:
        self.model, self.options, self.device, self.bf16 = model, options, device, bf16

    def _features(self, items: Sequence[Any], render: Callable, desc: str, part: str) -> np.ndarray:
        o = self.options
        return extract_features(
            self.model,
            items,
            render,
            batch_size=o.batch_size,
            device=self.device,
            bf16=self.bf16,
            cache_dir=o.cache_dir,
            key={"suite": "glue", "pair_mode": o.pair_mode, "part": part},
            desc=desc,
        )

    def __call__(self, split: GlueSplit) -> np.ndarray:
        renderer = self.model.renderer
        desc = f"{split.task} {split.split}"
        a = [ex.text_a for ex in split.examples]
        b = [ex.text_b for ex in split.examples]
        if b and b[0] is None:  # a single-sentence task
            return self._features(a, renderer.render_batch, desc, "a")
        pairs = list(zip(a, b))
        if self.options.pair_mode == "render":

            def render(batch: Sequence[tuple[str, str]]) -> np.ndarray:
                return np.stack([render_pair(renderer, x, y) for x, y in batch])

            return self._features(pairs, render, desc, "pair")
        u = self._features(a, renderer.render_batch, desc + " (first)", "a")
        v = self._features(b, renderer.render_batch, desc + " (second)", "b")
        return combine_pair(u, v)


def _labels(split: GlueSplit, task: GlueTask) -> np.ndarray:
    dtype = np.float32 if task.kind == "regression" else np.int64
    return np.asarray(split.labels(), dtype=dtype)


def _predictions(task: GlueTask, scores: np.ndarray) -> np.ndarray:
    """A head's output -> class indices [N] (classification) or scores [N] (STS-B)."""
    return scores if task.kind == "regression" else scores.argmax(-1)


def _majority(task: GlueTask, y_train: np.ndarray, n: int) -> np.ndarray:
    """The majority baseline's predictions: the most frequent train class (the first of equal
    counts), or the train mean for STS-B (whose correlations are then undefined: NaN)."""
    if task.kind == "regression":
        return np.full(n, float(y_train.mean()), np.float32)
    counts = np.bincount(y_train, minlength=len(task.labels))
    return np.full(n, int(counts.argmax()), np.int64)


def _fit(task: GlueTask, x: np.ndarray, y: np.ndarray, head: HeadConfig, seed: int) -> FittedHead:
    kind: HeadKind = "regression" if task.kind == "regression" else "classification"
    config = dataclasses.replace(head, kind=kind)
    select = _SELECT.get(task.name, "accuracy")

    def metric(scores: np.ndarray, target: np.ndarray) -> float:
        return task_metrics(task.name, _predictions(task, scores), target)[select]

    outputs = None if task.kind == "regression" else len(task.labels)
    return fit_head(x, y, config, seed=seed, select_metric=metric, num_outputs=outputs)


def _summary(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    names = per_seed[0]
    mean = {k: float(np.mean([m[k] for m in per_seed])) for k in names}
    std = {k: float(np.std([m[k] for m in per_seed])) for k in names}
    return {"seeds": per_seed, "mean": mean, "std": std}


def run_glue(
    model: CLIPPO,
    options: GlueOptions,
    out_dir: str | os.PathLike,
    *,
    device: Any = None,
    bf16: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate `options.tasks`; write predictions (and the submission) under `out_dir`."""
    out = Path(out_dir)
    encode = _Encoder(model, options, device, bf16)

    def read(task: str, split: str) -> GlueSplit:
        return read_split(
            options.data_dir,
            task,
            split,
            skip_bad_rows=options.skip_bad_rows,
            max_examples=options.max_examples,
        )

    metrics: dict[str, Any] = {}
    baseline: dict[str, dict[str, float]] = {}
    tasks: dict[str, Any] = {}
    test_results: list[tuple[GlueSplit, list[int | float]]] = []
    for name in options.tasks:
        task = GLUE_TASKS[name]
        train = read(name, "train")
        devs = [(entry, read(name, s)) for entry, s in task.dev]
        x_train, y_train = encode(train), _labels(train, task)
        x_devs = [encode(split) for _, split in devs]
        per_entry: dict[str, list[dict[str, float]]] = {entry: [] for entry, _ in task.dev}
        selections = []
        heads = []
        for seed in range(options.seeds):
            head = _fit(task, x_train, y_train, options.head, seed)
            heads.append(head)
            selections.append(head.selection)
            for (entry, split), x_dev in zip(devs, x_devs):
                pred = _predictions(task, head.predict(x_dev))
                per_entry[entry].append(task_metrics(entry, pred, _labels(split, task)))
                if seed == 0:
                    path = out / PREDICTIONS / predictions_filename(entry, split.split)
                    write_predictions(split, pred.tolist(), path)
        for entry, split in devs:
            majority = _majority(task, y_train, len(split.examples))
            baseline[entry] = task_metrics(entry, majority, _labels(split, task))
        for entry, per_seed in per_entry.items():
            metrics[entry] = _summary(per_seed)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics[entry]["mean"].items())
            log(f"glue {entry}: {shown} (mean of {options.seeds} seeds)")
        tasks[name] = {
            "train": {"path": train.path, "layout": train.layout, "rows": len(train.examples)},
            "dev": {
                entry: {"path": s.path, "rows": len(s.examples), "skipped_lines": list(s.skipped)}
                for entry, s in devs
            },
            "train_skipped_lines": list(train.skipped),
            "selection": selections,
        }
        if options.predict_test:
            for _, split_name in task.test:  # MNLI's include AX ("diagnostic")
                split = read(name, split_name)
                pred = _predictions(task, heads[0].predict(encode(split)))
                test_results.append((split, pred.tolist()))
    means = {entry: m["mean"] for entry, m in metrics.items()}
    averages: dict[str, Any] = {}
    for label, average in (("average_clippo", average_clippo), ("average_glue", average_glue)):
        avg = average(means)
        metrics[label] = avg.value
        averages[label] = {"missing": list(avg.missing), "parts": dict(avg.parts)}
    result: dict[str, Any] = {
        "metrics": metrics,
        "averages": averages,
        "baseline": {"majority": baseline},
        "tasks": tasks,
    }
    if test_results:
        result["submission"] = str(write_submission(out / SUBMISSION, test_results))
    return result


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for `format_table`: one per evaluated entry (mean ± std over seeds, x100 as papers
    print them, the majority baseline in brackets), then the two averages."""
    metrics, baseline = result["metrics"], result["baseline"]["majority"]
    rows: list[dict[str, Any]] = []
    for entry, m in metrics.items():
        if not isinstance(m, dict):
            continue
        row: dict[str, Any] = {"task": entry}
        for k, v in m["mean"].items():
            base = baseline[entry][k]
            shown = "n/a" if base != base else f"{100 * base:.1f}"  # NaN: undefined
            row[k] = f"{100 * v:.1f} ± {100 * m['std'][k]:.1f} (majority {shown})"
        rows.append(row)
    for label, name in (("average_clippo", "CLIPPO/PIXEL avg"), ("average_glue", "GLUE avg")):
        v = metrics.get(label)
        rows.append({"task": name, "score": "n/a" if v is None else f"{100 * v:.1f}"})
    return rows
