"""TaskStep: the tower's pooled output + a head + the task loss, trained by the real Trainer."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from clippo.eval.heads import head_loss
from clippo.model.one_tower import CLIPPO
from clippo.train.config import (
    CheckpointConfig,
    LoggingConfig,
    LoopConfig,
    OptimConfig,
    TrainConfig,
)
from clippo.train.loop import Trainer
from clippo.train.schedule import ScheduleConfig
from clippo.train.step import CachedLoss, Embed, Loss
from clippo.train.task_step import TaskHead, TaskStep


def _step(kind: str = "classification", out: int = 3) -> TaskStep:
    torch.manual_seed(0)
    model = CLIPPO.from_variant("tiny-test", image_size=32)
    return TaskStep(model, TaskHead(nn.Linear(64, out), functools.partial(head_loss, kind)))


def _pixels(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_loss_is_head_loss_on_pooled_plus_head_and_reaches_the_tower() -> None:
    step = _step()
    x, y = _pixels(4), torch.tensor([0, 2, 1, 2])
    loss = step(x, y, Loss())
    # the reference, written out: pooled features -> the linear head -> cross-entropy
    logits = step.model.pooled(x) @ step.loss.head.weight.T + step.loss.head.bias
    expected = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(loss, head_loss("classification", logits, y), atol=1e-6)
    loss.backward()
    patch = step.model.vit.patch_embed.proj.weight.grad
    assert patch is not None and patch.abs().sum() > 0
    assert step.loss.head.weight.grad is not None
    # the projection and the logit scale are outside `pooled`: frozen, no gradient
    assert not step.model.t.requires_grad and step.model.head.weight.grad is None


def test_accumulated_requests_give_the_whole_batch_gradient() -> None:
    step = _step("soft_multilabel", 5)
    x = _pixels(6, 1)
    y = torch.rand(6, 5, generator=torch.Generator().manual_seed(2))
    whole = step(x, y, Loss())
    whole.backward()
    want = {n: p.grad.clone() for n, p in step.named_parameters() if p.grad is not None}
    step.zero_grad()
    xs, ys = x.split(3), y.split(3)
    with torch.no_grad():
        cached = [step(a, b, Embed()) for a, b in zip(xs, ys)]
    outs, tgts = [c[0] for c in cached], [c[1] for c in cached]
    for i in range(2):
        part = step(xs[i], ys[i], CachedLoss(outs, tgts, i, owns_shared=i == 1))
        assert torch.allclose(part, whole.detach(), atol=1e-5)
        part.backward()
    for n, p in step.named_parameters():
        if n in want:
            assert torch.allclose(p.grad, want[n], atol=1e-5), n


def _data(n: int, seed: int) -> Any:
    """Batches of `n` images whose class is their brightness (dark 0, bright 1)."""

    def factory(start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        k = start
        while True:
            rng = np.random.default_rng([seed, k])
            y = rng.integers(0, 2, n)
            base = np.where(y[:, None, None, None] == 1, 200, 40)
            noise = rng.integers(0, 40, (n, 32, 32, 3))
            yield (base + noise).astype(np.uint8), y
            k += 1

    return factory


def _cfg(run: Path, steps: int, resume: str = "") -> TrainConfig:
    return TrainConfig(
        optim=OptimConfig(name="adamw", lr=1e-3, wd=1e-4),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=2),
        loop=LoopConfig(steps=steps, batch_size=8, precision="fp32", device="cpu", seed=0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=1, resume=resume),
        logging=LoggingConfig(run_dir=str(run), tensorboard=False, progress=False, loss_png=False),
    )


def test_trainer_trains_a_task_step_and_resumes_its_head(tmp_path: Path) -> None:
    base = _step("classification", 2)

    def make(model: CLIPPO, cfg: TrainConfig) -> TaskStep:
        torch.manual_seed(1)
        return TaskStep(
            model, TaskHead(nn.Linear(64, 2), functools.partial(head_loss, "classification"))
        )

    trainer = Trainer(
        _cfg(tmp_path / "a", 12), _data(8, 0), [], copy.deepcopy(base.model), step=make
    )
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert names[-2:] == ["head_decay", "head_no_decay"]
    first = trainer.step(next(_data(8, 0)(0))).item()
    trainer.optimizer.zero_grad(set_to_none=True)
    result = trainer.run()
    assert result.step == 12 and result.checkpoint is not None
    assert (result.checkpoint / "manifest.json").is_file()
    x, y = next(_data(8, 99)(0))
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    with torch.no_grad():
        after = trainer.core(pixels, torch.as_tensor(y), Loss()).item()
    assert after < first  # learnt something
    # resuming the finished run restores the model and the head exactly
    again = Trainer(_cfg(tmp_path / "a", 12, "auto"), _data(8, 0), [], None, step=make)
    assert torch.equal(again.core.loss.head.weight, trainer.core.loss.head.weight)
    vit = again.model.vit.patch_embed.proj.weight
    assert torch.equal(vit, trainer.model.vit.patch_embed.proj.weight)


def test_a_checkpoint_of_another_head_is_refused(tmp_path: Path) -> None:
    def make(out: int) -> Any:
        def build(model: CLIPPO, cfg: TrainConfig) -> TaskStep:
            return TaskStep(
                model, TaskHead(nn.Linear(64, out), functools.partial(head_loss, "classification"))
            )

        return build

    model = _step().model
    Trainer(_cfg(tmp_path / "r", 3), _data(8, 0), [], copy.deepcopy(model), step=make(2)).run()
    with pytest.raises(ValueError, match="does not fit this run's TaskStep"):
        Trainer(_cfg(tmp_path / "r", 3, "auto"), _data(8, 0), [], None, step=make(3))
