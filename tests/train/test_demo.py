"""`clippo demo`: a seconds-long end-to-end run through the CLI, and caption fit at demo size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clippo.cli import main
from clippo.data import synthetic
from clippo.demo import demo_plan, scene_config
from clippo.render import UnifontRenderer

METRICS = (
    "img2txt/r@1",
    "img2txt/r@5",
    "txt2img/r@1",
    "txt2img/r@5",
    "zeroshot/colour",
    "zeroshot/shape",
)


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(METRICS) <= set(results["metrics"])
    assert all(0.0 <= results["metrics"][k] <= 1.0 for k in METRICS)
    assert results["steps"] == 4 and np.isfinite(results["final_loss"])
    assert results["precision"] in ("bf16", "fp32")
    assert results["config"]["loop"]["precision"] == results["precision"]
    assert len(results["heldout_pairs"]) == 16
    for name in ("loss_curve.png", "retrieval_examples.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.width > 100 and im.height > 100
    # the held-out evaluation ran as a trainer hook too, and was logged
    logged = [
        json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("demo/img2txt/r@1" in row for row in logged)
    # a second run into the same folder starts afresh instead of refusing
    assert main(["demo", "--quick", "--out", str(out)]) == 0


@pytest.mark.slow
def test_every_demo_caption_fits_the_canvas():
    plan = demo_plan(Path("unused"), "fp32")
    world = scene_config(plan.train)
    size = plan.train.model.image_size
    check = synthetic.CaptionFitCheck(UnifontRenderer(image_size=size))
    scenes = [*synthetic.iter_scenes(world, "train"), *synthetic.iter_scenes(world, "heldout")]
    for template in synthetic.CAPTION_TEMPLATES:
        texts = sorted({synthetic.caption(s, template) for s in scenes})
        widths = np.array([sum(check.width(c) for c in t) for t in texts])
        for i in np.argsort(-widths, kind="stable")[:5]:  # the longest fills of this template
            assert check(texts[i]), f"caption does not fit {size}px: {texts[i]!r}"
