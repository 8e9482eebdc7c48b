"""A task step for the `Trainer`: the tower's pooled output, a task head and the task's loss.

    step = TaskStep(model, TaskHead(nn.Linear(width, classes), loss_fn))
    train(cfg, data=factory, model=model, step=lambda m, cfg: step)

Batches are (images, targets): images uint8 [B,H,W,3] or float pixels [B,3,H,W] in [-1,1],
targets whatever `loss_fn(outputs, targets)` takes (int [B] classes, float [B] values, float
[B,K] soft labels); both have the batch as first dimension. The head and the loss function come
from the caller (the evaluation suites pass `clippo.eval.heads`' kinds and `head_loss`), so the
training room knows nothing of tasks.

`TaskHead` sits in the step's `loss` slot: the trainer saves it as loss.safetensors, restores it
on resume and gives it its own optimiser groups ("head_decay" for the weight matrices,
"head_no_decay" for the biases), after the model's.

The CLIPPO parameters that `model.pooled` does not use (the projection `head` and the logit
scale `t`) are frozen: they get no gradient, and DDP requires every trained parameter to get one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from clippo.model.one_tower import CLIPPO
from clippo.train.data import side_pixels
from clippo.train.optim import OptimConfig, param_groups
from clippo.train.step import CachedLoss, Embed, Loss, Request, TrainStep

__all__ = ["TaskHead", "TaskLoss", "TaskStep"]

# outputs [B, K] float32, targets [B, ...] -> the mean loss over rows []
TaskLoss = Callable[[Tensor, Tensor], Tensor]


class TaskHead(nn.Module):
    """A head on pooled features and its loss: forward(pooled [B,width], targets) -> loss []."""

    def __init__(self, head: nn.Module, loss_fn: TaskLoss) -> None:
        super().__init__()
        self.head = head
        self.loss_fn = loss_fn

    def outputs(self, pooled: Tensor) -> Tensor:
        """pooled [B, width] -> head outputs float32 [B, K] (the loss runs in float32)."""
        return self.head(pooled.float()).float()

    def forward(self, pooled: Tensor, targets: Tensor) -> Tensor:
        return self.loss_fn(self.outputs(pooled), targets)


class TaskStep(TrainStep):
    """CLIPPO's `pooled` + a `TaskHead`, asked as the contrastive step is (`clippo.train.step`):

    Loss() -> the batch's loss []; Embed() -> (head outputs float32 [b,K], targets), no grad
    needed; CachedLoss(outputs, targets, i, _) -> the loss over the whole accumulated batch with
    micro-batch i's outputs recomputed with gradients (a mean over rows, so the gradients of
    the n micro-steps add up to the whole batch's)."""

    model: CLIPPO
    loss: TaskHead

    def __init__(self, model: CLIPPO, head: TaskHead) -> None:
        super().__init__()
        self.model = model
        self.loss = head
        for p in (*model.head.parameters(), model.t):  # unused by `pooled`
            p.requires_grad_(False)

    def inputs(self, batch: Any, device: torch.device, renderer: Any) -> tuple[Tensor, Tensor]:
        """(images, targets) -> (float32 pixels [B,3,H,W], targets as tensors) on `device`."""
        images, targets = batch
        return side_pixels(images, device, renderer), torch.as_tensor(targets).to(device)

    def loss_param_groups(self, cfg: OptimConfig) -> list[dict[str, Any]]:
        """The head's weights with the optimiser's weight decay, its biases without."""
        groups = param_groups(self.loss, cfg.lr, cfg.wd)
        return [dict(g, name=f"head_{g['name']}") for g in groups]

    def forward(
        self, pixels: Tensor, targets: Tensor, request: Request
    ) -> Tensor | tuple[Tensor, Tensor]:
        """pixels [b,3,H,W] in [-1,1], targets [b,...]; see the class docstring."""
        outputs = self.loss.outputs(self.model.pooled(pixels))
        match request:
            case Embed():
                return outputs, targets
            case Loss():
                return self.loss.loss_fn(outputs, targets)
            case CachedLoss(left=outs, right=tgts, index=i):
                whole = torch.cat([*outs[:i], outputs, *outs[i + 1 :]])
                return self.loss.loss_fn(whole, torch.cat(list(tgts)))
        raise TypeError(f"unknown step request {request!r}")
