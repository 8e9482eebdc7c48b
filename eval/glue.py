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

With `mode="finetune"` the encoder is trained too: per task and seed `clippo.eval.finetune`
fine-tunes a copy of the model with a head through the trainer (run folder
`out_dir/finetune/<task>/seed<k>`, resumed when it already holds the finished run), then
predicts dev (and test) with the tuned model; nothing is cached as features, since the encoder
changes. Fine-tuning renders pairs as one image (`pair_mode="render"` only).

A token baseline (CLIP*, 1T-CLIP: no renderer) reads every sentence through its text side
(`extract_text_features`: its tokenizer, then the pooled `txt/pre_logits`), and a pair in
"concat" mode. It cannot read a pair drawn as one image, so `pair_mode="render"` with a pair
task is an error naming the option (not a silent switch: the options in results.json then say
what ran), as is `mode="finetune"`, which tunes the encoder on rendered text.

Returns the `results.json` body: `architecture` (the model's registry name),
`metrics.<name>.{seeds, mean, std}` for every evaluated entry
(`mnli_m`, `mnli_mm`, ...), `metrics.average_clippo` / `metrics.average_glue` (null, with the
missing entries listed under `averages`, unless every task they need was run),
`baseline.majority.<name>` (the most frequent train label predicted for every row), and per
task the rows, the skipped bad lines and each seed's selection.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clippo.eval.features import (
    Encoder,
    ToImages,
    combine_pair,
    extract_features,
    extract_text_features,
)
from clippo.eval.finetune import FinetuneConfig, config_dict, finetune
from clippo.eval.glue_data import (
    predictions_filename,
    read_split,
    write_predictions,
    write_submission,
)
from clippo.eval.glue_metrics import average_clippo, average_glue, task_metrics
from clippo.eval.glue_tasks import GLUE_TASKS, GlueSplit, GlueTask
from clippo.eval.heads import FittedHead, HeadConfig, HeadKind, fit_head
from clippo.model.architectures import architecture_of
from clippo.model.one_tower import CLIPPO
from clippo.model.token_model import TokenModel
from clippo.render import render_pair

PairMode = Literal["render", "concat"]
Mode = Literal["frozen", "finetune"]
FINETUNE = "finetune"  # out_dir/finetune/<task>/seed<k>: the fine-tuning runs
PREDICTIONS = "predictions"
SUBMISSION = "submission"
# The metric a head is selected on (on the held-out slice of train), per task.
_SELECT = {"cola": "matthews_corrcoef", "stsb": "spearman", "mrpc": "f1", "qqp": "f1"}


@dataclass(frozen=True)
class GlueOptions:
    """What `run_glue` evaluates and how. `max_examples` caps the train rows and the evaluated
    rows of each split (the first N, in file order); 0 = all. mode: "frozen" (a head on cached
    features, trained as `head` says) or "finetune" (encoder and head, as `finetune` says, with
    `max_train_steps` steps when > 0)."""

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
    mode: Mode = "frozen"
    max_train_steps: int = 0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("frozen", "finetune"):
            raise ValueError(f"mode={self.mode!r}: expected 'frozen' or 'finetune'")
        if self.max_train_steps < 0:
            raise ValueError(f"max_train_steps={self.max_train_steps} must be >= 0")
        if self.mode == "finetune" and self.pair_mode != "render":
            raise ValueError("mode='finetune' renders each pair as one image: pair_mode='render'")
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

    def __init__(self, model: Encoder, options: GlueOptions, device: Any, bf16: bool) -> None:
        self.model, self.options, self.device, self.bf16 = model, options, device, bf16

    def _key(self, part: str) -> dict[str, Any]:
        return {"suite": "glue", "pair_mode": self.options.pair_mode, "part": part}

    def _texts(self, texts: list[str], desc: str, part: str) -> np.ndarray:
        o = self.options
        return extract_text_features(
            self.model,
            texts,
            batch_size=o.batch_size,
            device=self.device,
            bf16=self.bf16,
            cache_dir=o.cache_dir,
            key=self._key(part),
            desc=desc,
        )

    def __call__(self, split: GlueSplit) -> np.ndarray:
        desc = f"{split.task} {split.split}"
        a = [ex.text_a for ex in split.examples]
        b = [ex.text_b for ex in split.examples]
        if not b or b[0] is None:  # a single-sentence task
            return self._texts(a, desc, "a")
        if self.options.pair_mode == "concat":
            first = self._texts(a, desc + " (first)", "a")
            return combine_pair(first, self._texts([t or "" for t in b], desc + " (second)", "b"))
        if not isinstance(self.model, CLIPPO):  # run_glue refuses this first (check_model)
            raise ValueError("pair_mode 'render' needs a model that reads rendered text")
        items, render = _rendered(self.model, split)
        o = self.options
        return extract_features(
            self.model,
            items,
            render,
            batch_size=o.batch_size,
            device=self.device,
            bf16=self.bf16,
            cache_dir=o.cache_dir,
            key=self._key("pair"),
            desc=desc,
            ink_only=self.model.config.ink_only_text,  # as the model was trained
        )


def _rendered(model: CLIPPO, split: GlueSplit) -> tuple[list[Any], ToImages]:
    """A split's rows as one image each: (sentences or (first, second) pairs, their renderer
    -> uint8 [B, S, S, 3]); a pair is drawn with `render_pair`."""
    renderer = model.renderer
    a = [ex.text_a for ex in split.examples]
    b = [ex.text_b for ex in split.examples]
    if not b or b[0] is None:  # a single-sentence task
        return a, renderer.render_batch

    def render(batch: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.stack([render_pair(renderer, x, y) for x, y in batch])

    return list(zip(a, b)), render


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


def _kind(task: GlueTask) -> HeadKind:
    return "regression" if task.kind == "regression" else "classification"


def _select_metric(task: GlueTask) -> Callable[[np.ndarray, np.ndarray], float]:
    """The held-out slice's score of a head's output: the task's selection metric."""
    select = _SELECT.get(task.name, "accuracy")

    def metric(scores: np.ndarray, target: np.ndarray) -> float:
        return task_metrics(task.name, _predictions(task, scores), target)[select]

    return metric


def _fit(task: GlueTask, x: np.ndarray, y: np.ndarray, head: HeadConfig, seed: int) -> FittedHead:
    config = dataclasses.replace(head, kind=_kind(task))
    outputs = None if task.kind == "regression" else len(task.labels)
    return fit_head(
        x, y, config, seed=seed, select_metric=_select_metric(task), num_outputs=outputs
    )


def finetune_config(options: GlueOptions) -> FinetuneConfig:
    """`options.finetune` with `max_train_steps` applied."""
    steps = options.max_train_steps or options.finetune.max_steps
    return dataclasses.replace(options.finetune, max_steps=steps)


# one seed's model: split -> the head's output on it (softmax [N, C] or values [N])
Predictor = Callable[[GlueSplit], np.ndarray]


class _Frozen:
    """Frozen mode: features once per split (and cached on disk), a head per seed."""

    def __init__(self, encode: _Encoder, task: GlueTask, train: GlueSplit, head: HeadConfig):
        self.encode, self.task, self.head = encode, task, head
        self.x_train, self.y_train = encode(train), _labels(train, task)
        self.features: dict[str, np.ndarray] = {}

    def _x(self, split: GlueSplit) -> np.ndarray:
        if split.split not in self.features:
            self.features[split.split] = self.encode(split)
        return self.features[split.split]

    def fit(self, seed: int) -> tuple[Predictor, Mapping[str, Any]]:
        head = _fit(self.task, self.x_train, self.y_train, self.head, seed)
        return lambda split: head.predict(self._x(split)), head.selection


class _Finetune:
    """Finetune mode: a fine-tuned copy of the model and a head per seed."""

    def __init__(
        self,
        model: CLIPPO,
        options: GlueOptions,
        task: GlueTask,
        train: GlueSplit,
        out: Path,
        device: Any,
        bf16: bool,
        log: Callable[[str], None],
    ) -> None:
        self.model, self.options, self.task, self.out = model, options, task, out
        self.device, self.bf16, self.log = device, bf16, log
        self.items, self.to_images = _rendered(model, train)
        self.y_train = _labels(train, task)
        self.config = finetune_config(options)

    def fit(self, seed: int) -> tuple[Predictor, Mapping[str, Any]]:
        task = self.task
        tuned = finetune(
            self.model,
            self.items,
            self.y_train,
            self.to_images,
            _kind(task),
            len(task.labels),
            self.config,
            seed=seed,
            run_dir=self.out / FINETUNE / task.name / f"seed{seed}",
            select_metric=_select_metric(task),
            device=self.device,
            log=self.log,
        )

        def predict(split: GlueSplit) -> np.ndarray:
            items, render = _rendered(tuned.model, split)
            return tuned.predict(
                items,
                render,
                batch_size=self.options.batch_size,
                device=self.device,
                bf16=self.bf16,
                desc=f"{split.task} {split.split} (fine-tuned)",
            )

        return predict, {**tuned.selection, "run_dir": str(tuned.run_dir)}


def _summary(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    names = per_seed[0]
    mean = {k: float(np.mean([m[k] for m in per_seed])) for k in names}
    std = {k: float(np.std([m[k] for m in per_seed])) for k in names}
    return {"seeds": per_seed, "mean": mean, "std": std}


def check_model(model: Encoder, options: GlueOptions) -> None:
    """Raise ValueError, naming the option, when `model` cannot run `options`: a token model
    reads texts as tokens, so neither a pair drawn as one image nor fine-tuning on rendered
    text applies to it."""
    if not isinstance(model, TokenModel):
        return
    name = architecture_of(model)
    if options.mode == "finetune":
        raise ValueError(
            f"mode 'finetune' (--mode finetune) tunes the encoder on rendered text; a {name} "
            "model reads tokens: use mode 'frozen'"
        )
    pairs = [t for t in options.tasks if GLUE_TASKS[t].text_columns[1] is not None]
    if pairs and options.pair_mode == "render":
        raise ValueError(
            f"pair_mode 'render' (--pair-mode render) draws each pair of {', '.join(pairs)} as "
            f"one image; a {name} model reads sentences as tokens: use pair_mode 'concat' "
            "(--pair-mode concat)"
        )


def run_glue(
    model: Encoder,
    options: GlueOptions,
    out_dir: str | os.PathLike,
    *,
    device: Any = None,
    bf16: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate `options.tasks`; write predictions (and the submission) under `out_dir`."""
    check_model(model, options)
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
        y_train = _labels(train, task)
        fitter: _Frozen | _Finetune
        if options.mode == "finetune":
            assert isinstance(model, CLIPPO)  # check_model refused the others
            fitter = _Finetune(model, options, task, train, out, device, bf16, log)
        else:
            fitter = _Frozen(encode, task, train, options.head)
            for _, split in devs:  # every dev split's features before any head, as always
                fitter._x(split)
        per_entry: dict[str, list[dict[str, float]]] = {entry: [] for entry, _ in task.dev}
        selections = []
        heads: list[Predictor] = []
        for seed in range(options.seeds):
            predict, selection = fitter.fit(seed)
            if seed == 0:
                heads.append(predict)  # seed 0 also predicts the test files
            selections.append(dict(selection))
            for entry, split in devs:
                pred = _predictions(task, predict(split))
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
                pred = _predictions(task, heads[0](split))
                test_results.append((split, pred.tolist()))
    means = {entry: m["mean"] for entry, m in metrics.items()}
    averages: dict[str, Any] = {}
    for label, average in (("average_clippo", average_clippo), ("average_glue", average_glue)):
        avg = average(means)
        metrics[label] = avg.value
        averages[label] = {"missing": list(avg.missing), "parts": dict(avg.parts)}
    result: dict[str, Any] = {
        "architecture": architecture_of(model),
        "mode": options.mode,
        **(
            {"finetune": config_dict(finetune_config(options))}
            if options.mode == "finetune"
            else {}
        ),
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
