"""Token dropping in training: ink-only texts and patch dropout on photos share one path."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import clippo
from clippo.model.config import ModelConfig
from clippo.model.one_tower import (
    CLIPPO,
    TowerInput,
    ink_patches,
    length_buckets,
    select_tokens,
)
from clippo.render import TextRenderConfig, TextRenderer, UnifontRenderer
from clippo.typed_config import ConfigError

TEXTS = [
    "a cat",
    "a much longer caption about two dogs in a park",
    "",
    "x",
    "red circle above a blue square",
]


def with_options(model: CLIPPO, **options) -> CLIPPO:
    """A copy of `model` (same weights) whose config has `options` set."""
    other = CLIPPO(dataclasses.replace(model.config, **options))
    other.load_state_dict(model.state_dict())
    return other


def grads(model: CLIPPO) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def naive(model: CLIPPO, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One sample at a time, no padding and no mask: the tower on only the kept tokens."""
    vit, out = model.vit, []
    for px, k in zip(pixels, keep.reshape(len(keep), -1)):
        tokens = vit._pos_embed(vit.patch_embed(px[None]))  # [1, N, W]
        x = tokens[:, k] if k.any() else tokens[:, :1]
        for block in vit.blocks:
            x = block(x)
        z = model.head(vit.attn_pool(vit.norm(x)))
        out.append(z / (z.norm(dim=-1, keepdim=True) + 1e-8))
    return torch.cat(out)


# ---- the selection step ------------------------------------------------------------------------


def test_select_tokens_gathers_kept_tokens_in_order_left_packed():
    x = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)  # token value = 5*row + pos
    keep = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    tokens, valid = select_tokens(x, keep)
    assert tokens.shape == (2, 3, 1)
    assert tokens[0, :, 0].tolist() == [1.0, 3.0, 4.0]
    assert tokens[1, 0, 0].item() == 5.0
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    longer, valid = select_tokens(x, keep, length=7)  # padded past N
    assert longer.shape == (2, 7, 1) and torch.equal(
        longer[:, :3][valid[:, :3]], tokens[valid[:, :3]]
    )
    assert valid.sum(1).tolist() == [3, 1]


def test_length_buckets_cover_every_row_once_and_pad_at_most_twice():
    counts = torch.tensor([17, 1, 16, 3, 2, 196, 5, 4, 100])
    buckets = length_buckets(counts)
    rows = torch.cat(buckets)
    assert sorted(rows.tolist()) == list(range(len(counts)))
    for b in buckets:
        c = counts[b]
        assert c.max() <= 2 * c.min() or c.max() <= 2  # padded to the bucket's longest
    maxima = [int(counts[b].max()) for b in buckets]
    assert maxima == sorted(maxima)  # shortest first
    # (0,1] (1,2] (2,4] (4,8] (8,16] (16,32] (64,128] (128,256]: no row padded past 2x
    assert len(buckets) == 8
    assert [counts[b].tolist() for b in buckets][:3] == [[1], [2], [3, 4]]


# ---- ink-only texts -----------------------------------------------------------------------------


def test_every_patch_kept_forward_and_gradients_equal_dense(fixture_model):
    torch.manual_seed(0)
    model = with_options(fixture_model, ink_only_text=True).train()
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    photos = torch.rand(3, 3, 64, 64) * 2 - 1
    all_ink = torch.ones(3, 4, 4, dtype=torch.bool)
    weights = torch.randn(3, 3)

    def run(texts):
        model.zero_grad()
        out = model(images=photos, texts=texts)
        (out["logits"] * weights).sum().backward()
        return out["ztxt"].detach(), grads(model)

    z_dense, g_dense = run(pixels)
    z_ink, g_ink = run(TowerInput(pixels, torch.ones(3, dtype=torch.bool), all_ink))
    assert (z_ink - z_dense).abs().max() < 1e-5
    assert g_dense.keys() == g_ink.keys() and len(g_dense) > 10
    for name, g in g_dense.items():
        assert (g_ink[name] - g).abs().max() < 1e-5, name


def test_padding_never_changes_outputs_or_gradients(fixture_model):
    model = copy.deepcopy(fixture_model)
    pixels, ink = UnifontRenderer(image_size=64).render_torch(TEXTS, "cpu", return_ink=True)
    assert 0 < ink.sum() < ink.numel()  # some patches really are dropped
    with torch.no_grad():
        reference = naive(model, pixels, ink)
        alone = torch.cat([model.encode(pixels[i : i + 1], ink[i : i + 1]) for i in range(5)])
        assert (alone - reference).abs().max() < 1e-5
        for pad_to in (0, 3, 9, 16, 40):
            z = model.encode(pixels, ink, pad_to=pad_to)
            assert (z - reference).abs().max() < 1e-5, pad_to
        assert (model.encode(pixels) - reference).abs().max() > 1e-3  # dense differs
    runs = []
    for pad_to in (0, 40):
        model.zero_grad()
        model.encode(pixels, ink, pad_to=pad_to).sum().backward()
        runs.append(grads(model))
    for name, g in runs[0].items():
        assert (runs[1][name] - g).abs().max() < 1e-5, name


def test_forward_with_tower_inputs_drops_blank_text_patches_only(fixture_model):
    model = with_options(fixture_model, ink_only_text=True).eval()
    pixels, ink = UnifontRenderer(image_size=64).render_torch(TEXTS[:4], "cpu", return_ink=True)
    photos = torch.rand(2, 3, 64, 64) * 2 - 1
    # a left side of two photos and two texts (text/text pairs), as the trainer makes it
    left = TowerInput(
        torch.cat([photos, pixels[:2]]),
        torch.tensor([False, False, True, True]),
        torch.cat([torch.zeros(2, 4, 4, dtype=torch.bool), ink[:2]]),  # photo rows: unused
    )
    with torch.no_grad():
        out = model(images=left, texts=TowerInput(pixels, torch.ones(4, dtype=torch.bool), ink))
        assert torch.allclose(out["zimg"][:2], model.encode(photos), atol=1e-5)  # photos whole
        assert torch.allclose(out["zimg"][2:], naive(model, pixels[:2], ink[:2]), atol=1e-5)
        assert torch.allclose(out["ztxt"], naive(model, pixels, ink), atol=1e-5)


def test_ink_patches_match_the_renderers_masks():
    for renderer in (
        UnifontRenderer(image_size=64),
        TextRenderer.from_config(TextRenderConfig(image_size=64)),
    ):
        pixels, ink = renderer.render_torch(TEXTS, "cpu", return_ink=True)
        assert torch.equal(ink_patches(pixels, renderer.config, 16), ink)
        coarse = ink.reshape(5, 2, 2, 2, 2).any(4).any(2)  # 32-px patches: any of four inked
        assert torch.equal(ink_patches(pixels, renderer.config, 32), coarse)


def test_option_is_saved_and_evaluation_follows_it(fixture_model, tmp_path):
    model = with_options(fixture_model, ink_only_text=True, patch_dropout=0.25)
    model.save(tmp_path / "m")
    loaded = clippo.load(tmp_path / "m")
    assert loaded.config.ink_only_text is True and loaded.config.patch_dropout == 0.25
    pixels, ink = loaded.renderer.render_torch(TEXTS, "cpu", return_ink=True)
    with torch.no_grad():
        by_default = loaded.encode_texts(TEXTS)
        assert torch.allclose(by_default, loaded.encode(pixels, ink), atol=1e-6)
        dense = loaded.encode_texts(TEXTS, ink_only=False)  # told otherwise
        assert torch.allclose(dense, loaded.encode(pixels), atol=1e-6)
        assert (dense - by_default).abs().max() > 1e-3
        assert torch.allclose(fixture_model.encode_texts(TEXTS), dense, atol=1e-6)  # default off


def test_open_clip_names_follow_the_model(fixture_model, noise_images):
    # encode_text / encode_image (what CLIP_benchmark calls) encode as the model was trained
    model = with_options(fixture_model, ink_only_text=True)
    pixels = model.render_texts(TEXTS)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(pixels), model.encode_texts(TEXTS), atol=1e-6)
        assert torch.allclose(fixture_model.encode_text(pixels), fixture_model.encode(pixels))
        assert torch.equal(model.encode_image(noise_images), model.encode_images(noise_images))


def test_eval_encoders_follow_the_model_unless_told(fixture_model):
    from clippo.eval.encoders import as_encoders

    model = with_options(fixture_model, ink_only_text=True)
    _, trained = as_encoders(model)
    _, dense = as_encoders(model, ink_only=False)
    with torch.no_grad():
        assert torch.allclose(trained(TEXTS), model.encode_texts(TEXTS, ink_only=True))
        assert torch.allclose(dense(TEXTS), model.encode_texts(TEXTS, ink_only=False))


def test_configs_written_before_the_options_load_with_them_off(fixture_model):
    data = fixture_model.config.to_dict()
    del data["ink_only_text"], data["patch_dropout"]
    config = ModelConfig.from_dict(data)
    assert config.ink_only_text is False and config.patch_dropout == 0.0


@pytest.mark.parametrize(
    ("key", "value"), [("patch_dropout", 1.0), ("patch_dropout", -0.1), ("ink_only_text", "yes")]
)
def test_bad_options_are_errors_naming_the_key(fixture_model, key, value):
    data = {**fixture_model.config.to_dict(), key: value}
    with pytest.raises(ConfigError, match=key):
        ModelConfig.from_dict(data, "model")


# ---- patch dropout on photos --------------------------------------------------------------------


@pytest.fixture()
def dropping(fixture_model) -> CLIPPO:
    return with_options(fixture_model, patch_dropout=0.5)


def test_patch_dropout_keeps_every_token_in_eval_mode(fixture_model, dropping, noise_images):
    texts = UnifontRenderer(image_size=64).render_torch(TEXTS[:4], "cpu")
    with torch.no_grad():
        want = fixture_model(images=noise_images, texts=texts)
        got = dropping.eval()(images=noise_images, texts=texts)
        for key in ("zimg", "ztxt", "logits"):
            assert torch.equal(got[key], want[key]), key
        assert torch.equal(dropping.encode_images(noise_images), want["zimg"])


def test_patch_dropout_in_training_drops_photo_tokens_only(fixture_model, dropping, noise_images):
    texts = UnifontRenderer(image_size=64).render_torch(TEXTS[:4], "cpu")
    dropping.train()
    with torch.no_grad():
        torch.manual_seed(7)
        out = dropping(images=noise_images, texts=texts, intermediates=True)
        torch.manual_seed(7)
        keep = dropping._photo_keep(4, torch.device("cpu"))
        torch.manual_seed(7)
        again = dropping(images=noise_images, texts=texts)
        dense = fixture_model(images=noise_images, texts=texts, intermediates=True)
    assert keep.sum(1).tolist() == [8, 8, 8, 8]  # half of the 16 patches, each photo its own
    assert len({tuple(k.tolist()) for k in keep}) > 1
    assert out["img/encoded"].shape == (4, 8, 64)
    assert torch.allclose(out["zimg"], naive(dropping, noise_images, keep), atol=1e-5)
    assert torch.equal(again["zimg"], out["zimg"])  # deterministic given the torch RNG
    # rendered texts are never dropped: every token, the dense values
    assert out["txt/encoded"].shape == dense["txt/encoded"].shape == (4, 16, 64)
    assert torch.equal(out["ztxt"], dense["ztxt"])


def test_patch_dropout_spares_the_text_rows_of_the_image_side(dropping, noise_images):
    texts = UnifontRenderer(image_size=64).render_torch(TEXTS[:2], "cpu")
    left = TowerInput(
        torch.cat([noise_images[:2], texts]), torch.tensor([False, False, True, True])
    )
    dropping.train()
    with torch.no_grad():
        z = dropping(images=left)["zimg"]
        whole = dropping.eval().encode(left.pixels)
    assert torch.allclose(z[2:], whole[2:], atol=1e-5)  # texts: every patch
    assert (z[:2] - whole[:2]).abs().max() > 1e-4  # photos: half their patches


def test_patch_dropout_gradients_flow(dropping, noise_images):
    texts = UnifontRenderer(image_size=64).render_torch(TEXTS[:4], "cpu")
    dropping.train().zero_grad()
    out = dropping(images=noise_images, texts=texts)
    out["logits"].logsumexp(1).sum().backward()
    g = grads(dropping)
    assert g["vit.patch_embed.proj.weight"].abs().sum() > 0
    assert g["vit.pos_embed"].abs().sum() > 0
    assert all(torch.isfinite(v).all() for v in g.values())
