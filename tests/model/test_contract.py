"""The contract CLIPPO, CLIP* and 1T-CLIP share, written once (`clippo.model.contract` and the
masked transformer pass of `clippo.model.one_tower`): hand-computed values for the pieces, and
each architecture keeping the same contract through them."""

from __future__ import annotations

import math

import pytest
import torch

from clippo.model import one_tower
from clippo.model.architectures import ARCHITECTURES, build_model
from clippo.model.config import ModelConfig
from clippo.model.contract import NORM_EPS, ContrastiveModel, l2_normalize, project, prompt_ensemble
from clippo.model.one_tower import CLIPPO, TowerInput, at_least_one, padding_mask, run_blocks
from clippo.model.token_model import TokenModelConfig
from clippo.model.tokenizer import TextTokenizer

SIZE = 32  # tiny-test tower at 32 px: 4 patches
MAX_LEN = 12
TEXTS = ["a red cube", "two green cats", "hello world", "", "a photo of a dog"]
SIDE_KEYS = ["encoded", "head_input", "pre_logits", "logits", "norm", "normalized"]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(TEXTS * 4, vocab_size=120, max_length=MAX_LEN)


def tiny(name: str, tok: TextTokenizer, **kwargs: float) -> ContrastiveModel:
    torch.manual_seed(0)
    if name == "clippo":
        cfg = ModelConfig.from_variant("tiny-test", image_size=SIZE, out_dim=8, **kwargs)
        return build_model(name, cfg)
    token_cfg = TokenModelConfig.from_variant(
        "tiny-test", vocab_size=tok.vocab_size, image_size=SIZE, max_length=MAX_LEN, out_dim=8
    )
    return build_model(name, token_cfg, tok)


def images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


def text_side(model: ContrastiveModel, texts: list[str]) -> torch.Tensor:
    if isinstance(model, CLIPPO):
        return model.render_texts(texts)
    return model.tokenize(texts)[0]


# ---- the pieces, by hand -----------------------------------------------------------------------


def test_project_normalises_by_the_norm_plus_eps_and_names_every_intermediate():
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        head.bias.zero_()
    pooled = torch.tensor([[3.0, 2.0], [0.0, 0.0]])  # -> logits [3, 4] (norm 5) and [0, 0]
    encoded = torch.randn(2, 5, 2)
    out: dict[str, torch.Tensor] = {}
    z = project(head, pooled, encoded, "txt", out)
    expected = torch.tensor([[3 / (5 + NORM_EPS), 4 / (5 + NORM_EPS)], [0.0, 0.0]])
    torch.testing.assert_close(z, expected, rtol=0, atol=0)  # a zero vector stays 0, not NaN
    assert list(out) == [f"txt/{k}" for k in SIDE_KEYS]
    assert out["txt/encoded"] is encoded
    assert out["txt/head_input"] is pooled and out["txt/pre_logits"] is pooled
    torch.testing.assert_close(out["txt/logits"], torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(out["txt/norm"], torch.tensor([[5.0], [0.0]]))
    assert out["txt/normalized"] is z
    assert torch.equal(project(head, pooled, encoded, "txt", None), z)  # nothing recorded
    assert torch.equal(l2_normalize(out["txt/logits"]), z)  # one rule for both


def test_the_contract_pieces_are_importable_from_one_tower_as_before():
    assert one_tower.l2_normalize is l2_normalize
    assert one_tower.prompt_ensemble is prompt_ensemble
    assert one_tower.NORM_EPS == NORM_EPS == 1e-8


def test_at_least_one_keeps_the_first_token_of_an_empty_row_only():
    valid = torch.tensor([[False, False, False], [False, True, False], [True, True, False]])
    got = at_least_one(valid)
    want = torch.tensor([[True, False, False], [False, True, False], [True, True, False]])
    assert torch.equal(got, want)
    assert not valid[0].any()  # a copy: the caller's mask is untouched


def test_padding_mask_is_zero_on_tokens_and_minus_inf_on_padding():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    mask = padding_mask(valid, torch.float16)
    assert mask.shape == (2, 1, 1, 3) and mask.dtype == torch.float16
    inf = math.inf
    assert mask[:, 0, 0].tolist() == [[0.0, 0.0, -inf], [0.0, -inf, -inf]]


def test_run_blocks_masks_padding_and_recomputes_with_the_same_gradients():
    """Padding never reaches a real token; recomputing in the backward pass (checkpointing) gives
    bit-equal outputs and gradients."""
    torch.manual_seed(0)
    vit = one_tower.vit_tower(ModelConfig.from_variant("tiny-test", image_size=SIZE).vit)
    x = torch.randn(2, 5, vit.embed_dim)
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    mask = padding_mask(valid, x.dtype)
    alone = run_blocks(x[:1, :3], None, vit.blocks, vit.norm)  # row 0 without its padding
    results = []
    for recompute in (False, True):
        vit.zero_grad()
        y = run_blocks(x, mask, vit.blocks, vit.norm, grad_checkpointing=recompute)
        y[valid].sum().backward()
        grads = {k: p.grad.clone() for k, p in vit.named_parameters() if p.grad is not None}
        results.append((y.detach(), grads))
    (y, grads), (y_ckpt, grads_ckpt) = results
    torch.testing.assert_close(y[:1, :3], alone, rtol=0, atol=1e-6)
    assert torch.equal(y, y_ckpt)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, grad in grads.items():
        assert torch.equal(grad, grads_ckpt[name]), name


# ---- every architecture through the one contract ------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_keeps_the_one_forward_dict(tok, name):
    model = tiny(name, tok).eval()
    assert isinstance(model, ContrastiveModel)
    with torch.no_grad():
        out = model(images=images(), texts=text_side(model, TEXTS), intermediates=True)
        only_texts = model(texts=text_side(model, TEXTS))
    # images first, then texts, then the scale and the logits
    assert list(out) == [
        *(f"img/{k}" for k in SIDE_KEYS),
        "zimg",
        *(f"txt/{k}" for k in SIDE_KEYS),
        "ztxt",
        "logit_scale",
        "logits",
    ]
    assert list(only_texts) == ["ztxt", "logit_scale"]
    assert torch.equal(only_texts["ztxt"], out["ztxt"])
    assert torch.equal(out["logit_scale"], model.t.exp()[0]) and out["logit_scale"].ndim == 0
    assert torch.equal(out["logits"], out["zimg"] @ out["ztxt"].T * model.logit_scale)
    with pytest.raises(ValueError, match=rf"^{type(model).__name__}\.forward needs images"):
        model()


def test_the_image_side_is_encoded_before_the_text_side(tok):
    """Patch dropout draws from the torch RNG, for the photo rows of either side: the images'
    draw comes first, then the texts' (here a side mixing a photo and a rendered text)."""
    model = tiny("clippo", tok, patch_dropout=0.5).train()
    pixels = images(4)
    rendered = model.render_texts(TEXTS[:2])
    texts = TowerInput(torch.cat([pixels[3:], rendered]), torch.tensor([False, True, True]))
    with torch.no_grad():
        torch.manual_seed(7)
        both = model(images=pixels[:3], texts=texts)
        torch.manual_seed(7)
        first = model(images=pixels[:3])
        then = model(texts=texts)
        torch.manual_seed(8)
        other = model(images=pixels[:3], texts=texts)
    assert torch.equal(both["zimg"], first["zimg"])
    assert torch.equal(both["ztxt"], then["ztxt"])
    assert not torch.equal(other["zimg"], both["zimg"])  # the draw matters
    assert not torch.equal(other["ztxt"][:1], both["ztxt"][:1])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_encode_texts_in_batches_and_zero_shot_match_a_naive_loop(tok, name):
    model = tiny(name, tok).eval()
    names, templates = ["cat", "dog", "cube"], ["a photo of a {}.", "{}"]
    with torch.no_grad():
        whole = model.encode_texts(TEXTS)
        ones = torch.cat([model.encode_texts([t]) for t in TEXTS])
        torch.testing.assert_close(model.encode_texts(TEXTS, batch_size=2), whole)
        torch.testing.assert_close(ones, whole, rtol=0, atol=1e-6)
        got = model.class_embeddings(names, templates)
        rows = []
        for n in names:
            z = torch.cat([model.encode_texts([t.replace("{}", n)]) for t in templates])
            z = z / (z.norm(dim=-1, keepdim=True) + 1e-8)
            mean = z.mean(0)
            rows.append(mean / (mean.norm() + 1e-8))
        naive = torch.stack(rows)
        torch.testing.assert_close(got, naive, rtol=1e-5, atol=1e-6)
        pred = model.classify(images(), names, templates)
        want = (model.encode_images(images()) @ naive.T).argmax(1)
    assert pred.dtype == torch.long and torch.equal(pred, want)
    assert model.encode_texts([]).shape == (0, 8)
    with pytest.raises(TypeError, match="single string"):
        model.encode_texts("a red cube")
