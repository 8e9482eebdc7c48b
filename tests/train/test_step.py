"""The step serves any model with the pair contract, on pixels or on token ids."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from clippo.render import UnifontRenderer, to_pixels
from clippo.train.data import side_pixels
from clippo.train.loss import ContrastiveLoss, softmax_contrastive_loss
from clippo.train.step import CachedLoss, ContrastiveStep, Embed, Loss


class PixelsAndTokens(nn.Module):
    """A two-tower model with the pair contract: images [b,3,H,W] floats, texts [b,L] ids."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.image = nn.Linear(3 * 8 * 8, dim)
        self.text = nn.EmbeddingBag(vocab, dim)
        self.t = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        assert texts.dtype == torch.int64  # token ids reach the model as they are
        zimg = nn.functional.normalize(self.image(images.flatten(1)), dim=-1)
        ztxt = nn.functional.normalize(self.text(texts), dim=-1)
        return {"zimg": zimg, "ztxt": ztxt, "logit_scale": self.t.exp()[0]}


def test_side_pixels_converts_images_and_passes_tokens_through():
    renderer = UnifontRenderer(image_size=32)
    cpu = torch.device("cpu")
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = side_pixels(tokens, cpu, renderer)
    assert out.dtype == torch.int64 and torch.equal(out, tokens)
    images = renderer.render_batch(["a", "b"])
    assert np.array_equal(side_pixels(images, cpu, renderer).numpy(), to_pixels(images))
    texts = side_pixels(["a", "b"], cpu, renderer)
    assert np.array_equal(texts.numpy(), to_pixels(images))


def test_step_trains_a_token_tower_and_its_modes_agree():
    torch.manual_seed(0)
    model = PixelsAndTokens()
    step = ContrastiveStep(model, ContrastiveLoss("softmax"))
    images = torch.randn(4, 3, 8, 8)
    tokens = torch.randint(0, 50, (4, 5))
    loss = step(images, tokens, Loss())
    zl, zr = step(images, tokens, Embed())
    want = softmax_contrastive_loss(zl, zr, model.t.exp())
    assert torch.allclose(loss, want)
    # the cached-loss mode over a batch cut in two gives the whole batch's loss
    halves = ([zl[:2], zl[2:]], [zr[:2], zr[2:]])
    cached = step(images[2:], tokens[2:], CachedLoss(*halves, index=1, owns_shared=True))
    assert torch.allclose(cached, want, atol=1e-6)
    loss.backward()
    assert model.text.weight.grad is not None and model.text.weight.grad.abs().sum() > 0
