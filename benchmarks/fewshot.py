"""Few-shot probe speed: one big_vision-style probe for 1,000 classes x 25 shots (pure linear
algebra on random features), against what a user would otherwise write, in the same run.

    OMP_NUM_THREADS=1 python benchmarks/fewshot.py            # 1,000 x 25 shots, 768-d, 10k test
    python benchmarks/fewshot.py --classes 100 --test 2000     # smaller
    python benchmarks/fewshot.py --json fewshot.json           # the table as JSON too

Features are class-clustered Gaussians (a class centre plus noise, scaled and offset per
dimension, float32), so the accuracies are far from chance and comparable; the same arrays go to
every method. One probe = fit on the 25,000 shots + predict the test set. Rows:
- `clippo.eval.fewshot` (`fit_probe` + `probe_accuracy`): one float64 solve of size min(N, D+1),
  the standardisation folded into the weights, test scores as one float32 product;
- big_vision's formulation in numpy: the eigen-decomposition of X^T X (what `fewshot_lsr.py`
  caches so that several l2 values reuse it), then `q diag(1/(eigs + l2)) q^T X^T Y`;
- numpy `lstsq` on the ridge problem written out, [A; sqrt(l2) I] W = [Y; 0] (the naive
  reference of the tests);
- scikit-learn `RidgeClassifier(alpha=2**10)` on `StandardScaler` features (its own unpenalised
  intercept instead of the constant-100 bias column: not the same probe, reported with its
  agreement).
Each method runs `--repeats` times, interleaved; the table gives the median seconds, the speed-up
of ours over it, the test accuracy, and the fraction of test predictions equal to ours. BLAS
threads: `--threads` (default 1, through threadpoolctl), for a comparison on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from clippo.eval.fewshot import BIAS_CONSTANT, L2_REG, augment, fit_probe

Method = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def data(classes: int, shots: int, test: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.2
    scale, offset = rng.uniform(0.2, 3, dim), rng.normal(size=dim)
    y_train = np.repeat(np.arange(classes), shots)
    y_test = rng.integers(0, classes, test)

    def draw(y: np.ndarray) -> np.ndarray:
        x = (centres[y] + rng.normal(size=(len(y), dim))) * scale + offset
        return x.astype(np.float32)

    return draw(y_train), y_train, draw(y_test), y_test


def ours(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, classes: int) -> np.ndarray:
    return fit_probe(x, y, classes, L2_REG).predict(x_test)


def _standardised(x: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64 = x.astype(np.float64)
    mean, std = x64.mean(0), x64.std(0) + 1e-5
    return augment(x64, mean, std), augment(x_test, mean, std)


def _targets(y: np.ndarray, classes: int) -> np.ndarray:
    return np.where(np.arange(classes)[None] == y[:, None], 1.0, -1.0)


def big_vision_eigh(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, classes: int) -> np.ndarray:
    a, a_test = _standardised(x, x_test)
    eigs, q = np.linalg.eigh(a.T @ a)
    w = (q / (eigs + L2_REG)) @ (q.T @ (a.T @ _targets(y, classes)))
    return (a_test @ w).argmax(1)


def lstsq(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, classes: int) -> np.ndarray:
    a, a_test = _standardised(x, x_test)
    d = a.shape[1]
    stacked = np.vstack([a, np.sqrt(L2_REG) * np.eye(d)])
    targets = np.vstack([_targets(y, classes), np.zeros((d, classes))])
    w = np.linalg.lstsq(stacked, targets, rcond=None)[0]
    return (a_test @ w).argmax(1)


def sklearn_ridge(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, classes: int) -> np.ndarray:
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=L2_REG))
    return model.fit(x, y).predict(x_test)


METHODS: dict[str, Method] = {
    "clippo.eval.fewshot (fit_probe + predict)": ours,
    "big_vision formulation (eigh of X^T X), numpy": big_vision_eigh,
    "numpy lstsq on [A; sqrt(l2) I]": lstsq,
    "sklearn StandardScaler + RidgeClassifier": sklearn_ridge,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--shots", type=int, default=25)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--test", type=int, default=10_000, help="test features scored per probe")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (threadpoolctl)")
    p.add_argument("--skip", default="", help="comma list of row numbers (1-based) to leave out")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    x, y, x_test, y_test = data(args.classes, args.shots, args.test, args.dim)
    skip = {int(s) for s in args.skip.split(",") if s.strip()}
    methods = {k: f for i, (k, f) in enumerate(METHODS.items(), 1) if i not in skip}
    times: dict[str, list[float]] = {k: [] for k in methods}
    preds: dict[str, np.ndarray] = {}
    load_before = os.getloadavg()
    with threadpool_limits(args.threads):
        for _ in range(args.repeats):
            for name, fn in methods.items():
                start = time.perf_counter()
                preds[name] = fn(x, y, x_test, args.classes)
                times[name].append(time.perf_counter() - start)
    first = next(iter(methods))
    base = statistics.median(times[first])
    rows = []
    for name in methods:
        t = statistics.median(times[name])
        rows.append(
            {
                "method": name,
                "seconds": round(t, 3),
                "ours_faster_x": round(t / base, 2),
                "accuracy": round(float(np.mean(preds[name] == y_test)), 4),
                "same_predictions_as_ours": round(float(np.mean(preds[name] == preds[first])), 4),
            }
        )
    print(
        f"few-shot probe: {args.classes} classes x {args.shots} shots = {len(x)} x {args.dim} "
        f"features (+ bias {BIAS_CONSTANT:g}), l2 {L2_REG:g}, {args.test} test features; "
        f"median of {args.repeats}, {args.threads} BLAS thread(s)"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
