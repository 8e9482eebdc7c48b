"""The training step module: model and contrastive loss in one `nn.Module`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clippo.model.one_tower import CLIPPO
from clippo.train.loss import ContrastiveLoss


class ContrastiveStep(nn.Module):
    """Model + loss in one module so DDP/FSDP cover every trainable parameter (and the sigmoid
    loss's learned bias). `forward(left, right)` -> loss; with `cache` (gradient accumulation),
    this micro-batch's fresh embeddings replace entry `index` of the cached ones first, and
    only the micro-step with `grad_scale=True` passes gradients to t and the bias (each
    micro-step computes the whole loss, so they would otherwise be counted n times)."""

    def __init__(self, model: CLIPPO, kind: str, local_loss: bool) -> None:
        super().__init__()
        self.model = model
        self.loss = ContrastiveLoss(kind, gather=True, local_loss=local_loss)
        self.logit_bias = nn.Parameter(torch.full((1,), -10.0)) if kind == "sigmoid" else None

    def forward(self, left: Tensor, right: Tensor, cache=None, index: int = 0,
                grad_scale: bool = True, embed_only: bool = False):  # fmt: skip
        out = self.model(images=left, texts=right)
        zl, zr = out["zimg"].float(), out["ztxt"].float()  # the loss runs in float32
        if embed_only:
            return zl, zr
        scale, bias = out["logit_scale"].float(), self.logit_bias
        if cache is not None:
            zls, zrs = list(cache[0]), list(cache[1])
            zls[index], zrs[index] = zl, zr
            zl, zr = torch.cat(zls), torch.cat(zrs)
            if not grad_scale:
                scale = scale.detach()
                bias = None if bias is None else bias.detach()
        return self.loss(zl, zr, scale, bias)
