"""A model's renderer is part of its config: Unifont (the default) or `TextRenderer`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import clippo
from clippo.model.bigvision import CheckpointError
from clippo.model.config import ModelConfig, ViTConfig
from clippo.model.one_tower import CLIPPO
from clippo.render import (
    RenderConfig,
    TextRenderConfig,
    TextRenderer,
    UnifontRenderer,
    to_pixels,
)
from clippo.train.config import ModelSection
from clippo.typed_config import ConfigError

TEXTS = ["a cat on a mat", "مرحبا بالعالم", "नमस्ते दुनिया", "你好，世界"]


def tiny_vit(size: int = 32) -> ViTConfig:
    return ViTConfig.from_variant("tiny-test", image_size=size)


@pytest.fixture(scope="module")
def text_model() -> CLIPPO:
    torch.manual_seed(0)
    cfg = ModelConfig(vit=tiny_vit(), out_dim=16, render=TextRenderConfig(image_size=32))
    return CLIPPO(cfg).eval()


def test_text_model_saves_loads_and_encodes(tmp_path, text_model):
    assert text_model.config.renderer == "text"
    text_model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model"]["renderer"] == "text"
    assert meta["model"]["render"] == TextRenderConfig(image_size=32).to_dict()
    loaded = clippo.load(tmp_path / "m")
    assert loaded.config == text_model.config
    assert isinstance(loaded.renderer, TextRenderer)
    assert loaded.renderer.config == TextRenderConfig(image_size=32)
    with torch.no_grad():
        z = loaded.encode_texts(TEXTS)
        # what encode_texts draws: the TextRenderer's images, as pixels, through the tower
        pixels = torch.from_numpy(to_pixels(TextRenderer(image_size=32).render_batch(TEXTS)))
        expected = text_model.encode(pixels)
        torch.testing.assert_close(z, expected)
        torch.testing.assert_close(loaded.render_texts(TEXTS), pixels)
        assert loaded.encode_texts(TEXTS, ink_only=True).shape == z.shape
    assert z.shape == (len(TEXTS), 16) and torch.isfinite(z).all()
    # the scripts draw differently: no two texts give the same embedding
    assert torch.cdist(z, z).fill_diagonal_(1).min() > 0


def test_unifont_stays_the_default_and_old_config_json_loads(tmp_path):
    cfg = ModelConfig(vit=tiny_vit(), out_dim=16)
    assert cfg.renderer == "unifont" and cfg.render == RenderConfig(image_size=32)
    assert cfg.to_dict()["renderer"] == "unifont"
    model = CLIPPO(cfg)
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    del meta["model"]["renderer"]  # a config.json written before the text renderer
    path.write_text(json.dumps(meta))
    loaded = clippo.load(tmp_path / "m")
    assert loaded.config == cfg
    assert isinstance(loaded.renderer, UnifontRenderer)
    np.testing.assert_array_equal(
        loaded.render_texts(["hi"]).numpy(), to_pixels(UnifontRenderer(image_size=32)("hi"))
    )


def test_the_name_says_how_to_read_a_partial_render_table():
    d = ModelConfig(vit=tiny_vit(), out_dim=16).to_dict()
    # the same keys are Unifont settings or text settings by the name beside them
    text = ModelConfig.from_dict({**d, "renderer": "text", "render": {"image_size": 32}})
    assert text.render == TextRenderConfig(image_size=32)  # max_chars 0, not Unifont's 768
    uni = ModelConfig.from_dict({**d, "renderer": None, "render": {"image_size": 32}})
    assert uni.render == RenderConfig(image_size=32)
    # the name alone: that renderer's defaults at the tower's size
    no_render = {k: v for k, v in d.items() if k != "render"}
    assert ModelConfig.from_dict({**no_render, "renderer": "text"}).render == TextRenderConfig(
        image_size=32
    )
    # the settings alone: the name follows them
    assert ModelConfig(vit=tiny_vit(), render=TextRenderConfig(image_size=32)).renderer == "text"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"renderer": "pango"}, "model.renderer: renderer must be one of 'unifont' | 'text'"),
        ({"renderer": 3}, "model.renderer"),
        # Unifont's table under the text renderer's name: its own keys are unknown there
        ({"renderer": "text"}, "unknown key 'model.render.lower'"),
        (
            {"renderer": "text", "render": {"image_size": 32, "margin": "4"}},
            "model.render.margin: expected an integer",
        ),
        (
            {"renderer": "text", "render": {"image_size": 32, "height": 16}},
            "model.render.image_size 32x16 != vit.image_size 32",
        ),
        ({"render": {"image_size": 48}}, "model.render.image_size 48 != vit.image_size 32"),
    ],
)
def test_bad_renderer_config_json_names_the_key(tmp_path, change, message):
    d = tmp_path / "m"
    CLIPPO(ModelConfig(vit=tiny_vit(), out_dim=16)).save(d)
    meta = json.loads((d / "config.json").read_text())
    meta["model"].update(change)
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        clippo.load(d)
    assert message in str(info.value)


def test_python_objects_of_the_wrong_kind_are_refused():
    with pytest.raises(ValueError, match="renderer is 'unifont' but render holds TextRenderConfig"):
        ModelConfig(vit=tiny_vit(), renderer="unifont", render=TextRenderConfig(image_size=32))
    with pytest.raises(ConfigError, match="model.renderer: expected one of"):
        ModelSection(variant="tiny-test", image_size=32, renderer="x").model_config()  # type: ignore[arg-type]


def test_trainer_model_section_takes_the_renderer():
    section = ModelSection(variant="tiny-test", image_size=32, renderer="text")
    cfg = section.model_config()
    assert cfg.renderer == "text" and cfg.render == TextRenderConfig(image_size=32)
    assert ModelSection(variant="tiny-test", image_size=32).model_config().renderer == "unifont"


def test_glue_pairs_are_drawn_by_the_models_text_renderer():
    # the evaluation suites take `model.renderer`: a text model's GLUE pair images are its
    # TextRenderer's two paragraphs, one line pitch apart
    from clippo.eval.glue import _rendered
    from clippo.eval.glue_tasks import GlueExample, GlueSplit

    rows = (GlueExample(0, "a cat", "مرحبا", 1), GlueExample(1, "猫", "a dog", 0))
    model = CLIPPO(ModelConfig(vit=tiny_vit(64), out_dim=16, renderer="text"))
    items, render = _rendered(model, GlueSplit("rte", "dev", "x", "jsonl", rows))
    r = TextRenderer(image_size=64)
    assert r.config.lines_fit >= 2
    expected = np.stack([r(f"{a}\n{b}") for a, b in items])
    np.testing.assert_array_equal(render(items), expected)
