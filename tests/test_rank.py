"""clippo.rank and `clippo rank`: the scores are the model's own similarity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.cli import main as cli_main
from clippo.data.images import load_image
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
def cands(random_pngs):
    """5 candidates c0.png .. c4.png, 40 px (resized to the model's 32 when read)."""
    return random_pngs([f"c{i}.png" for i in range(5)], size=40, seed=1)


def test_scores_equal_model_similarity(tiny_saved_model, cands):
    model = tiny_saved_model.model
    ranked, skipped = rank_folder(model, "a red square", cands, num_workers=0)
    assert skipped == [] and [r.rank for r in ranked] == [1, 2, 3, 4, 5]
    # reference: encode + dot, straight through the model
    with torch.no_grad():
        names = [f"c{i}.png" for i in range(5)]
        pixels = images_to_pixels([load_image(cands / n, 32) for n in names])
        sims = (model.encode_images(pixels) @ model.encode_texts(["a red square"]).T)[:, 0]
    expected = dict(zip(names, sims.tolist()))
    for r in ranked:
        assert r.score == pytest.approx(expected[r.id], abs=1e-5)
    assert [r.id for r in ranked] == sorted(names, key=lambda n: -expected[n])


def test_rank_command_writes_ranking_and_grid(tiny_saved_model, cands, tmp_path, capsys):
    out, grid = tmp_path / "ranked.json", tmp_path / "grid.png"
    args = ["rank", "--model", str(tiny_saved_model.path), "--prompt", "a red square"]
    assert (
        cli_main(
            [
                *args,
                str(cands),
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
    assert rows[0]["image_path"] == str(cands / rows[0]["id"])
    assert rows[0]["score"] >= rows[-1]["score"]
    table = capsys.readouterr().out
    assert rows[0]["id"] in table and rows[2]["id"] not in table  # the table shows the top 2
    assert Image.open(grid).size[0] > 0
    assert cli_main([*args, str(tmp_path / "nothing")]) == 1
    assert "not a directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def per_prompt(random_pngs, tmp_path_factory):
    """Two sub-folders of candidates (cats: 3, dogs: 2) and their prompts file."""
    names = [f"{name}/{i}.png" for name, n in (("cats", 3), ("dogs", 2)) for i in range(n)]
    folder = random_pngs(names, size=40, seed=2)
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.tsv"
    prompts.write_text("dogs\ttwo dogs on grass\n\ncats\ta cat asleep\n")
    return folder, prompts


def test_rank_prompts_equals_one_prompt_at_a_time(tiny_saved_model, per_prompt):
    model = tiny_saved_model.model
    folder, prompts = per_prompt
    pairs = read_prompts_file(prompts, folder)
    assert pairs == [("dogs", "two dogs on grass"), ("cats", "a cat asleep")]
    results = rank_prompts(model, pairs, folder, num_workers=0, progress=False)
    for name, prompt in pairs:
        alone, _ = rank_folder(model, prompt, folder / name, num_workers=0, progress=False)
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
    folder, _ = per_prompt
    bad = tmp_path / "prompts.tsv"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_prompts_file(bad, folder)


def test_rank_command_with_prompts_file(tiny_saved_model, per_prompt, tmp_path, capsys):
    folder, prompts = per_prompt
    out = tmp_path / "ranked"
    args = ["rank", "--model", str(tiny_saved_model.path), str(folder), "--num-workers", "0"]
    assert cli_main([*args, "--prompts", str(prompts), "--out", str(out)]) == 0
    for name, n in (("cats", 3), ("dogs", 2)):
        rows = json.loads((out / name / "ranked.json").read_text())
        assert [r["rank"] for r in rows] == list(range(1, n + 1))
        assert rows[0]["image_path"] == str(folder / name / rows[0]["id"])
        assert rows[0]["prompt"] == {"cats": "a cat asleep", "dogs": "two dogs on grass"}[name]
        assert Image.open(out / name / "grid.png").size[0] > 0
    capsys.readouterr()
    assert cli_main([*args, "--prompts", str(prompts)]) == 1
    assert "--prompts needs --out DIR" in capsys.readouterr().err
    assert cli_main([*args, "--prompts", str(prompts), "--prompt", "x", "--out", "o"]) == 1
    assert "one of them" in capsys.readouterr().err
