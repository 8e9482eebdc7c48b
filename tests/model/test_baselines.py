"""The paper's token baselines, CLIP* and 1T-CLIP, beside CLIPPO: the tokenizer, the contract
(forward keys, backward), padding, what each shares, the registry, save/load and parameter
counts."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clippo
from clippo.model.architectures import ARCHITECTURES, Architecture, architecture_of, build_model
from clippo.model.bigvision import CheckpointError
from clippo.model.config import ModelConfig
from clippo.model.one_tower import CLIPPO
from clippo.model.shared_tower import OneTowerCLIP
from clippo.model.token_model import MixedSide, TokenModelConfig
from clippo.model.tokenizer import EOS, PAD, TOKENIZER_FILE, TextTokenizer
from clippo.model.two_tower import CLIPStar
from clippo.registry import UnknownNameError

CORPUS = [
    "a red cube left of a blue ball",
    "two green cats on a mat",
    "the small yellow sphere behind the large cylinder",
    "a photo of a dog",
    "hello world",
    "three purple cones and a grey box",
] * 5
MAX_LEN = 12
SIZE = 32  # tiny-test tower at 32 px: 4 patches
TOKEN_ARCHS = ("clip-star", "1t-clip")


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, vocab_size=200, max_length=MAX_LEN)


def tiny(name: str, tok: TextTokenizer, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "clippo":
        return build_model(name, ModelConfig.from_variant("tiny-test", image_size=SIZE, out_dim=8))
    cfg = TokenModelConfig.from_variant(
        "tiny-test", vocab_size=tok.vocab_size, image_size=SIZE, max_length=MAX_LEN, out_dim=8
    )
    return build_model(name, cfg, tok)


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


def text_side(model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    """What the trainer hands each architecture for texts: pixels for CLIPPO, ids otherwise."""
    if isinstance(model, CLIPPO):
        return model.render_texts(texts)
    return model.tokenize(texts)[0]


# ---- tokenizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_tokenizer_train_save_load_round_trip(tmp_path, kind):
    tok = TextTokenizer.train(CORPUS, vocab_size=300, max_length=MAX_LEN, kind=kind)
    texts = ["a red dog", "", "the large yellow cube behind two cats " * 4, "ünïcode ✓"]
    ids, mask = tok(texts)
    assert ids.dtype == torch.long and ids.shape == (4, MAX_LEN)
    assert mask.dtype == torch.bool and mask.shape == (4, MAX_LEN)
    assert torch.equal(mask, ids != tok.pad_id)  # <pad> never stands for text
    assert tok.pad_id == 0
    # every text ends with </s>: "" is one token, a long text is cut to MAX_LEN with </s> last
    assert mask[1].tolist() == [True] + [False] * (MAX_LEN - 1)
    assert ids[1, 0] == tok.eos_id and ids[2, -1] == tok.eos_id and mask[2].all()
    lengths = mask.sum(1)
    assert (ids[torch.arange(4), lengths - 1] == tok.eos_id).all()
    assert tok.tokens("a red dog")[-1] == EOS
    assert PAD not in tok.tokens("a red dog")

    short, short_mask = tok(texts, pad_to_longest=True)
    longest = int(mask.sum(1).max())
    assert torch.equal(short, ids[:, :longest]) and torch.equal(short_mask, mask[:, :longest])
    assert tok(["a"], pad_to_longest=True)[0].shape == (1, len(tok.tokens("a")))

    path = tok.save(tmp_path / "m")
    assert path == tmp_path / "m" / TOKENIZER_FILE
    back = TextTokenizer.load(tmp_path / "m")
    assert back.vocab_size == tok.vocab_size and back.max_length == MAX_LEN
    ids2, mask2 = back(texts)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    assert back.to_json() == tok.to_json()  # the trained one is already what a load gives
    if kind == "bpe":  # deterministic: the same corpus gives the same file
        again = TextTokenizer.train(CORPUS, vocab_size=300, max_length=MAX_LEN, kind=kind)
        assert again.to_json() == tok.to_json()


def test_tokenizer_vocabulary_is_clamped_to_what_the_corpus_supports():
    small = TextTokenizer.train(["ab ab ab", "ba"], vocab_size=32_000, max_length=4)
    assert 3 < small.vocab_size < 32_000
    assert "clamped from 32000" in small.note and str(small.vocab_size) in small.note
    # a corpus that fills the request is not clamped
    full = TextTokenizer.train(CORPUS, vocab_size=20, max_length=4, kind="bpe")
    assert full.vocab_size == 20 and full.note == ""


def test_tokenizer_bad_input_and_files(tmp_path):
    with pytest.raises(ValueError, match="no text"):
        TextTokenizer.train(["", "  "])
    with pytest.raises(ValueError, match="kind"):
        TextTokenizer.train(CORPUS, kind="wordpiece")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text 1"):
        TextTokenizer.train(["ok", 3])  # type: ignore[list-item]
    bad = tmp_path / TOKENIZER_FILE
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=str(bad)):
        TextTokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent"):
        TextTokenizer.load(tmp_path / "absent")


# ---- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_forward_backward(tok, name):
    model = tiny(name, tok).train()
    texts = ["a red cube", "two green cats", "hello world"]
    out = model(images=images(), texts=text_side(model, texts), intermediates=True)
    # CLIPPO's keys, named by side
    pixels = tiny("clippo", tok)
    reference = pixels(images=images(), texts=pixels.render_texts(texts), intermediates=True)
    assert out.keys() == reference.keys()
    assert out["zimg"].shape == out["ztxt"].shape == (3, 8)
    assert out["logits"].shape == (3, 3)
    for side in ("zimg", "ztxt"):
        torch.testing.assert_close(out[side].norm(dim=-1), torch.ones(3))
    assert torch.equal(out["logit_scale"], model.t.exp()[0])
    torch.testing.assert_close(out["logits"], out["zimg"] @ out["ztxt"].T * model.logit_scale)
    torch.testing.assert_close(out["txt/normalized"], out["ztxt"], rtol=0, atol=0)

    labels = torch.arange(3)
    loss = torch.nn.functional.cross_entropy(out["logits"], labels)
    loss.backward()
    assert math.isfinite(loss.item())
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname  # every parameter is used by an image-text batch
        assert torch.isfinite(p.grad).all(), pname
        if not pname.endswith("token.weight"):  # only the batch's token rows get gradient
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", TOKEN_ARCHS)
def test_text_entry_points_agree_and_text_pairs_use_the_text_side(tok, name):
    model = tiny(name, tok).eval()
    texts = ["a red cube", "two green cats", "hello world", ""]
    with torch.no_grad():
        z = model.encode_texts(texts)
        ids, mask = model.tokenize(texts)
        assert torch.equal(z, model.encode_tokens(ids, mask))
        chunked = model.encode_texts(texts, batch_size=3)  # two chunks: other BLAS shapes
        torch.testing.assert_close(chunked, z, rtol=0, atol=1e-6)
        assert torch.equal(z, model.encode_tokens(ids))  # mask None: everything but <pad>
        both = model(images=ids, texts=ids)  # a text/text pair: both sides through the text tower
    torch.testing.assert_close(both["zimg"], z, rtol=0, atol=0)
    torch.testing.assert_close(both["ztxt"], z, rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(model.encode_images(images()), model(images=images())["zimg"])
    assert model.encode_texts([]).shape == (0, 8)
    with pytest.raises(TypeError, match="single string"):
        model.encode_texts("a red cube")


@pytest.mark.parametrize("name", TOKEN_ARCHS)
def test_padding_and_batch_never_change_a_text_embedding(tok, name):
    model = tiny(name, tok).eval()
    ids, mask = model.tokenize(["a red cube", "the small yellow sphere behind the large cylinder"])
    longest = int(mask.sum(1).max())
    with torch.no_grad():
        full = model.encode_tokens(ids, mask)  # padded to MAX_LEN
        trimmed = model.encode_tokens(ids[:, :longest], mask[:, :longest])
        alone = model.encode_tokens(ids[:1, : int(mask[0].sum())])  # no padding at all
        # garbage under the padding is ignored: only the mask says what is text
        noisy = ids.masked_fill(~mask, 5)
        masked = model.encode_tokens(noisy, mask)
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, full[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(masked, full, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at most 12"):
        model.encode_tokens(torch.zeros(1, MAX_LEN + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model.encode_tokens(torch.zeros(1, 4))


@pytest.mark.parametrize("name", TOKEN_ARCHS)
def test_a_mixed_side_is_each_row_through_its_own_tower(tok, name):
    """A batch mixing image/text and text/text pairs: photo rows through the image tower, text
    rows through the text tower, in batch order, gradients reaching both."""
    model = tiny(name, tok).train()
    is_text = torch.tensor([False, True, True, False, True])
    pixels = images(2)
    ids, mask = model.tokenize(["a red cube", "two cats", "hello world"])
    side = MixedSide(is_text, pixels, ids, mask)
    right = model.tokenize(["one", "two", "three", "four", "five"])[0]
    out = model(images=side, texts=right)
    with torch.no_grad():
        zimg, ztxt = model.encode_images(pixels), model.encode_tokens(ids, mask)
    assert torch.equal(out["zimg"][~is_text], zimg) and torch.equal(out["zimg"][is_text], ztxt)
    out["logits"].logsumexp(1).sum().backward()
    assert model.vit.patch_embed.proj.weight.grad is not None
    embed = model.text.embed if name == "clip-star" else model.text_embed
    assert embed.token.weight.grad is not None
    # micro-batch slices keep batch order
    part = side[1:4]
    assert part.is_text.tolist() == [True, True, False]
    assert torch.equal(part.ids, ids[:2]) and torch.equal(part.pixels, pixels[1:])
    assert torch.equal(part.mask, mask[:2])
    only_texts = side[1:3]
    assert len(only_texts.pixels) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(images=only_texts)["zimg"], ztxt[:2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="3 text rows in is_text, 2 in ids"):
        MixedSide(is_text, pixels, ids[:2])
    with pytest.raises(ValueError, match="per tower"):
        model(images=side, intermediates=True)


@pytest.mark.parametrize("name", TOKEN_ARCHS)
def test_the_trainer_step_accumulates_a_token_model_as_it_does_clippo(tok, name):
    """The trainer's step takes a token model unchanged (token ids on the text side): gradient
    accumulation over cached embeddings gives the full batch's gradients."""
    from clippo.train.loss import ContrastiveLoss
    from clippo.train.step import CachedLoss, ContrastiveStep, Embed, Loss

    model = tiny(name, tok).train()
    step = ContrastiveStep(model, ContrastiveLoss("softmax"))
    left = images(4)
    right = model.tokenize(["a red cube", "two green cats", "hello world", "a dog"])[0]
    step(left, right, Loss()).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    halves = [(left[:2], right[:2]), (left[2:], right[2:])]
    with torch.no_grad():
        cached = [step(a, b, Embed()) for a, b in halves]
    zls, zrs = [c[0] for c in cached], [c[1] for c in cached]
    for i, (a, b) in enumerate(halves):
        step(a, b, CachedLoss(zls, zrs, i, owns_shared=i == 0)).backward()
    assert full.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, full[n], rtol=1e-4, atol=1e-6, msg=n)


def test_1t_clip_text_path_is_the_clippo_tower_on_token_embeddings(tok):
    """Unpadded text through 1T-CLIP = timm's own ViT pass (blocks, norm, MAP head) on the token
    embeddings, then CLIPPO's head: the shared tower runs unchanged, only the input differs."""
    model = tiny("1t-clip", tok).eval()
    assert isinstance(model, OneTowerCLIP)
    ids = torch.randint(3, tok.vocab_size, (2, MAX_LEN))  # every position a real token
    with torch.no_grad():
        got = model.encode_tokens(ids, torch.ones_like(ids, dtype=torch.bool))
        x = model.text_embed.token(ids) + model.text_embed.pos_embed
        x = model.vit.norm(model.vit.blocks(x))
        z = model.head(model.vit.forward_head(x, pre_logits=True))
        want = z / (z.norm(dim=-1, keepdim=True) + 1e-8)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_what_is_shared(tok):
    clippo_keys = set(tiny("clippo", tok).state_dict())
    one = tiny("1t-clip", tok)
    two = tiny("clip-star", tok)
    # 1T-CLIP: CLIPPO's parameters + the text input embedding; CLIP*: + a whole text tower
    assert set(one.state_dict()) - clippo_keys == {
        "text_embed.token.weight",
        "text_embed.pos_embed",
    }
    assert clippo_keys <= set(one.state_dict()) and clippo_keys <= set(two.state_dict())
    extra = set(two.state_dict()) - clippo_keys
    assert all(k.startswith("text.") for k in extra)
    assert {"text.embed.token.weight", "text.head.weight", "text.norm.weight"} <= extra
    assert not any(k.startswith("text.attn_pool") for k in extra)  # pooling: the </s> token

    ids, mask = one.tokenize(["a red cube"])
    for model, shared in ((one, True), (two, False)):
        with torch.no_grad():
            before = model.encode_tokens(ids, mask)
            model.vit.blocks[0].mlp.fc1.weight.add_(0.5)  # the image tower's first block
            after = model.encode_tokens(ids, mask)
        assert (not torch.equal(before, after)) == shared


# ---- registry ----------------------------------------------------------------------------------


def test_registry_lists_all_three_and_refuses_duplicates(tok):
    assert list(ARCHITECTURES) == ["clippo", "clip-star", "1t-clip"]
    assert ARCHITECTURES["clip-star"].model_class is CLIPStar
    assert ARCHITECTURES["1t-clip"].config_class is TokenModelConfig
    with pytest.raises(ValueError, match="already registered"):
        ARCHITECTURES.register("clippo", Architecture(ModelConfig, CLIPPO, False, "again"))
    with pytest.raises(UnknownNameError, match="clippo, clip-star, 1t-clip"):
        ARCHITECTURES["clip"]
    for name in ARCHITECTURES:
        assert architecture_of(tiny(name, tok)) == name
    with pytest.raises(TypeError, match="TokenModelConfig"):
        build_model("clip-star", ModelConfig.from_variant("tiny-test", image_size=SIZE))
    with pytest.raises(ValueError, match="no tokenizer"):
        build_model("clippo", ModelConfig.from_variant("tiny-test", image_size=SIZE), tok)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = TokenModelConfig.from_variant("tiny-test", vocab_size=99, image_size=SIZE)
    assert TokenModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(clippo.typed_config.ConfigError, match="unknown key 'model.vocab'"):
        TokenModelConfig.from_dict({**cfg.to_dict(), "vocab": 3}, "model")
    with pytest.raises(clippo.typed_config.ConfigError, match="model.max_length"):
        TokenModelConfig.from_dict({**cfg.to_dict(), "max_length": 0}, "model")


# ---- save / load -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_save_load_round_trip_is_bitwise(tmp_path, tok, name):
    model = tiny(name, tok, seed=3).eval()
    texts = ["a red cube", "hello world"]
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["architecture"] == name
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    want = ["config.json", "model.safetensors"] + ([TOKENIZER_FILE] if name != "clippo" else [])
    assert files == sorted(want)
    loaded = clippo.load(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert not loaded.training
    with torch.no_grad():
        a = model(images=images(), texts=text_side(model, texts), intermediates=True)
        b = loaded(images=images(), texts=text_side(loaded, texts), intermediates=True)
        assert torch.equal(model.encode_texts(texts), loaded.encode_texts(texts))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_old_clippo_checkpoint_without_the_key_loads(tmp_path, tok):
    model = tiny("clippo", tok).eval()
    model.save(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    meta = json.loads(path.read_text())
    del meta["architecture"]  # as every config.json written before the baselines
    path.write_text(json.dumps(meta))
    loaded = clippo.load(tmp_path / "old")
    assert type(loaded) is CLIPPO and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.encode_images(images()), model.encode_images(images()))
    assert clippo.model.read_model_config(tmp_path / "old")[0] == "clippo"


def test_bad_token_checkpoints_name_the_file(tmp_path, tok):
    model = tiny("clip-star", tok)
    model.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "architecture": "clip"}))
    with pytest.raises(CheckpointError, match="'architecture' 'clip' is not one of"):
        clippo.load(tmp_path / "m")
    config.write_text(json.dumps({**meta, "model": {**meta["model"], "vocab_size": 7}}))
    with pytest.raises(CheckpointError, match=TOKENIZER_FILE):  # tokenizer and config disagree
        clippo.load(tmp_path / "m")
    config.write_text(json.dumps(meta))
    (tmp_path / "m" / TOKENIZER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=TOKENIZER_FILE):
        clippo.load(tmp_path / "m")
    without = tiny("1t-clip", tok)
    without.tokenizer = None
    with pytest.raises(ValueError, match="without its tokenizer"):
        without.save(tmp_path / "n")
    assert not (tmp_path / "n").exists()


# ---- parameter counts --------------------------------------------------------------------------


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("variant", "size", "vocab", "length"), [("tiny-test", 32, 97, 12), ("B/16", 224, 32_000, 64)]
)
def test_parameter_counts(variant, size, vocab, length):
    """At the same ViT: CLIP* > 1T-CLIP > CLIPPO, by exactly the text parts (on the meta device:
    nothing is allocated)."""
    with torch.device("meta"):
        cfg = TokenModelConfig.from_variant(
            variant, vocab_size=vocab, image_size=size, max_length=length
        )
        pixels = CLIPPO(cfg.image_config())
        one, two = OneTowerCLIP(cfg), CLIPStar(cfg)
    n_pix, n_one, n_two = count(pixels), count(one), count(two)
    w = cfg.vit.width
    embed = vocab * w + length * w
    assert n_one == n_pix + embed
    # CLIP*'s text tower: CLIPPO's minus the patch embedding, image position embedding, MAP
    # head (it pools the </s> token) and t
    patch = pixels.vit.patch_embed.proj
    image_in = patch.weight.numel() + patch.bias.numel() + pixels.vit.pos_embed.numel() + 1
    assert n_two == n_pix + embed + n_pix - image_in - count(pixels.vit.attn_pool)
    assert n_two > n_one > n_pix
    print(f"\n{variant} params: CLIPPO {n_pix:,}  1T-CLIP {n_one:,}  CLIP* {n_two:,}")
    if variant == "B/16":  # the paper's Table 1 reports 93M / 118M / 203M
        for n, paper in ((n_pix, 93), (n_one, 118), (n_two, 203)):
            assert abs(n / 1e6 - paper) < 1


def test_loaded_model_type_follows_the_file(tmp_path, tok):
    """`clippo.load` dispatches on config.json alone: the same weights folder with the
    architecture rewritten is refused by the other model's keys (nothing is guessed)."""
    tiny("1t-clip", tok).save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "architecture": "clip-star"}))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        clippo.load(tmp_path / "m")
