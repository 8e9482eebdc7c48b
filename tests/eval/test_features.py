"""Frozen features (`clippo.eval.features`): parity with a per-item loop over `model.pooled`, and
the on-disk cache (hits skip the model, every key part misses, corrupt files are recomputed)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from clippo.eval.features import (
    combine_pair,
    data_fingerprint,
    extract_features,
    model_fingerprint,
)
from clippo.model.one_tower import CLIPPO
from clippo.render import render_pair

TEXTS = ["red 1", "a cat", "blue 2", "dog 4", "owl 5", "sun", "far away"]


@pytest.fixture()
def tiny() -> CLIPPO:
    """A fresh tiny-test model per test: some tests change its weights."""
    torch.manual_seed(0)
    return CLIPPO.from_variant("tiny-test", image_size=32).eval()


class Counter:
    """Counts model passes with a forward hook on the tower's patch embedding (`pooled` calls
    `vit.forward_features`, not `vit.__call__`, so a hook on `vit` itself would not fire)."""

    def __init__(self, model: CLIPPO) -> None:
        self.images = 0
        model.vit.patch_embed.register_forward_hook(self.hook)

    def hook(self, module, args, output) -> None:
        self.images += args[0].shape[0]


def texts_to_images(model: CLIPPO):
    return lambda batch: model.renderer.render_batch(list(batch))


def naive(model: CLIPPO, texts) -> np.ndarray:
    """One text at a time, pixels converted by hand (x / 255 * 2 - 1)."""
    rows = []
    with torch.no_grad():
        for t in texts:
            img = torch.from_numpy(model.renderer(t)).permute(2, 0, 1).float()
            rows.append(model.pooled((img / 255 * 2 - 1)[None])[0].numpy())
    return np.stack(rows)


def test_features_match_a_per_item_loop(tiny):
    got = extract_features(tiny, TEXTS, texts_to_images(tiny), batch_size=3, device="cpu")
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), tiny.config.vit.width)
    np.testing.assert_allclose(got, naive(tiny, TEXTS), rtol=1e-5, atol=1e-5)


def test_pairs_rendered_as_one_image_and_training_mode_restored(tiny):
    pairs = [("a cat", "sat"), ("dog", "ran off"), ("sun", "moon")]
    tiny.train()
    got = extract_features(
        tiny,
        pairs,
        lambda b: np.stack([render_pair(tiny.renderer, a, c) for a, c in b]),
        batch_size=2,
    )
    assert tiny.training
    tiny.eval()
    with torch.no_grad():
        img = torch.from_numpy(render_pair(tiny.renderer, "dog", "ran off")).permute(2, 0, 1)
        want = tiny.pooled((img.float() / 255 * 2 - 1)[None])[0].numpy()
    np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-5)


def test_cache_hit_skips_the_model(tiny, tmp_path):
    count = Counter(tiny)
    kwargs = dict(batch_size=4, cache_dir=tmp_path, key={"pair_mode": "render"})
    first = extract_features(tiny, TEXTS, texts_to_images(tiny), **kwargs)
    assert count.images == len(TEXTS)
    assert len(list(tmp_path.glob("features-*.npy"))) == 1
    assert len(list(tmp_path.glob("features-*.json"))) == 1
    t0 = time.perf_counter()
    again = extract_features(tiny, list(TEXTS), texts_to_images(tiny), **kwargs)
    assert time.perf_counter() - t0 < 1.0
    assert count.images == len(TEXTS)  # no forward pass
    np.testing.assert_array_equal(again, first)


def test_ink_only_features_keep_the_inked_patches(tiny, tmp_path):
    # texts of an ink-only model: `pooled` over the inked patches only, as it was trained;
    # with every patch kept it is the dense representation
    got = extract_features(tiny, TEXTS, texts_to_images(tiny), batch_size=3, ink_only=True)
    dense = extract_features(tiny, TEXTS, texts_to_images(tiny), batch_size=3)
    with torch.no_grad():
        pixels = tiny.render_texts(TEXTS)
        want = tiny.pooled(pixels, tiny.ink_of(pixels)).numpy()
        all_kept = tiny.pooled(pixels, torch.ones_like(tiny.ink_of(pixels))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(all_kept, dense, rtol=1e-4, atol=1e-5)
    assert np.abs(got - dense).max() > 1e-3
    count = Counter(tiny)  # the choice is part of the cache key
    assert _misses(tiny, tmp_path, TEXTS, count, key={}, ink_only=True)
    assert _misses(tiny, tmp_path, TEXTS, count, key={})
    assert not _misses(tiny, tmp_path, TEXTS, count, key={}, ink_only=True)


def _misses(model, tmp_path, items, count, **kwargs) -> bool:
    before = count.images
    extract_features(model, items, texts_to_images(model), cache_dir=tmp_path, **kwargs)
    return count.images > before


def test_every_key_part_misses(tiny, tmp_path):
    count = Counter(tiny)
    assert _misses(tiny, tmp_path, TEXTS, count, key={"pair_mode": "render"})
    assert not _misses(tiny, tmp_path, TEXTS, count, key={"pair_mode": "render"})
    assert _misses(tiny, tmp_path, TEXTS, count, key={"pair_mode": "concat"})  # extra part
    assert _misses(tiny, tmp_path, TEXTS[:-1] + ["changed"], count, key={"pair_mode": "render"})
    assert _misses(tiny, tmp_path, TEXTS, count, key={"pair_mode": "render"}, bf16=True)
    assert _misses(tiny, tmp_path, TEXTS, count, key={"pair_mode": "render"}, data_key="v1")
    assert not _misses(
        tiny,
        tmp_path,
        TEXTS[::-1],
        count,
        key={"pair_mode": "render"},
        data_key="v1",  # vouched
    )
    # the renderer's settings: same weights, another background
    render = replace(tiny.config.render, background_brightness=200)
    other = CLIPPO(replace(tiny.config, render=render)).eval()
    other.load_state_dict(tiny.state_dict())
    count_other = Counter(other)
    assert _misses(other, tmp_path, TEXTS, count_other, key={"pair_mode": "render"})
    # a weight changed in place after a first fingerprint (the remembered digest is not reused)
    with torch.no_grad():
        tiny.vit.blocks[0].mlp.fc1.bias.add_(1.0)
    assert _misses(tiny, tmp_path, TEXTS, count, key={"pair_mode": "render"})


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "no sidecar"])
def test_corrupt_cache_is_recomputed(tiny, tmp_path, damage):
    count = Counter(tiny)
    first = extract_features(tiny, TEXTS, texts_to_images(tiny), cache_dir=tmp_path)
    (npy,) = tmp_path.glob("features-*.npy")
    data = npy.read_bytes()
    if damage == "garbage":
        npy.write_bytes(b"not an npy file")
    elif damage == "truncated":
        npy.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # still a valid .npy: only the checksum can tell
        npy.write_bytes(data[:-4] + bytes(b ^ 0xFF for b in data[-4:]))
    else:
        npy.with_suffix(".json").unlink()
    with pytest.warns(UserWarning, match="feature cache not usable.*recomputing"):
        again = extract_features(tiny, TEXTS, texts_to_images(tiny), cache_dir=tmp_path)
    assert count.images == 2 * len(TEXTS)
    np.testing.assert_array_equal(again, first)
    # and the rewritten file is trusted again
    extract_features(tiny, TEXTS, texts_to_images(tiny), cache_dir=tmp_path)
    assert count.images == 2 * len(TEXTS)


def test_model_fingerprint_tracks_weights_and_config(tiny):
    a = model_fingerprint(tiny)
    assert model_fingerprint(tiny) == a
    twin = CLIPPO(tiny.config)
    twin.load_state_dict(tiny.state_dict())
    assert model_fingerprint(twin) == a  # content, not identity
    with torch.no_grad():
        twin.t.add_(0.5)
    assert model_fingerprint(twin) != a


def test_data_fingerprint_is_by_content():
    a = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert data_fingerprint([("x", a)]) == data_fingerprint([("x", a.copy())])
    assert data_fingerprint([("x", a)]) != data_fingerprint([("x", a + 1)])
    assert data_fingerprint(["ab", "c"]) != data_fingerprint(["a", "bc"])
    assert data_fingerprint([Path("p.jpg")]) != data_fingerprint(["p.jpg"])
    with pytest.raises(ValueError, match="data_key"):
        data_fingerprint([object()])


def test_bad_images_name_the_items(tiny):
    with pytest.raises(ValueError, match=r"items 0\.\.1; expected uint8 \[2, 32, 32, 3\]"):
        extract_features(tiny, ["a", "b"], lambda b: np.zeros((2, 16, 16, 3), np.uint8))


def test_combine_pair_by_hand():
    u = np.array([[1.0, -2.0]], np.float32)
    v = np.array([[3.0, 0.5]], np.float32)
    np.testing.assert_array_equal(combine_pair(u, v), [[1.0, -2.0, 3.0, 0.5, 2.0, 2.5, 3.0, -1.0]])
    with pytest.raises(ValueError):
        combine_pair(u, v[:, :1])
