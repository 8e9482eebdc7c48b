"""CLIPPO module: config, variant table, big_vision init, forward/backward, zero-shot API."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clippo
from clippo.model.config import VARIANTS, ModelConfig, ViTConfig
from clippo.model.one_tower import CLIPPO
from clippo.render import RenderConfig


def naive_param_count(v: ViTConfig, out_dim: int) -> int:
    w, m, p = v.width, v.mlp_dim, v.patch_size
    mlp = w * m + m + m * w + w
    block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + mlp
    map_head = w + (w * w + w) + (2 * w * w + 2 * w) + (w * w + w) + 2 * w + mlp
    return (
        p * p * 3 * w
        + w
        + v.num_tokens * w
        + v.depth * block
        + 2 * w
        + (map_head if v.pool_type == "map" else 0)
        + w * out_dim
        + out_dim
        + 1
    )


def meta_model(cfg: ModelConfig) -> CLIPPO:
    with torch.device("meta"):
        return CLIPPO(cfg)


# ---- config ---------------------------------------------------------------------------------


def test_b16_has_the_reference_parameter_count():
    model = meta_model(ModelConfig.from_variant("B/16", image_size=224, out_dim=768))
    assert sum(p.numel() for p in model.parameters()) == 93_474_817


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_builds_with_the_expected_size(name):
    cfg = ModelConfig.from_variant(name, image_size=224 if name != "tiny-test" else 64)
    model = meta_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == naive_param_count(cfg.vit, cfg.out_dim)
    mlp = model.vit.blocks[0].mlp.fc1
    assert mlp.out_features == cfg.vit.mlp_dim  # e.g. So400m's 4304 survives timm's mlp_ratio


def test_big_vision_variant_names():
    v = ViTConfig.from_variant("So400m/14", image_size=224)
    assert (v.width, v.depth, v.num_heads, v.mlp_dim, v.patch_size) == (1152, 27, 16, 4304, 14)
    v = ViTConfig.from_variant("mu/16", image_size=32)
    assert (v.width, v.depth, v.num_heads, v.mlp_dim) == (32, 1, 2, 128)
    for name in ("Ti/16", "S/16", "M/16", "B/16", "B/32", "L/16", "tiny-test"):
        assert name in VARIANTS
    with pytest.raises(ValueError, match="unknown ViT variant"):
        ViTConfig.from_variant("B/17")


def test_config_round_trip_and_unknown_keys():
    cfg = ModelConfig.from_variant("Ti/16", image_size=64, out_dim=32, temperature_init=5.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(d) == cfg
    assert cfg.render == RenderConfig(image_size=64)
    for bad in ({**d, "extra": 1}, {**d, "vit": {**d["vit"], "extra": 1}}):
        with pytest.raises(ValueError, match="extra"):
            ModelConfig.from_dict(bad)
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**d, "render": {**d["render"], "colour": 3}})
    missing = dict(d["vit"])
    del missing["depth"]
    with pytest.raises(ValueError, match="depth"):
        ViTConfig.from_dict(missing)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        ViTConfig(width=64, depth=1, num_heads=3, mlp_dim=128, patch_size=16, image_size=64)
    with pytest.raises(ValueError, match="multiple"):
        ViTConfig(width=64, depth=1, num_heads=2, mlp_dim=128, patch_size=16, image_size=40)
    with pytest.raises(ValueError, match="pool_type"):
        ViTConfig(64, 1, 2, 128, 16, 64, pool_type="tok")
    vit = ViTConfig(64, 1, 2, 128, 16, 64)
    with pytest.raises(ValueError, match="render.image_size"):
        ModelConfig(vit=vit, out_dim=8, render=RenderConfig(image_size=224))
    with pytest.raises(dataclasses_frozen_error()):
        vit.width = 3  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


# ---- initialisation -----------------------------------------------------------------------------


def test_big_vision_initialisation():
    torch.manual_seed(0)
    model = CLIPPO.from_variant("S/16", image_size=32, out_dim=256)
    w, m = 384, 1536
    vit = model.vit

    def uniform_bound_ok(t, bound):
        a = t.abs().max().item()
        assert 0.9 * bound < a <= bound + 1e-7, (a, bound)

    blk = vit.blocks[3]
    for chunk in blk.attn.qkv.weight.chunk(3):  # each [w, w] kernel separately, as flax does
        uniform_bound_ok(chunk, math.sqrt(6 / (w + w)))
    uniform_bound_ok(blk.attn.proj.weight, math.sqrt(6 / (w + w)))
    uniform_bound_ok(blk.mlp.fc1.weight, math.sqrt(6 / (w + m)))
    uniform_bound_ok(blk.mlp.fc2.weight, math.sqrt(6 / (w + m)))
    for bias in (blk.mlp.fc1.bias, blk.mlp.fc2.bias, vit.attn_pool.mlp.fc1.bias):
        assert 0 < bias.abs().max().item() < 1e-5  # normal(1e-6)
    for bias in (
        blk.attn.qkv.bias,
        blk.attn.proj.bias,
        vit.attn_pool.kv.bias,
        model.head.bias,
        vit.patch_embed.proj.bias,
    ):
        assert torch.all(bias == 0)
    pool = vit.attn_pool
    uniform_bound_ok(pool.latent, math.sqrt(6 / (1 + w)))  # probe (1,1,w): fan_in 1, fan_out w
    for chunk in pool.kv.weight.chunk(2):
        uniform_bound_ok(chunk, math.sqrt(6 / (w + w)))
    uniform_bound_ok(pool.q.weight, math.sqrt(6 / (w + w)))
    # lecun_normal: truncated at 2 sd of the underlying normal, std sqrt(1/fan_in) after truncation
    for weight, fan_in in ((vit.patch_embed.proj.weight, 16 * 16 * 3), (model.head.weight, w)):
        std = math.sqrt(1 / fan_in)
        assert abs(weight.std().item() / std - 1) < 0.05
        assert weight.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6
    assert abs(vit.pos_embed.std().item() * math.sqrt(w) - 1) < 0.1
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0) and mod.eps == 1e-6
    assert model.t.shape == (1,) and model.t.item() == pytest.approx(math.log(10.0))
    assert model.logit_scale.item() == pytest.approx(10.0)


# ---- forward / backward -------------------------------------------------------------------------

CHEAP = [("tiny-test", 32), ("mu/16", 32), ("Ti/16", 32), ("S/16", 32), ("M/16", 32), ("B/32", 64)]


@pytest.mark.parametrize(("name", "size"), CHEAP)
def test_forward_backward_every_parameter_gets_a_gradient(name, size):
    torch.manual_seed(0)
    model = CLIPPO.from_variant(name, image_size=size, out_dim=16).train()
    images = torch.rand(2, 3, size, size) * 2 - 1
    texts = model.render_texts(["a cat", "two dogs"])
    out = model(images=images, texts=texts)
    assert out["zimg"].shape == out["ztxt"].shape == (2, 16)
    assert out["logits"].shape == (2, 2)
    loss = torch.nn.functional.cross_entropy(out["logits"], torch.arange(2))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_forward_contract(fixture_model, noise_images):
    model = fixture_model
    with torch.no_grad():
        out = model(images=noise_images, texts=noise_images[:3], intermediates=True)
        only = model(images=noise_images)
    assert set(only) == {"zimg", "logit_scale"}
    assert only["logit_scale"].shape == ()
    torch.testing.assert_close(out["logits"], out["zimg"] @ out["ztxt"].T * out["logit_scale"])
    assert out["img/encoded"].shape == (4, 16, 64)
    assert out["img/pre_logits"].shape == (4, 64) and out["txt/logits"].shape == (3, 48)
    logits = out["img/logits"]
    expected = logits / (torch.sqrt((logits.double() ** 2).sum(-1, keepdim=True)).float() + 1e-8)
    torch.testing.assert_close(out["zimg"], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        model()


def test_zero_logits_give_zero_embedding_not_nan(fixture_model, noise_images):
    model = fixture_model
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        z = model.encode(noise_images)
    assert torch.all(z == 0)


def test_class_embeddings_and_classify_match_naive(fixture_model, noise_images):
    model = fixture_model
    names, templates = ["cat", "dog", "school bus"], ["a photo of a {}.", "{}", "art of the {}"]
    with torch.no_grad():
        got = model.class_embeddings(names, templates)
        rows = []
        for n in names:
            z = torch.stack([model.encode_texts([t.replace("{}", n)])[0] for t in templates])
            mean = z.mean(0)
            rows.append(mean / (mean.norm() + 1e-8))
        naive = torch.stack(rows)
        torch.testing.assert_close(got, naive, rtol=1e-5, atol=1e-6)
        pred = model.classify(noise_images, names, templates)
        assert pred.dtype == torch.long
        torch.testing.assert_close(pred, (model.encode(noise_images) @ naive.T).argmax(1))
    with pytest.raises(ValueError, match="exactly one"):
        model.class_embeddings(names, ["{} and {}"])
    with pytest.raises(TypeError):
        model.encode_texts("a single string")


def test_lazy_import_exposes_model_names():
    assert clippo.CLIPPO is CLIPPO and clippo.ModelConfig is ModelConfig
    assert clippo.VARIANTS is VARIANTS
