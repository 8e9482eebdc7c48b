"""The demo's VQA and paraphrase tasks for the token-based baselines (CLIP*, 1T-CLIP).

CLIPPO runs `clippo.commands.demo_tasks` as the demo does: the question drawn into the image, each
caption rendered and read by the one tower. A token model's image tower never learned to read,
so, as two-tower models are evaluated on such tasks (and as the GLUE and VQA suites evaluate
them), the text goes through its text side (`clippo.eval.features.extract_text_features`):

- VQA: `[image tower's pooled photo, text side's pooled question]` (`combine_photo_question`),
  float32 [N, 2 * width] (the photo without a question band);
- pairs: each caption through the text side, combined as the demo's "concat" mode
  (`combine_pair`: `[u, v, |u-v|, u*v]`), whatever the plan's pair mode.

The data (`synthetic.vqa_set`, `demo_tasks.pair_sets`) and the scoring (`demo_tasks.score_vqa`,
`score_pairs`: the head, the metrics and the majority baselines) are the demo's, so the numbers
compare row to row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clippo.commands.demo_tasks import (
    TaskPlan,
    pair_sets,
    pair_task,
    score_pairs,
    score_vqa,
    vqa_task,
)
from clippo.data import synthetic
from clippo.eval.features import (
    combine_pair,
    combine_photo_question,
    extract_features,
    extract_text_features,
)
from clippo.model.token_model import TokenModel


def _token_vqa(
    model: TokenModel, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int
) -> dict[str, Any]:
    train = synthetic.vqa_set(world, "train", plan.vqa_train_scenes)
    test = synthetic.vqa_set(world, "heldout", plan.vqa_eval_scenes)
    questions = list(synthetic.VQA_QUESTIONS.values())
    q_feats = extract_text_features(
        model, questions, batch_size=plan.batch_size, desc="vqa questions", progress=False
    )  # [4, W]

    def features(data: synthetic.VQASet, desc: str) -> np.ndarray:
        photos = extract_features(
            model,
            list(range(len(data.images))),
            lambda rows: data.images[list(rows)],
            batch_size=plan.batch_size,
            desc=desc,
            progress=False,
        )
        q = [questions.index(text) for text in data.questions]
        return combine_photo_question(photos, data.image_ids, q_feats, q)

    x_train, x_test = features(train, "vqa train"), features(test, "vqa eval")
    return score_vqa(train, test, x_train, x_test, plan, seed)


def _token_pairs(
    model: TokenModel, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int
) -> dict[str, Any]:
    train, test = pair_sets(world, plan)

    def features(data: synthetic.PairSet, desc: str) -> np.ndarray:
        a, b = (
            extract_text_features(
                model, texts, batch_size=plan.batch_size, desc=f"{desc} {side}", progress=False
            )
            for side, texts in (("a", data.a), ("b", data.b))
        )
        return combine_pair(a, b)

    x_train, x_test = features(train, "pairs train"), features(test, "pairs eval")
    return {**score_pairs(train, test, x_train, x_test, plan, seed), "pair_mode": "concat"}


def run_tasks(
    model: Any, world: synthetic.SyntheticConfig, plan: TaskPlan, seed: int
) -> dict[str, dict[str, Any]]:
    """{"vqa": ..., "pairs": ...}, each with "metrics" and "baseline" (as `demo_tasks`): the
    demo's own tasks for CLIPPO, the text-side versions above for a token model."""
    if isinstance(model, TokenModel):
        return {
            "vqa": _token_vqa(model, world, plan, seed),
            "pairs": _token_pairs(model, world, plan, seed),
        }
    return {"vqa": vqa_task(model, world, plan, seed), "pairs": pair_task(model, world, plan, seed)}
