"""The training loop: end to end on synthetic data, gradient accumulation, NaN handling, hooks."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import clippo
from clippo.train import NonFiniteLossError, Trainer, build_model, train
from clippo.train.config import (
    CheckpointConfig,
    LoggingConfig,
    LoopConfig,
    ModelSection,
    TrainConfig,
)
from clippo.train.log import read_metrics
from clippo.train.state import LOSS_FILE, list_checkpoints
from clippo.train.step import Loss

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# ---- end to end --------------------------------------------------------------------------------


def test_end_to_end_on_synthetic_data(tmp_path, tiny_config, random_pairs):
    cfg = tiny_config(tmp_path / "run")
    result = train(cfg)
    assert result.step == 6 and not result.preempted
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["pairs_per_s"] > 0 for r in records)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0

    ckpts = list_checkpoints(tmp_path / "run")
    assert [s for s, _ in ckpts] == [3, 6]
    final = ckpts[-1][1]
    assert result.checkpoint == final
    assert json.loads((final / "train_config.json").read_text()) == cfg.to_dict()
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["pairs_seen"] == 48 and state["data"]["step"] == 6

    loaded = clippo.load(final)  # the trainer checkpoint is a model directory
    x = random_pairs(0)[0]
    with torch.no_grad():
        want = result.model.eval().encode(x)
        got = loaded.encode(x)
    mine, saved = result.model.state_dict(), loaded.state_dict()
    assert saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k]) for k in mine)
    # bitwise-equal weights, but a reloaded model's outputs may differ by float noise: BLAS can
    # take another code path for the reloaded tensors' memory (seen on AMD EPYC: ~1e-7)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the weights kept moving between the two checkpoints
    first = load_file(str(ckpts[0][1] / "model.safetensors"))
    last = load_file(str(final / "model.safetensors"))
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_device_rendering_gives_the_same_loss_as_worker_rendering(tmp_path, tiny_config):
    losses = {}
    for where in ("worker", "device"):
        cfg = tiny_config(tmp_path / where)
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, render_on=where))
        cfg = cfg.replace(loop=LoopConfig(steps=2, batch_size=8, precision="fp32", device="cpu"))
        train(cfg)
        recs = read_metrics(tmp_path / where / "metrics.jsonl")
        losses[where] = [r["loss"] for r in recs if "loss" in r]
    np.testing.assert_allclose(losses["device"], losses["worker"], rtol=1e-6)


def test_loss_decreases_when_fitting_a_fixed_batch(tmp_path, tiny_config, random_pairs, factory):
    batch = random_pairs(0)
    cfg = tiny_config(
        tmp_path, loop=LoopConfig(steps=25, batch_size=8, precision="fp32", device="cpu")
    )
    cfg = cfg.replace(checkpoint=CheckpointConfig(every_steps=0))
    train(cfg, data=factory(lambda step: batch))
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0], losses


def test_bf16_autocast_and_init_from_big_vision(tmp_path, tiny_config, random_pairs, factory):
    # the public big_vision fixture (a CLIPPO npz) as the tower init; its sizes are tiny-test's
    npz = FIXTURES / "clippo_tiny_public.npz"
    section = ModelSection(variant="tiny-test", image_size=64, out_dim=48, init_from=str(npz))
    model = build_model(section)
    ref = clippo.load(npz)
    mine, theirs = model.state_dict(), ref.state_dict()
    tower = [k for k in mine if k.startswith("vit.") and "attn_pool" not in k]
    assert tower and all(torch.equal(mine[k], theirs[k]) for k in tower)
    assert not torch.equal(mine["head.weight"], theirs["head.weight"])  # head: fresh init

    cfg = tiny_config(tmp_path, model=section)
    cfg = cfg.replace(loop=LoopConfig(steps=2, batch_size=8, precision="bf16", device="cpu"))
    trainer = Trainer(cfg, factory(lambda s: random_pairs(s, size=64)), [], None)
    assert trainer.bf16
    result = trainer.run()
    assert math.isfinite(result.metrics["loss"])
    assert result.model.t.dtype == torch.float32  # autocast: parameters stay fp32
    assert result.metrics["precision"] == "bf16"  # the choice is logged with every record


# ---- gradients -----------------------------------------------------------------------------------


def grads_after_one_step(cfg: TrainConfig, model, batch, factory) -> dict[str, torch.Tensor]:
    trainer = Trainer(cfg, factory(lambda s: batch), [], copy.deepcopy(model))
    trainer.step(batch)
    out = {n: p.grad.clone() for n, p in trainer.core.named_parameters() if p.grad is not None}
    assert len(out) == sum(1 for _ in trainer.core.parameters())
    return out


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_grad_accumulation_equals_one_big_batch(tmp_path, loss, tiny_config, random_pairs, factory):
    batch = random_pairs(3, batch=8)
    torch.manual_seed(0)
    model = build_model(ModelSection(variant="tiny-test", image_size=32, out_dim=32))
    loop = LoopConfig(steps=2, batch_size=8, precision="fp32", device="cpu", loss=loss)
    full = grads_after_one_step(tiny_config(tmp_path, loop=loop), model, batch, factory)
    loop4 = LoopConfig(**{**loop.__dict__, "accum_steps": 4})
    accum = grads_after_one_step(tiny_config(tmp_path, loop=loop4), model, batch, factory)
    assert full.keys() == accum.keys()
    for name in full:
        scale = full[name].abs().max().item()
        assert scale > 0, name
        assert (accum[name] - full[name]).abs().max().item() <= 1e-5 * scale, name

    # the naive alternative (each micro-batch's own loss, negatives only from within it) differs:
    # this is what the cached-embedding scheme is there to avoid
    trainer = Trainer(
        tiny_config(tmp_path, loop=loop), factory(lambda s: batch), [], copy.deepcopy(model)
    )
    for i in range(4):
        left, right = batch[0][2 * i : 2 * i + 2], batch[1][2 * i : 2 * i + 2]
        (trainer.module(left, right, Loss()) / 4).backward()
    naive = trainer.core.model.vit.patch_embed.proj.weight.grad
    ref = full["model.vit.patch_embed.proj.weight"]
    assert (naive - ref).abs().max().item() > 1e-2 * ref.abs().max().item()


def test_grad_checkpointing_gives_the_same_gradients(tmp_path, tiny_config, random_pairs, factory):
    batch = random_pairs(4)
    torch.manual_seed(0)
    section = ModelSection(variant="tiny-test", image_size=32, out_dim=32)
    model = build_model(section)
    plain = grads_after_one_step(tiny_config(tmp_path, model=section), model, batch, factory)
    ckpt_section = ModelSection(**{**section.__dict__, "grad_checkpointing": True})
    ckpt = grads_after_one_step(tiny_config(tmp_path, model=ckpt_section), model, batch, factory)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


# ---- failure handling and hooks ------------------------------------------------------------------


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_config, random_pairs, factory
):
    def make(step):
        left, right = random_pairs(step)
        if step == 5:
            left[0, 0, 0, 0] = float("nan")
        return left, right

    cfg = tiny_config(
        tmp_path, loop=LoopConfig(steps=10, batch_size=8, precision="fp32", device="cpu")
    )
    cfg = cfg.replace(checkpoint=CheckpointConfig(every_steps=2, keep_last=5))
    with pytest.raises(NonFiniteLossError, match="at step 5") as info:
        train(cfg, data=factory(make))
    assert info.value.step == 5
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]  # nothing written after the NaN
    model = clippo.load(list_checkpoints(tmp_path)[-1][1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_hooks_run_in_eval_mode_every_n_steps_and_at_the_end(
    tmp_path, tiny_config, random_pair_data
):
    calls = []

    def hook(model, step):
        calls.append((step, model.training, torch.is_grad_enabled()))
        return {"eval/step_seen": float(step)}

    cfg = tiny_config(
        tmp_path, loop=LoopConfig(steps=5, batch_size=8, precision="fp32", device="cpu")
    )
    cfg = cfg.replace(
        logging=LoggingConfig(run_dir=str(tmp_path), eval_every_steps=2, progress=False)
    )
    result = train(cfg, data=random_pair_data, hooks=[hook])
    assert calls == [(2, False, False), (4, False, False), (5, False, False)]
    assert result.model.training
    logged = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/step_seen" in r]
    assert [(r["step"], r["eval/step_seen"]) for r in logged] == [(2, 2.0), (4, 4.0), (5, 5.0)]


def test_wrong_batch_size_from_data_is_an_error(tmp_path, tiny_config, random_pairs, factory):
    cfg = tiny_config(tmp_path)
    with pytest.raises(ValueError, match="expected 8"):
        train(cfg, data=factory(lambda s: random_pairs(s, batch=4)))


# ---- DDP (two CPU processes, gloo) -------------------------------------------------------------


def embeddings(run_dir: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The newest checkpoint's embeddings of `x` (N, 3, 32, 32) -> ((N, 32), its log scale)."""
    ckpts = dict(list_checkpoints(run_dir))
    model = clippo.load(ckpts[max(ckpts)])
    with torch.no_grad():
        return model.encode(x), model.t.detach()


def loss_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The loss module's parameters in the newest checkpoint (the sigmoid loss's bias)."""
    return load_file(str(list_checkpoints(run_dir)[-1][1] / LOSS_FILE))


@pytest.mark.slow
@pytest.mark.parametrize(
    "parallel,loss", [("ddp", "softmax"), ("fsdp", "softmax"), ("fsdp", "sigmoid")]
)
def test_distributed_with_accumulation_matches_a_single_process(
    tmp_path, parallel, loss, torchrun, random_pairs
):
    x = torch.cat(random_pairs(99))
    single = torchrun(tmp_path, "single", 1, accum=1, parallel="auto", resume="", loss=loss)
    dist = torchrun(tmp_path, parallel, 2, accum=2, parallel=parallel, resume="", loss=loss)
    # Compare what the models compute: AdamW turns the float noise in gradients that are zero in
    # exact arithmetic (key biases: softmax is shift-invariant) into +-lr steps on those biases,
    # which change no output.
    (z_single, t_single), (z_dist, t_dist) = embeddings(single, x), embeddings(dist, x)
    with torch.no_grad():
        init = build_model(ModelSection(variant="tiny-test", image_size=32, out_dim=32)).encode(x)
    assert (z_single - init).abs().max() > 1e-3  # training moved the embeddings
    torch.testing.assert_close(z_dist, z_single, rtol=0, atol=2e-5)
    torch.testing.assert_close(t_dist, t_single, rtol=0, atol=1e-6)
    # the sigmoid bias: gathered from its shards into loss.safetensors
    bias = loss_state(dist)
    assert list(bias) == (["logit_bias"] if loss == "sigmoid" else [])
    for name, value in loss_state(single).items():
        torch.testing.assert_close(bias[name], value, rtol=0, atol=1e-6)
    probes = [
        [r["eval/probe"] for r in read_metrics(d / "metrics.jsonl") if "eval/probe" in r]
        for d in (single, dist)
    ]
    assert len(probes[0]) == len(probes[1]) == 1  # at the end
    assert abs(probes[0][0] - probes[1][0]) < 1e-4
    if parallel == "fsdp":  # sharded optimiser state is saved in full and restored on resume
        first = list_checkpoints(dist)[0][1]
        resumed = torchrun(
            tmp_path, "resumed", 2, accum=2, parallel=parallel, resume=first, loss=loss
        )
        assert [s for s, _ in list_checkpoints(resumed)] == [4]
        z_resumed, t_resumed = embeddings(resumed, x)
        torch.testing.assert_close(z_resumed, z_dist, rtol=0, atol=1e-6)
        torch.testing.assert_close(t_resumed, t_dist, rtol=0, atol=1e-7)
        for name, value in loss_state(resumed).items():
            torch.testing.assert_close(value, bias[name], rtol=0, atol=1e-7)
