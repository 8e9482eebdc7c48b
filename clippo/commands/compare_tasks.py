"""The demo's VQA and paraphrase tasks for the token-based baselines (CLIP*, 1T-CLIP).

CLIPPO runs `clippo.commands.demo_tasks` as the demo does: the question drawn into the image, each
caption rendered and read by the one tower. A token model's image tower never learned to read,
so, as two-tower models are evaluated on such tasks, the text goes through its text side:

- VQA: `[image tower's pooled photo, text side's pooled question]`, concatenated, float32
  [N, 2 * width] (the photo without a question band);
- pairs: each caption through the text side, combined as the demo's "concat" mode
  (`combine_pair`: `[u, v, |u-v|, u*v]`).

The data (`synthetic.vqa_set`, `synthetic.paraphrase_pairs`), the head (`demo_tasks._fit`), the
metrics and the majority baselines are the demo's, so the numbers compare row to row.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clippo.commands.demo_tasks import HUMAN_ANSWERS, TaskPlan, _fit, pair_task, vqa_task
from clippo.data import synthetic
from clippo.eval.features import combine_pair, extract_features
from clippo.eval.glue_metrics import task_metrics
from clippo.eval.vqa_metric import vqa_scores
from clippo.model.token_model import TokenModel


def reads_tokens(model: Any) -> bool:
    """True for a token-based baseline (CLIP*, 1T-CLIP), False for CLIPPO."""
    return isinstance(model, TokenModel)


@torch.no_grad()
def text_features(model: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Texts -> the token model's pooled text representation (`txt/pre_logits`, before the
    projection head, as `pooled` is for images), float32 [N, width]."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = model.tokenize(list(texts[i : i + batch_size]))
            z = model(texts=ids, texts_mask=mask, intermediates=True)["txt/pre_logits"]
            out.append(z.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def _token_vqa(model: Any, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int) -> dict:
    train = synthetic.vqa_set(world, "train", plan.vqa_train_scenes)
    test = synthetic.vqa_set(world, "heldout", plan.vqa_eval_scenes)
    questions = list(synthetic.VQA_QUESTIONS.values())
    q_feats = text_features(model, questions)  # [4, W]

    def features(data: synthetic.VQASet, desc: str) -> np.ndarray:
        photos = extract_features(
            model,
            list(range(len(data.images))),
            lambda rows: data.images[list(rows)],
            batch_size=plan.batch_size,
            desc=desc,
            progress=False,
        )
        q = np.array([questions.index(text) for text in data.questions])
        return np.concatenate([photos[data.image_ids], q_feats[q]], axis=1)

    vocab = sorted(set(train.answers))
    y = np.array([vocab.index(a) for a in train.answers], dtype=np.int64)
    head = _fit(features(train, "vqa train"), y, len(vocab), plan, seed)
    predicted = [vocab[k] for k in head.predict(features(test, "vqa eval")).argmax(1)]
    prior = {  # as the demo's: the most frequent training answer per question (ties: sorted)
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
        "selection": head.selection,
        "rows": {"train": len(y), "eval": len(scores)},
    }


def _token_pairs(model: Any, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int) -> dict:
    if plan.pair_templates:
        world = dataclasses.replace(world, templates=plan.pair_templates)
    train = synthetic.paraphrase_pairs(world, "train", plan.pair_train)
    test = synthetic.paraphrase_pairs(world, "heldout", plan.pair_eval)

    def features(data: synthetic.PairSet) -> np.ndarray:
        return combine_pair(text_features(model, data.a), text_features(model, data.b))

    head = _fit(features(train), train.labels, 2, plan, seed)
    predicted = head.predict(features(test)).argmax(1)
    majority = int(train.labels.mean() >= 0.5)
    got = task_metrics("mrpc", predicted, test.labels)
    base = task_metrics("mrpc", np.full(len(test.labels), majority), test.labels)
    return {
        "metrics": {f"pairs/{k}": float(v) for k, v in got.items()},
        "baseline": {f"pairs/{k}": float(v) for k, v in base.items()},
        "selection": head.selection,
        "rows": {"train": len(train.labels), "eval": len(test.labels)},
    }


def run_tasks(
    model: Any, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int
) -> dict[str, dict[str, Any]]:
    """{"vqa": ..., "pairs": ...}, each with "metrics" and "baseline" (as `demo_tasks`): the
    demo's own tasks for CLIPPO, the text-side versions above for a token model."""
    if reads_tokens(model):
        return {
            "vqa": _token_vqa(model, world, plan, seed),
            "pairs": _token_pairs(model, world, plan, seed),
        }
    return {"vqa": vqa_task(model, world, plan, seed), "pairs": pair_task(model, world, plan, seed)}
