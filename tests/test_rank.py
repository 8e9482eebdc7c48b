"""clippo.rank and `clippo rank`: the scores are the model's own similarity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.cli import main as cli_main
from clippo.data.images import load_image
from clippo.model.one_tower import CLIPPO
from clippo.preprocess import images_to_pixels
from clippo.rank import Ranked, rank_candidates, rank_folder


def test_rank_candidates_by_hand():
    images = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8]], np.float32)
    ranked = rank_candidates(images, np.array([0.0, 1.0], np.float32), ["a", "b", "c", "d"])
    # ties (b, d) keep the input order
    assert ranked == [
        Ranked(1, 1.0, "c"),
        Ranked(2, pytest.approx(0.8), "b"),  # type: ignore[arg-type]
        Ranked(3, pytest.approx(0.8), "d"),  # type: ignore[arg-type]
        Ranked(4, 0.0, "a"),
    ]
    with pytest.raises(ValueError, match="do not match prompt"):
        rank_candidates(images, np.ones(3, np.float32), ["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("rank")
    model = CLIPPO.from_variant("tiny-test", image_size=32).eval()
    model.save(root / "model")
    (root / "cands").mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "cands" / f"c{i}.png")
    return model, root


def test_scores_equal_model_similarity(tiny):
    model, root = tiny
    ranked, skipped = rank_folder(model, "a red square", root / "cands", num_workers=0)
    assert skipped == [] and [r.rank for r in ranked] == [1, 2, 3, 4, 5]
    # reference: encode + dot, straight through the model
    with torch.no_grad():
        names = [f"c{i}.png" for i in range(5)]
        pixels = images_to_pixels([load_image(root / "cands" / n, 32) for n in names])
        sims = (model.encode_images(pixels) @ model.encode_texts(["a red square"]).T)[:, 0]
    expected = dict(zip(names, sims.tolist()))
    for r in ranked:
        assert r.score == pytest.approx(expected[r.id], abs=1e-5)
    assert [r.id for r in ranked] == sorted(names, key=lambda n: -expected[n])


def test_rank_command_writes_ranking_and_grid(tiny, tmp_path, capsys):
    _, root = tiny
    out, grid = tmp_path / "ranked.json", tmp_path / "grid.png"
    args = ["rank", "--model", str(root / "model"), "--prompt", "a red square"]
    assert (
        cli_main(
            [
                *args,
                str(root / "cands"),
                "--top",
                "2",
                "--out",
                str(out),
                "--grid",
                str(grid),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert len(rows) == 5 and [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["image_path"] == str(root / "cands" / rows[0]["id"])
    assert rows[0]["score"] >= rows[-1]["score"]
    table = capsys.readouterr().out
    assert rows[0]["id"] in table and rows[2]["id"] not in table  # the table shows the top 2
    assert Image.open(grid).size[0] > 0
    assert cli_main([*args, str(tmp_path / "nothing")]) == 1
    assert "not a directory" in capsys.readouterr().err
