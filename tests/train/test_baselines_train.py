"""The paper's token baselines (CLIP*, 1T-CLIP) through the trainer: `model.architecture` picks
the model, the run trains its tokenizer on its own texts (or reads `model.tokenizer`), the workers
tokenise instead of rendering, and the CLIPPO path's guarantees hold: checkpoints `clippo.load`
opens (tokenizer inside), accumulation equal to the full batch, resume equal to the uninterrupted
run (with the saved tokenizer, never retrained), the eval suites unchanged."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import clippo
from clippo.cli import main
from clippo.data.collate import TokenCollate, to_device
from clippo.data.mixer import MixedBatch
from clippo.model.token_model import MixedSide, TokenModel
from clippo.model.tokenizer import TOKENIZER_FILE, TextTokenizer
from clippo.train import Trainer, train
from clippo.train.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    LoggingConfig,
    LoopConfig,
    ModelSection,
    SourceConfig,
    TrainConfig,
    config_from_dict,
)
from clippo.train.data import source_texts
from clippo.train.log import read_metrics
from clippo.train.state import LOSS_FILE, checkpoint_dir, list_checkpoints
from clippo.train.step import Loss

TOKEN_ARCHS = ("clip-star", "1t-clip")


def token_section(arch: str, **kw) -> ModelSection:
    return ModelSection(
        variant="tiny-test",
        image_size=32,
        out_dim=32,
        architecture=arch,
        vocab_size=300,
        text_max_length=24,
        tokenizer_texts=300,
        **kw,
    )


@pytest.fixture(scope="module")
def token_config(tiny_config):
    """`token_config(run_dir, arch, **sections)`: conftest's tiny run (photos and text pairs in
    every batch, so the left side of a batch is a MixedSide and an accumulation micro-batch can
    be all photos) with the token baseline `arch` as its model."""

    def make(run_dir: Path, arch: str, **sections) -> TrainConfig:
        return tiny_config(run_dir, model=token_section(arch)).replace(**sections)

    return make


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_clippo_train_trains_saves_and_loads_a_baseline(tmp_path, arch):
    """`clippo train CONFIG` with model.architecture set: the run trains (with DataLoader workers,
    so the tokenising collate crosses a process boundary), every checkpoint holds the model of
    that architecture and its tokenizer, and `clippo.load` encodes texts as the trained model."""
    toml = tmp_path / "run.toml"
    toml.write_text(
        f"""
[model]
variant = "tiny-test"
image_size = 32
out_dim = 32
architecture = "{arch}"
vocab_size = 300
text_max_length = 24
tokenizer_texts = 300

[data]
text_pair_fraction = 0.25
num_workers = 1
[[data.image_text]]
kind = "synthetic"
options = {{ textured = false }}
[[data.text_pairs]]
kind = "synthetic_paraphrase"

[optim]
name = "adamw"
lr = 1e-3

[schedule]
kind = "constant"

[loop]
steps = 4
batch_size = 8
precision = "fp32"
device = "cpu"

[checkpoint]
every_steps = 2

[logging]
every_steps = 1
run_dir = "{tmp_path / "run"}"
progress = false
"""
    )
    assert main(["train", str(toml)]) == 0
    ckpts = list_checkpoints(tmp_path / "run")
    assert [s for s, _ in ckpts] == [2, 4]
    record = losses(tmp_path / "run")
    assert len(record) == 4 and all(np.isfinite(record))
    first = (ckpts[0][1] / TOKENIZER_FILE).read_bytes()
    assert (ckpts[1][1] / TOKENIZER_FILE).read_bytes() == first  # the run's one tokenizer
    # the tokenizer was trained on the run's texts: their words are single pieces, not <unk>
    loaded = clippo.load(ckpts[-1][1])
    assert isinstance(loaded, TokenModel) and loaded.architecture == arch
    assert loaded.tokenizer is not None and loaded.tokenizer.max_length == 24
    assert 4 < loaded.tokenizer.vocab_size <= 300
    assert loaded.tokenizer.tokens("two large stars") == ["▁two", "▁large", "▁stars", "</s>"]
    # the weights moved, and the loaded model encodes texts as the trained weights do
    a, b = load_file(str(ckpts[0][1] / "model.safetensors")), loaded.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    texts = ["a red cube", "two blue balls and a green cone"]
    with torch.no_grad():
        z = loaded.eval().encode_texts(texts)
    assert z.shape == (2, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
    assert not torch.allclose(z[0], z[1])


def grads_after_one_step(cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], Trainer]:
    """The gradients of the first step of `cfg`'s run (model and data as `train` builds them)."""
    trainer = Trainer(cfg, None, [], None)
    trainer.step(next(trainer.data(0)))
    out = {n: p.grad.clone() for n, p in trainer.core.named_parameters() if p.grad is not None}
    assert len(out) == sum(1 for _ in trainer.core.parameters())
    return out, trainer


@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_accumulation_gives_the_full_batch_step(tmp_path, token_config, arch):
    """accum_steps=2 (one micro-batch all photos, the other a MixedSide of photos and text
    pairs) gives the full batch's gradients, and trains to the same losses."""
    loop = LoopConfig(steps=3, batch_size=8, precision="fp32", device="cpu")
    loop2 = LoopConfig(**{**loop.__dict__, "accum_steps": 2})
    full, trainer = grads_after_one_step(token_config(tmp_path / "g1", arch, loop=loop))
    accum, _ = grads_after_one_step(token_config(tmp_path / "g2", arch, loop=loop2))
    assert full.keys() == accum.keys()
    for name in full:
        scale = full[name].abs().max().item()
        assert scale > 0, name
        assert (accum[name] - full[name]).abs().max().item() <= 1e-5 * scale, name
    # the naive alternative (each half's own loss, negatives only from within it) differs
    trainer.optimizer.zero_grad(set_to_none=True)
    left, right = trainer._inputs(next(trainer.data(0)))
    for half in (slice(0, 4), slice(4, 8)):
        (trainer.module(left[half], right[half], Loss()) / 2).backward()
    naive = trainer.core.model.vit.patch_embed.proj.weight.grad
    ref = full["model.vit.patch_embed.proj.weight"]
    assert (naive - ref).abs().max().item() > 1e-2 * ref.abs().max().item()

    runs = {}
    for accum_steps, lp in ((1, loop), (2, loop2)):
        train(token_config(tmp_path / f"a{accum_steps}", arch, loop=lp))
        runs[accum_steps] = losses(tmp_path / f"a{accum_steps}")
    np.testing.assert_allclose(runs[2], runs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_resume_equals_the_uninterrupted_run_without_retraining_the_tokenizer(
    tmp_path, token_config, arch, monkeypatch
):
    """Resuming from the step-3 checkpoint reproduces the uninterrupted run's step-6 weights and
    loss state bitwise, with the tokenizer saved in the checkpoint: training one again is an
    error here (TextTokenizer.train is replaced by a failure for the resumed run)."""
    full = token_config(tmp_path / "full", arch)  # 6 steps, checkpoints at 3 and 6
    train(full)
    middle = checkpoint_dir(tmp_path / "full", 3)

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run trained a tokenizer")

    monkeypatch.setattr(TextTokenizer, "train", no_training)
    again = full.replace(
        checkpoint=CheckpointConfig(every_steps=3, resume=str(middle)),
        logging=LoggingConfig(run_dir=str(tmp_path / "again"), every_steps=1, progress=False),
    )
    result = train(again)
    assert result.step == 6
    end_full, end_again = (
        checkpoint_dir(tmp_path / "full", 6),
        checkpoint_dir(tmp_path / "again", 6),
    )
    for name in ("model.safetensors", LOSS_FILE):
        want, got = load_file(str(end_full / name)), load_file(str(end_again / name))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert (end_again / TOKENIZER_FILE).read_bytes() == (middle / TOKENIZER_FILE).read_bytes()
    assert losses(tmp_path / "again") == losses(tmp_path / "full")[3:]
    # a checkpoint of one architecture does not resume as another
    other = next(a for a in TOKEN_ARCHS if a != arch)
    swapped = again.replace(
        model=token_section(other),
        logging=LoggingConfig(run_dir=str(tmp_path / "swapped"), progress=False),
    )
    with pytest.raises(ConfigError, match=f'model.architecture: "{other}" in this run'):
        train(swapped)
    # and a fresh run of the same config does train one (the replacement above is what failed)
    with pytest.raises(AssertionError, match="trained a tokenizer"):
        train(token_config(tmp_path / "fresh", arch))


def test_a_tokenizer_file_is_used_as_given(tmp_path, token_config, monkeypatch):
    """model.tokenizer: the file's vocabulary (nothing trained), padded to text_max_length."""
    tok = TextTokenizer.train(["a red cube", "two blue balls", "a green cone"] * 3, 40, 10)
    path = tok.save(tmp_path / "tok")

    def no_training(*args, **kwargs):
        raise AssertionError("trained a tokenizer although model.tokenizer names one")

    monkeypatch.setattr(TextTokenizer, "train", no_training)
    model = token_section("clip-star", tokenizer=str(path))
    loop = LoopConfig(steps=1, batch_size=8, precision="fp32", device="cpu")
    result = train(token_config(tmp_path / "run", "clip-star", model=model, loop=loop))
    got = result.model.tokenizer
    assert got.to_json() != tok.to_json()  # re-padded: 24, not the file's 10
    assert got.max_length == 24 and got.vocab_size == tok.vocab_size
    assert torch.equal(got(["a red cube"])[0][:, :10], tok(["a red cube"])[0])
    bad = token_section("clip-star", tokenizer=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"model.tokenizer: .*missing.json"):
        train(token_config(tmp_path / "bad", "clip-star", model=bad, loop=loop))


@pytest.mark.parametrize("key,value", [("ink_only_text", True), ("patch_dropout", 0.5)])
def test_clippo_only_keys_are_refused_for_token_architectures(tmp_path, tiny_config, key, value):
    base = tiny_config(tmp_path).to_dict()
    base["model"].update({"architecture": "1t-clip", key: value})
    with pytest.raises(ConfigError, match=f"model.{key} is CLIPPO-only"):
        config_from_dict(base)
    base["model"]["architecture"] = "clippo"
    config_from_dict(base)  # fine for CLIPPO
    base["model"]["architecture"] = "clip"
    with pytest.raises(ConfigError, match="model.architecture"):
        config_from_dict(base)


def test_tokenizer_texts_are_the_sources_in_order():
    """Captions of image/text sources and both sides of text pairs, each source read in stored
    order with an equal share of the limit; the same texts every time (every rank agrees)."""
    from clippo.data import synthetic

    scfg = synthetic.SyntheticConfig(image_size=32, textured=False)
    captions = synthetic.SyntheticImageText(scfg, "train", 10)
    pairs = synthetic.SyntheticTextPairs(scfg, 10)
    data = DataConfig(
        image_text=(SourceConfig(kind="synthetic", options={"textured": False, "length": 10}),),
        text_pairs=(SourceConfig(kind="synthetic_paraphrase", options={"length": 10}),),
    )
    texts = source_texts(data, 32, 7)
    want = [captions[i][1] for i in range(4)] + [*pairs[0], pairs[1][0]]
    assert texts == want
    assert source_texts(data, 32, 7) == texts
    # a short source leaves its share to the next: 10 captions, then 30 - 10 pair sides
    long = source_texts(data, 32, 30)
    assert long[:10] == [captions[i][1] for i in range(10)] and len(long) == 30
    assert long[10:12] == list(pairs[0])


def test_token_collate_tokenises_in_a_picklable_collate():
    """The worker collate: photos uint8, texts as ids padded to each side's longest; a pickled
    copy (what a worker gets) collates the same; on the device the mixed left side is a
    MixedSide in batch order."""
    tok = TextTokenizer.train(["a red cube", "two blue balls", "a green cone"] * 3, 40, 10)
    photos = [np.full((32, 32, 3), v, np.uint8) for v in (0, 255)]
    batch = MixedBatch(
        5,
        [photos[0], photos[1], "a red cube"],
        ["two blue balls", "a cube", "a green cone"],
        np.array([False, False, True]),
        ["p0", "p1", "t0"],
        {},
    )
    collate = TokenCollate(tok, 32)
    out = collate(batch)
    again = pickle.loads(pickle.dumps(collate))(batch)
    assert all(torch.equal(out[k], again[k]) for k in ("left_ids", "right_ids", "left_images"))
    ids, _ = tok(["two blue balls", "a cube", "a green cone"], pad_to_longest=True)
    assert torch.equal(out["right_ids"], ids) and ids.shape[1] < 10
    assert torch.equal(out["left_ids"], tok(["a red cube"], pad_to_longest=True)[0])
    on = to_device(out, "cpu")
    left = on["left_input"]
    assert isinstance(left, MixedSide) and left.is_text.tolist() == [False, False, True]
    assert left.pixels.shape == (2, 3, 32, 32) and float(left.pixels[0].max()) == -1.0
    assert torch.equal(on["right_input"], ids)
    # every left row a photo (or every one a text): a plain tensor
    photos_only = MixedBatch(0, photos, ["a", "b"], np.array([False, False]), ["a", "b"], {})
    assert to_device(collate(photos_only), "cpu")["left_input"].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_the_eval_suites_run_unchanged_on_a_trained_baseline(tmp_path, token_config, arch):
    from clippo.eval.datasets import CaptionedImages
    from clippo.eval.spec import EvalSpec
    from clippo.eval.suites import retrieval_suite

    loop = LoopConfig(steps=2, batch_size=8, precision="fp32", device="cpu")
    result = train(token_config(tmp_path / "run", arch, loop=loop))
    model = clippo.load(result.checkpoint).eval()
    from clippo.data import synthetic

    ds = synthetic.SyntheticImageText(synthetic.SyntheticConfig(image_size=32, textured=False))
    items = [ds[i] for i in range(6)]
    images = np.stack([im for im, _ in items])
    texts = tuple(t for _, t in items)
    data = CaptionedImages(images, tuple(map(str, range(6))), texts, np.arange(6), "memory")
    out = retrieval_suite(model, EvalSpec("retrieval", "memory"), data=data, num_workers=0)
    assert out["n_images"] == 6 and out["n_texts"] == 6
    assert all(0 <= out[f"{d}/r@1"] <= 1 for d in ("img2txt", "txt2img"))
    assert out["img2txt/r@10"] == 1.0  # 6 candidates: all within 10
    assert 0 < out["modality_gap"] < 2


def test_grad_checkpointing_covers_the_text_blocks_with_the_same_gradients(tmp_path, token_config):
    """model.grad_checkpointing: CLIP*'s text blocks are recomputed in the backward pass too
    (each runs twice per step), and the gradients are those without it."""
    grads, calls = {}, {}
    for on in (False, True):
        model = token_section("clip-star", grad_checkpointing=on)
        cfg = token_config(tmp_path / str(on), "clip-star", model=model)
        trainer = Trainer(cfg, None, [], None)
        count = [0]
        block = trainer.model.text.blocks[0]
        forward = block.forward

        def counted(*args, forward=forward, count=count, **kwargs):
            count[0] += 1  # (module hooks do not fire in checkpoint's recomputation)
            return forward(*args, **kwargs)

        block.forward = counted
        trainer.step(next(trainer.data(0)))
        grads[on] = {n: p.grad for n, p in trainer.core.named_parameters() if p.grad is not None}
        calls[on] = count[0]
    assert calls == {False: 2, True: 4}  # left text pairs + right texts; recomputed when on
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_pairs_of_strings_are_tokenised_by_the_step(tmp_path, token_config, arch):
    """A data factory of (pixels, strings) pairs trains a token baseline: the step tokenises the
    strings with the model's tokenizer (as the pipeline does), padding masked."""
    loop = LoopConfig(steps=2, batch_size=4, precision="fp32", device="cpu")
    cfg = token_config(tmp_path / "run", arch, loop=loop)
    captions = ["a red cube", "two blue balls", "a green cone on the left", "hello"]

    def data(start):
        step = start
        while True:
            g = torch.Generator().manual_seed(step)
            yield torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, captions
            step += 1

    result = train(cfg, data=data)
    assert result.step == 2 and all(np.isfinite(losses(tmp_path / "run")))
    left, right = Trainer(
        cfg.replace(logging=LoggingConfig(run_dir=str(tmp_path / "other"), progress=False)),
        data,
        [],
        None,
    )._inputs(next(data(0)))
    tok = result.model.tokenizer
    assert torch.equal(right, tok(captions, pad_to_longest=True)[0])
    assert right.shape[1] < tok.max_length  # padded to the longest caption only
    assert left.shape == (4, 3, 32, 32)


DDP_SCRIPT = """
import json, sys
from clippo.train import train
from clippo.train.config import config_from_dict
import clippo.train.distributed as cdist
cdist.init_distributed(device="cpu")
with open(sys.argv[1]) as f:
    train(config_from_dict(json.load(f)))
cdist.cleanup()
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_ddp_with_accumulation_trains_a_baseline(tmp_path, token_config, launch, arch):
    """Two CPU processes (gloo, DDP), accumulation 2, half of each batch text pairs: each rank's
    last micro-batch holds text pairs only, so the image path takes no part in that backward;
    the run trains anyway (DDP told to expect unused parameters) and saves its checkpoint."""
    cfg = token_config(
        tmp_path / "run",
        arch,
        loop=LoopConfig(steps=2, batch_size=8, accum_steps=2, precision="fp32", device="cpu"),
        checkpoint=CheckpointConfig(every_steps=2),
    )
    cfg = cfg.replace(data=DataConfig(**{**cfg.data.__dict__, "text_pair_fraction": 0.5}))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    launch(2, tmp_path / "ddp.py", tmp_path / "cfg.json")
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert len(losses(tmp_path / "run")) == 2 and all(np.isfinite(losses(tmp_path / "run")))
    model = clippo.load(checkpoint_dir(tmp_path / "run", 2))
    assert model.architecture == arch and model.tokenizer is not None


# trains `argv[1]` (a JSON config) on (pixels, captions) batches of 8, each rank taking its
# slice of every batch (a single process takes all of it)
FSDP_SCRIPT = """
import json, sys, torch
from clippo.train import train
from clippo.train.config import config_from_dict
import clippo.train.distributed as cdist

WORDS = ["a", "red", "blue", "green", "cube", "ball", "cone", "left", "right", "two", "big"]
info = cdist.init_distributed(device="cpu")
def data(start):
    step = start
    while True:
        g = torch.Generator().manual_seed(1000 + step)
        pixels = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
        picks = torch.randint(len(WORDS), (8, 5), generator=g).tolist()
        captions = [" ".join(WORDS[i] for i in row) for row in picks]
        b = 8 // info.world_size
        rows = slice(info.rank * b, (info.rank + 1) * b)
        yield pixels[rows], captions[rows]
        step += 1
with open(sys.argv[1]) as f:
    train(config_from_dict(json.load(f)), data=data)
cdist.cleanup()
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", TOKEN_ARCHS)
def test_fsdp_with_accumulation_matches_a_single_process_for_a_baseline(
    tmp_path, token_config, launch, arch
):
    """Two CPU processes under FSDP (every transformer block sharded: the vit's, and CLIP*'s text
    tower's), accumulation 2, train the baseline to the weights one process gets from the whole
    batch; the sharded checkpoint resumes to the uninterrupted run's weights."""
    tok = TextTokenizer.train(
        ["a red cube on the left", "two big blue balls", "a green cone right"] * 3, 60, 12
    )
    model = token_section(arch, tokenizer=str(tok.save(tmp_path / "tok")))
    (tmp_path / "train.py").write_text(FSDP_SCRIPT)

    def run(name: str, nproc: int, accum: int, parallel: str, resume: str = "") -> Path:
        loop = LoopConfig(
            steps=4,
            batch_size=8,
            accum_steps=accum,
            precision="fp32",
            device="cpu",
            parallel=parallel,
        )
        ckpt = CheckpointConfig(every_steps=2, resume=resume)
        cfg = token_config(tmp_path / name, arch, model=model, loop=loop, checkpoint=ckpt)
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg.to_dict()))
        launch(nproc, tmp_path / "train.py", tmp_path / f"{name}.json")
        return tmp_path / name

    def outputs(run_dir: Path, step: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        trained = clippo.load(checkpoint_dir(run_dir, step))
        probe = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
        with torch.no_grad():
            return trained.encode_images(probe), trained.encode_texts(["a red cube", "two cones"])

    single = outputs(run("single", 1, 1, "auto"))
    sharded = outputs(run("fsdp", 2, 2, "fsdp"))
    halfway = outputs(tmp_path / "single", 2)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(single, halfway))  # it trains
    for got, want in zip(sharded, single):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    resumed = run("resumed", 2, 2, "fsdp", resume=str(checkpoint_dir(tmp_path / "fsdp", 2)))
    assert [s for s, _ in list_checkpoints(resumed)] == [4]
    for got, want in zip(outputs(resumed), sharded):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
