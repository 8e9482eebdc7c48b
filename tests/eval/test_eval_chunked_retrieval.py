"""Blocked retrieval metrics against the full score matrix; translations and the modality gap by
hand."""

from __future__ import annotations

import numpy as np
import pytest

from clippo.eval.metrics import modality_gap, ranks_by_group, ranks_of_relevant
from clippo.eval.retrieval import retrieval_metrics, retrieval_recalls, translation_recalls


def naive_ranks(q: np.ndarray, d: np.ndarray, qg: np.ndarray, dg: np.ndarray) -> np.ndarray:
    """The definition, one query at a time over the full matrix: irrelevant docs scoring >= the
    best relevant one."""
    sim = q.astype(np.float64) @ d.astype(np.float64).T
    out = []
    for i in range(len(q)):
        rel = dg == qg[i]
        best = sim[i][rel].max()
        out.append(int(np.sum(sim[i][~rel] >= best)))
    return np.array(out)


@pytest.mark.parametrize("max_elements", [1, 7, 64, 1 << 22])
def test_blocked_ranks_equal_the_full_matrix_with_ties(max_elements):
    rng = np.random.default_rng(0)
    # quarter steps in 3-d: exact float arithmetic and many exactly tied scores
    zimg = rng.integers(-2, 3, (13, 3)).astype(np.float32) / 4
    ztxt = rng.integers(-2, 3, (29, 3)).astype(np.float32) / 4
    ids = np.concatenate([np.arange(13), rng.integers(0, 13, 16)])
    rng.shuffle(ids)
    own = np.arange(13)
    i2t = ranks_by_group(zimg, ztxt, own, ids, max_elements=max_elements)
    t2i = ranks_by_group(ztxt, zimg, ids, own, max_elements=max_elements)
    np.testing.assert_array_equal(i2t, naive_ranks(zimg, ztxt, own, ids))
    np.testing.assert_array_equal(t2i, naive_ranks(ztxt, zimg, ids, own))
    relevant = ids[None, :] == own[:, None]
    np.testing.assert_array_equal(i2t, ranks_of_relevant(zimg @ ztxt.T, relevant))
    assert (i2t > 0).any() and (t2i > 0).any()  # the ties matter here
    want = retrieval_metrics(zimg @ ztxt.T, ids, ks=(1, 2, 5))
    assert retrieval_recalls(zimg, ztxt, ids, (1, 2, 5), max_scores=max_elements) == want


def test_blocked_recalls_equal_the_full_matrix_on_random_embeddings():
    rng = np.random.default_rng(1)
    zimg = rng.standard_normal((200, 16)).astype(np.float32)
    ztxt = rng.standard_normal((1000, 16)).astype(np.float32)
    ids = np.repeat(np.arange(200), 5)
    want = retrieval_metrics(zimg @ ztxt.T, ids)
    assert retrieval_recalls(zimg, ztxt, ids, max_scores=3000) == want
    assert 0 < want["img2txt/r@10"] < 1 and 0 < want["txt2img/r@10"] < 1


def test_collapsed_embeddings_score_zero_ties_against_the_query():
    z = np.ones((4, 2), np.float32)
    out = retrieval_recalls(z, z, np.arange(4), ks=(1, 3, 4), max_scores=2)
    # every score ties: the 3 other items rank above each query's own
    assert out == {f"{d}/r@{k}": (1.0 if k == 4 else 0.0)
                   for d in ("img2txt", "txt2img") for k in (1, 3, 4)}  # fmt: skip


def test_blocked_ranks_errors():
    z = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="query 1 has no relevant item"):
        ranks_by_group(z, z, np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="2-d but docs 3-d"):
        ranks_by_group(z, np.eye(3), np.arange(2), np.arange(3))
    with pytest.raises(ValueError, match="have no text"):
        retrieval_recalls(z, z[:1], np.array([0]))


def unit(deg: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_translation_recalls_by_hand():
    src, tgt = unit([0, 30, 60]), unit([5, 50, 40])
    # src 0 -> tgt 0 (5 deg) first; src 1 (30): tgt 2 (10 deg) beats its own tgt 1 (20);
    # src 2 (60): tgt 1 (10 deg) beats its own tgt 2 (20)
    # tgt 0 -> src 0 first; tgt 1 (50): src 2 (10) beats src 1 (20); tgt 2 (40): src 1 (10) beats
    # src 2 (20)
    out = translation_recalls(src, tgt, ["a", "b", "c"], ["x", "y", "z"], ks=(1, 2))
    assert out == pytest.approx(
        {"src2tgt/r@1": 1 / 3, "src2tgt/r@2": 1.0, "tgt2src/r@1": 1 / 3, "tgt2src/r@2": 1.0}
    )
    # two sources translated by the same target sentence: either copy of it is a hit
    same = translation_recalls(unit([0, 1, 90]), unit([2, 2, 88]), ["a", "b", "c"],
                               ["x", "x", "z"], ks=(1,))  # fmt: skip
    assert same["src2tgt/r@1"] == 1.0
    with pytest.raises(ValueError, match="disagree in length"):
        translation_recalls(src, tgt[:2], ["a", "b", "c"], ["x", "y"])


def test_modality_gap_by_hand():
    images = np.array([[1.0, 0.0], [0.0, 2.0]])  # unit rows (1, 0), (0, 1): centroid (.5, .5)
    texts = np.array([[-3.0, 0.0]])  # centroid (-1, 0)
    assert modality_gap(images, texts) == pytest.approx(np.sqrt(1.5**2 + 0.5**2))
    assert modality_gap(images, images) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        modality_gap(images, np.zeros((0, 2)))
