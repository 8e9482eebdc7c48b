"""Heads on frozen features (`clippo.eval.heads`): each kind learns what it should, selection on
a slice of train picks the sensible grid point, tiny train sets are recorded, seeds reproduce,
and the losses equal naive formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from clippo.eval.heads import HeadConfig, SparseRows, fit_head, head_loss
from clippo.typed_config import ConfigError


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    return float((pred.argmax(1) == target).mean())


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    return float(1 - ((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def soft_score(pred: np.ndarray, target) -> float:
    """VQA-style: the soft target of the top-scored answer, averaged."""
    dense = target.toarray() if sp.issparse(target) else np.asarray(target)
    return float(dense[np.arange(len(pred)), pred.argmax(1)].mean())


def separable(n: int, d: int = 12, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """c well-separated Gaussian blobs (centres ~10 apart, unit noise), shifted and scaled so
    that the head's standardisation has work to do."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(c, d)) * 2
    y = rng.integers(0, c, n)
    x = (centres[y] + rng.normal(size=(n, d))) * 3 + 1
    return x.astype(np.float32), y


def test_classification_learns_a_separable_problem():
    x, y = separable(1200)
    head = fit_head(x[:800], y[:800], HeadConfig(), seed=0, select_metric=accuracy)
    prob = head.predict(x[800:])
    assert prob.shape == (400, 4)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-5)
    assert accuracy(prob, y[800:]) > 0.95
    assert head.selection["holdout_rows"] == 80 and len(head.selection["grid"]) == 6


@pytest.mark.parametrize("form", ["dense", "scipy", "torch_sparse", "torch_dense"])
def test_soft_multilabel_learns_and_accepts_sparse_targets(form):
    x, y = separable(1200)
    soft = np.zeros((1200, 6), np.float32)  # 6 answers, two never given
    soft[np.arange(1200), y] = 1.0
    soft[np.arange(1200), (y + 1) % 4] = 1 / 3  # one annotator of three for a neighbour
    targets = {
        "dense": soft[:800],
        "scipy": sp.csr_matrix(soft[:800]),
        "torch_sparse": torch.from_numpy(soft[:800]).to_sparse(),
        "torch_dense": torch.from_numpy(soft[:800]),
    }[form]
    cfg = HeadConfig(kind="soft_multilabel", learning_rates=(1e-2,), weight_decays=(1e-4,))
    head = fit_head(x[:800], targets, cfg, seed=0, select_metric=soft_score)
    scores = head.predict(x[800:])
    assert scores.shape == (400, 6) and scores.min() >= 0 and scores.max() <= 1
    assert accuracy(scores, y[800:]) > 0.95
    dense = fit_head(x[:800], soft[:800], cfg, seed=0, select_metric=soft_score)
    np.testing.assert_allclose(scores, dense.predict(x[800:]), atol=1e-6)


def test_sparse_rows_match_dense_rows():
    rng = np.random.default_rng(0)
    dense = rng.random((9, 7)).astype(np.float32) * (rng.random((9, 7)) < 0.3)
    dense[4] = 0  # an empty row
    rows = np.array([8, 4, 0, 0, 3])
    coo = sp.coo_matrix(dense)
    doubled = sp.coo_matrix(  # every entry stored as two halves: duplicates are summed
        (np.r_[coo.data, coo.data] / 2, (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])), (9, 7)
    )
    for source in (sp.csr_matrix(dense), doubled, torch.from_numpy(dense).to_sparse()):
        t = SparseRows.of(source)
        np.testing.assert_allclose(t.dense(rows), dense[rows], rtol=1e-6)
        np.testing.assert_allclose(t.take(rows).dense(np.arange(5)), dense[rows], rtol=1e-6)


def test_regression_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    y = 50 + 10 * (x @ rng.normal(size=16)) + rng.normal(size=1500)  # far from standardised
    head = fit_head(x[:1000], y[:1000], HeadConfig(kind="regression"), seed=0, select_metric=r2)
    pred = head.predict(x[1000:])
    assert pred.shape == (500,)
    assert r2(pred, y[1000:]) > 0.95


def test_selection_picks_strong_weight_decay_only_where_it_helps():
    cfg = HeadConfig(kind="regression", learning_rates=(1e-2,), weight_decays=(1e-4, 3.0))
    rng = np.random.default_rng(1)
    # 200 rows, 400 features, one of them weakly informative: without decay the head fits noise
    x = rng.normal(size=(200, 400)).astype(np.float32)
    noisy = fit_head(x, x[:, 0] + 2 * rng.normal(size=200), cfg, seed=0, select_metric=r2)
    assert noisy.selection["weight_decay"] == 3.0
    scores = [g["score"] for g in noisy.selection["grid"]]
    assert scores[1] > scores[0] and noisy.selection["score"] == scores[1]
    # 2000 rows, 20 features, an almost exact linear map: decay only shrinks the predictions
    x = rng.normal(size=(2000, 20)).astype(np.float32)
    clean = fit_head(x, x @ rng.normal(size=20), cfg, seed=0, select_metric=r2)
    assert clean.selection["weight_decay"] == 1e-4
    assert clean.selection["score"] > 0.99


def test_selection_scores_a_slice_of_train():
    x, y = separable(500)
    seen = []

    def metric(pred, target):
        seen.append(target)
        return accuracy(pred, target)

    fit_head(
        x,
        y,
        HeadConfig(learning_rates=(1e-2,), weight_decays=(1e-4, 1.0)),
        seed=3,
        select_metric=metric,
    )
    assert len(seen) == 2 and all(len(t) == 50 for t in seen)
    np.testing.assert_array_equal(seen[0], seen[1])  # the same slice for every grid point


def test_too_small_train_is_recorded_not_fatal():
    x, y = separable(30)
    calls = []
    cfg = HeadConfig(learning_rates=(3e-2, 1e-3), weight_decays=(1e-3, 1.0))
    head = fit_head(x, y, cfg, seed=0, select_metric=lambda p, t: calls.append(1) or 0.0)
    assert calls == []
    assert head.selection == {
        "learning_rate": 3e-2,
        "weight_decay": 1e-3,
        "note": "no selection: 30 train rows < minimum 200",
    }
    assert head.predict(x).shape == (30, 4)
    assert accuracy(head.predict(x), y) > 0.9  # still trained


def test_same_seed_same_predictions_other_seed_differs():
    x, y = separable(600)
    cfg = HeadConfig(learning_rates=(1e-2,), weight_decays=(1e-2, 1.0), hidden=16)
    runs = [fit_head(x, y, cfg, seed=s, select_metric=accuracy).predict(x) for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_losses_equal_naive_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    t = torch.rand(5, 7, generator=g, dtype=torch.float64)
    t[0, :] = 0.0
    t[1, 2] = 1.0
    s = torch.sigmoid(z)
    bce = -(t * torch.log(s) + (1 - t) * torch.log(1 - s)).sum(1).mean()
    torch.testing.assert_close(head_loss("soft_multilabel", z, t), bce)
    labels = torch.tensor([0, 6, 3, 3, 1])
    ce = -(z.exp() / z.exp().sum(1, keepdim=True))[torch.arange(5), labels].log().mean()
    torch.testing.assert_close(head_loss("classification", z, labels), ce)
    mse = ((z[:, 0] - t[:, 0]) ** 2).mean()
    torch.testing.assert_close(head_loss("regression", z[:, :1], t[:, 0]), mse)


def test_bad_inputs_are_clear():
    with pytest.raises(ConfigError, match="kind"):
        HeadConfig(kind="ranking")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="holdout_fraction"):
        HeadConfig(holdout_fraction=1.0)
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="label -1 at row 2"):
        fit_head(x, [0, 1, -1, 0], HeadConfig(), seed=0, select_metric=accuracy)
    with pytest.raises(ValueError, match=r"label 2 at row 1 is outside \[0, 2\)"):
        fit_head(x, [0, 2, 1, 0], HeadConfig(), seed=0, select_metric=accuracy, num_outputs=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_head(
            x,
            np.full((4, 2), 1.5),
            HeadConfig(kind="soft_multilabel"),
            seed=0,
            select_metric=soft_score,
        )
    with pytest.raises(ValueError, match="expects 3 features"):
        fit_head(x, [0, 1, 1, 0], HeadConfig(), seed=0, select_metric=accuracy).predict(
            np.zeros((2, 5))
        )
