"""clippo.search and `clippo index` / `clippo search`: exact search against numpy, approximate
recall against exact, save/load, errors, and embed -> index -> search on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clippo.cli import main as cli_main
from clippo.embed import Embeddings, embed_image_dir, write_embeddings
from clippo.search import (
    META_FILE,
    Index,
    IndexParams,
    brute_force_topk,
    combined_query,
    normalize,
    perturbed_queries,
    recall_at_k,
)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    return normalize(np.random.default_rng(seed).standard_normal((n, d)))


def test_exact_search_equals_numpy_topk():
    data, queries = _unit(500, 32), _unit(20, 32, seed=1)
    index = Index.build(data, exact_up_to=1000)
    assert index.kind == "exact" and index.meta["recall_at_10"] == 1.0
    scores, ids = index.query(queries, 10)
    ref_scores, ref_ids = brute_force_topk(data, queries, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_build_normalises_so_scores_are_cosines():
    data = _unit(50, 8) * np.arange(1, 51, dtype=np.float32)[:, None]  # rows of any length
    scores, ids = Index.build(data).query(data[7] * 3.0, 1)
    assert ids[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_recall_at_k_by_hand():
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == (
        pytest.approx(2 / 6)
    )


@pytest.mark.parametrize(
    "params, floor",
    # small graphs / few probes, so that the index really misses some neighbours (recall < 1);
    # random 64-d vectors have no cluster structure, the hard case: measured 0.40 and 0.49 on
    # perturbed rows (0.83 and 0.52 with the indexed rows themselves as queries)
    [
        (IndexParams(approximate="hnsw", hnsw_m=8, ef_search=10), 0.3),
        (IndexParams(approximate="ivf", nprobe=8), 0.4),
    ],
)
def test_approximate_recall_is_measured_against_exact(params, floor):
    data = _unit(5000, 64)
    index = Index.build(data, exact_up_to=1000, params=params, model="m")
    assert index.kind == params.approximate
    assert index.meta["recall_queries"] == "perturbed rows (1000, noise 1.0)"
    # recompute the stored recall independently, with numpy as the exact reference
    queries = perturbed_queries(data, params.recall_sample, params.recall_noise, params.seed)
    assert not np.isin(queries, data).all(axis=1).any()  # no query is an indexed row
    _, truth = brute_force_topk(data, queries, 10)
    _, found = index.query(queries, 10)
    assert index.meta["recall_at_10"] == pytest.approx(recall_at_k(found, truth), abs=0.01)
    assert floor <= index.meta["recall_at_10"] < 1.0


def test_perturbed_queries_are_near_a_row_by_the_noise():
    data = _unit(300, 256)
    q = perturbed_queries(data, 50, 1.0, seed=0)
    assert q.shape == (50, 256)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    # each query's best cosine is its source row's: about 1 / sqrt(2) at noise 1
    best = (q @ data.T).max(axis=1)
    assert np.all(np.abs(best - 2**-0.5) < 0.1)


def test_recall_at_build_is_not_flattered_by_indexed_queries():
    """The build's recall is close to what held-out queries see, not to the optimistic number
    that the indexed rows as queries give (the issue 14 progress note: 0.83-0.99 vs ~0.2)."""
    data = _unit(3000, 64)  # measured: held-out 0.34 < build 0.49 < indexed rows 0.92
    params = IndexParams(approximate="hnsw", hnsw_m=8, ef_search=10)
    index = Index.build(data, exact_up_to=1000, params=params)
    rows = data[:1000]
    _, truth = brute_force_topk(data, rows, 10)
    self_recall = recall_at_k(index.query(rows, 10)[1], truth)
    held = _unit(1000, 64, seed=5)
    _, truth = brute_force_topk(data, held, 10)
    held_recall = recall_at_k(index.query(held, 10)[1], truth)
    assert held_recall < index.meta["recall_at_10"] < self_recall - 0.2
    # given held-out queries, the build measures with them
    given = Index.build(data, exact_up_to=1000, params=params, recall_queries=held)
    assert given.meta["recall_queries"] == "held-out (1000)"
    assert given.meta["recall_at_10"] == pytest.approx(held_recall, abs=0.01)
    with pytest.raises(ValueError, match="recall_queries"):
        Index.build(data, exact_up_to=1000, params=params, recall_queries=_unit(3, 8))


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    data, queries = _unit(2000, 16), _unit(5, 16, seed=3)
    meta_cols = {"key": [f"k{i}" for i in range(2000)], "caption": [f"c {i}" for i in range(2000)]}
    exact_up_to = 10_000 if kind == "exact" else 100
    params = IndexParams(approximate="ivf" if kind == "ivf" else "hnsw")
    index = Index.build(data, meta_cols, exact_up_to=exact_up_to, params=params, model="tiny")
    index.save(tmp_path / "ix")
    back = Index.load(tmp_path / "ix")
    assert back.meta == json.loads(json.dumps(index.meta)) and back.kind == kind
    assert back.metadata == meta_cols
    for a, b in zip(index.query(queries, 10), back.query(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert back.rows([3]) == [{"key": "k3", "caption": "c 3"}]


def test_combined_query_is_normalised_weighted_sum():
    image, text = _unit(1, 8)[0], _unit(1, 8, seed=9)[0]
    mixed = image * 0.3 + text * 0.7
    np.testing.assert_allclose(
        combined_query(image, text, 0.3), mixed / np.linalg.norm(mixed), rtol=1e-6
    )
    np.testing.assert_allclose(combined_query(image, text, 1.0), image, rtol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        combined_query(image, text, 1.5)


def test_errors_name_the_problem(tmp_path):
    index = Index.build(_unit(10, 8))
    with pytest.raises(ValueError, match="query size 4 differs from the index's 8"):
        index.query(_unit(1, 4), 3)
    with pytest.raises(ValueError, match="column 'key' has 3 rows for 10"):
        Index.build(_unit(10, 8), {"key": ["a", "b", "c"]})
    folder = index.save(tmp_path / "ix")
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match=r"meta.json: unknown index version 99"):
        Index.load(folder)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Index.load(tmp_path / "nowhere")
    (folder / META_FILE).write_text(json.dumps(meta))
    (folder / "index.faiss").write_bytes(b"not faiss")
    with pytest.raises(ValueError, match=r"index.faiss: not a readable faiss index"):
        Index.load(folder)


@pytest.fixture(scope="module")
def imgs(random_pngs):
    """A folder of 6 distinct random 32 px images, 0.png .. 5.png."""
    return random_pngs([f"{i}.png" for i in range(6)], size=32, seed=0)


def test_embed_index_search_finds_each_image_first(tiny_saved_model, imgs, tmp_path):
    model, model_dir = tiny_saved_model
    emb = embed_image_dir(model, imgs, num_workers=0, progress=False)
    write_embeddings(emb, tmp_path / "emb.npy")
    assert (
        cli_main(
            [
                "index",
                str(tmp_path / "emb.npy"),
                "--out",
                str(tmp_path / "ix"),
                "--image-root",
                str(imgs),
            ]
        )
        == 0
    )
    for i in range(6):
        out = tmp_path / f"hits{i}.json"
        args = ["search", str(tmp_path / "ix"), "--model", str(model_dir)]
        assert (
            cli_main([*args, "--image", str(imgs / f"{i}.png"), "-k", "3", "--out", str(out)]) == 0
        )
        hits = json.loads(out.read_text())
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert hits[0]["key"] == f"{i}.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert hits[0]["image_path"] == str(imgs / f"{i}.png")
    # text and combined queries run and the grid is written
    grid = tmp_path / "g.png"
    assert (
        cli_main(
            [
                *args,
                "--text",
                "a cat",
                "--image",
                str(imgs / "0.png"),
                "--weight",
                "0.5",
                "--grid",
                str(grid),
            ]
        )
        == 0
    )
    assert Image.open(grid).size[0] > 0


def test_search_errors_are_one_line(tiny_saved_model, tmp_path, capsys):
    model_dir = tiny_saved_model.path
    write_embeddings(Embeddings(_unit(4, 16), ["a", "b", "c", "d"]), tmp_path / "e.parquet")
    assert cli_main(["index", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "ix")]) == 0
    capsys.readouterr()
    args = ["search", str(tmp_path / "ix"), "--model", str(model_dir), "--text", "x"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "embeds to 64 values" in err and "holds 16" in err and "\n" not in err
    write_embeddings(Embeddings(_unit(4, 64), list("abcd")), tmp_path / "f.npy")
    assert cli_main(["index", str(tmp_path / "f.npy"), "--out", str(tmp_path / "iy")]) == 0
    missing = tmp_path / "missing.png"
    assert (
        cli_main(
            [
                "search",
                str(tmp_path / "iy"),
                "--model",
                str(model_dir),
                "--image",
                str(missing),
            ]
        )
        == 1
    )
    assert f"{missing}: no such image" in capsys.readouterr().err
