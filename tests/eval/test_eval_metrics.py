"""Metrics against hand-computed values and naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clippo.eval import metrics as M


def naive_rank(scores: np.ndarray, relevant: np.ndarray) -> int:
    """Sort with irrelevant items first among equal scores (ties against the query)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], bool(relevant[j])))
    return next(r for r, j in enumerate(order) if relevant[j])


# ---- retrieval ---------------------------------------------------------------------------------


def test_recall_at_k_hand_computed():
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # gt 0 -> rank 0
            [0.5, 0.4, 0.6, 0.1],  # gt 1 -> rank 2
            [0.1, 0.2, 0.3, 0.4],  # gt 2 -> rank 1
        ]
    )
    gt = np.array([0, 1, 2])
    np.testing.assert_array_equal(M.ranks_of_relevant(sim, gt), [0, 2, 1])
    assert M.recall_at_k(sim, gt, (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}


def test_ties_count_against_the_query():
    sim = np.zeros((4, 4))  # a collapsed model: everything ties
    gt = np.arange(4)
    assert M.recall_at_k(sim, gt, (1, 3, 4)) == {1: 0.0, 3: 0.0, 4: 1.0}
    # one irrelevant item tied with the relevant one pushes it to rank 1
    sim = np.array([[0.5, 0.5, 0.1]])
    assert M.ranks_of_relevant(sim, np.array([1]))[0] == 1
    assert M.ranks_of_relevant(sim, np.array([0]))[0] == 1
    assert M.recall_at_k(sim, np.array([1]), (1, 2)) == {1: 0.0, 2: 1.0}


def test_several_captions_per_image():
    # 2 images, 5 texts; texts 0,1,2 describe image 0, texts 3,4 image 1
    ids = np.array([0, 0, 0, 1, 1])
    sim = np.array(
        [
            [0.1, 0.8, 0.2, 0.9, 0.3],  # image 0: best own text (0.8) is behind text 3 -> rank 1
            [0.7, 0.1, 0.1, 0.6, 0.2],  # image 1: best own text (0.6) behind text 0 -> rank 1
        ]
    )
    assert M.image_to_text_recall(sim, ids, (1, 2)) == {1: 0.0, 2: 1.0}
    # text queries (columns): t0 0.1<0.7 miss; t1 0.8>0.1 hit; t2 0.2>0.1 hit;
    # t3 (image 1) 0.6<0.9 miss; t4 (image 1) 0.2<0.3 miss
    assert M.text_to_image_recall(sim, ids, (1, 2)) == {1: 2 / 5, 2: 1.0}


@pytest.mark.parametrize("seed", range(4))
def test_ranks_match_naive_reference(seed):
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 4, size=(30, 12)).astype(np.float32)  # many ties
    rel = rng.random((30, 12)) < 0.2
    rel[np.arange(30), rng.integers(0, 12, 30)] = True
    expect = [naive_rank(sim[q], rel[q]) for q in range(30)]
    np.testing.assert_array_equal(M.ranks_of_relevant(sim, rel), expect)
    gt = rng.integers(0, 12, 30)
    onehot = np.zeros_like(rel)
    onehot[np.arange(30), gt] = True
    np.testing.assert_array_equal(M.ranks_of_relevant(sim, gt), M.ranks_of_relevant(sim, onehot))


def test_chunking_matches(monkeypatch):
    rng = np.random.default_rng(0)
    sim, gt = rng.normal(size=(50, 20)), rng.integers(0, 20, 50)
    full = M.ranks_of_relevant(sim, gt)
    monkeypatch.setattr(M, "_CHUNK", 7)
    np.testing.assert_array_equal(M.ranks_of_relevant(sim, gt), full)


def test_retrieval_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        M.recall_at_k(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="query 1 has no relevant"):
        M.recall_at_k(np.zeros((2, 2)), np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="in \\[0, 2\\)"):
        M.recall_at_k(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(ValueError, match="k must be"):
        M.recall_at_k(np.zeros((1, 2)), np.array([0]), (0,))


# ---- classification ----------------------------------------------------------------------------


def test_accuracy_and_top_k():
    assert M.accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    scores = np.array(
        [
            [0.1, 0.5, 0.4],  # label 2: rank 1
            [0.3, 0.3, 0.2],  # label 0: tied with class 1 -> rank 1 (ties against)
            [0.9, 0.0, 0.1],  # label 0: rank 0
            [0.2, 0.3, 0.1],  # label 2: rank 2
        ]
    )
    labels = np.array([2, 0, 0, 2])
    assert M.top_k_accuracy(scores, labels, 1) == 0.25
    assert M.top_k_accuracy(scores, labels, 2) == 0.75
    assert M.top_k_accuracy(scores, labels, 3) == 1.0
    with pytest.raises(ValueError, match="entries"):
        M.accuracy(np.array([0, 1]), np.array([0]))


def test_per_class_and_mean_per_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 3])
    pred = np.array([0, 0, 0, 1, 0, 1, 3])
    per = M.per_class_accuracy(pred, labels, 4)
    np.testing.assert_allclose(per, [0.75, 0.5, np.nan, 1.0])
    assert M.mean_per_class_accuracy(pred, labels, 4) == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert M.accuracy(pred, labels) == pytest.approx(5 / 7)
    np.testing.assert_array_equal(
        M.confusion_matrix(pred, labels, 4),
        [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]],
    )


def test_matthews_binary_hand_computed():
    # tp=2, tn=1, fp=1, fn=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    labels = np.array([1, 1, 1, 0, 0])
    pred = np.array([1, 1, 0, 1, 0])
    assert M.matthews_corrcoef(pred, labels) == pytest.approx(1 / 6)
    assert M.matthews_corrcoef(labels, labels) == pytest.approx(1.0)
    assert M.matthews_corrcoef(1 - labels, labels) == pytest.approx(-1.0)
    assert (
        M.matthews_corrcoef(np.ones(5, int), labels) == 0.0
    )  # constant prediction: undefined -> 0


def test_matthews_multiclass_vs_covariance_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, 200))
    x, y = np.eye(4)[pred], np.eye(4)[labels]  # Gorodkin: MCC = cov(X,Y)/sqrt(cov(X,X)cov(Y,Y))
    x, y = x - x.mean(0), y - y.mean(0)
    expect = np.sum(x * y) / math.sqrt(np.sum(x * x) * np.sum(y * y))
    assert M.matthews_corrcoef(pred, labels) == pytest.approx(expect)


def test_f1():
    labels = np.array([1, 1, 1, 0, 0, 2])
    pred = np.array([1, 1, 0, 1, 0, 2])
    # binary (positive 1): tp=2 fp=1 fn=1 -> 4/6
    assert M.f1_score(pred, labels) == pytest.approx(4 / 6)
    # class 0: tp=1 fp=1 fn=1 -> 0.5 ; class 2: 1.0
    assert M.f1_score(pred, labels, average="macro") == pytest.approx((4 / 6 + 0.5 + 1.0) / 3)
    assert M.f1_score(pred, labels, average="micro") == pytest.approx(M.accuracy(pred, labels))
    assert M.f1_score(np.zeros(3, int), np.zeros(3, int)) == 0.0  # no positives anywhere
    with pytest.raises(ValueError, match="average"):
        M.f1_score(pred, labels, average="weighted")


# ---- correlation -------------------------------------------------------------------------------


def test_pearson_spearman_hand_computed():
    # x-mean = [-1,0,1]; y-mean = [-4/3,-1/3,5/3] -> 3 / sqrt(2 * 42/9)
    assert M.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    np.testing.assert_allclose(M.rankdata(np.array([3, 1, 3, 2])), [3.5, 1, 3.5, 2])
    # ranks x=[1,2.5,2.5,4], y=[1,3,2,4] -> 4.5 / sqrt(4.5 * 5)
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="two points"):
        M.pearson([1], [1])
