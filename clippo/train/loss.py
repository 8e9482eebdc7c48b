"""Contrastive losses for CLIPPO: softmax (CLIP / big_vision) and sigmoid (SigLIP).

Pure functions work on whatever embeddings they are given; `ContrastiveLoss` adds the
distributed part (all-gather with gradients, optional local loss). They compute in the promoted
dtype of their inputs, at least float32 (also inside a bf16/fp16 autocast region): bf16 and fp16
embeddings in float32, float64 ones in float64, so `torch.autograd.gradcheck` can check them.

Distributed gradient convention (what DDP's gradient *averaging* needs):
every rank returns a loss whose gradient, summed over ranks and divided by the world size W
(DDP's all-reduce mean), equals the gradient of the single-process loss on the global batch.
- full mode (`local_loss=False`): every rank computes the global loss on the gathered [B, B]
  logits; its value is the global loss. Because the gather's backward sums the gradients of all
  ranks, each rank's embedding gradient is W x dL/dz_r, and DDP's mean brings it back to dL/dz.
- local mode (`local_loss=True`): rank r computes only its own rows (its images against all
  texts) and, for softmax, its own columns (its texts against all images): [b, B] logits, so
  memory is linear in the global batch. The value is the mean over rank r's b examples (= W x its
  share of the global loss); the mean of the values over ranks is the global loss.
In both modes parameters outside the embeddings (logit scale, bias) also get the right gradient
after DDP averaging. All ranks must pass the same local batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clippo.train.distributed import all_gather_with_grad, get_rank, is_dist

__all__ = [
    "softmax_contrastive_loss",
    "softmax_contrastive_loss_local",
    "sigmoid_contrastive_loss",
    "sigmoid_contrastive_loss_local",
    "ContrastiveLoss",
    "LOSS_KINDS",
    "SIGLIP_BIAS_INIT",
]

LOSS_KINDS = ("softmax", "sigmoid")
SIGLIP_BIAS_INIT = -10.0  # SigLIP's init of the learned bias: every pair starts as a negative


def _fp32(device: torch.device) -> torch.autocast:
    """Compute the loss in (at least) float32 even inside a bf16/fp16 autocast region
    (logsumexp over B)."""
    return torch.autocast(device_type=device.type, enabled=False)


def _promote(*xs: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
    """`xs` as tensors of one dtype: their promoted dtype, at least float32. bf16/fp16 inputs are
    computed in float32; float64 ones stay float64 (so `torch.autograd.gradcheck` can run). A
    Python number takes the tensors' dtype (it does not raise float32 to float64)."""
    ts = [torch.as_tensor(x) for x in xs]
    dtype = torch.float32
    for x, t in zip(xs, ts):
        if isinstance(x, torch.Tensor):
            dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in ts)


def _check_pair(zimg: torch.Tensor, ztxt: torch.Tensor) -> None:
    if zimg.ndim != 2 or ztxt.ndim != 2 or zimg.shape[1] != ztxt.shape[1]:
        raise ValueError(
            f"expected zimg [B,D] and ztxt [B,D], got {tuple(zimg.shape)} and {tuple(ztxt.shape)}"
        )


def softmax_contrastive_loss(
    zimg: torch.Tensor, ztxt: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """big_vision `bidirectional_contrastive_loss`, mean-reduced.

    zimg, ztxt: [B, D] (pair i is (zimg[i], ztxt[i])); logit_scale: scalar or [1] (= exp(t)).
    logits = scale * zimg @ ztxt.T; loss = mean_i 0.5 * (CE(row i, i) + CE(column i, i)) -> [].
    """
    _check_pair(zimg, ztxt)
    if zimg.shape[0] != ztxt.shape[0]:
        raise ValueError(
            f"softmax loss needs as many images as texts, got {zimg.shape[0]} and {ztxt.shape[0]}"
        )
    with _fp32(zimg.device):
        zimg, ztxt, scale = _promote(zimg, ztxt, logit_scale)
        logits = scale.reshape(()) * (zimg @ ztxt.T)
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def softmax_contrastive_loss_local(
    zimg: torch.Tensor,
    ztxt: torch.Tensor,
    zimg_all: torch.Tensor,
    ztxt_all: torch.Tensor,
    logit_scale: torch.Tensor | float,
    offset: int,
) -> torch.Tensor:
    """Rows and columns of the global softmax loss that belong to one shard.

    zimg, ztxt: [b, D], this shard's pairs, which are rows offset..offset+b of zimg_all/ztxt_all [B, D].
    Returns mean over the shard's b pairs of 0.5 * (CE(img row) + CE(txt column)) -> [].
    Sum over shards of (b/B) * this == softmax_contrastive_loss(zimg_all, ztxt_all).
    """
    _check_pair(zimg, ztxt)
    _check_pair(zimg_all, ztxt_all)
    b = zimg.shape[0]
    if ztxt.shape[0] != b or not 0 <= offset <= zimg_all.shape[0] - b:
        raise ValueError(
            f"bad shard: b={b}, ztxt rows={ztxt.shape[0]}, offset={offset}, B={zimg_all.shape[0]}"
        )
    with _fp32(zimg.device):
        zimg, ztxt, zimg_all, ztxt_all, scale = _promote(
            zimg, ztxt, zimg_all, ztxt_all, logit_scale
        )
        scale = scale.reshape(())
        img_rows = scale * (zimg @ ztxt_all.T)  # [b, B]: my images vs all texts
        txt_cols = scale * (ztxt @ zimg_all.T)  # [b, B]: my texts vs all images
        target = torch.arange(offset, offset + b, device=zimg.device)
        return 0.5 * (F.cross_entropy(img_rows, target) + F.cross_entropy(txt_cols, target))


def _sigmoid_rows(
    zimg: torch.Tensor, ztxt_all: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, offset: int
) -> torch.Tensor:
    """Sum over rows zimg [b, D] vs ztxt_all [B, D] of -log sigmoid(label * logit); the inputs
    already share one dtype (`_promote`)."""
    logits = scale * (zimg @ ztxt_all.T) + bias  # [b, B]
    labels = -torch.ones_like(logits)
    idx = torch.arange(logits.shape[0], device=logits.device)
    labels[idx, idx + offset] = 1.0
    return -F.logsigmoid(labels * logits).sum()


def sigmoid_contrastive_loss(
    zimg: torch.Tensor,
    ztxt: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
) -> torch.Tensor:
    """SigLIP loss: logits = scale * zimg @ ztxt.T + bias; labels +1 on the diagonal, -1 elsewhere;
    loss = -sum_ij log sigmoid(label_ij * logit_ij) / B -> [].  zimg, ztxt: [B, D].
    """
    _check_pair(zimg, ztxt)
    if zimg.shape[0] != ztxt.shape[0]:
        raise ValueError(
            f"sigmoid loss needs as many images as texts, got {zimg.shape[0]} and {ztxt.shape[0]}"
        )
    with _fp32(zimg.device):
        zimg, ztxt, scale, bias = _promote(zimg, ztxt, logit_scale, logit_bias)
        return _sigmoid_rows(zimg, ztxt, scale.reshape(()), bias.reshape(()), 0) / zimg.shape[0]


def sigmoid_contrastive_loss_local(
    zimg: torch.Tensor,
    ztxt_all: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    offset: int,
) -> torch.Tensor:
    """One shard's rows of the SigLIP loss: zimg [b, D] (rows offset..offset+b) vs ztxt_all [B, D].

    Returns the row sum / b -> []. Sum over shards of (b/B) * this == sigmoid_contrastive_loss(all).
    Every pair is owned by exactly one row, so no column term is needed.
    """
    _check_pair(zimg, ztxt_all)
    b = zimg.shape[0]
    if not 0 <= offset <= ztxt_all.shape[0] - b:
        raise ValueError(f"bad shard: b={b}, offset={offset}, B={ztxt_all.shape[0]}")
    with _fp32(zimg.device):
        zimg, ztxt_all, scale, bias = _promote(zimg, ztxt_all, logit_scale, logit_bias)
        return _sigmoid_rows(zimg, ztxt_all, scale.reshape(()), bias.reshape(()), offset) / b


class ContrastiveLoss(nn.Module):
    """Contrastive loss with global-batch negatives under torch.distributed.

    kind: "softmax" (CLIPPO/big_vision) or "sigmoid" (SigLIP).
    gather: all-gather embeddings (with gradients) so negatives come from the global batch;
        ignored without a multi-process group.
    local_loss: compute only this rank's rows/columns against the global batch (needs gather).
    learn_bias / bias_init: for "sigmoid" without an external bias, own a learned bias [1]
        (`SIGLIP_BIAS_INIT`). This module is then its one owner: include it in the optimiser, in
        the DDP-wrapped module (so its gradient is averaged like every other parameter) and in
        checkpoints (its `state_dict`).
    See the module docstring for the gradient convention.
    """

    def __init__(
        self,
        kind: str = "softmax",
        gather: bool = True,
        local_loss: bool = False,
        *,
        learn_bias: bool = False,
        bias_init: float = SIGLIP_BIAS_INIT,
    ) -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
        if local_loss and not gather:
            raise ValueError(
                "local_loss=True needs gather=True (local rows against the global batch)"
            )
        if learn_bias and kind != "sigmoid":
            raise ValueError("learn_bias only applies to kind='sigmoid'")
        self.kind, self.gather, self.local_loss = kind, gather, local_loss
        self.logit_bias = nn.Parameter(torch.full((1,), float(bias_init))) if learn_bias else None

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, gather={self.gather}, local_loss={self.local_loss}"

    def forward(
        self,
        zimg: torch.Tensor,
        ztxt: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        *,
        detach_own: bool = False,
    ) -> torch.Tensor:
        """zimg, ztxt: [b, D] this rank's pairs; logit_scale: exp(t), scalar or [1] -> loss [].

        detach_own: use this module's own parameters (the learned bias) without passing them a
        gradient, for a call whose gradient they get from another call (gradient accumulation
        over cached embeddings evaluates the whole loss once per micro-batch).
        """
        _check_pair(zimg, ztxt)
        if self.kind == "softmax":
            if logit_bias is not None:
                raise ValueError(
                    "the softmax loss takes no logit_bias (a constant shift cancels in softmax)"
                )
            return self._softmax(zimg, ztxt, logit_scale)
        return self._sigmoid(zimg, ztxt, logit_scale, self._sigmoid_bias(logit_bias, detach_own))

    def _softmax(
        self, zimg: torch.Tensor, ztxt: torch.Tensor, scale: torch.Tensor | float
    ) -> torch.Tensor:
        if not (self.gather and is_dist()):
            return softmax_contrastive_loss(zimg, ztxt, scale)
        zimg_all, ztxt_all = all_gather_with_grad(zimg), all_gather_with_grad(ztxt)
        if not self.local_loss:
            return softmax_contrastive_loss(zimg_all, ztxt_all, scale)
        offset = get_rank() * zimg.shape[0]
        return softmax_contrastive_loss_local(zimg, ztxt, zimg_all, ztxt_all, scale, offset)

    def _sigmoid(
        self,
        zimg: torch.Tensor,
        ztxt: torch.Tensor,
        scale: torch.Tensor | float,
        bias: torch.Tensor | float,
    ) -> torch.Tensor:
        if not (self.gather and is_dist()):
            return sigmoid_contrastive_loss(zimg, ztxt, scale, bias)
        if self.local_loss:  # this rank's rows need every rank's texts, no other rank's images
            offset = get_rank() * zimg.shape[0]
            return sigmoid_contrastive_loss_local(
                zimg, all_gather_with_grad(ztxt), scale, bias, offset
            )
        zimg_all, ztxt_all = all_gather_with_grad(zimg), all_gather_with_grad(ztxt)
        return sigmoid_contrastive_loss(zimg_all, ztxt_all, scale, bias)

    def _sigmoid_bias(
        self, logit_bias: torch.Tensor | float | None, detach_own: bool
    ) -> torch.Tensor | float:
        if logit_bias is not None:
            if self.logit_bias is not None:
                raise ValueError(
                    "logit_bias passed although this ContrastiveLoss owns a learned bias"
                )
            return logit_bias
        if self.logit_bias is None:
            raise ValueError(
                "the sigmoid loss needs logit_bias (or ContrastiveLoss(..., learn_bias=True))"
            )
        return self.logit_bias.detach() if detach_own else self.logit_bias
