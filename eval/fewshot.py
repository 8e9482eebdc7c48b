"""Few-shot linear probe, as big_vision's `evaluators/fewshot_lsr.py` runs it ("ImageNet 10-shot").

    probe = fit_probe(x_train, y_train, num_classes)        # closed-form ridge, +-1 targets
    acc = probe_accuracy(probe, x_test, y_test)
    per_shot = fewshot_accuracies(x_tr, y_tr, x_te, y_te, C)  # {shots: [acc per seed]}
    result = run_fewshot(model, train_data, eval_data, FewshotOptions())

The protocol (big_vision `fewshot_lsr.py` and `configs/common_fewshot.py`):
- representation `img/pre_logits`: the MAP head's output before `head` (`CLIPPO.pooled`);
- images `decode|resize(256)|central_crop(224)|value_range(-1, 1)` on both sides (zero-shot and
  retrieval use `resize(224)` alone); for a model at S px the sizes scale to S*8//7 and S;
- shots: per seed, `rng = np.random.default_rng(seed)`, then for each class in label order a
  permutation of that class's train indices; a k-shot set is the first k of each (so the 1-shot
  set is inside the 5-shot set; a class with fewer than k images gives all it has);
- features standardised with the k-shot set's mean and population std (+ 1e-5), then a constant
  feature 100 appended as the bias (large, so its weight is almost unregularised);
- targets one-hot rescaled to {-1, +1}; weights `(X^T X + l2 I)^-1 X^T Y` (or the equal
  `X^T (X X^T + l2 I)^-1 Y` when there are fewer points than features), `l2 = 2**10`;
- prediction: the argmax of `x_test @ W` (ties: the lower class); accuracy on the whole test set.
  Shots 1, 5, 10, 25 and seeds 0, 1, 2; big_vision logs each seed, we add mean and std.

Arithmetic: float64 for the fit (one solve of size min(N, D + 1); X^T Y from per-class sums of
the rows, not a product with the dense +-1 matrix), then the standardisation folded into the
weights so that the test features are scored by one float32 product, as big_vision scores in
float32. `benchmarks/fewshot.py` times it against the textbook solvers.

big_vision featurises the whole train split first; only the labels decide which images are drawn,
so `run_fewshot` featurises just the drawn ones (at most classes x max shots x seeds), which gives
the same numbers. An undecodable train image is dropped from the split and the shots drawn again
(the result is big_vision's on the split without that file); undecodable eval images are dropped.
All of it is listed in the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from clippo.eval.datasets import LabelledImages

__all__ = [
    "BIAS_CONSTANT",
    "DEFAULT_SHOTS",
    "L2_REG",
    "FewshotOptions",
    "LinearProbe",
    "central_crop",
    "fewshot_accuracies",
    "fewshot_crop",
    "fit_probe",
    "parse_shots",
    "probe_accuracy",
    "run_fewshot",
    "sample_shots",
    "table_rows",
]

L2_REG = 2.0**10  # big_vision's configs/common_fewshot.py
BIAS_CONSTANT = 100.0  # fewshot_lsr.py: the appended constant feature
STD_EPS = 1e-5  # added to the feature std before dividing
DEFAULT_SHOTS = (1, 5, 10, 25)


# ---- the probe: pure functions -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LinearProbe:
    """A fitted probe. mean, std float64 [D]: the standardisation of the shots; weights float64
    [D + 1, C] on the standardised features with the bias feature (`BIAS_CONSTANT`) last."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[1])

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(coef float64 [D, C], intercept [C]) with `x @ coef + intercept` equal to the scores of
        the standardised, bias-augmented x: the test set is then never standardised itself."""
        w, b = self.weights[:-1], self.weights[-1]
        coef = w / self.std[:, None]
        return coef, BIAS_CONSTANT * b - (self.mean / self.std) @ w

    def scores(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """float32 [N, C] class scores of features x [N, D] (float32 products, in row chunks)."""
        x = _features(x, "x")
        if x.shape[1] != len(self.mean):
            raise ValueError(f"features are {x.shape[1]}-d, the probe was fit on {len(self.mean)}")
        coef, intercept = (a.astype(np.float32) for a in self.folded())
        out = np.empty((len(x), self.num_classes), np.float32)
        for lo in range(0, len(x), chunk):
            out[lo : lo + chunk] = x[lo : lo + chunk].astype(np.float32) @ coef + intercept
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """int64 [N]: the argmax of `scores` (ties to the lower class)."""
        return self.scores(x).argmax(axis=1)


def _features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be float features [N, D], got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _labels(y: np.ndarray, n: int, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer labels [{n}], got {y.dtype} {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes}), got {y.min()}..{y.max()}")
    return y.astype(np.int64, copy=False)


def augment(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float64 [N, D + 1]: `(x - mean) / std` with the bias feature `BIAS_CONSTANT` appended."""
    z = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([z, np.full((len(z), 1), BIAS_CONSTANT)], axis=1)


def _at_targets(z: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """A^T Y [D + 1, C] for A = [z, BIAS_CONSTANT] (rows sorted by their labels y) and the +-1
    one-hot Y, without forming Y: 2 * (per-class row sums)^T minus the column sums, O(N D)
    instead of the O(N D C) product (at 1,000 classes that would cost more than A^T A)."""
    starts = np.flatnonzero(np.r_[True, y[1:] != y[:-1]])  # y is sorted (fit_probe)
    sums = np.zeros((num_classes, z.shape[1]))
    sums[y[starts]] = np.add.reduceat(z, starts, axis=0)
    counts = np.bincount(y, minlength=num_classes)
    bias = BIAS_CONSTANT * (2.0 * counts - len(y))
    return np.vstack([2.0 * sums.T - z.sum(axis=0)[:, None], bias[None]])


def fit_probe(
    x: np.ndarray, labels: np.ndarray, num_classes: int, l2_reg: float = L2_REG
) -> LinearProbe:
    """big_vision's closed-form L2-regularised least squares: features x [N, D], labels int [N]
    in [0, num_classes) -> LinearProbe (see the module docstring for the formula).

    Computed in float64 with one linear solve of size min(N, D + 1); the N < D + 1 branch is
    the kernel form of the same solution. The bias column is never materialised: its blocks of
    A^T A (or A A^T) and A^T Y are written in directly."""
    x = _features(x, "x")
    if len(x) == 0:
        raise ValueError("fit_probe needs at least one example")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not l2_reg > 0:
        raise ValueError(f"l2_reg must be > 0, got {l2_reg}")
    y = _labels(labels, len(x), num_classes, "labels")
    n, d = x.shape
    # rows sorted by class (the solution does not depend on their order) for `_at_targets`;
    # the copy is standardised in place (N x D features can be large)
    order = np.argsort(y, kind="stable")
    y = y[order]
    z = x[order].astype(np.float64)
    mean = z.mean(axis=0)
    z -= mean
    std = np.sqrt(np.einsum("ij,ij->j", z, z) / n) + STD_EPS  # population std, as jnp.std
    z /= std
    if n >= d + 1:  # (A^T A + l2 I)^-1 A^T Y: a [D+1, D+1] system
        gram = np.empty((d + 1, d + 1))
        gram[:d, :d] = z.T @ z
        gram[:d, d] = gram[d, :d] = BIAS_CONSTANT * z.sum(axis=0)
        gram[d, d] = BIAS_CONSTANT**2 * n
        gram[np.diag_indices(d + 1)] += l2_reg
        weights = np.linalg.solve(gram, _at_targets(z, y, num_classes))
    else:  # A^T (A A^T + l2 I)^-1 Y: an [N, N] system
        targets = np.full((n, num_classes), -1.0)
        targets[np.arange(n), y] = 1.0
        kernel = z @ z.T + BIAS_CONSTANT**2
        kernel[np.diag_indices(n)] += l2_reg
        dual = np.linalg.solve(kernel, targets)  # [N, C]
        weights = np.vstack([z.T @ dual, BIAS_CONSTANT * dual.sum(axis=0)[None]])
    return LinearProbe(mean=mean, std=std, weights=weights)


def probe_accuracy(probe: LinearProbe, x: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of test features x [N, D] whose predicted class equals labels [N]."""
    x = _features(x, "x")
    if len(x) == 0:
        raise ValueError("probe_accuracy needs at least one test example")
    y = _labels(labels, len(x), probe.num_classes, "labels")
    return float(np.mean(probe.predict(x) == y))


def sample_shots(
    labels: np.ndarray, num_classes: int, shots: Sequence[int], seed: int
) -> dict[int, np.ndarray]:
    """big_vision's draw: {k: int64 indices into labels [N]} for each k in shots, the first k of a
    per-class permutation made with `np.random.default_rng(seed)`, classes in label order.
    Deterministic in (labels, seed); nested in k; a class with fewer than k examples gives all."""
    y = _labels(labels, len(np.asarray(labels)), num_classes, "labels")
    for k in shots:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"shots must be positive integers, got {k!r}")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(num_classes)]
    return {
        int(k): np.concatenate([p[: int(k)] for p in per_class]).astype(np.int64) for k in shots
    }


def fewshot_accuracies(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: int = 3,
    l2_reg: float = L2_REG,
) -> dict[int, list[float]]:
    """The protocol on features: {k: [test accuracy for seed 0, 1, ...]} for each k in shots.
    x_train [N, D] with labels [N] is the pool the shots are drawn from; x_test [M, D]."""
    out: dict[int, list[float]] = {int(k): [] for k in shots}
    for seed in range(seeds):
        for k, idx in sample_shots(y_train, num_classes, shots, seed).items():
            probe = fit_probe(x_train[idx], y_train[idx], num_classes, l2_reg)
            out[k].append(probe_accuracy(probe, x_test, y_test))
    return out


def parse_shots(text: str) -> tuple[int, ...]:
    """ "1,5,10,25" -> (1, 5, 10, 25): positive integers, sorted, each once."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"shots {text!r}: expected a comma list of positive integers") from None
    if not values or min(values) < 1:
        raise ValueError(f"shots {text!r}: expected a comma list of positive integers")
    return tuple(sorted(set(values)))


# ---- images -> pre_logits -----------------------------------------------------------------------


def central_crop(image: np.ndarray, size: int) -> np.ndarray:
    """big_vision `central_crop(size)`: [H, W, C] -> [size, size, C] at offset ((H-size)//2,
    (W-size)//2)."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from an image of {h}x{w}")
    dy, dx = (h - size) // 2, (w - size) // 2
    return image[dy : dy + size, dx : dx + size]


def fewshot_crop(image_size: int) -> int:
    """The resize before the central crop: 256 for 224 px (big_vision), S * 8 // 7 for S px."""
    return image_size * 8 // 7


@dataclass(frozen=True)
class FewshotOptions:
    """What `run_fewshot` evaluates. resize: the side before the central crop to the model's
    size (0: `fewshot_crop`, 256 at 224 px); max_eval_examples: evaluate on this many evenly
    spaced eval images (0: all)."""

    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: int = 3
    l2_reg: float = L2_REG
    resize: int = 0
    batch_size: int = 64
    num_workers: int = 4
    max_eval_examples: int = 0

    def __post_init__(self) -> None:
        if not self.shots or any(int(k) != k or k < 1 for k in self.shots):
            raise ValueError(f"shots={self.shots!r}: positive integers, at least one")
        if self.seeds < 1 or self.batch_size < 1:
            raise ValueError("seeds and batch_size must be >= 1")
        if not self.l2_reg > 0:
            raise ValueError(f"l2_reg={self.l2_reg} must be > 0")
        if self.resize < 0 or self.num_workers < 0 or self.max_eval_examples < 0:
            raise ValueError("resize, num_workers and max_eval_examples must be >= 0")


class _Loader:
    """Items of a LabelledImages (by index) -> uint8 [B, S, S, 3] few-shot crops; an image that
    cannot be decoded becomes a blank crop and is recorded in `failed` (index -> reason)."""

    def __init__(self, data: LabelledImages, resize: int, size: int, workers: int) -> None:
        self.data, self.resize, self.size = data, resize, size
        self.pool = ThreadPoolExecutor(max(1, workers))
        self.failed: dict[int, str] = {}

    def _one(self, i: int) -> np.ndarray | str:
        from clippo.eval.datasets import decode_resized
        from clippo.preprocess import resize_uint8

        images = self.data.images
        if isinstance(images, np.ndarray):
            im: np.ndarray | str = resize_uint8(images[i], self.resize)
        else:  # a file, or encoded bytes (a Hugging Face image column)
            im = decode_resized(images[i], self.resize)
        return im if isinstance(im, str) else central_crop(im, self.size)

    def __call__(self, batch: Sequence[int]) -> np.ndarray:
        out = np.zeros((len(batch), self.size, self.size, 3), np.uint8)
        for j, (i, im) in enumerate(zip(batch, self.pool.map(self._one, batch))):
            if isinstance(im, str):
                self.failed[int(i)] = im
            else:
                out[j] = im
        return out


def _pre_logits(
    model: Any,
    data: LabelledImages,
    indices: Sequence[int],
    options: FewshotOptions,
    device: Any,
    desc: str,
    progress: bool | None,
) -> tuple[np.ndarray, dict[int, str]]:
    """(float32 [len(indices), width] pre_logits (undecodable rows hold junk), {index: reason})."""
    from clippo.eval.features import extract_features

    size = model.config.vit.image_size
    loader = _Loader(data, options.resize or fewshot_crop(size), size, options.num_workers)
    try:
        feats = extract_features(
            model,
            list(indices),
            loader,
            batch_size=options.batch_size,
            device=device,
            desc=desc,
            progress=progress,
        )
    finally:
        loader.pool.shutdown()
    return feats, loader.failed


def _check_classes(train: LabelledImages, test: LabelledImages) -> None:
    if tuple(train.class_names) != tuple(test.class_names):
        diff = [
            (i, a, b) for i, (a, b) in enumerate(zip(train.class_names, test.class_names)) if a != b
        ][:3]
        raise ValueError(
            f"the train side {train.source} has {len(train.class_names)} classes and the eval "
            f"side {test.source} {len(test.class_names)}; they must be the same classes in the "
            f"same order (first differences: {diff})"
        )


def _summary(values: list[float]) -> dict[str, Any]:
    return {"seeds": values, "mean": float(np.mean(values)), "std": float(np.std(values))}


def run_fewshot(
    model: Any,
    train: LabelledImages,
    test: LabelledImages,
    options: FewshotOptions = FewshotOptions(),
    *,
    device: Any = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The few-shot probe of a CLIPPO model: shots drawn from `train`, accuracy on `test` (the
    same classes in the same order). Returns the `results.json` body: `metrics.<k>shot` =
    {seeds, mean, std} per k, `protocol` (shots, seeds, l2_reg, sizes), and per side the
    source, the image and class counts, the skipped images with their reasons, and (train) the
    number featurised and the classes with fewer images than the largest k."""
    _check_classes(train, test)
    num_classes = len(train.class_names)
    if options.max_eval_examples:
        from clippo.eval.datasets import evenly_spaced

        test = test.subset(evenly_spaced(len(test), options.max_eval_examples))
    size = model.config.vit.image_size
    resize = options.resize or fewshot_crop(size)
    if resize < size:
        raise ValueError(f"resize={resize} is smaller than the model's {size} px crop")

    # train: featurise only the drawn images; drop undecodable ones and draw again
    usable = np.ones(len(train), bool)
    cache: dict[int, np.ndarray] = {}
    skipped_train: dict[int, str] = {}
    while True:
        pool = np.flatnonzero(usable)
        draws = [
            {
                k: pool[idx]
                for k, idx in sample_shots(
                    train.labels[pool], num_classes, options.shots, seed
                ).items()
            }
            for seed in range(options.seeds)
        ]
        drawn = np.unique(np.concatenate([i for d in draws for i in d.values()]))
        need = [int(i) for i in drawn if int(i) not in cache]
        if not need:
            break
        feats, failed = _pre_logits(
            model, train, need, options, device, f"few-shot train ({len(need)})", progress
        )
        for row, i in enumerate(need):
            if i not in failed:
                cache[i] = feats[row]
        for i, reason in failed.items():
            usable[i] = False
            skipped_train[i] = reason
        if failed:
            log(f"few-shot: {len(failed)} train images could not be decoded; drawing again")
    if not cache:
        raise ValueError(f"{train.source}: no train image could be used")

    feats, failed = _pre_logits(
        model, test, range(len(test)), options, device, "few-shot eval", progress
    )
    keep = np.array([i for i in range(len(test)) if i not in failed], dtype=np.int64)
    if len(keep) == 0:
        raise ValueError(f"{test.source}: none of the {len(test)} eval images could be decoded")
    x_test, y_test = feats[keep], test.labels[keep]

    metrics: dict[str, Any] = {}
    per_shot: dict[int, list[float]] = {int(k): [] for k in options.shots}
    for draw in draws:
        for k, idx in draw.items():
            x = np.stack([cache[int(i)] for i in idx])
            probe = fit_probe(x, train.labels[idx], num_classes, options.l2_reg)
            per_shot[k].append(probe_accuracy(probe, x_test, y_test))
    for k, values in per_shot.items():
        metrics[f"{k}shot"] = _summary(values)
        log(f"few-shot {k}-shot: {np.mean(values):.4f} (mean of {options.seeds} seeds)")
    counts = np.bincount(train.labels[usable], minlength=num_classes)
    largest = max(options.shots)
    short = [
        {"class": train.class_names[c], "images": int(n)}
        for c, n in enumerate(counts)
        if n < largest
    ]
    return {
        "metrics": metrics,
        "protocol": {
            "shots": list(options.shots),
            "seeds": options.seeds,
            "l2_reg": options.l2_reg,
            "representation": "img/pre_logits",
            "preprocess": f"resize({resize})|central_crop({size})|value_range(-1,1)",
        },
        "train": {
            "source": train.source,
            "images": len(train),
            "classes": num_classes,
            "featurised": len(cache),
            "classes_short_of_shots": short,
            **_skipped(train, skipped_train),
        },
        "eval": {
            "source": test.source,
            "images": int(len(keep)),
            "classes": num_classes,
            **_skipped(test, failed),
        },
    }


def _skipped(data: LabelledImages, failed: dict[int, str]) -> dict[str, Any]:
    listed = [list(s) for s in data.skipped] + [[data.names[i], r] for i, r in failed.items()]
    return {"n_skipped": len(listed), "skipped": listed}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for `format_table`: one per shot count, accuracy x100 as mean ± std and per seed."""
    rows = []
    for name, m in result["metrics"].items():
        rows.append(
            {
                "shots": name.removesuffix("shot"),
                "accuracy": f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}",
                "seeds": " ".join(f"{100 * v:.2f}" for v in m["seeds"]),
            }
        )
    return rows
