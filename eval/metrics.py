"""Pure metric functions: numpy arrays in, Python numbers (or numpy arrays) out.

Ties are broken against the prediction everywhere a ranking is involved (`recall_at_k`,
`top_k_accuracy`): a correct item that scores the same as an incorrect one ranks below it. So a
model whose scores are all equal (a collapsed embedding) scores 0, not a lucky index-order hit;
`accuracy` takes predicted labels and so leaves tie-breaking to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

_CHUNK = 1024  # queries per block, bounding memory to _CHUNK * N_docs


def _as_scores(sim: np.ndarray, name: str = "sim") -> np.ndarray:
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"{name} must be 2-D [queries, items], got shape {sim.shape}")
    if not np.issubdtype(sim.dtype, np.number) or np.issubdtype(sim.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {sim.dtype}")
    if np.isnan(sim).any():
        raise ValueError(f"{name} contains NaN")
    return sim.astype(np.float64, copy=False)


def _as_labels(x: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if n is not None and len(x) != n:
        raise ValueError(f"{name} has {len(x)} entries, expected {n}")
    return x


def ranks_of_relevant(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of the best relevant item for each query, ties broken against it.

    sim: [Nq, Nd] scores (higher = more similar). relevant: int [Nq] (the one relevant item per
    query) or bool [Nq, Nd] (any number, at least one per query). The rank is the number of
    irrelevant items scoring >= the best relevant item. Returns int64 [Nq].
    """
    sim = _as_scores(sim)
    nq, nd = sim.shape
    relevant = np.asarray(relevant)
    if relevant.ndim == 1:
        if len(relevant) != nq:
            raise ValueError(f"relevant has {len(relevant)} entries for {nq} queries")
        if not np.issubdtype(relevant.dtype, np.integer):
            raise ValueError(f"relevant indices must be integers, got dtype {relevant.dtype}")
        if nq and (relevant.min() < 0 or relevant.max() >= nd):
            raise ValueError(
                f"relevant indices must be in [0, {nd}), got {relevant.min()}..{relevant.max()}"
            )
    elif relevant.shape != sim.shape or relevant.dtype != np.bool_:
        raise ValueError(
            f"relevant must be int [{nq}] or bool {sim.shape}, got {relevant.dtype} {relevant.shape}"
        )
    elif nq and not relevant.any(axis=1).all():
        bad = int(np.nonzero(~relevant.any(axis=1))[0][0])
        raise ValueError(f"query {bad} has no relevant item")
    ranks = np.empty(nq, dtype=np.int64)
    for lo in range(0, nq, _CHUNK):
        block = sim[lo : lo + _CHUNK]
        if relevant.ndim == 1:
            mask = np.zeros(block.shape, dtype=bool)
            mask[np.arange(len(block)), relevant[lo : lo + _CHUNK]] = True
        else:
            mask = relevant[lo : lo + _CHUNK]
        best = np.where(mask, block, -np.inf).max(axis=1)
        ranks[lo : lo + len(block)] = ((block >= best[:, None]) & ~mask).sum(axis=1)
    return ranks


def _as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if np.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    return x


def ranks_by_group(
    queries: np.ndarray,
    docs: np.ndarray,
    query_groups: np.ndarray,
    doc_groups: np.ndarray,
    *,
    max_elements: int = 1 << 22,
) -> np.ndarray:
    """`ranks_of_relevant(queries @ docs.T, relevant)` without the full score matrix.

    queries [Nq, D], docs [Nd, D] (embeddings; the score is their dot product); doc j is relevant
    to query i when doc_groups[j] == query_groups[i] (int [Nq], int [Nd]; every query needs one).
    Scores are computed for blocks of queries, at most `max_elements` scores at a time, so memory
    is O(max_elements) whatever Nq x Nd; ties count against the query, as in `ranks_of_relevant`.
    Returns int64 [Nq]: the number of irrelevant docs scoring >= the best relevant one.
    """
    q = _as_embeddings(queries, "queries")
    d = _as_embeddings(docs, "docs")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"queries are {q.shape[1]}-d but docs {d.shape[1]}-d")
    qg = _as_labels(query_groups, "query_groups", len(q))
    dg = _as_labels(doc_groups, "doc_groups", len(d))
    orphan = ~np.isin(qg, dg)
    if orphan.any():
        bad = int(np.nonzero(orphan)[0][0])
        raise ValueError(f"query {bad} has no relevant item (group {qg[bad]!r})")
    rows = max(1, max_elements // max(1, len(d)))
    ranks = np.empty(len(q), dtype=np.int64)
    for lo in range(0, len(q), rows):
        block = q[lo : lo + rows] @ d.T  # [rows, Nd]: the only score block alive
        mask = qg[lo : lo + rows, None] == dg[None, :]
        best = np.where(mask, block, -np.inf).max(axis=1)
        ranks[lo : lo + len(block)] = ((block >= best[:, None]) & ~mask).sum(axis=1)
    return ranks


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """{k: fraction of ranks < k}: recall@k from `ranks_of_relevant`/`ranks_by_group` output."""
    ranks = _as_labels(ranks, "ranks")
    if len(ranks) == 0:
        raise ValueError("recall needs at least one query")
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
    return {int(k): float(np.mean(ranks < k)) for k in ks}


def modality_gap(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """The CLIPPO paper's modality gap (Liang et al. 2022): the Euclidean distance between the
    centroids of the L2-normalised image embeddings [N, D] and text embeddings [M, D]."""
    zi = _as_embeddings(image_embeddings, "image_embeddings").astype(np.float64)
    zt = _as_embeddings(text_embeddings, "text_embeddings").astype(np.float64)
    if zi.shape[1] != zt.shape[1] or not len(zi) or not len(zt):
        raise ValueError(f"need non-empty [N, D] and [M, D] embeddings, got {zi.shape}, {zt.shape}")
    zi = zi / np.maximum(np.linalg.norm(zi, axis=1, keepdims=True), 1e-12)
    zt = zt / np.maximum(np.linalg.norm(zt, axis=1, keepdims=True), 1e-12)
    return float(np.linalg.norm(zi.mean(axis=0) - zt.mean(axis=0)))


def recall_at_k(
    sim: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Fraction of queries with a relevant item among their top k, for each k.

    sim [Nq, Nd]; relevant: int [Nq] or bool [Nq, Nd] (see `ranks_of_relevant`). Ties are
    broken against the query.
    """
    return recall_from_ranks(ranks_of_relevant(sim, relevant), ks)


def image_to_text_recall(
    sim_img_txt: np.ndarray, image_ids_for_text: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Image queries over texts. sim [N_img, N_txt]; `image_ids_for_text[j]` is the image text j
    describes (several texts may share an image). An image is a hit when any of its texts is in
    its top k (the COCO protocol)."""
    sim = _as_scores(sim_img_txt, "sim_img_txt")
    ids = _as_labels(image_ids_for_text, "image_ids_for_text", sim.shape[1])
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"image_ids_for_text must be integers, got dtype {ids.dtype}")
    relevant = ids[None, :] == np.arange(sim.shape[0])[:, None]
    return recall_at_k(sim, relevant, ks)


def text_to_image_recall(
    sim_img_txt: np.ndarray, image_ids_for_text: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Text queries over images; same arguments as `image_to_text_recall` (sim is [N_img, N_txt])."""
    sim = _as_scores(sim_img_txt, "sim_img_txt")
    ids = _as_labels(image_ids_for_text, "image_ids_for_text", sim.shape[1])
    return recall_at_k(sim.T, ids, ks)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `pred == labels` (1-D, same length, non-empty)."""
    labels = _as_labels(labels, "labels")
    pred = _as_labels(pred, "pred", len(labels))
    if len(labels) == 0:
        raise ValueError("accuracy needs at least one example")
    return float(np.mean(pred == labels))


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of examples whose label is among the k highest of scores [N, C]; ties against."""
    scores = _as_scores(scores, "scores")
    labels = _as_labels(labels, "labels", scores.shape[0])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return recall_at_k(scores, labels, (k,))[k]


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float64 [num_classes]: accuracy on each class's examples; NaN for a class with none."""
    labels = _as_labels(labels, "labels")
    pred = _as_labels(pred, "pred", len(labels))
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    right = np.bincount(labels[pred == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / np.maximum(total, 1), np.nan)


def mean_per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean of `per_class_accuracy` over the classes that have examples (balanced accuracy)."""
    per = per_class_accuracy(pred, labels, num_classes)
    if np.isnan(per).all():
        raise ValueError("mean_per_class_accuracy needs at least one example")
    return float(np.nanmean(per))


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [num_classes, num_classes]: rows are true labels, columns predictions."""
    labels = _as_labels(labels, "labels")
    pred = _as_labels(pred, "pred", len(labels))
    for name, x in (("labels", labels), ("pred", pred)):
        if len(x) and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes})")
    flat = labels.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def matthews_corrcoef(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (binary, or Gorodkin's multi-class R_K); 0 when undefined, as in
    GLUE's CoLA scoring (e.g. a constant prediction)."""
    labels = _as_labels(labels, "labels")
    pred = _as_labels(pred, "pred", len(labels))
    classes, inv = np.unique(np.concatenate([labels, pred]), return_inverse=True)
    n = len(labels)
    c = confusion_matrix(inv[n:], inv[:n], len(classes)).astype(np.float64)
    t, p = c.sum(axis=1), c.sum(axis=0)  # true and predicted counts per class
    s, correct = c.sum(), np.trace(c)
    num = correct * s - t @ p
    den = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    return float(num / den) if den > 0 else 0.0


def f1_score(
    pred: np.ndarray,
    labels: np.ndarray,
    *,
    average: Literal["binary", "macro", "micro"] = "binary",
    positive: int = 1,
) -> float:
    """F1. "binary": of class `positive`; "macro": unweighted mean over the classes present in
    labels or pred; "micro": from pooled counts (equals accuracy for single-label data).
    A class with no true and no predicted examples has F1 0 (only reachable in "binary")."""
    labels = _as_labels(labels, "labels")
    pred = _as_labels(pred, "pred", len(labels))
    if len(labels) == 0:
        raise ValueError("f1_score needs at least one example")

    def f1(tp: float, fp: float, fn: float) -> float:
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0

    if average == "binary":
        tp = float(np.sum((pred == positive) & (labels == positive)))
        fp = float(np.sum((pred == positive) & (labels != positive)))
        fn = float(np.sum((pred != positive) & (labels == positive)))
        return f1(tp, fp, fn)
    classes = np.unique(np.concatenate([labels, pred]))
    tps = np.array([np.sum((pred == c) & (labels == c)) for c in classes], dtype=np.float64)
    fps = np.array([np.sum((pred == c) & (labels != c)) for c in classes], dtype=np.float64)
    fns = np.array([np.sum((pred != c) & (labels == c)) for c in classes], dtype=np.float64)
    if average == "macro":
        return float(np.mean([f1(*v) for v in zip(tps, fps, fns)]))
    if average == "micro":
        return f1(float(tps.sum()), float(fps.sum()), float(fns.sum()))
    raise ValueError(f"average must be 'binary', 'macro' or 'micro', got {average!r}")


def _as_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _as_labels(x, "x").astype(np.float64)
    y = _as_labels(y, "y", len(x)).astype(np.float64)
    if len(x) < 2:
        raise ValueError("correlation needs at least two points")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("correlation inputs contain NaN")
    return x, y


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either input is constant (undefined)."""
    x, y = _as_pair(x, y)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float(np.clip(x @ y / den, -1.0, 1.0)) if den > 0 else float("nan")


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values get the mean of their ranks (scipy's "average")."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv.ravel(), weights=ranks)
    return sums[inv.ravel()] / counts[inv.ravel()]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of average ranks (ties share their mean rank)."""
    x, y = _as_pair(x, y)
    return pearson(rankdata(x), rankdata(y))
