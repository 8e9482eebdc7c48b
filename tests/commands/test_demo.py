"""`clippo demo`: a seconds-long end-to-end run through the CLI, the plan and world it builds,
and that every caption of the demo's world fits the canvas at the demo's image size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clippo
from clippo.cli import main
from clippo.commands.demo import (
    RECIPE,
    caption_prompts,
    chance_levels,
    demo_plan,
    probe_precision,
    result_rows,
    scene_config,
)
from clippo.data import synthetic
from clippo.render import UnifontRenderer
from clippo.train.config import ConfigError, config_from_dict

METRICS = (
    "img2txt/r@1",
    "img2txt/r@5",
    "txt2img/r@1",
    "txt2img/r@5",
    "zeroshot/colour",
    "zeroshot/shape",
)


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "image -> text recall@1" in printed and "chance" in printed

    results = json.loads((out / "results.json").read_text())
    assert set(METRICS) <= set(results["metrics"])
    assert all(0.0 <= results["metrics"][k] <= 1.0 for k in METRICS)
    assert results["chance"]["img2txt/r@1"] == pytest.approx(1 / 20)  # quick: 20 pairs
    assert results["steps"] == 4 and np.isfinite(results["final_loss"])
    assert results["precision"] in ("bf16", "fp32")
    assert results["precision_probe"]["choice"] == results["precision"]
    assert results["config"]["loop"]["precision"] == results["precision"]
    assert results["config"]["loop"]["loss"] == RECIPE["loop"]["loss"]
    assert (
        len(results["heldout_pairs"]) == RECIPE["data"]["image_text"][0]["options"]["heldout_pairs"]
    )
    # evaluated during training (hook) and at the end; the final entry is the reported one
    assert [h["step"] for h in results["history"]][-1] == 4
    assert {k: results["history"][-1][k] for k in METRICS} == {
        k: results["metrics"][k] for k in METRICS
    }
    for name in ("loss_curve.png", "retrieval_examples.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.width > 100 and im.height > 100
    # the held-out evaluation ran as a trainer hook, and the trainer logged it
    logged = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("demo/img2txt/r@1" in row for row in logged)
    # the final checkpoint is a model clippo.load reads back, with the recorded config
    model = clippo.load(results["checkpoint"])
    assert model.config.to_dict() == results["model"]

    # a second run into the same folder starts afresh instead of refusing or resuming
    assert main(["demo", "--quick", "--out", str(out), "--precision", "fp32"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["steps"] == 4 and again["precision"] == "fp32"
    assert again["precision_probe"] is None
    assert len(list((out / "train" / "checkpoints").iterdir())) == 1


def test_plan_applies_the_recipe_and_scales_warmup(tmp_path):
    plan = demo_plan(tmp_path, "fp32")
    cfg = plan.train
    assert cfg.model.image_size == RECIPE["model"]["image_size"]
    assert cfg.loop.batch_size == RECIPE["loop"]["batch_size"]
    assert cfg.loop.steps == RECIPE["loop"]["steps"] and cfg.loop.precision == "fp32"
    assert cfg.optim.lr == RECIPE["optim"]["lr"]
    assert Path(cfg.logging.run_dir) == tmp_path / "train"
    assert plan.retrieval_pairs == 100
    short = demo_plan(tmp_path, "bf16", steps=10).train
    assert short.loop.steps == 10 and short.schedule.warmup_steps == 2
    assert 1 <= short.logging.eval_every_steps <= 10
    with pytest.raises(ValueError, match="precision"):
        demo_plan(tmp_path, "auto")
    with pytest.raises(ConfigError, match="steps"):
        demo_plan(tmp_path, "fp32", steps=0)


def test_scene_config_matches_the_training_sources_and_refuses_a_leaky_one(tmp_path):
    cfg = demo_plan(tmp_path, "fp32").train
    world = scene_config(cfg)
    assert world.image_size == cfg.model.image_size
    assert world.counts == (1,) and world.heldout_pairs == 10
    # 100 distinct held-out scenes exist, so retrieval has 100 distinct captions
    assert len(list(synthetic.iter_scenes(world, "heldout"))) >= 100
    d = cfg.to_dict()
    d["data"]["text_pairs"][0]["options"]["heldout_pairs"] = 12
    with pytest.raises(ConfigError, match="another world"):
        scene_config(config_from_dict(d))


def test_chance_levels_and_table_rows(tmp_path):
    plan = demo_plan(tmp_path, "fp32")
    chance = chance_levels(plan, scene_config(plan.train))
    assert chance == {
        "img2txt/r@1": 0.01,
        "img2txt/r@5": 0.05,
        "txt2img/r@1": 0.01,
        "txt2img/r@5": 0.05,
        "zeroshot/colour": 0.125,
        "zeroshot/shape": 0.125,
    }
    metrics = dict.fromkeys(METRICS, 0.5)
    rows = result_rows(metrics, chance)
    assert [r["chance"] for r in rows] == [chance[k] for k in METRICS]
    assert all(r["held-out"] == 0.5 for r in rows)


def test_precision_probe_follows_its_threshold():
    tiny = clippo.ModelConfig.from_variant("tiny-test", image_size=32)
    never = probe_precision(tiny, 4, repeats=1, gain=0.0)  # bf16 can never take 0x the time
    assert never.choice == "fp32" and never.fp32_s > 0 and never.bf16_s > 0
    always = probe_precision(tiny, 4, repeats=1, gain=1e9)
    assert always.choice == "bf16"
    assert set(always.to_dict()) == {"fp32_s", "bf16_s", "choice"}


def test_every_demo_caption_fits_the_canvas(tmp_path):
    """Every caption of every scene (train and held-out) in every template stays whole at the
    demo's image size: a clipped caption would make its scene unreadable."""
    plan = demo_plan(tmp_path, "fp32")
    world = scene_config(plan.train)
    size = plan.train.model.image_size
    check = synthetic.CaptionFitCheck(UnifontRenderer(image_size=size))
    scenes = [*synthetic.iter_scenes(world, "train"), *synthetic.iter_scenes(world, "heldout")]
    assert len(scenes) == 64 * 2 * 5
    for template in synthetic.CAPTION_TEMPLATES:
        for scene in scenes:
            text = synthetic.caption(scene, template)
            assert check(text), f"caption does not fit {size}px: {text!r}"
    # the check can fail: a caption twice as long does not fit
    assert not check(synthetic.caption(scenes[0], synthetic.CAPTION_TEMPLATES[8]) * 2)


def test_caption_prompts_are_training_captions_with_the_class_left_open(tmp_path):
    world = scene_config(demo_plan(tmp_path, "fp32").train)
    prompts = caption_prompts(world, "shape")
    assert len(prompts) == len(world.colours) * len(world.sizes) * len(world.positions)
    assert all(p.count("{}") == 1 for p in prompts)
    scene = synthetic.Scene("red", "star", "small", "left", 1)
    assert prompts[0].replace("{}", "star") == synthetic.caption(
        synthetic.Scene(world.colours[0], "star", world.sizes[0], world.positions[0], 1),
        synthetic.CAPTION_TEMPLATES[0],
    )
    filled = {p.replace("{}", "star") for p in prompts}
    assert synthetic.caption(scene, synthetic.CAPTION_TEMPLATES[0]) in filled
    with pytest.raises(ValueError, match="task"):
        caption_prompts(world, "size")
