"""The demo's task scoring (`score_vqa`, `score_pairs`) on features whose answers are known, and
`clippo compare`'s token rows (`compare_tasks.run_tasks`) equal to that scoring on features
computed by hand from each baseline's own towers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from clippo.commands.compare_tasks import run_tasks
from clippo.commands.demo import demo_plan, scene_config
from clippo.commands.demo_tasks import TaskPlan, pair_sets, score_pairs, score_vqa
from clippo.data import synthetic
from clippo.eval.features import combine_pair
from clippo.eval.glue_metrics import task_metrics
from clippo.eval.heads import HeadConfig
from clippo.model.architectures import build_model
from clippo.model.token_model import TokenModel, TokenModelConfig
from clippo.model.tokenizer import TextTokenizer
from clippo.preprocess import images_to_pixels

PLAN = TaskPlan(
    vqa_train_scenes=24,
    vqa_eval_scenes=8,
    pair_train=48,
    pair_eval=16,
    head=HeadConfig(hidden=32),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticConfig:
    return scene_config(demo_plan(tmp_path_factory.mktemp("demo")).train)


def _one_hot(index: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """Features that spell the answer: one-hot x 8 plus unit noise, float32 [N, classes + 2]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(index), classes + 2)).astype(np.float32)
    x[np.arange(len(index)), index] += 8.0
    return x


def test_score_vqa_on_features_that_spell_the_answer(world: synthetic.SyntheticConfig) -> None:
    # enough scenes that every train answer is seen a few times (no model runs here)
    train = synthetic.vqa_set(world, "train", 120)
    test = synthetic.vqa_set(world, "heldout", 30)
    answers = sorted(set(train.answers) | set(test.answers))

    def x(data: synthetic.VQASet, seed: int) -> np.ndarray:
        return _one_hot(np.array([answers.index(a) for a in data.answers]), len(answers), seed)

    got = score_vqa(train, test, x(train, 0), x(test, 1), PLAN, seed=0)
    # held-out answers the head never saw as a train label cannot be predicted
    seen = [a in set(train.answers) for a in test.answers]
    assert got["metrics"]["vqa/accuracy"] == pytest.approx(np.mean(seen))
    assert got["rows"] == {"train": len(train.answers), "eval": len(test.answers)}
    assert got["answers"] == sorted(set(train.answers))
    # the baseline by hand: the most frequent train answer per kind (ties: first in sorted order)
    for kind in synthetic.VQA_QUESTIONS:
        counts = Counter(a for a, k in zip(train.answers, train.kinds) if k == kind)
        prior = sorted(counts, key=lambda a: (-counts[a], a))[0]
        assert got["majority_answers"][kind] == prior
        rows = [a for a, k in zip(test.answers, test.kinds) if k == kind]
        assert got["baseline"][f"vqa/{kind}"] == pytest.approx(np.mean([a == prior for a in rows]))


def test_score_pairs_on_features_that_spell_the_label(world: synthetic.SyntheticConfig) -> None:
    train, test = pair_sets(world, PLAN)
    got = score_pairs(
        train, test, _one_hot(train.labels, 2, 0), _one_hot(test.labels, 2, 1), PLAN, seed=0
    )
    assert got["metrics"] == {"pairs/accuracy": 1.0, "pairs/f1": 1.0}
    majority = int(train.labels.mean() >= 0.5)
    base = task_metrics("mrpc", np.full(len(test.labels), majority), test.labels)
    assert got["majority_label"] == majority
    assert got["baseline"] == {f"pairs/{k}": pytest.approx(v) for k, v in base.items()}
    # features without the label: the head cannot do better than the data allow by chance
    noise = np.random.default_rng(2).normal(size=(len(train.labels), 4)).astype(np.float32)
    flat = score_pairs(train, test, noise, noise[: len(test.labels)], PLAN, seed=0)
    assert flat["metrics"] != got["metrics"]
    with pytest.raises(ValueError, match="pairs: features of 3 train"):
        score_pairs(train, test, noise[:3], noise[: len(test.labels)], PLAN, seed=0)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["clip-star", "1t-clip"])
def test_compare_token_rows_score_the_towers_own_features(
    arch: str, world: synthetic.SyntheticConfig
) -> None:
    """run_tasks on a token model == the demo's scoring of features computed directly:
    [image tower's pooled photo, text side's pooled question] and [u, v, |u-v|, u*v] of the
    text side's pooled captions."""
    train_pairs, test_pairs = pair_sets(world, PLAN)
    questions = list(synthetic.VQA_QUESTIONS.values())
    tok = TextTokenizer.train([*questions, *train_pairs.a, *train_pairs.b], 200, max_length=32)
    torch.manual_seed(0)
    cfg = TokenModelConfig.from_variant(
        "tiny-test", vocab_size=tok.vocab_size, image_size=world.image_size, max_length=32
    )
    model = build_model(arch, cfg, tok).eval()
    assert isinstance(model, TokenModel)

    def text_side(texts: list[str] | tuple[str, ...]) -> np.ndarray:
        ids, mask = model.tokenize(list(texts))
        return model(texts=ids, texts_mask=mask, intermediates=True)["txt/pre_logits"].numpy()

    def vqa_features(data: synthetic.VQASet) -> np.ndarray:
        photos = model.pooled(images_to_pixels(data.images)).numpy()
        asked = text_side(list(data.questions))
        return np.concatenate([photos[data.image_ids], asked], axis=1)

    def pair_features(data: synthetic.PairSet) -> np.ndarray:
        return combine_pair(text_side(data.a), text_side(data.b))

    got = run_tasks(model, world, PLAN, seed=3)
    vqa_train = synthetic.vqa_set(world, "train", PLAN.vqa_train_scenes)
    vqa_test = synthetic.vqa_set(world, "heldout", PLAN.vqa_eval_scenes)
    want_vqa = score_vqa(
        vqa_train, vqa_test, vqa_features(vqa_train), vqa_features(vqa_test), PLAN, seed=3
    )
    want_pairs = score_pairs(
        train_pairs, test_pairs, pair_features(train_pairs), pair_features(test_pairs), PLAN, 3
    )
    # the heads see features equal up to float rounding (other batches): same selection, and
    # the metrics agree to rounding
    for name, want in (("vqa", want_vqa), ("pairs", want_pairs)):
        assert got[name]["metrics"] == pytest.approx(want["metrics"], abs=1e-6), name
        assert got[name]["baseline"] == want["baseline"]
        assert got[name]["rows"] == want["rows"]
    assert got["pairs"]["pair_mode"] == "concat"
