"""Heads on frozen features (`clippo.eval.heads`): each kind learns what it should, the exact
linear solvers (L-BFGS, ridge) equal scikit-learn's solutions, selection on a slice of train
picks the sensible grid point, tiny train sets are recorded, seeds reproduce, and the losses
equal naive formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from clippo.eval.heads import (
    ADAM_WEIGHT_DECAYS,
    LINEAR_WEIGHT_DECAYS,
    HeadConfig,
    SparseRows,
    fit_head,
    head_loss,
)
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
    assert head.selection == {  # the linear solver: no learning rate to record
        "solver": "lbfgs",
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


def _no_metric(pred: np.ndarray, target: np.ndarray) -> float:
    raise AssertionError("a single grid point is not scored")


def _logits(head, x: np.ndarray) -> np.ndarray:
    """The head's linear outputs on its standardised features, float64 [N, C]."""
    layer = head.module[0]
    xs = ((x - head.mean) / head.std).astype(np.float64)
    w = layer.weight.detach().numpy().astype(np.float64)
    return xs @ w.T + layer.bias.detach().numpy().astype(np.float64)


@pytest.mark.parametrize("wd", [1e-1, 1e-3])
def test_linear_classification_equals_sklearn_logistic_regression(wd):
    """The same objective (mean cross-entropy + wd/2 ||W||^2, biases free) is scikit-learn's
    multinomial LogisticRegression with C = 1 / (wd N): the same decision function."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d = 600, 20
    x = (rng.normal(size=(n, d)) * 3 + 1).astype(np.float32)  # overlapping classes
    y = (x @ rng.normal(size=(d, 3)) / 5 + rng.normal(size=(n, 3))).argmax(1)
    head = fit_head(x, y, HeadConfig(weight_decays=(wd,)), seed=0, select_metric=_no_metric)
    assert head.selection["solver"] == "lbfgs"
    xs = ((x - head.mean) / head.std).astype(np.float64)
    ref = LogisticRegression(C=1 / (wd * n), tol=1e-10, max_iter=10_000).fit(xs, y)
    ours, theirs = _logits(head, x), ref.decision_function(xs)

    def centred(z: np.ndarray) -> np.ndarray:  # softmax logits are defined up to a per-row shift
        return z - z.mean(1, keepdims=True)

    scale = np.abs(theirs).max()
    np.testing.assert_allclose(centred(ours), centred(theirs), atol=2e-4 * scale)
    np.testing.assert_allclose(head.predict(x), ref.predict_proba(xs), atol=3e-4)


@pytest.mark.parametrize("n, d", [(400, 30), (50, 200)])  # primal and dual (N < D) solves
@pytest.mark.parametrize("wd", [1.0, 1e-2, 0.0])
def test_linear_regression_is_ridge_in_closed_form(n, d, wd):
    """Mean squared error + wd/2 ||w||^2 on standardised features and targets is scikit-learn's
    Ridge with alpha = wd N / 2 (the minimum-norm least squares at wd 0)."""
    from sklearn.linear_model import LinearRegression, Ridge

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(n, d)) * 2 - 1).astype(np.float32)
    y = 5 + x @ rng.normal(size=d) + 3 * rng.normal(size=n)
    head = fit_head(
        x, y, HeadConfig(kind="regression", weight_decays=(wd,)), seed=0, select_metric=_no_metric
    )
    assert head.selection["solver"] == "ridge"
    xs = ((x - head.mean) / head.std).astype(np.float64)
    ts = (y - head.target_mean) / head.target_std
    ref = Ridge(alpha=wd * n / 2, solver="svd") if wd else LinearRegression()
    expected = ref.fit(xs, ts).predict(xs) * head.target_std + head.target_mean
    np.testing.assert_allclose(head.predict(x), expected, rtol=1e-5, atol=1e-4 * np.abs(y).max())


def test_linear_grid_ignores_learning_rates_and_warm_starts_to_the_same_solution():
    x, y = separable(1000, c=3)
    y[::7] = (y[::7] + 1) % 3  # label noise: the weight decays give different heads
    cfg = HeadConfig(learning_rates=(1e-2, 1e-3), weight_decays=(1e-3, 1.0, 1e-1, 1.0))
    seen = []

    def metric(pred: np.ndarray, target: np.ndarray) -> float:
        seen.append(pred)
        return accuracy(pred, target)

    head = fit_head(x, y, cfg, seed=0, select_metric=metric)
    assert [g["weight_decay"] for g in head.selection["grid"]] == [1e-3, 1.0, 1e-1]
    # each grid point keeps its own solution (the warm starts copy, never share, the weights)
    assert len(seen) == 3 and min(np.abs(a - b).max() for a, b in [seen[:2], seen[1:]]) > 1e-2
    assert "learning_rate" not in head.selection and head.selection["solver"] == "lbfgs"
    # the refit starts from the chosen point's solution on the 90%: the same optimum as a cold
    # start on all rows
    alone = HeadConfig(weight_decays=(head.selection["weight_decay"],))
    cold = fit_head(x, y, alone, seed=0, select_metric=_no_metric)
    np.testing.assert_allclose(_logits(head, x), _logits(cold, x), atol=1e-3)


def test_default_weight_decays_follow_the_solver():
    assert HeadConfig().decays() == LINEAR_WEIGHT_DECAYS
    assert HeadConfig(kind="regression").decays() == LINEAR_WEIGHT_DECAYS
    assert HeadConfig(hidden=8).decays() == ADAM_WEIGHT_DECAYS
    assert HeadConfig(kind="soft_multilabel").decays() == ADAM_WEIGHT_DECAYS
    assert len(HeadConfig().grid()) == 6 and len(HeadConfig(hidden=8).grid()) == 6
    assert HeadConfig(weight_decays=(0.5,)).decays() == (0.5,)


def test_linear_heads_repeat_exactly():
    x, y = separable(600)
    runs = [fit_head(x, y, HeadConfig(), seed=s, select_metric=accuracy) for s in (5, 5)]
    np.testing.assert_array_equal(runs[0].predict(x), runs[1].predict(x))
    assert runs[0].selection == runs[1].selection


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
    with pytest.raises(ConfigError, match="weight_decays"):
        HeadConfig(weight_decays=())
    with pytest.raises(ConfigError, match="tolerance"):
        HeadConfig(tolerance=0.0)
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


def test_fit_head_works_under_no_grad() -> None:
    # trainer hooks run under torch.no_grad(); fitting a head there must still train it
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    for hidden in (0, 16):
        config = HeadConfig(kind="classification", hidden=hidden, epochs=5, min_steps=50)
        with torch.no_grad():
            head = fit_head(x, y, config, seed=0, select_metric=lambda p, t: 0.0)
        assert (head.predict(x).argmax(1) == y).mean() > 0.9
