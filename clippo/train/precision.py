"""The training precision: bf16 autocast or float32."""

from __future__ import annotations

import time

import torch
from torch import Tensor


def use_bf16(precision: str, device: torch.device) -> bool:
    """ "bf16"/"fp32" as given; "auto": bf16 where it is supported and (on CPU) measured faster."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    a32 = torch.randn(384, 384)

    def best(a: Tensor) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(4):
                a @ a
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad():
        return best(a32.bfloat16()) < 0.8 * best(a32)
