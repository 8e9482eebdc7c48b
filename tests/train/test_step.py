"""The step serves any model with the pair contract, on pixels or on token ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
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


# ---- token dropping: ink-only texts, patch dropout on photos ----------------------------------

CAPTIONS = ["a red circle", "two blue squares on the left", "", "a green triangle above", "x"]


def pair_batch(step: int, size: int = 64) -> list:
    """6 image/text pairs and 2 text/text pairs of short captions (random photos)."""
    from clippo.data.sources import ImageTextPair, TextPair

    rng = np.random.default_rng(step)
    pairs: list = [
        ImageTextPair(
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            CAPTIONS[(step + i) % 5],
            f"i{i}",
        )
        for i in range(6)
    ]
    pairs += [
        TextPair(CAPTIONS[(step + i) % 5], CAPTIONS[(step + i + 1) % 5], f"t{i}") for i in range(2)
    ]
    return pairs


def tiny_clippo(**options):
    from clippo.model.config import ModelConfig, ViTConfig
    from clippo.model.one_tower import CLIPPO

    torch.manual_seed(0)
    vit = ViTConfig.from_variant("tiny-test", image_size=64)
    return CLIPPO(ModelConfig(vit=vit, out_dim=32, **options))


def test_ink_only_step_gets_the_pipelines_masks_and_matches_the_model():
    from clippo.data.collate import PairCollate
    from clippo.model.one_tower import TowerInput

    model = tiny_clippo(ink_only_text=True).eval()
    renderer = model.renderer
    step = ContrastiveStep(model, ContrastiveLoss("softmax"))
    batch = PairCollate(renderer, pixel_format="uint8", ink_patch_size=16)(pair_batch(0))
    left, right = step.inputs(batch, torch.device("cpu"), renderer)
    assert isinstance(left, TowerInput) and isinstance(right, TowerInput)
    assert left.is_text.tolist() == [False] * 6 + [True] * 2 and right.is_text.all()
    _, ink = renderer.render_torch(batch["right_texts"], "cpu", return_ink=True)
    assert torch.equal(right.ink, ink)
    with torch.no_grad():
        loss = step(left, right, Loss())
        zl = torch.cat([model.encode(left.pixels[:6]), model.encode(left.pixels[6:], left.ink[6:])])
        zr = model.encode(right.pixels, right.ink)
        assert torch.allclose(loss, softmax_contrastive_loss(zl, zr, model.t.exp()), atol=1e-6)
        dense = ContrastiveStep(tiny_clippo(), ContrastiveLoss("softmax"))
        assert (
            dense(*dense.inputs(batch, torch.device("cpu"), renderer), Loss()) - loss
        ).abs() > 1e-4
    # the trainer cuts micro-batches as from a tensor
    half = right[4:]
    assert len(half) == 4 and torch.equal(half.ink, right.ink[4:])


def test_model_without_token_dropping_gets_plain_tensors():
    from clippo.data.collate import PairCollate

    model = tiny_clippo()
    step = ContrastiveStep(model, ContrastiveLoss("softmax"))
    batch = PairCollate(model.renderer, ink_patch_size=16)(pair_batch(0))
    left, right = step.inputs(batch, torch.device("cpu"), model.renderer)
    assert isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor)


@pytest.mark.parametrize("options", [{"ink_only_text": True}, {"patch_dropout": 0.5}])
def test_token_dropping_trains_through_the_trainer_and_is_saved(tmp_path, options):
    import clippo
    from clippo.data.collate import PairCollate
    from clippo.train import train
    from clippo.train.config import (
        CheckpointConfig,
        LoggingConfig,
        LoopConfig,
        ModelSection,
        OptimConfig,
        ScheduleConfig,
        TrainConfig,
    )

    model = tiny_clippo(**options)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collate = PairCollate(model.renderer, pixel_format="uint8")  # masks found on the device

    def data(start: int):
        s = start
        while True:
            yield collate(pair_batch(s))
            s += 1

    cfg = TrainConfig(
        model=ModelSection(variant="tiny-test", image_size=64, out_dim=32),
        optim=OptimConfig(name="adamw", lr=1e-3, wd=1e-4),
        schedule=ScheduleConfig(kind="constant"),
        loop=LoopConfig(steps=2, batch_size=8, accum_steps=2, precision="fp32", device="cpu"),
        checkpoint=CheckpointConfig(every_steps=2, keep_last=1),
        logging=LoggingConfig(run_dir=str(tmp_path / "run"), every_steps=1, progress=False),
    )
    result = train(cfg, data=data, model=model)
    assert result.step == 2 and math.isfinite(result.metrics["loss"])
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    loaded = clippo.load(result.checkpoint)  # the checkpoint is a model directory
    for key, value in options.items():
        assert getattr(loaded.config, key) == value


def test_patch_dropout_recomputation_redraws_the_embed_pass_masks():
    """Accumulation caches embeddings without gradients, then recomputes each micro-batch with
    them: with patch dropout the recomputation must drop the same patches, or the cached and
    the fresh embeddings disagree and the accumulated gradient is not the whole batch's."""
    from clippo.data.collate import PairCollate

    model = tiny_clippo(patch_dropout=0.5).train()
    step = ContrastiveStep(model, ContrastiveLoss("softmax"))
    batch = PairCollate(model.renderer)(pair_batch(3))
    left, right = step.inputs(batch, torch.device("cpu"), model.renderer)
    torch.manual_seed(0)
    with torch.no_grad():
        cached = [step(left[a : a + 4], right[a : a + 4], Embed()) for a in (0, 4)]
    zls, zrs = [c[0] for c in cached], [c[1] for c in cached]
    want = softmax_contrastive_loss(torch.cat(zls), torch.cat(zrs), model.t.exp())
    for i, a in enumerate((0, 4)):
        request = CachedLoss(zls, zrs, index=i, owns_shared=i == 1)
        got = step(left[a : a + 4], right[a : a + 4], request)
        assert torch.allclose(got, want, atol=1e-6)  # fresh embeddings == cached ones
    # and the masks are random: another draw gives other embeddings
    with torch.no_grad():
        other = step(left[0:4], right[0:4], Embed())[0]
    assert (other - zls[0]).abs().max() > 1e-4


def test_patch_dropout_alone_keeps_every_text_patch_of_a_batch_with_masks():
    """A batch collated with ink masks feeds a model without the ink-only mode: texts dense."""
    from clippo.data.collate import PairCollate

    model = tiny_clippo(patch_dropout=0.5).train()
    dense = tiny_clippo().train()
    step = ContrastiveStep(model, ContrastiveLoss("softmax"))
    batch = PairCollate(model.renderer, ink_patch_size=16)(pair_batch(1))
    left, right = step.inputs(batch, torch.device("cpu"), model.renderer)
    assert left.ink is None and right.ink is None
    with torch.no_grad():
        out = model(images=left, texts=right, intermediates=True)
        want = dense(images=batch["left_pixels"], texts=batch["right_pixels"])
    assert out["txt/encoded"].shape[1] == 16 and torch.equal(out["ztxt"], want["ztxt"])
    assert torch.allclose(out["zimg"][6:], want["zimg"][6:], atol=1e-5)  # text/text lefts
    assert out["img/encoded"].shape[1] == 16  # the texts' rows; photos keep 8 of them
