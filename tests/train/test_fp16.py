"""fp16 autocast with a gradient scaler, on the CPU (torch autocasts to float16 there too): scaled
gradients unscaled once per optimiser step (with and without accumulation), steps with inf/NaN
gradients skipped, the scaler's state checkpointed without pickle and restored on resume."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from clippo.train import NonFiniteLossError, Trainer, build_model, train
from clippo.train.ckpt_files import find_pickles
from clippo.train.config import CheckpointConfig, LoopConfig, ModelSection, TrainConfig
from clippo.train.log import read_metrics
from clippo.train.state import checkpoint_dir, list_checkpoints


@pytest.fixture(scope="session")
def fp16_config(tiny_config: Any) -> Callable[..., TrainConfig]:
    """`fp16_config(run_dir, **loop)`: the tiny run for 4 steps in fp16, `loop` fields replaced."""

    def make(run_dir: Path, **loop: Any) -> TrainConfig:
        fields = {"steps": 4, "batch_size": 8, "precision": "fp16", "device": "cpu", **loop}
        return tiny_config(run_dir, loop=LoopConfig(**fields))

    return make


@pytest.fixture(scope="session")
def fp16_trainer(factory: Any) -> Callable[..., Trainer]:
    """`fp16_trainer(cfg, model, batch, scale)`: a Trainer over a fixed batch whose gradient
    scaler starts at `scale` (set through the scaler's own state, as a resumed run's is)."""

    def make(cfg: TrainConfig, model: Any, batch: Any, scale: float) -> Trainer:
        trainer = Trainer(cfg, factory(lambda s: batch), [], copy.deepcopy(model))
        assert trainer.scaler.is_enabled() and trainer.precision.name == "fp16"
        trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": scale})
        return trainer

    return make


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    torch.manual_seed(0)
    return build_model(ModelSection(variant="tiny-test", image_size=32, out_dim=32))


def fp32_grads(cfg: TrainConfig, model: Any, batch: Any, factory: Any) -> dict[str, torch.Tensor]:
    trainer = Trainer(cfg, factory(lambda s: batch), [], copy.deepcopy(model))
    trainer.step(batch)
    return {n: p.grad.clone() for n, p in trainer.core.named_parameters()}


@pytest.mark.parametrize("accum", [1, 4])
def test_the_whole_accumulated_gradient_is_unscaled_once_per_step(
    tmp_path, tiny_model, accum, fp16_config, fp16_trainer, random_pairs, factory
):
    batch = random_pairs(3)
    ref = fp32_grads(fp16_config(tmp_path / "fp32", precision="fp32"), tiny_model, batch, factory)
    # no clipping: the optimiser then sees the unscaled gradient itself
    cfg = fp16_config(tmp_path / "fp16", accum_steps=accum, clip_grad_norm=0.0)
    trainer = fp16_trainer(cfg, tiny_model, batch, scale=2.0**10)
    trainer.step(batch)  # forward/backward only: every micro-batch's gradient, still scaled
    scaled = {n: p.grad.clone() for n, p in trainer.core.named_parameters()}
    trainer.optimizer.zero_grad(set_to_none=True)

    loss, gnorm, _ = trainer.update(batch)
    assert math.isfinite(loss) and math.isfinite(gnorm)
    # one optimiser step and one scaler update for the n micro-batches
    steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {1.0} and len(trainer.optimizer.state) == len(ref)
    assert trainer.scaler.state_dict()["_growth_tracker"] == 1
    assert trainer.scaler.get_scale() == 2.0**10
    beta1 = trainer.cfg.optim.betas[0]
    for name, p in trainer.core.named_parameters():
        want = ref[name]
        tol = 3e-2 * want.abs().max().item()  # fp16 autocast vs float32 maths
        assert want.abs().max() > 0, name
        # the gradient was multiplied by the scale for backward ...
        torch.testing.assert_close(scaled[name] / 2.0**10, want, rtol=0, atol=tol, msg=name)
        # ... and AdamW's first moment, (1 - beta1) g, got it divided out exactly once
        got = trainer.optimizer.state[p]["exp_avg"] / (1 - beta1)
        torch.testing.assert_close(got, want, rtol=0, atol=tol, msg=name)


@pytest.mark.parametrize("accum", [1, 2])
def test_a_step_with_overflowing_gradients_is_skipped_and_the_scale_halves(
    tmp_path, tiny_model, accum, fp16_config, fp16_trainer, random_pairs
):
    batch = random_pairs(4)
    cfg = fp16_config(tmp_path, accum_steps=accum)
    # 2^60 times the loss overflows float16 in the backward pass
    trainer = fp16_trainer(cfg, tiny_model, batch, scale=2.0**60)
    before = {n: p.detach().clone() for n, p in trainer.core.named_parameters()}
    loss, gnorm, _ = trainer.update(batch)
    assert math.isfinite(loss) and not math.isfinite(gnorm)
    after = dict(trainer.core.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # the weights did not move
    assert not trainer.optimizer.state  # nor did the optimiser's moments
    assert trainer.scaler.get_scale() == 2.0**59
    assert trainer.state.extra["fp16_skipped_steps"] == 1
    assert all(p.grad is None for p in after.values())  # nothing left over for the next step

    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 2.0**8})
    loss, gnorm, _ = trainer.update(batch)  # a scale that fits: the step is taken
    assert math.isfinite(gnorm) and trainer.optimizer.state
    assert any(not torch.equal(before[n], p) for n, p in trainer.core.named_parameters())
    assert trainer.state.extra["fp16_skipped_steps"] == 1


def test_overflow_at_a_scale_of_one_is_a_divergence(
    tmp_path, tiny_model, fp16_config, fp16_trainer, random_pairs
):
    """A logit scale of e^80 keeps the float32 loss finite but its gradient overflows float16
    even unscaled: no loss scale can fix that, so the run stops instead of skipping forever.
    (The pairs are mismatched: the softmax saturates, and correct pairs would give it a zero
    gradient.)"""
    left, right = random_pairs(5)
    batch = (left, right.roll(1, dims=0))
    trainer = fp16_trainer(fp16_config(tmp_path), tiny_model, batch, scale=1.0)
    with torch.no_grad():
        trainer.model.t.fill_(80.0)
    with pytest.raises(NonFiniteLossError, match="gradient norm"):
        trainer.update(batch)


def test_fp16_run_logs_and_checkpoints_its_scaler_and_resumes_exactly(
    tmp_path, fp16_config, random_pair_data
):
    cfg = fp16_config(tmp_path / "full").replace(
        checkpoint=CheckpointConfig(every_steps=2, keep_last=5)
    )
    full = train(cfg, data=random_pair_data)
    assert full.metrics["precision"] == "fp16"
    records = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert all(r["precision"] == "fp16" for r in records)
    assert all(r["fp16/loss_scale"] > 0 for r in records)

    first = checkpoint_dir(tmp_path / "full", 2)
    assert find_pickles(first) == []  # the scaler's state is JSON in optimizer.json
    saved = json.loads((first / "optimizer.json").read_text())["state"]["grad_scaler"]
    step2 = next(r for r in records if r["step"] == 2)
    assert saved["scale"] == step2["fp16/loss_scale"]
    assert saved["_growth_tracker"] >= 0 and saved["growth_interval"] == 2000
    assert json.loads((first / "train_config.json").read_text())["loop"]["precision"] == "fp16"

    # resume from step 2 in another folder: the scaler's state comes back and the run ends
    # where the uninterrupted one did
    resumed_cfg = cfg.replace(
        checkpoint=CheckpointConfig(every_steps=2, keep_last=5, resume=str(first)),
        logging=cfg.logging.__class__(run_dir=str(tmp_path / "resumed"), progress=False),
    )
    trainer = Trainer(resumed_cfg, random_pair_data, [], None)
    assert trainer.scaler.state_dict() == {**saved, "scale": float(saved["scale"])}
    resumed = trainer.run()
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [4]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    end = json.loads((list_checkpoints(tmp_path / "full")[-1][1] / "optimizer.json").read_text())
    again = json.loads(
        (list_checkpoints(tmp_path / "resumed")[-1][1] / "optimizer.json").read_text()
    )
    assert end["state"]["grad_scaler"] == again["state"]["grad_scaler"]


def test_fp16_is_refused_with_fsdp_and_named_in_the_error(tmp_path, fp16_config):
    from clippo.train.config import ConfigError

    with pytest.raises(ConfigError, match="'fp16' is not supported with loop.parallel = 'fsdp'"):
        fp16_config(tmp_path, parallel="fsdp")
