"""`clippo compare`: the quick run end to end (results.json's schema, compare.png, the printed table
equal to results.json, parameter counts equal to the trained models'), seeds that differ and a
same-seed re-run that does not, the plan and its rows, and the enlarged world."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import clippo
from clippo.commands import compare
from clippo.commands.demo import scene_config
from clippo.data import synthetic
from clippo.model import CLIPPO
from clippo.train.config import ConfigError, ModelSection, preset

QUALITY = (
    "img2txt/r@1",
    "img2txt/r@5",
    "txt2img/r@1",
    "txt2img/r@5",
    "zeroshot/colour",
    "zeroshot/shape",
    "vqa/accuracy",
    "pairs/accuracy",
    "pairs/f1",
)
SEED_KEYS = {
    "params",
    "train/pairs_per_s",
    "text_encode/ms_per_text",
    "modality_gap",
    *QUALITY,
}
HAS_BASELINES = "architecture" in {f.name for f in dataclasses.fields(ModelSection)}
needs_baselines = pytest.mark.skipif(
    not HAS_BASELINES,
    reason="the trainer has no model.architecture yet (CLIP*/1T-CLIP through `clippo train`)",
)


def run_cli(argv: list[str]) -> int:
    """`clippo compare ...` through clippo.cli.main once it is wired, else a parser of its own."""
    from clippo.cli import COMMANDS, main

    if "compare" in COMMANDS:
        return main(["compare", *argv])
    parser = argparse.ArgumentParser(prog="clippo")
    compare.register(parser.add_subparsers())
    args = parser.parse_args(["compare", *argv])
    return int(args.func(args))


def parse_tables(printed: str) -> list[dict[str, dict[str, str]]]:
    """The Markdown tables in `printed`, in order -> [{architecture: {column: cell}}]."""
    tables: list[list[str]] = []
    previous = ""
    for ln in printed.splitlines():
        if ln.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(ln)
        previous = ln
    out = []
    for lines in tables:
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        table = {}
        for ln in lines[2:]:
            cells = dict(zip(header, (c.strip() for c in ln.strip("|").split("|"))))
            table[cells["architecture"]] = cells
        out.append(table)
    return out


def quality(metrics: dict[str, Any]) -> dict[str, float]:
    """Every metric but the timings (those differ between runs of one seed)."""
    return {k: v for k, v in metrics.items() if k not in compare.TIMINGS}


def check_schema(results: dict[str, Any], rows: list[str], n_seeds: int) -> None:
    assert [r["architecture"] for r in results["rows"]] == rows
    assert isinstance(results["config"], dict) and results["config"]["loop"]["steps"] == 4
    for row in results["rows"]:
        assert isinstance(row["params"], int) and row["params"] > 0
        assert len(row["seeds"]) == n_seeds
        for seed in row["seeds"]:
            assert set(seed) >= SEED_KEYS, SEED_KEYS - set(seed)
            assert seed["params"] == row["params"]
            assert all(0.0 <= seed[k] <= 1.0 for k in QUALITY)
            assert seed["train/pairs_per_s"] > 0 and seed["text_encode/ms_per_text"] > 0
            assert 0.0 <= seed["modality_gap"] <= 2.0
        assert set(row["mean"]) == set(row["std"]) >= SEED_KEYS
        for key in SEED_KEYS:  # mean/std over the seeds, recomputed
            values = [s[key] for s in row["seeds"]]
            assert row["mean"][key] == pytest.approx(np.mean(values))
            assert row["std"][key] == pytest.approx(np.std(values))


def check_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300
        # something was drawn: more than a handful of colours
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 10


def check_table(printed: str, results: dict[str, Any]) -> None:
    """Every number of the printed tables is results.json's mean, and with several seeds the
    second table's its standard deviation (to the printed 3 decimals)."""
    tables = parse_tables(printed)
    several = len(results["rows"][0]["seeds"]) > 1
    assert len(tables) == (2 if several else 1)
    for table, stat in zip(tables, ("mean", "std")):
        assert list(table) == [r["architecture"] for r in results["rows"]]
        for row in results["rows"]:
            cells = table[row["architecture"]]
            assert int(cells["params"]) == row["params"]
            assert int(cells["seeds"]) == len(row["seeds"])
            for key, label in compare.TABLE_COLUMNS[1:]:
                assert cells[label] == f"{row[stat][key]:.3f}", (stat, key, cells[label])


def checkpoint_params(path: str) -> int:
    return sum(p.numel() for p in clippo.load(path).parameters())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, Any]]:
    """`clippo compare --quick --seeds 2` over the two CLIPPO rows (one run, shared by tests)."""
    out = tmp_path_factory.mktemp("compare")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_cli(
            ["--quick", "--seeds", "2", "--architectures", "clippo,clippo-ink", "--out", str(out)]
        )
    assert rc == 0
    return out, buf.getvalue(), json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_compare_end_to_end(quick_run):
    out, printed, results = quick_run
    check_schema(results, ["clippo", "clippo-ink"], n_seeds=2)
    check_png(out / "compare.png")
    check_table(printed, results)
    # the same shared config for both rows; only ink_only_text tells them apart
    assert results["config"]["model"]["ink_only_text"] is False
    rows = {r["architecture"]: r for r in results["rows"]}
    assert rows["clippo"]["params"] == rows["clippo-ink"]["params"]  # same tower, fewer tokens


@pytest.mark.slow
def test_params_equal_the_trained_models(quick_run):
    _, _, results = quick_run
    cfg = compare.compare_plan(quick=True).train
    fresh = CLIPPO(cfg.model.model_config())
    for row in results["rows"]:
        assert row["params"] == sum(p.numel() for p in fresh.parameters())
        for path in row["checkpoints"]:
            assert checkpoint_params(path) == row["params"]
            assert clippo.load(path).config.ink_only_text == (row["architecture"] == "clippo-ink")


@pytest.mark.slow
def test_seeds_differ_and_a_same_seed_rerun_is_identical(quick_run, tmp_path):
    _, _, results = quick_run
    first = results["rows"][0]
    assert first["architecture"] == "clippo" and first["seed_values"] == [0, 1]
    a, b = first["seeds"]
    # another initialisation and batch order: the continuous metrics move
    assert a["modality_gap"] != b["modality_gap"]
    assert quality(a) != quality(b)
    # seed 0 again, in a separate run: every metric but the timings is the same
    torch.manual_seed(1234)  # the global RNG state must not matter either
    plan = compare.compare_plan(None, tmp_path, seeds=1, architectures=["clippo"], quick=True)
    again = compare.run_compare(plan)["rows"][0]["seeds"][0]
    assert quality(again) == quality(a)


@needs_baselines
@pytest.mark.slow
def test_quick_compare_baseline_rows(tmp_path, capsys):
    out = tmp_path / "cmp"
    rows = ["clip-star", "1t-clip"]
    assert run_cli(["--quick", "--architectures", ",".join(rows), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    check_schema(results, rows, n_seeds=1)
    check_table(capsys.readouterr().out, results)
    check_png(out / "compare.png")
    params = {r["architecture"]: r["params"] for r in results["rows"]}
    for row in results["rows"]:
        assert checkpoint_params(row["checkpoints"][0]) == row["params"]
        assert clippo.load(row["checkpoints"][0]).tokenizer is not None
    clippo_params = sum(
        p.numel()
        for p in CLIPPO(compare.compare_plan(quick=True).train.model.model_config()).parameters()
    )
    # CLIP* adds a whole text tower; 1T-CLIP only a token embedding (the paper's ordering)
    assert params["clip-star"] > params["1t-clip"] > clippo_params


def test_rows_differ_only_in_their_model_keys(tmp_path):
    plan = compare.compare_plan(out=tmp_path)
    dense = compare.row_config(plan, "clippo", 0).to_dict()
    ink = compare.row_config(plan, "clippo-ink", 0).to_dict()
    other_seed = compare.row_config(plan, "clippo", 1).to_dict()
    assert dense["model"]["ink_only_text"] is False and ink["model"]["ink_only_text"] is True
    assert {k: v for k, v in ink["model"].items() if k != "ink_only_text"} == {
        k: v for k, v in dense["model"].items() if k != "ink_only_text"
    }
    for section in ("data", "optim", "schedule"):
        assert dense[section] == ink[section] == other_seed[section]
    assert (dense["loop"]["seed"], other_seed["loop"]["seed"]) == (0, 1)
    runs = {
        dense["logging"]["run_dir"],
        ink["logging"]["run_dir"],
        other_seed["logging"]["run_dir"],
    }
    assert len(runs) == 3 and all(Path(r).is_relative_to(tmp_path) for r in runs)
    assert plan.seeds == (0, 1) and plan.architectures == compare.ROWS
    assert compare.compare_plan(out=tmp_path, quick=True).seeds == (0,)
    if HAS_BASELINES:
        star = compare.row_config(plan, "clip-star", 0).to_dict()["model"]
        assert star["architecture"] == "clip-star" and star["tokenizer"] == ""
        assert star["vocab_size"] == compare.TOKEN_OPTIONS["vocab_size"]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown \\['clip'\\].*known: clippo, clippo-ink"):
        compare.parse_architectures("clippo,clip")
    with pytest.raises(ValueError, match="twice"):
        compare.parse_architectures("clippo,clippo")
    with pytest.raises(SystemExit) as e:  # argparse: a usage error, exit 2
        run_cli(["--architectures", "clip", "--out", str(tmp_path)])
    assert e.value.code == 2
    # a config that does not draw from the synthetic world cannot be evaluated
    with pytest.raises(ConfigError, match="synthetic"):
        compare.compare_plan("coco-sanity", tmp_path)
    with pytest.raises(ConfigError, match="steps"):
        compare.compare_plan(out=tmp_path, steps=0)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_default_world_holds_at_least_500_heldout_pairs():
    plan = compare.compare_plan()
    world = scene_config(plan.train)
    assert world == synthetic.SyntheticConfig.from_dict(
        {"image_size": plan.train.model.image_size, **synthetic.COMPARE_WORLD}
    )
    assert synthetic.distinct_scenes(world, "heldout") == 600 >= plan.retrieval_pairs >= 500
    assert plan.train.loop.steps == compare.DEFAULT_STEPS
    # the held-out retrieval set: that many distinct scenes and captions, all of unseen pairs
    rs = synthetic.retrieval_set(world, plan.retrieval_pairs)
    assert len(set(rs.scenes)) == len(set(rs.texts)) == plan.retrieval_pairs
    held = set(synthetic.heldout_pairs(world))
    assert all((s.colour, s.shape) in held for s in rs.scenes)
    assert not held & set(synthetic.train_pairs(world))
    # the demo's own world is unchanged: 100 held-out scenes
    demo_world = scene_config(preset("demo"))
    assert synthetic.distinct_scenes(demo_world, "heldout") == 100


def test_labels_of_coinciding_rows_are_spread_and_lone_labels_stay():
    """Two rows on one point (CLIP* and 1T-CLIP often are) get labels a full height apart,
    clear of every marker they span; a label with nothing near keeps its point's height."""
    boxes = [(10.0, 60.0, 100.0), (10.0, 70.0, 100.0), (10.0, 50.0, 104.0), (300.0, 350.0, 100.0)]
    markers = [(-6.0, 6.0, 100.0), (200.0, 212.0, 100.0), (30.0, 42.0, 130.0)]
    ys = compare.spread_labels(boxes, height=15.0, obstacles=markers)
    assert ys[3] == 100.0
    crowded = [(boxes[i][0], boxes[i][1], ys[i]) for i in range(3)]
    for i, (a0, a1, ay) in enumerate(crowded):
        assert ay >= boxes[i][2]  # labels only move up
        for b0, b1, by in crowded[i + 1 :] + markers:
            if a0 < b1 and b0 < a1:
                assert abs(ay - by) >= 15.0, (i, ay, by)
    # (y + 15) - y < 15 in floats for this y: the second label is placed, once, at y + 15
    y = 121.955438443566
    assert (y + 15.0) - y < 15.0
    assert compare.spread_labels([(0, 1, y), (0, 1, y)], height=15.0) == [y, y + 15.0]
    # the naive placement (each label at its point's height) collides
    assert abs(boxes[0][2] - boxes[2][2]) < 15.0
