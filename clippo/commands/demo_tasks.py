"""The demo's downstream tasks: VQA on its scenes and a GLUE-style paraphrase task on its captions.

Both run through the GLUE/VQA suites' engine: frozen `model.pooled` features
(`clippo.eval.features.extract_features`) of inputs drawn with the model's own renderer, and a
seeded head (`clippo.eval.heads.fit_head`) whose hyper-parameters are chosen on a slice held out
from the head's train rows. Each number comes with the majority-answer baseline of its task.

- VQA: "what colour is it?", "what shape is it?", "what size is it?", "where is it?" (one object
  per scene, so no counting), the question in a band above the scene (`render_on_image`). The
  head trains on scenes of the training (colour, shape) pairs and is asked about scenes of the
  held-out pairs, so no answer can come from a combination the model or the head has seen.
  Scored with the official VQA accuracy (`vqa_score`), each question given ten identical human
  answers: a prediction scores 1 when it equals the answer after the official normalisation,
  else 0 (exact match). Baseline: the most frequent training answer to the same question.
- Pairs (MRPC-like): two captions of one scene in different templates (paraphrase, label 1) or
  of scenes that differ in one attribute (label 0), half of each; head on training-pair scenes,
  evaluated on held-out-pair scenes. Scored with GLUE's MRPC metrics (accuracy, F1 of class 1).
  Baseline: the majority label of the head's train rows (ties: 1, MRPC's majority class)
  predicted for every row. Pair modes as the GLUE suite's: "concat" (the demo's: each caption
  rendered alone, features `[u, v, |u-v|, u*v]`) or "render" (both captions stacked in one
  image by `render_pair`: with the demo's model it scored 0.55 accuracy / 0.51 F1 against
  0.50 / 0.67, as the pooled features of a stacked pair hardly tell whether the two captions
  agree). The pairs use the three short templates (3 lines each at 96 px), so both modes see
  the same pairs; with all ten templates (captions of 3-5 lines, too long for two to an image)
  concat mode scored 0.705 / 0.65.

The scoring (the head, the metrics, the majority baselines) is `score_vqa` and `score_pairs`,
which take features of any model: `clippo.commands.compare_tasks` feeds them the token
baselines' features, so the numbers compare row to row.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from clippo.data import synthetic
from clippo.eval.features import combine_pair, extract_features, extract_text_features
from clippo.eval.glue_metrics import task_metrics
from clippo.eval.heads import FittedHead, HeadConfig, fit_head
from clippo.eval.vqa_metric import vqa_scores
from clippo.render import render_on_image, render_pair

HUMAN_ANSWERS = 10  # identical copies of the true answer per question (VQAv2 has ten)


@dataclass(frozen=True)
class TaskPlan:
    """Sizes of the two tasks. VQA rows are 4 questions per scene; `band`: question band (px)."""

    vqa_train_scenes: int = 400
    vqa_eval_scenes: int = 200
    pair_train: int = 1600
    pair_eval: int = 600
    band: int = 16
    pair_mode: Literal["concat", "render"] = "concat"
    # caption templates of the pairs (`SyntheticConfig.templates`): the three short ones, whose
    # captions fit two to a 96-px image; () = the world's
    pair_templates: tuple[int, ...] = (1, 5, 9)
    batch_size: int = 64
    # one hidden layer: the answer depends on the question and the scene together
    head: HeadConfig = field(default_factory=lambda: HeadConfig(hidden=512))


QUICK_TASKS = TaskPlan(
    vqa_train_scenes=40,
    vqa_eval_scenes=20,
    pair_train=200,
    pair_eval=60,
    head=HeadConfig(hidden=512, min_steps=20),
)


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(1) == y))


def _fit(x: np.ndarray, y: np.ndarray, classes: int, plan: TaskPlan, seed: int) -> FittedHead:
    return fit_head(x, y, plan.head, seed=seed, select_metric=_accuracy, num_outputs=classes)


def _rows_fit(renderer: Any, texts: Sequence[str], rows: int, what: str) -> None:
    """Raise ValueError when a text needs more than `rows` 16-px lines (it would be cut off)."""
    used = renderer.layout(list(texts)).rows_used
    bad = np.flatnonzero(used > rows)
    if len(bad):
        raise ValueError(
            f"{what}: {texts[bad[0]]!r} needs {used[bad[0]]} lines of 16 px, only {rows} fit"
        )


def _check_rows(task: str, x_train: np.ndarray, x_test: np.ndarray, train: int, test: int) -> None:
    if len(x_train) != train or len(x_test) != test:
        raise ValueError(
            f"{task}: features of {len(x_train)} train and {len(x_test)} eval rows for sets of "
            f"{train} and {test}"
        )


def score_vqa(
    train: synthetic.VQASet,
    test: synthetic.VQASet,
    x_train: np.ndarray,
    x_test: np.ndarray,
    plan: TaskPlan,
    seed: int,
) -> dict[str, Any]:
    """The VQA task scored on features of its rows, x_train float [len(train.questions), D] and
    x_test [len(test.questions), D]: a head (`plan.head`, seeded) on train, asked about test ->
    {"metrics": {"vqa/accuracy", "vqa/<kind>"...}, "baseline": {same keys}, "answers":
    vocabulary, "majority_answers", "selection": the head's, "rows": {"train", "eval"}}."""
    _check_rows("vqa", x_train, x_test, len(train.answers), len(test.answers))
    vocab = sorted(set(train.answers))
    y = np.array([vocab.index(a) for a in train.answers], dtype=np.int64)
    head = _fit(x_train, y, len(vocab), plan, seed)
    predicted = [vocab[k] for k in head.predict(x_test).argmax(1)]
    # the most frequent training answer to each question (ties: the first in sorted order)
    prior = {
        kind: min(
            Counter(a for a, k in zip(train.answers, train.kinds) if k == kind).items(),
            key=lambda item: (-item[1], item[0]),
        )[0]
        for kind in synthetic.VQA_QUESTIONS
    }
    humans = [[a] * HUMAN_ANSWERS for a in test.answers]
    scores = vqa_scores(predicted, humans)
    base = vqa_scores([prior[k] for k in test.kinds], humans)
    kinds = np.array(test.kinds)
    metrics, baseline = {"vqa/accuracy": float(scores.mean())}, {"vqa/accuracy": float(base.mean())}
    for kind in synthetic.VQA_QUESTIONS:
        metrics[f"vqa/{kind}"] = float(scores[kinds == kind].mean())
        baseline[f"vqa/{kind}"] = float(base[kinds == kind].mean())
    return {
        "metrics": metrics,
        "baseline": baseline,
        "answers": vocab,
        "majority_answers": prior,
        "selection": head.selection,
        "rows": {"train": len(y), "eval": len(scores)},
    }


def score_pairs(
    train: synthetic.PairSet,
    test: synthetic.PairSet,
    x_train: np.ndarray,
    x_test: np.ndarray,
    plan: TaskPlan,
    seed: int,
) -> dict[str, Any]:
    """The paraphrase task scored on features of its pairs, x_train float [len(train.a), D] and
    x_test [len(test.a), D]: a head on train, MRPC's metrics on test -> {"metrics":
    {"pairs/accuracy", "pairs/f1"}, "baseline": {same keys}, "majority_label", "selection",
    "rows"}."""
    _check_rows("pairs", x_train, x_test, len(train.labels), len(test.labels))
    head = _fit(x_train, train.labels, 2, plan, seed)
    predicted = head.predict(x_test).argmax(1)
    majority = int(train.labels.mean() >= 0.5)
    got = task_metrics("mrpc", predicted, test.labels)
    base = task_metrics("mrpc", np.full(len(test.labels), majority), test.labels)
    return {
        "metrics": {f"pairs/{k}": float(v) for k, v in got.items()},
        "baseline": {f"pairs/{k}": float(v) for k, v in base.items()},
        "majority_label": majority,
        "selection": head.selection,
        "rows": {"train": len(train.labels), "eval": len(test.labels)},
    }


def pair_sets(
    world: synthetic.SyntheticConfig, plan: TaskPlan
) -> tuple[synthetic.PairSet, synthetic.PairSet]:
    """The paraphrase task's (train, held-out) pairs, in `plan.pair_templates`."""
    if plan.pair_templates:
        world = dataclasses.replace(world, templates=plan.pair_templates)
    train = synthetic.paraphrase_pairs(world, "train", plan.pair_train)
    return train, synthetic.paraphrase_pairs(world, "heldout", plan.pair_eval)


def vqa_task(
    model: Any, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int = 0
) -> dict[str, Any]:
    """-> `score_vqa`'s dict and "band", on features of the question drawn above each scene."""
    renderer = model.renderer
    _rows_fit(renderer, list(synthetic.VQA_QUESTIONS.values()), plan.band // 16, "VQA question")
    train = synthetic.vqa_set(world, "train", plan.vqa_train_scenes)
    test = synthetic.vqa_set(world, "heldout", plan.vqa_eval_scenes)

    def features(data: synthetic.VQASet, desc: str) -> np.ndarray:
        def to_images(rows: Sequence[int]) -> np.ndarray:
            return np.stack(
                [
                    render_on_image(
                        renderer, data.images[data.image_ids[j]], data.questions[j], plan.band
                    )
                    for j in rows
                ]
            )

        rows = list(range(len(data.questions)))
        return extract_features(
            model, rows, to_images, batch_size=plan.batch_size, desc=desc, progress=False
        )

    x_train, x_test = features(train, "vqa train"), features(test, "vqa eval")
    return {**score_vqa(train, test, x_train, x_test, plan, seed), "band": plan.band}


def pair_task(
    model: Any, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int = 0
) -> dict[str, Any]:
    """-> `score_pairs`'s dict and "pair_mode": the MRPC-style paraphrase task on the demo's
    captions."""
    renderer = model.renderer
    rows = world.image_size // 16
    train, test = pair_sets(world, plan)

    def encode(texts: Sequence[str], desc: str) -> np.ndarray:
        _rows_fit(renderer, texts, rows, "pair task caption")
        return extract_text_features(  # rendered, as the model was trained (ink-only or not)
            model, texts, batch_size=plan.batch_size, desc=desc, progress=False
        )

    def features(data: synthetic.PairSet, desc: str) -> np.ndarray:
        if plan.pair_mode == "concat":
            return combine_pair(encode(data.a, desc + " a"), encode(data.b, desc + " b"))
        used = renderer.layout([*data.a, *data.b]).rows_used
        n = len(data.a)
        bad = np.flatnonzero(used[:n] + used[n:] > rows)
        if len(bad):
            j = int(bad[0])
            raise ValueError(
                f"pair task: {data.a[j]!r} and {data.b[j]!r} do not fit {rows} lines together; "
                "use pair_mode 'concat'"
            )

        def to_images(batch: Sequence[tuple[str, str]]) -> np.ndarray:
            return np.stack([render_pair(renderer, a, b) for a, b in batch])

        return extract_features(
            model,
            list(zip(data.a, data.b)),
            to_images,
            batch_size=plan.batch_size,
            desc=desc,
            progress=False,
            ink_only=model.config.ink_only_text,  # texts as the model was trained
        )

    x_train, x_test = features(train, "pairs train"), features(test, "pairs eval")
    return {**score_pairs(train, test, x_train, x_test, plan, seed), "pair_mode": plan.pair_mode}
