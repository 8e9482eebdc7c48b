"""Process-group plumbing for training under `torchrun` (DDP/FSDP).

This module is the ONE place in clippo that reads torchrun's environment (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`; `MASTER_ADDR`/`MASTER_PORT` are read by torch's own `env://` rendezvous).
Everything else asks torch.distributed, or takes a `DistInfo`.

Without torchrun (no `RANK`/`WORLD_SIZE` in the environment) `init_distributed` returns a
single-process `DistInfo` and every helper here degrades to a no-op / identity.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_dist",
    "get_rank",
    "get_world_size",
    "is_main",
    "barrier",
    "cleanup",
    "all_gather_with_grad",
    "all_reduce_mean",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    rank: global rank; world_size: number of processes; local_rank: rank on this node;
    device: the device this process should use (cuda:<local_rank> or cpu).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: Mapping[str, str], key: str) -> int:
    value = env.get(key)
    if value is None:
        raise RuntimeError(
            f"torch.distributed environment is incomplete: {key} is not set "
            "(launch with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
        )
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {key}={value!r} is not an integer") from None


def init_distributed(
    backend: str | None = None,
    *,
    device: str | torch.device | None = None,
    timeout: timedelta | None = None,
    env: Mapping[str, str] | None = None,
) -> DistInfo:
    """Join the process group that torchrun set up, or describe a single process.

    backend: None picks "nccl" when the chosen device is CUDA, else "gloo".
    device: None picks cuda:<LOCAL_RANK> when CUDA is available, else cpu; pass "cpu" to force
        CPU training (then gloo) on a CUDA machine.
    env: the environment to read (default `os.environ`; tests pass a dict).
    If the default process group is already initialised, it is reused (not re-created).
    """
    env = os.environ if env is None else env
    launched = "RANK" in env or "WORLD_SIZE" in env
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
    elif launched:
        rank, world_size = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
        local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    else:
        rank, world_size, local_rank = 0, 1, 0

    if device is None:
        dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        # NCCL and the caching allocator pick the "current" device; make it ours.
        torch.cuda.set_device(dev)

    if launched and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this torch build")
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs: dict = {
            "backend": backend,
            "init_method": "env://",
            "rank": rank,
            "world_size": world_size,
        }
        if timeout is not None:
            kwargs["timeout"] = timeout
        if backend == "nccl":
            kwargs["device_id"] = dev  # eager NCCL init, and barrier() knows the device
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def is_dist() -> bool:
    """True when a default process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on global rank 0, and in a single process."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Tear the process group down (no-op when none exists)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward sums the incoming gradients of all
    ranks and returns this rank's slice (a reduce-scatter).

    Summing (not just taking the local slice) is what makes losses computed from the gathered
    tensor on every rank give correct gradients: rank r's embeddings also appear, as negatives,
    in every other rank's loss.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), world, x.shape[0]
        x = x.contiguous()
        if dist.get_backend() == "nccl":
            out = x.new_empty((world * x.shape[0], *x.shape[1:]))
            dist.all_gather_into_tensor(out, x)
            return out
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = grad.new_empty((ctx.n, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad)
            return out
        # gloo has no reduce-scatter; the gradient is only [B, D], so an all-reduce is cheap.
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank -> [world*b, ...] (rank order), differentiable.

    Every rank must pass the same shape. Identity without a multi-process group.
    """
    if not is_dist():
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over ranks (a new tensor; for logging, no gradient)."""
    if not is_dist():
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()
