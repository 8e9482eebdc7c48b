"""The training step: a model and its loss as one `nn.Module`, asked for one of three things per
call. `TrainStep` is what the `Trainer` drives; `ContrastiveStep` (pairs through one tower) is
the default, `clippo.train.task_step.TaskStep` (the tower's pooled output + a task head) another.

    step = ContrastiveStep(model, ContrastiveLoss("sigmoid", learn_bias=True))
    loss = step(left, right, Loss())                                # [] for this batch
    zl, zr = step(left, right, Embed())                             # [b,D] each, float32
    loss = step(left, right, CachedLoss(zls, zrs, i, owns_shared))  # [] over the cached batch

Everything goes through `forward` (DDP's gradient hooks only fire on calls through the wrapper),
so the mode is the request's type rather than a flag.

The model is any `nn.Module` with the pair contract `model(images=left, texts=right)` ->
{"zimg": [b,D], "ztxt": [b,D], "logit_scale": [], ...}. The sides are passed to it unchanged:
pixels [b,3,H,W] for CLIPPO's one tower, token ids [b,L] for a tower that takes tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clippo.train.data import batch_pixels
from clippo.train.loss import ContrastiveLoss
from clippo.train.optim import OptimConfig

__all__ = [
    "CachedLoss",
    "ContrastiveStep",
    "Embed",
    "Loss",
    "Request",
    "TrainStep",
    "full_value",
]


@dataclass(frozen=True)
class Embed:
    """Embeddings only -> (zleft, zright), float32 [b,D] each (accumulation's no-grad pass)."""


@dataclass(frozen=True)
class Loss:
    """The loss of this batch on its own -> []."""


@dataclass(frozen=True)
class CachedLoss:
    """The loss over a whole accumulated batch, with gradients through one micro-batch -> [].

    left, right: every micro-batch's embeddings [b,D] from `Embed` calls; this micro-batch's
    fresh ones replace entry `index`. owns_shared: this call passes gradients to the parameters
    every micro-batch shares (the logit scale, the loss's bias). Exactly one micro-batch of a
    step must own them: each evaluates the whole loss, so they would be counted n times.
    """

    left: Sequence[Tensor]
    right: Sequence[Tensor]
    index: int
    owns_shared: bool


Request = Embed | Loss | CachedLoss


def full_value(x: Tensor) -> Tensor:
    """A DTensor (FSDP) -> its full value; plain tensors unchanged."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


class TrainStep(nn.Module):
    """What the `Trainer` trains: `model` (saved as the checkpoint's model) and `loss`, a module
    holding every trainable parameter outside the model (the sigmoid loss's bias, a task head;
    saved as loss.safetensors and restored on resume), called as `step(left, right, request)`.

    A step says how a data batch becomes its two inputs (`inputs`), the optimiser groups of the
    loss's parameters (`loss_param_groups`, after the model's groups so that saved optimiser
    states line up) and what it adds to the logged metrics (`log_values`)."""

    model: nn.Module
    loss: nn.Module

    def inputs(self, batch: Any, device: torch.device, renderer: Any) -> tuple[Tensor, Tensor]:
        """A data batch -> (left, right) on `device`, each with the batch as first dimension."""
        return batch_pixels(batch, device, renderer)

    def loss_param_groups(self, cfg: OptimConfig) -> list[dict[str, Any]]:
        """The loss's trainable parameters as optimiser groups (none by default)."""
        return []

    def log_values(self) -> dict[str, float]:
        """Numbers logged beside the loss every `logging.every_steps`."""
        return {}


class ContrastiveStep(TrainStep):
    """Model + loss in one module, so DDP/FSDP cover every trainable parameter, the loss's own
    (the sigmoid bias) included. See the module docstring for the model contract."""

    def __init__(self, model: nn.Module, loss: ContrastiveLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def loss_param_groups(self, cfg: OptimConfig) -> list[dict[str, Any]]:
        """The sigmoid bias in a group "loss_bias" without weight decay."""
        own = list(self.loss.parameters())
        if not own:
            return []
        lr = cfg.lr
        return [{"params": own, "weight_decay": 0.0, "name": "loss_bias", "lr": lr, "peak_lr": lr}]

    def log_values(self) -> dict[str, float]:
        t = getattr(self.model, "t", None)
        return {} if t is None else {"logit_scale": math.exp(float(full_value(t.detach())))}

    def forward(
        self, left: Tensor, right: Tensor, request: Request
    ) -> Tensor | tuple[Tensor, Tensor]:
        """left, right: one side each of b pairs, as the model takes them; see the requests."""
        out = self.model(images=left, texts=right)
        zl, zr = out["zimg"].float(), out["ztxt"].float()  # the loss runs in float32
        scale = out["logit_scale"].float()
        match request:
            case Embed():
                return zl, zr
            case Loss():
                return self.loss(zl, zr, scale)
            case CachedLoss(left=zls, right=zrs, index=i, owns_shared=owns):
                zl = torch.cat([*zls[:i], zl, *zls[i + 1 :]])
                zr = torch.cat([*zrs[:i], zr, *zrs[i + 1 :]])
                if owns:
                    return self.loss(zl, zr, scale)
                return self.loss(zl, zr, scale.detach(), detach_own=True)
        raise TypeError(f"unknown step request {request!r}")
