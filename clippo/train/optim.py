"""Optimisers following big_vision's CLIPPO recipe (schedules: `clippo.train.schedule`).

big_vision (`optax.make` + `scale_by_adafactor` + `utils.create_learning_rate_schedule`) updates

    theta <- theta - sched(t) * (lr * adafactor_update(g) + wd * theta)        (wd only on */kernel)

with `sched` a multiplier in [0, 1] evaluated at t = number of updates already applied (0-based,
so with warm-up the very first update is zero). Here the same maths uses torch's conventions:
each param group holds the current lr = peak_lr * sched(t) (see `set_lr`) and a `weight_decay`
that is multiplied by that lr, so `build_optimizer` stores weight_decay = wd / peak_lr; then
lr_t * (wd / peak_lr) = sched(t) * wd: decoupled and NOT multiplied by the peak lr. AdamW uses
the same group layout (big_vision's wd 1e-4 at lr 1e-3 -> torch AdamW weight_decay 0.1).
Gradient clipping by global norm belongs in the trainer (`torch.nn.utils.clip_grad_norm_`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, overload

import torch
from torch import nn

from clippo import typed_config
from clippo.train.schedule import check_number

__all__ = [
    "OptimConfig",
    "DEFAULT_DECAY_PARAMS",
    "decayed_parameter_names",
    "param_groups",
    "Adafactor",
    "build_optimizer",
    "set_lr",
]

OPTIMIZERS = ("adafactor", "adamw")
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class OptimConfig:
    """name: "adafactor" (big_vision's scale_by_adafactor) or "adamw" (torch.optim.AdamW).

    lr: peak learning rate; wd: decoupled weight decay, scaled by the schedule but not by lr,
    applied to `DEFAULT_DECAY_PARAMS` only (big_vision's `.*/kernel$`).
    The adafactor fields default to big_vision's values; betas/adam_eps are AdamW's.
    """

    name: str = "adafactor"
    lr: float = 1e-3
    wd: float = 1e-4
    min_dim_size_to_factor: int = 32
    decay_rate: float = 0.8
    decay_offset: int = 0
    beta2_cap: float = 0.999
    momentum: float | None = 0.9
    momentum_dtype: str = "bfloat16"
    eps: float = 1e-30
    clipping_threshold: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimConfig.name={self.name!r}; expected one of {OPTIMIZERS}")
        check_number("OptimConfig", "lr", self.lr, low=0, low_ok=False)
        check_number("OptimConfig", "wd", self.wd, low=0)
        # big_vision's sign: beta2 = 1 - t^-decay_rate, so Hugging Face's decay_rate=-0.8 is
        # 0.8 here; a negative value gives beta2 < 0 (an exploding second moment)
        check_number(
            "OptimConfig",
            "decay_rate",
            self.decay_rate,
            low=0,
            hint="big_vision's sign: Hugging Face's -0.8 is 0.8 here"
            if self.decay_rate < 0
            else "",
        )
        check_number("OptimConfig", "beta2_cap", self.beta2_cap, low=0, high=1)
        if self.momentum is not None:  # None or 0: no momentum; 1 would never move the weights
            check_number("OptimConfig", "momentum", self.momentum, low=0, high=1, high_ok=False)
        # 0 would let a zero gradient give 0 * 1/sqrt(0) = NaN
        check_number("OptimConfig", "eps", self.eps, low=0, low_ok=False)
        check_number("OptimConfig", "adam_eps", self.adam_eps, low=0, low_ok=False)
        if self.clipping_threshold is not None:  # None or 0: no clipping (as big_vision's None)
            check_number("OptimConfig", "clipping_threshold", self.clipping_threshold, low=0)
        if self.momentum_dtype not in _DTYPES:
            raise ValueError(
                f"OptimConfig.momentum_dtype={self.momentum_dtype!r}; expected one of {list(_DTYPES)}"
            )
        if len(self.betas) != 2:
            raise ValueError(f"OptimConfig.betas needs two values, got {self.betas}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for i, beta in enumerate(self.betas):  # as torch.optim.AdamW checks, but naming the key
            check_number("OptimConfig", f"betas.{i}", beta, low=0, high=1, high_ok=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OptimConfig:
        return typed_config.from_dict(cls, d)


# Module type -> its own parameters that get weight decay: the torch equivalents of big_vision's
# `.*/kernel$` (Dense, Conv and attention projection kernels). Everything else -- biases,
# LayerNorm, position embedding, MAP probe/latent, the logit scale t -- is not decayed.
DEFAULT_DECAY_PARAMS: Mapping[type[nn.Module], tuple[str, ...]] = MappingProxyType(
    {
        nn.Linear: ("weight",),
        nn.Conv1d: ("weight",),
        nn.Conv2d: ("weight",),
        nn.Conv3d: ("weight",),
        nn.MultiheadAttention: (
            "in_proj_weight",
            "q_proj_weight",
            "k_proj_weight",
            "v_proj_weight",
        ),
    }
)


def _split(
    model: nn.Module, decay_params: Mapping[type[nn.Module], tuple[str, ...]]
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    decay_ids: set[int] = set()
    for module in model.modules():
        for cls, attrs in decay_params.items():
            if isinstance(module, cls):
                for attr in attrs:
                    p = module._parameters.get(attr)  # own parameters only, exact attribute name
                    if p is not None:
                        decay_ids.add(id(p))
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append((name, p))
    return decay, no_decay


def decayed_parameter_names(
    model: nn.Module, decay_params: Mapping[type[nn.Module], tuple[str, ...]] = DEFAULT_DECAY_PARAMS
) -> list[str]:
    """Names (as in `model.named_parameters()`) of the trainable parameters that get weight decay."""
    return [n for n, _ in _split(model, decay_params)[0]]


def param_groups(
    model: nn.Module,
    lr: float,
    wd: float,
    decay_params: Mapping[type[nn.Module], tuple[str, ...]] = DEFAULT_DECAY_PARAMS,
) -> list[dict[str, Any]]:
    """Two groups ("decay", "no_decay"; empty ones dropped), each with lr, peak_lr and the
    lr-multiplied weight_decay = wd / lr (see module docstring). Frozen params are left out."""
    decay, no_decay = _split(model, decay_params)
    groups = [
        {"name": "decay", "params": [p for _, p in decay], "weight_decay": wd / lr},
        {"name": "no_decay", "params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]
    return [dict(g, lr=lr, peak_lr=lr) for g in groups if g["params"]]


def _factored_dims(shape: tuple[int, ...], min_dim: int) -> tuple[int, int] | None:
    """optax `_factored_dims`: (second largest, largest) axes, or None if too small to factor."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])  # stable, like np.argsort here
    if shape[order[-2]] < min_dim:
        return None
    return order[-2], order[-1]


class Adafactor(torch.optim.Optimizer):
    """big_vision's `scale_by_adafactor` (optax `scale_by_factored_rms` + optional block-RMS clip
    + EMA momentum without debiasing), then  theta <- theta - lr * (update + weight_decay * theta).

    Second moment at step k (0-based): beta2 = min(beta2_cap, 1 - (k - decay_offset + 1)^-decay_rate),
    on g^2 + eps; factored over the two largest axes when the second largest is >= min_dim_size_to_factor.
    Momentum m = momentum * m + (1 - momentum) * u is used in float32 and stored in momentum_dtype.
    Note: factoring follows the torch tensor layout: a fused qkv [3W, W] is factored as one
    matrix, whereas big_vision factors each [W, heads, head_dim] kernel per head.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        min_dim_size_to_factor: int = 32,
        decay_rate: float = 0.8,
        decay_offset: int = 0,
        beta2_cap: float = 0.999,
        momentum: float | None = 0.9,
        momentum_dtype: torch.dtype = torch.bfloat16,
        eps: float = 1e-30,
        clipping_threshold: float | None = None,
    ) -> None:
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            min_dim_size_to_factor=min_dim_size_to_factor,
            decay_rate=decay_rate,
            decay_offset=decay_offset,
            beta2_cap=beta2_cap,
            momentum=momentum,
            momentum_dtype=momentum_dtype,
            eps=eps,
            clipping_threshold=clipping_threshold,
        )
        super().__init__(params, defaults)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                self._update(p, grad, group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        g = grad.float()
        dims = _factored_dims(tuple(p.shape), group["min_dim_size_to_factor"])
        if not state:
            state["step"] = torch.zeros((), dtype=torch.int64)
            if dims is None:
                state["v"] = torch.zeros_like(p)
            else:
                d1, d0 = dims
                state["v_row"] = p.new_zeros([s for i, s in enumerate(p.shape) if i != d0])
                state["v_col"] = p.new_zeros([s for i, s in enumerate(p.shape) if i != d1])
            if group["momentum"]:
                state["momentum"] = torch.zeros_like(p, dtype=group["momentum_dtype"])
        k = int(state["step"])
        beta2 = min(
            group["beta2_cap"], 1.0 - (k - group["decay_offset"] + 1.0) ** (-group["decay_rate"])
        )
        g2 = g * g + group["eps"]
        if dims is None:
            v = state["v"].float().mul_(beta2).add_(g2, alpha=1.0 - beta2)
            state["v"].copy_(v)
            u = g * v.rsqrt()
        else:
            d1, d0 = dims
            v_row = state["v_row"].float().mul_(beta2).add_(g2.mean(d0), alpha=1.0 - beta2)
            v_col = state["v_col"].float().mul_(beta2).add_(g2.mean(d1), alpha=1.0 - beta2)
            state["v_row"].copy_(v_row)
            state["v_col"].copy_(v_col)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_factor = (v_row / v_row.mean(reduced_d1, keepdim=True)).rsqrt()
            u = g * row_factor.unsqueeze(d0) * v_col.rsqrt().unsqueeze(d1)
        if group["clipping_threshold"]:
            rms = u.square().mean().sqrt()
            u = u / torch.clamp(rms / group["clipping_threshold"], min=1.0)
        if group["momentum"]:
            beta1 = group["momentum"]
            # Read through float32: after load_state_dict torch may have cast the stored momentum
            # to the param dtype; re-rounding to momentum_dtype keeps resumed runs bit-identical.
            u = state["momentum"].float().mul_(beta1).add_(u, alpha=1.0 - beta1)
            state["momentum"] = u.to(group["momentum_dtype"])
        state["step"] += 1
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            p.mul_(1.0 - lr * wd)
        p.add_(u.to(p.dtype), alpha=-lr)


def build_optimizer(
    model: nn.Module,
    cfg: OptimConfig,
    *,
    decay_params: Mapping[type[nn.Module], tuple[str, ...]] = DEFAULT_DECAY_PARAMS,
) -> torch.optim.Optimizer:
    """Adafactor or AdamW over `param_groups(model, cfg.lr, cfg.wd)`; groups start at the peak lr,
    call `set_lr(opt, schedule(step))` before each `opt.step()`."""
    groups = param_groups(model, cfg.lr, cfg.wd, decay_params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)
    return Adafactor(
        groups,
        lr=cfg.lr,
        min_dim_size_to_factor=cfg.min_dim_size_to_factor,
        decay_rate=cfg.decay_rate,
        decay_offset=cfg.decay_offset,
        beta2_cap=cfg.beta2_cap,
        momentum=cfg.momentum,
        momentum_dtype=_DTYPES[cfg.momentum_dtype],
        eps=cfg.eps,
        clipping_threshold=cfg.clipping_threshold,
    )


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Set every group's lr to its peak_lr (or, without one, initial lr) times `multiplier`;
    returns the first group's new lr (for logging)."""
    for group in optimizer.param_groups:
        peak = group.setdefault("peak_lr", group["lr"])
        group["lr"] = peak * multiplier
    return optimizer.param_groups[0]["lr"]
