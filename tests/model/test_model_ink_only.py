"""Ink-only text encoding: blank patches dropped, position embeddings kept, padding masked."""

from __future__ import annotations

import torch

from clippo.render import UnifontRenderer


def naive_ink_only(model, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One sample at a time, no padding and no mask: the tower run on only the kept tokens."""
    vit, out = model.vit, []
    for px, k in zip(pixels, keep.reshape(keep.shape[0], -1)):
        tokens = vit._pos_embed(vit.patch_embed(px[None]))  # [1, N, W]
        x = tokens[:, k] if k.any() else tokens[:, :1]  # no ink: the first patch stands in
        for block in vit.blocks:
            x = block(x)
        pooled = vit.attn_pool(vit.norm(x))
        z = model.head(pooled)
        out.append(z / (z.norm(dim=-1, keepdim=True) + 1e-8))
    return torch.cat(out)


def test_all_patches_kept_equals_dense_path(fixture_model):
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    keep = torch.ones(3, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(
            fixture_model.encode(pixels, keep), fixture_model.encode(pixels), atol=1e-5
        )


def test_matches_naive_per_sample_reference_and_ignores_padding(fixture_model):
    r = UnifontRenderer(image_size=64)
    texts = ["a cat", "a much longer caption about dogs", "", "x"]
    pixels, ink = r.render_torch(texts, "cpu", return_ink=True)
    assert ink.sum() < ink.numel()  # some patches really are dropped
    with torch.no_grad():
        batched = fixture_model.encode(pixels, ink)
        naive = naive_ink_only(fixture_model, pixels, ink)
        alone = torch.cat(
            [fixture_model.encode(pixels[i : i + 1], ink[i : i + 1]) for i in range(4)]
        )
        dense = fixture_model.encode(pixels)
    assert torch.allclose(batched, naive, atol=1e-5)
    assert torch.allclose(batched, alone, atol=1e-5)  # padding never leaks into a sample
    assert not torch.allclose(batched, dense, atol=1e-3)  # dropping blank patches changes the input


def test_encode_texts_ink_only_and_gradients(fixture_model):
    texts = ["red circle", "two small blue squares on the left"]
    with torch.no_grad():
        z = fixture_model.encode_texts(texts, ink_only=True)
        pixels, ink = fixture_model.renderer.render_torch(texts, "cpu", return_ink=True)
        assert torch.allclose(z, fixture_model.encode(pixels, ink), atol=1e-6)
    fixture_model.zero_grad()
    fixture_model.encode(pixels, ink).sum().backward()
    grads = [
        p.grad for p in fixture_model.parameters() if p.requires_grad and p is not fixture_model.t
    ]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
