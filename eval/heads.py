"""Task heads trained on frozen features (GLUE, VQA): pure torch on the CPU, seeded.

`fit_head(x, y, config, seed=..., select_metric=...)` chooses the hyper-parameters on a slice
held out from TRAIN (never dev): each grid point is fitted on the rest of train and scored on
the slice with the caller's task metric; the best is refitted on all of train. A train set too
small for a slice (fewer than `min_holdout` held-out rows) is fitted with the first grid point
and says so in `FittedHead.selection`.

Solvers. Linear heads (`hidden=0`) of kind "classification" and "regression" solve their
convex objective exactly, so the grid is the weight decays alone (`learning_rates` is ignored)
and there is no step count to tune:
- "classification": full-batch L-BFGS in float32 (strong-Wolfe line search) until the largest
  gradient entry is below `tolerance` (or `max_iter` iterations), starting from zero; the grid
  is swept from the strongest weight decay down, each point warm-started from the previous
  solution, and the refit on all of train from the chosen point's. `selection["solver"] ==
  "lbfgs"`.
- "regression": ridge in closed form (a Cholesky solve in float64, the Gram matrix shared by
  the grid; least squares with the minimum norm at weight decay 0). `selection["solver"] ==
  "ridge"`.
The objective is the one below, so the solution equals scikit-learn's `LogisticRegression` /
`Ridge` on the standardised features with C = 1 / (weight_decay * N) / alpha = weight_decay *
N / 2. Everything else (hidden layers, soft_multilabel) trains with mini-batch Adam over a
(learning rate, weight decay) grid: on VQA-like soft targets (N = 5,000, D = 768, K = 3129,
weight decay 1e-4) full-batch L-BFGS measured 79 s for 20 iterations and a held-out soft score
of 0.098, where the Adam fit took 60 s to reach 0.143 (same loaded 2-core machine).

Kinds and losses (per row, averaged over rows; plus `weight_decay / 2 * ||W||^2` over the
weight matrices, biases excluded):
- "classification": y int [N] in [0, C); cross-entropy; `predict` -> softmax [N, C].
- "regression": y float [N]; MSE on standardised targets (undone at predict) -> [N].
- "soft_multilabel": y float [N, K] in [0, 1] (VQA's min(n/3, 1)); binary cross-entropy with
  soft targets summed over the K answers; `predict` -> sigmoid [N, K]. y may be a dense numpy
  array, a torch tensor, or sparse (a scipy.sparse matrix or a sparse torch tensor): sparse
  targets are kept in CSR form (`SparseRows`) and densified one mini-batch at a time, so
  VQA's K = 3129 answers over the whole train set cost no dense [N, K] copy. The held-out
  slice given to `select_metric` is dense, float32 [n_holdout, K].

Features are standardised with the statistics of the rows a head is fitted on. Everything
random (the slice, the initialisation, the shuffling) comes from `seed`; the linear solvers
start from zero, so there the seed only picks the slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clippo.typed_config import ConfigError

HeadKind = Literal["classification", "regression", "soft_multilabel"]
Targets: TypeAlias = "np.ndarray | SparseRows"
SelectMetric = Callable[[np.ndarray, np.ndarray], float]


# Linear classification/regression heads, strongest first after the default (the first point,
# used when there is nothing to select on; equal scores go to the earlier point). For
# standardised features and the mean loss, weight decay wd is scikit-learn's C = 1 / (wd * N):
# at N = 5,000 this spans C = 2e-4 .. 20, where LogisticRegressionCV's best Cs fall.
LINEAR_WEIGHT_DECAYS = (1e-2, 1.0, 1e-1, 1e-3, 1e-4, 1e-5)
# Mini-batch Adam heads (hidden layers, soft_multilabel): crossed with `learning_rates`.
ADAM_WEIGHT_DECAYS = (1e-2, 1e-4, 1.0)


@dataclass(frozen=True)
class HeadConfig:
    """How a head is trained (the module docstring says which solver a head gets).

    weight_decays: the grid (first point: the default without selection); None picks
    `LINEAR_WEIGHT_DECAYS` for the exact linear solvers and `ADAM_WEIGHT_DECAYS` for Adam.
    L-BFGS (linear classification): at most `max_iter` iterations, until the largest gradient
    entry is below `tolerance`. Adam only: `learning_rates` (crossed with the weight decays,
    learning rate first; ignored by the linear solvers), `epochs` passes over the rows and at
    least `min_steps` steps of `batch_size` rows, a cosine-decayed learning rate."""

    kind: HeadKind = "classification"
    learning_rates: tuple[float, ...] = (1e-2, 1e-3)  # the first of each: the default
    weight_decays: tuple[float, ...] | None = None
    epochs: int = 20
    min_steps: int = 200
    batch_size: int = 256
    holdout_fraction: float = 0.1
    min_holdout: int = 20
    hidden: int = 0  # width of one GELU hidden layer; 0 = a linear head
    max_iter: int = 500
    tolerance: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in get_args(HeadKind):
            raise ConfigError(f"kind={self.kind!r}: expected one of {get_args(HeadKind)}")
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise ConfigError(f"learning_rates={self.learning_rates}: need values > 0")
        if self.weight_decays is not None and (
            not self.weight_decays or any(not 0 <= wd < math.inf for wd in self.weight_decays)
        ):
            raise ConfigError(f"weight_decays={self.weight_decays}: need values >= 0")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction={self.holdout_fraction} must be in (0, 1)")
        for name in ("epochs", "batch_size", "min_holdout", "max_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.min_steps < 0 or self.hidden < 0:
            raise ConfigError("min_steps and hidden must be >= 0")
        if not self.tolerance > 0:
            raise ConfigError(f"tolerance={self.tolerance} must be > 0")

    @property
    def solver(self) -> Literal["lbfgs", "ridge", "adam"]:
        if self.hidden == 0 and self.kind == "classification":
            return "lbfgs"
        if self.hidden == 0 and self.kind == "regression":
            return "ridge"
        return "adam"

    def decays(self) -> tuple[float, ...]:
        """The weight-decay grid, the default resolved for the solver."""
        if self.weight_decays is not None:
            return self.weight_decays
        return ADAM_WEIGHT_DECAYS if self.solver == "adam" else LINEAR_WEIGHT_DECAYS

    def grid(self) -> list[tuple[float, float]]:
        """(learning rate, weight decay) points; the linear solvers' learning rate is the
        first (unused) and their weight decays appear once each."""
        if self.solver == "adam":
            return list(product(self.learning_rates, self.decays()))
        return [(self.learning_rates[0], wd) for wd in dict.fromkeys(self.decays())]


@dataclass
class FittedHead:
    """A trained head with the standardisation it was trained under."""

    kind: HeadKind
    module: nn.Module
    mean: np.ndarray  # float32 [D]
    std: np.ndarray  # float32 [D]
    target_mean: float = 0.0  # regression: predictions are module(x) * target_std + target_mean
    target_std: float = 1.0
    selection: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """x float [N, D] -> softmax [N, C] / values [N] / sigmoid [N, K], float32."""
        x = _features(x)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"head expects {len(self.mean)} features, got {x.shape[1]}")
        self.module.eval()
        out = []
        for lo in range(0, max(len(x), 1), batch_size):  # one empty batch keeps the shape
            z = self.module(torch.from_numpy((x[lo : lo + batch_size] - self.mean) / self.std))
            if self.kind == "classification":
                z = z.softmax(-1)
            elif self.kind == "soft_multilabel":
                z = z.sigmoid()
            else:
                z = z[:, 0] * self.target_std + self.target_mean
            out.append(z.numpy())
        return np.concatenate(out)


def head_loss(kind: HeadKind, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows: cross-entropy (targets int [B]), squared error (float [B]), or binary
    cross-entropy with soft targets summed over the K answers (float [B, K])."""
    if kind == "classification":
        return F.cross_entropy(outputs, targets)
    if kind == "regression":
        return F.mse_loss(outputs[:, 0], targets)
    bce = F.binary_cross_entropy_with_logits(outputs, targets, reduction="sum")
    return bce / outputs.shape[0]


def _features(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(
            f"features hold NaN or inf (row {int(np.argwhere(~np.isfinite(x))[0, 0])})"
        )
    return x


@dataclass(frozen=True)
class SparseRows:
    """Soft targets [N, K] in CSR form (numpy only: scipy is not a dependency of clippo)."""

    indptr: np.ndarray  # int64 [N + 1]
    indices: np.ndarray  # int64 [nnz], the answer of each stored value
    data: np.ndarray  # float32 [nnz]
    shape: tuple[int, int]

    @classmethod
    def of(cls, y: Any) -> SparseRows:
        """From a scipy.sparse matrix (anything with `tocsr()`) or a sparse torch tensor."""
        if isinstance(y, torch.Tensor):
            coo = y.detach().cpu().to_sparse_coo().coalesce()  # sorted by row, duplicates summed
            (row, indices), data = coo.indices().numpy(), coo.values().numpy()
            indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=y.shape[0]))])
        else:
            csr = y.tocsr()
            csr.sum_duplicates()
            indptr, indices, data = csr.indptr, csr.indices, csr.data
        shape = (int(y.shape[0]), int(y.shape[1]))
        return cls(
            indptr.astype(np.int64), indices.astype(np.int64), data.astype(np.float32), shape
        )

    def __len__(self) -> int:
        return self.shape[0]

    def _positions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(stored values per row, positions of the rows' stored values in order)."""
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        first = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        return counts, first + np.arange(int(counts.sum()))

    def take(self, rows: np.ndarray) -> SparseRows:
        """The given rows, still sparse."""
        counts, pos = self._positions(rows)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return SparseRows(indptr, self.indices[pos], self.data[pos], (len(rows), self.shape[1]))

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), K] of the given rows, in that order."""
        counts, pos = self._positions(rows)
        out = np.zeros((len(rows), self.shape[1]), np.float32)
        out[np.repeat(np.arange(len(rows)), counts), self.indices[pos]] = self.data[pos]
        return out


def _targets(y: Any, kind: HeadKind, n: int, num_outputs: int | None) -> tuple[Targets, int]:
    """Validated targets (int64 [N] / float32 [N] / float32 [N, K] dense or `SparseRows`) and
    the number of outputs."""
    if kind == "soft_multilabel":
        sparse = hasattr(y, "tocsr") or (isinstance(y, torch.Tensor) and y.layout != torch.strided)
        if isinstance(y, torch.Tensor) and not sparse:
            y = y.detach().cpu().numpy()
        t = SparseRows.of(y) if sparse else np.asarray(y, np.float32)
        values = t.data if isinstance(t, SparseRows) else t
        if len(t.shape) != 2 or t.shape[0] != n:
            raise ValueError(f"soft targets must be [{n}, K], got shape {list(t.shape)}")
        if not bool(((values >= 0) & (values <= 1)).all()):
            raise ValueError("soft targets must lie in [0, 1]")
        return t, t.shape[1]
    t = np.asarray(y)
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"targets must be [{n}], got shape {list(t.shape)}")
    if kind == "regression":
        if not np.isfinite(t.astype(np.float64)).all():
            raise ValueError("regression targets hold NaN or inf")
        return t.astype(np.float32), 1
    if not np.issubdtype(t.dtype, np.integer) and not (t == np.round(t)).all():
        raise ValueError(f"class labels must be integers, got {t.dtype}")
    t = t.astype(np.int64)
    width = int(t.max()) + 1 if num_outputs is None else num_outputs
    bad = np.flatnonzero((t < 0) | (t >= width))
    if len(bad):
        raise ValueError(f"label {t[bad[0]]} at row {bad[0]} is outside [0, {width})")
    return t, width


def _take(t: Targets, rows: np.ndarray) -> Targets:
    return t.take(rows) if isinstance(t, SparseRows) else t[rows]


def _dense(t: Targets, rows: np.ndarray) -> np.ndarray:
    return t.dense(rows) if isinstance(t, SparseRows) else t[rows]


def _module(d: int, out: int, hidden: int, gen: torch.Generator) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(d, hidden), nn.GELU()] if hidden else []
    layers.append(nn.Linear(hidden or d, out))
    module = nn.Sequential(*layers)
    with torch.no_grad():  # torch's default range, drawn from the seeded generator
        for layer in module:
            if isinstance(layer, nn.Linear):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
    return module


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (mean [D], std [D]) of the rows a head is fitted on; constant features keep
    std 1 (they standardise to 0)."""
    std = x.std(0)
    return x.mean(0), np.where(std > 1e-6, std, 1.0).astype(np.float32)


LinearState: TypeAlias = "tuple[torch.Tensor, torch.Tensor]"  # weight [C, D], bias [C]


def _ridge(xs: torch.Tensor, t: torch.Tensor, wds: list[float]) -> list[LinearState]:
    """argmin_w,b mean((xs w + b - t)^2) + wd / 2 ||w||^2 in closed form for each wd, float64:
    (Xc^T Xc + wd N / 2 I) w = Xc^T tc on centred rows (the N x N dual when N < D), the Gram
    matrix computed once for all of `wds` (it is most of the cost)."""
    xs, t = xs.double(), t.double()
    n, d = xs.shape
    x_mean, t_mean = xs.mean(0), t.mean()
    xc, tc = xs - x_mean, (t - t_mean)[:, None]
    primal = n >= d
    gram = xc.T @ xc if primal else xc @ xc.T
    rhs = xc.T @ tc if primal else tc
    out = []
    for wd in wds:
        alpha = wd * n / 2
        if alpha > 0:
            chol, info = torch.linalg.cholesky_ex(gram + alpha * torch.eye(len(gram)).double())
        if alpha > 0 and int(info) == 0:
            sol = torch.cholesky_solve(rhs, chol)
            w = sol if primal else xc.T @ sol
        else:  # weight decay 0 (or too ill-conditioned to factor): least squares, minimum norm
            eye = math.sqrt(alpha) * torch.eye(d).double()
            aug = torch.cat([xc, eye]) if alpha > 0 else xc
            target = torch.cat([tc, torch.zeros(d, 1).double()]) if alpha > 0 else tc
            w = torch.linalg.lstsq(aug, target, driver="gelsd").solution
        w = w[:, 0]
        out.append((w[None, :], (t_mean - x_mean @ w)[None]))
    return out


def _lbfgs(
    xs: torch.Tensor,
    labels: torch.Tensor,
    out: int,
    wd: float,
    cfg: HeadConfig,
    start: LinearState | None,
) -> LinearState:
    """argmin_W,b cross_entropy(xs W^T + b, labels) + wd / 2 ||W||^2, full-batch L-BFGS from
    `start` (zeros when None)."""
    d = xs.shape[1]
    # the weight is optimised as [D, C]: xs @ w is a plain (not transposed) product, measured
    # 2x faster than xs @ W^T for C = 3 on one thread
    if start is None:
        w, b = torch.zeros(d, out, dtype=xs.dtype), torch.zeros(out, dtype=xs.dtype)
    else:
        w = start[0].T.to(xs.dtype).clone(memory_format=torch.contiguous_format)
        b = start[1].to(xs.dtype).clone()
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=cfg.max_iter,
        max_eval=cfg.max_iter * 5 // 4,
        tolerance_grad=cfg.tolerance,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    n = len(xs)
    onehot = F.one_hot(labels, out).to(xs.dtype)

    @torch.no_grad()
    def closure() -> torch.Tensor:
        # the gradient by hand: autograd's W gradient (xs^T G) measured 2x the time of G^T xs
        z = torch.addmm(b, xs, w)
        logp = z.log_softmax(1)
        loss = -(logp * onehot).sum() / n
        g = (logp.exp() - onehot) / n  # d loss / d z, [N, C]
        w.grad = (g.T @ xs).T.contiguous()
        b.grad = g.sum(0)
        if wd:
            loss = loss + wd / 2 * (w * w).sum()
            w.grad.add_(w, alpha=wd)
        return loss

    opt.step(closure)
    return w.detach().T, b.detach()


def _fit_linear(
    x: np.ndarray,
    t: Targets,
    out: int,
    cfg: HeadConfig,
    wds: list[float],
    start: LinearState | None,
) -> list[tuple[FittedHead, LinearState]]:
    """Linear heads on all rows of (x, t), one per weight decay, solved exactly, each with its
    solution (standardised coordinates) to warm-start a later fit from. L-BFGS starts each
    weight decay from the previous one's solution (the first from `start`)."""
    assert isinstance(t, np.ndarray)
    mean, std = _standardise(x)
    # L-BFGS in float32: at 5,000 x 768 x 3 classes it measured 1.6x faster than float64 and
    # the same probabilities to 1e-6; ridge's normal equations want float64
    dtype = torch.float64 if cfg.kind == "regression" else torch.float32
    xs = torch.from_numpy(x).to(dtype, copy=True)  # one copy, standardised in place
    xs.sub_(torch.from_numpy(mean)).div_(torch.from_numpy(std))
    t_mean, t_std = 0.0, 1.0
    if cfg.kind == "regression":  # standardised targets, as the Adam path (and its wd scale)
        t_mean, t_std = float(t.mean()), float(t.std()) or 1.0
        states = _ridge(xs, torch.from_numpy((t.astype(np.float64) - t_mean) / t_std), wds)
    else:
        labels, states = torch.from_numpy(t), []
        for wd in wds:
            start = _lbfgs(xs, labels, out, wd, cfg, start)
            states.append(start)
    heads = []
    for state in states:
        layer = nn.Linear(x.shape[1], out)
        with torch.no_grad():
            layer.weight.copy_(state[0])
            layer.bias.copy_(state[1])
        head = FittedHead(cfg.kind, nn.Sequential(layer), mean, std, t_mean, t_std)
        heads.append((head, state))
    return heads


def _train(
    x: np.ndarray, t: Targets, out: int, cfg: HeadConfig, lr: float, wd: float, seed: int
) -> FittedHead:
    """One head on all rows of (x, t) with fixed hyper-parameters, mini-batch Adam."""
    mean, std = _standardise(x)
    xs = torch.from_numpy((x - mean) / std)
    t_mean, t_std = 0.0, 1.0
    if cfg.kind == "regression":  # standardised targets: one learning-rate grid for any scale
        assert isinstance(t, np.ndarray)
        t_mean, t_std = float(t.mean()), float(t.std()) or 1.0
        t = (t - t_mean) / t_std
    gen = torch.Generator().manual_seed(seed)
    module = _module(x.shape[1], out, cfg.hidden, gen)
    weights = [p for name, p in module.named_parameters() if name.endswith("weight")]
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    n, bs = len(x), min(cfg.batch_size, len(x))
    per_epoch = math.ceil(n / bs)
    steps = max(cfg.epochs * per_epoch, cfg.min_steps)
    module.train()
    for step in range(steps):
        if step % per_epoch == 0:  # shuffle once per epoch; batches are then plain slices
            order = torch.randperm(n, generator=gen).numpy()
            x_epoch = xs[order]
        lo = (step % per_epoch) * bs
        for group in opt.param_groups:  # cosine decay to 0 over the run
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        target = torch.from_numpy(_dense(t, order[lo : lo + bs]))
        loss = head_loss(cfg.kind, module(x_epoch[lo : lo + bs]), target)
        if wd:
            loss = loss + wd / 2 * sum((w**2).sum() for w in weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return FittedHead(cfg.kind, module, mean, std, t_mean, t_std)


@torch.enable_grad()  # callable from code running under no_grad (e.g. a trainer's eval hook)
def fit_head(
    x_train: np.ndarray,
    y_train: Any,
    config: HeadConfig,
    *,
    seed: int,
    select_metric: SelectMetric,
    num_outputs: int | None = None,
) -> FittedHead:
    """Select hyper-parameters on a held-out slice of train, then fit on all of train.

    x_train float [N, D]; y_train as the module docstring says for `config.kind`.
    `select_metric(predict(x_slice), y_slice) -> float`, higher is better (y_slice: y_train's
    rows as a numpy array, dense also for sparse soft targets). `num_outputs` fixes the number of
    classes (default: the largest label + 1). `selection` records the chosen point, the grid's
    scores and the slice size, or a note saying why there was no selection; the linear solvers'
    records name the solver and leave out the (unused) learning rate.
    """
    x = _features(x_train)
    if len(x) == 0:
        raise ValueError("cannot fit a head on an empty train set")
    t, out = _targets(y_train, config.kind, len(x), num_outputs)
    grid = config.grid()
    linear = config.solver != "adam"

    def point(i: int) -> dict[str, Any]:
        if linear:
            return {"solver": config.solver, "weight_decay": grid[i][1]}
        return {"learning_rate": grid[i][0], "weight_decay": grid[i][1]}

    n_hold = int(len(x) * config.holdout_fraction)
    need = math.ceil(config.min_holdout / config.holdout_fraction)
    best, selection, start = 0, dict[str, Any](), None
    if len(grid) == 1:
        selection = {"note": "no selection: a single grid point"}
    elif n_hold < config.min_holdout:
        selection = {"note": f"no selection: {len(x)} train rows < minimum {need}"}
    else:
        perm = np.random.default_rng(seed).permutation(len(x))
        hold, rest = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        x_rest, t_rest = x[rest], _take(t, rest)
        if linear:  # the strongest weight decay first: each L-BFGS start is near its optimum
            order = sorted(range(len(grid)), key=lambda i: -grid[i][1])
            fits = _fit_linear(x_rest, t_rest, out, config, [grid[i][1] for i in order], None)
            heads = dict(zip(order, [h for h, _ in fits], strict=True))
            states = dict(zip(order, [s for _, s in fits], strict=True))
        else:
            heads = {
                i: _train(x_rest, t_rest, out, config, lr, wd, seed)
                for i, (lr, wd) in enumerate(grid)
            }
        scores = [
            float(select_metric(heads[i].predict(x[hold]), _dense(t, hold)))
            for i in range(len(grid))
        ]
        finite = [s if math.isfinite(s) else -math.inf for s in scores]
        best = int(np.argmax(finite))  # the first of equal scores
        grid_record = [{**point(i), "score": scores[i]} for i in range(len(grid))]
        for g in grid_record:
            g.pop("solver", None)
        selection = {"score": scores[best], "holdout_rows": n_hold, "grid": grid_record}
        start = states[best] if linear else None
    if linear:  # the refit starts from the chosen point's solution on the rest of train
        head = _fit_linear(x, t, out, config, [grid[best][1]], start)[0][0]
    else:
        head = _train(x, t, out, config, grid[best][0], grid[best][1], seed)
    head.selection = {**point(best), **selection}
    return head


__all__ = [
    "ADAM_WEIGHT_DECAYS",
    "LINEAR_WEIGHT_DECAYS",
    "FittedHead",
    "HeadConfig",
    "HeadKind",
    "SparseRows",
    "fit_head",
    "head_loss",
]
