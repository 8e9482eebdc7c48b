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
pixels [b,3,H,W] for CLIPPO's one tower, token ids [b,L] for a tower that takes tokens. A token
baseline (`clippo.model.token_model.TokenModel`: CLIP*, 1T-CLIP) gets its texts as ids from the
data pipeline (`clippo.data.collate.TokenCollate`), a photo/text mix on one side as a
`MixedSide`; sides given as lists of strings are tokenised here with the model's tokenizer.

A CLIPPO that drops tokens (`ModelConfig.ink_only_text` or `patch_dropout`) gets each side as a
`clippo.model.one_tower.TowerInput` instead (`tower_inputs`): its pixels, which rows are
rendered texts (those of text/text pairs on the left, every row on the right) and, in the
ink-only mode, the texts' ink masks from the data pipeline. The trainer cuts micro-batches from
it as from a tensor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clippo.data.collate import to_device
from clippo.model.one_tower import TowerInput
from clippo.model.token_model import MixedSide, TokenModel
from clippo.train.data import batch_pixels, side_pixels
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
    "tower_inputs",
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


def tower_inputs(
    batch: Any, device: torch.device, renderer: Any, ink_patch_size: int | None
) -> tuple[TowerInput, TowerInput]:
    """A PairCollate dict or a (left, right) pair -> (left, right) `TowerInput`s on `device`.

    Rendered-text rows: the left rows of text/text pairs (for a pair, a left side given as
    strings) and every right row; with `ink_patch_size=p` they carry ink masks bool [b,H/p,W/p]
    (the collated ones, or found from the pixels by `clippo.data.collate.to_device`).
    """
    if isinstance(batch, Mapping):
        out = to_device(batch, device, renderer, non_blocking=True, ink_patch_size=ink_patch_size)
        left_text = out["is_text_pair"]
    else:
        left_side, right_side = batch
        out = {
            "left_pixels": side_pixels(left_side, device, renderer),
            "right_pixels": side_pixels(right_side, device, renderer),
        }
        is_text = isinstance(left_side, list | tuple)  # strings: texts; arrays: photos
        left_text = torch.full((len(out["left_pixels"]),), is_text, device=device)
        out["is_text_pair"] = left_text
        if ink_patch_size is not None:
            out = to_device(out, device, renderer, ink_patch_size=ink_patch_size)
    right_text = torch.ones(len(out["right_pixels"]), dtype=torch.bool, device=device)
    # masks only when asked for: a batch collated with them may feed a model without the mode
    ink = ink_patch_size is not None
    return (
        TowerInput(out["left_pixels"], left_text, out["left_ink"] if ink else None),
        TowerInput(out["right_pixels"], right_text, out["right_ink"] if ink else None),
    )


class TrainStep(nn.Module):
    """What the `Trainer` trains: `model` (saved as the checkpoint's model) and `loss`, a module
    holding every trainable parameter outside the model (the sigmoid loss's bias, a task head;
    saved as loss.safetensors and restored on resume), called as `step(left, right, request)`.

    A step says how a data batch becomes its two inputs (`inputs`), the optimiser groups of the
    loss's parameters (`loss_param_groups`, after the model's groups so that saved optimiser
    states line up) and what it adds to the logged metrics (`log_values`)."""

    model: nn.Module
    loss: nn.Module

    def inputs(self, batch: Any, device: torch.device, renderer: Any) -> tuple[Any, Any]:
        """A data batch -> (left, right) on `device`, each with the batch as first dimension
        and sliced along it as the trainer cuts micro-batches: tensors, or `TowerInput`s."""
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
        # the RNG state at each Embed call of the current accumulation (see `_replay`)
        self._embed_rng: list[Tensor] = []
        self._cached_since_embed = False

    def inputs(
        self, batch: Any, device: torch.device, renderer: Any
    ) -> tuple[Tensor | TowerInput | MixedSide, Tensor | TowerInput]:
        """A data batch -> (left, right) on `device`: tensors, `TowerInput`s for a model whose
        config drops tokens (ink-only texts, patch dropout on photos), or for a token baseline
        a `MixedSide` on the left when it mixes photos and texts."""
        if isinstance(self.model, TokenModel) and not isinstance(batch, Mapping):
            left, right = batch
            return self._token_side(left, device), self._token_side(right, device)
        config = getattr(self.model, "config", None)
        ink_only = bool(getattr(config, "ink_only_text", False))
        if not (ink_only or getattr(config, "patch_dropout", None)):
            return batch_pixels(batch, device, renderer)
        patch = config.vit.patch_size if ink_only else None  # type: ignore[union-attr]
        return tower_inputs(batch, device, renderer, patch)

    def _token_side(self, side: Any, device: torch.device) -> Tensor:
        """One side of a (left, right) pair for a token baseline: strings -> token ids [b,L]
        (padded to the longest; padding is masked), pixels or ids as `side_pixels` gives them."""
        if isinstance(side, list | tuple):
            assert isinstance(self.model, TokenModel)
            if self.model.tokenizer is None:
                raise ValueError("texts given as strings, but the model has no tokenizer")
            ids = self.model.tokenizer(list(side), pad_to_longest=True)[0]
            return ids.to(device, non_blocking=True)
        return side_pixels(side, device, None)

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
        self, left: Tensor | TowerInput, right: Tensor | TowerInput, request: Request
    ) -> Tensor | tuple[Tensor, Tensor]:
        """left, right: one side each of b pairs, as the model takes them; see the requests."""
        with self._replay(left, request):
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

    @contextlib.contextmanager
    def _replay(self, left: Tensor | TowerInput, request: Request) -> Iterator[None]:
        """Random token dropping (patch dropout) draws from the torch RNG: the CachedLoss
        recomputation of micro-batch i draws what the Embed pass of micro-batch i drew (its RNG
        state is recorded there and restored here, as GradCache does), so the recomputed
        embeddings equal the cached ones and accumulation keeps the whole batch's gradients.
        Embed calls come in micro-batch order, then the CachedLoss calls; the RNG moves on as
        it would without the replay."""
        config = getattr(self.model, "config", None)
        if not (self.model.training and getattr(config, "patch_dropout", None)):
            yield
            return
        device = (left.pixels if isinstance(left, TowerInput) else left).device
        cuda = [device] if device.type == "cuda" else []
        match request:
            case Embed():
                if self._cached_since_embed:  # a new accumulation
                    self._embed_rng, self._cached_since_embed = [], False
                state = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
                self._embed_rng.append(state)
                yield
            case CachedLoss(index=i) if i < len(self._embed_rng):
                self._cached_since_embed = True
                with torch.random.fork_rng(devices=cuda):
                    if cuda:
                        torch.cuda.set_rng_state(self._embed_rng[i], device)
                    else:
                        torch.set_rng_state(self._embed_rng[i])
                    yield
            case _:
                yield
