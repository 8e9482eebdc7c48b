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
from clippo.rank import Ranked, rank_candidates, rank_folder, rank_prompts, read_prompts_file


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


@pytest.fixture(scope="module")
def per_prompt(tiny, tmp_path_factory):
    """Two sub-folders of candidates (cats: 3, dogs: 2) and their prompts file."""
    _, root = tiny
    base = tmp_path_factory.mktemp("prompts")
    rng = np.random.default_rng(2)
    for name, n in (("cats", 3), ("dogs", 2)):
        (base / "cands" / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "cands" / name / f"{i}.png")
    prompts = base / "prompts.tsv"
    prompts.write_text("dogs\ttwo dogs on grass\n\ncats\ta cat asleep\n")
    return base, prompts


def test_rank_prompts_equals_one_prompt_at_a_time(tiny, per_prompt):
    model, _ = tiny
    base, prompts = per_prompt
    pairs = read_prompts_file(prompts, base / "cands")
    assert pairs == [("dogs", "two dogs on grass"), ("cats", "a cat asleep")]
    results = rank_prompts(model, pairs, base / "cands", num_workers=0, progress=False)
    for name, prompt in pairs:
        alone, _ = rank_folder(model, prompt, base / "cands" / name, num_workers=0, progress=False)
        got = results[name][0]
        assert [r.id for r in got] == [r.id for r in alone]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in alone], atol=1e-5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("cats a cat\n", r"prompts.tsv:1: expected NAME<TAB>PROMPT"),
        ("cats\ta cat\ncats\tagain\ndogs\td\n", r"prompts.tsv:2: folder 'cats' already named"),
        ("cats\ta cat\nbirds\tb\ndogs\td\n", r"prompts.tsv:2: no candidate folder .*birds"),
        ("cats\ta cat\n", r"without a prompt line: \['dogs'\]"),
        ("\n\n", r"prompts.tsv: no prompts"),
    ],
)
def test_prompts_file_errors_name_file_and_line(per_prompt, tmp_path, text, message):
    base, _ = per_prompt
    bad = tmp_path / "prompts.tsv"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_prompts_file(bad, base / "cands")


def test_rank_command_with_prompts_file(tiny, per_prompt, tmp_path, capsys):
    _, root = tiny
    base, prompts = per_prompt
    out = tmp_path / "ranked"
    args = ["rank", "--model", str(root / "model"), str(base / "cands"), "--num-workers", "0"]
    assert cli_main([*args, "--prompts", str(prompts), "--out", str(out)]) == 0
    for name, n in (("cats", 3), ("dogs", 2)):
        rows = json.loads((out / name / "ranked.json").read_text())
        assert [r["rank"] for r in rows] == list(range(1, n + 1))
        assert rows[0]["image_path"] == str(base / "cands" / name / rows[0]["id"])
        assert rows[0]["prompt"] == {"cats": "a cat asleep", "dogs": "two dogs on grass"}[name]
        assert Image.open(out / name / "grid.png").size[0] > 0
    capsys.readouterr()
    assert cli_main([*args, "--prompts", str(prompts)]) == 1
    assert "--prompts needs --out DIR" in capsys.readouterr().err
    assert cli_main([*args, "--prompts", str(prompts), "--prompt", "x", "--out", "o"]) == 1
    assert "one of them" in capsys.readouterr().err
