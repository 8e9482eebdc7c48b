"""The training precision: bf16 autocast or float32, from the user's flag and the processor.

`loop.precision` is "bf16", "fp32" or "auto". "auto" decides from what the processor supports,
never from a timing race (a race between two close timings flips from run to run on a busy
machine, and the two precisions train to different numbers), so the same command on the same
machine always runs in the same precision:

- CUDA: bf16 where `torch.cuda.is_bf16_supported()` (Ampere and later);
- CPU: bf16 only with AMX-BF16, the bf16 matrix unit of Intel Xeons from Sapphire Rapids on.
  Measured on a 2-core Xeon with AMX (one thread, one training step, bf16 time / float32 time,
  the two interleaved in one process): 0.63 for 4 blocks of width 384 (96 px, batch 64) and 0.57
  for 2 blocks of width 768 (224 px, batch 8), but 1.18 for 4 blocks of width 128 (96 px, batch
  128). With the same CPU limited to AVX512-BF16 dot products
  (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`, as on CPUs with bf16 instructions but no AMX) bf16 was
  slower at every width (1.58-1.77), and without bf16 instructions 3.1-3.7 times slower (16
  times with AVX2 at width 128);
- any other device: float32.

Small models gain nothing even with AMX (the casts around LayerNorm, GELU and softmax cost what
the matmuls save): the `demo` preset asks for "fp32" itself. Its full training step (data
workers included, two threads) took 557 ms in float32 and 740 ms under bf16 autocast on that
CPU (medians of five interleaved 40-step blocks each, after one warm-up pair; bf16/fp32 per
block 1.11-1.36).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Flag = Literal["bf16", "fp32", "auto"]
FLAGS: tuple[Flag, ...] = ("bf16", "fp32", "auto")

# the CPU flag that makes bf16 pay off (cpuinfo's and Linux's /proc/cpuinfo name)
AMX_BF16 = "amx_bf16"


@dataclass(frozen=True)
class PrecisionChoice:
    """What the trainer runs in, and why: `reason` says whether the flag or the processor chose."""

    flag: str
    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def to_dict(self) -> dict[str, str]:
        return {"flag": self.flag, "used": self.name, "reason": self.reason}

    def __str__(self) -> str:
        return f"precision {self.name} ({self.reason})"


def parse_flag(value: str) -> Flag:
    """`value` as a precision flag; ValueError unless it is one of FLAGS."""
    for flag in FLAGS:
        if value == flag:
            return flag
    raise ValueError(f"precision must be one of {FLAGS}, got {value!r}")


def cpu_flags() -> frozenset[str]:
    """This CPU's instruction-set flags, lower case (`amx_bf16`, `avx512_bf16`, ...): torch's
    cpuinfo report (`torch.cpu.get_capabilities`, in recent torch), else the flags of Linux's
    /proc/cpuinfo, else none (bf16 then stays off)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return frozenset(k.lower() for k, v in get().items() if v is True)
    try:
        return proc_cpuinfo_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def proc_cpuinfo_flags(text: str) -> frozenset[str]:
    """The `flags` of the first processor in a Linux /proc/cpuinfo text (empty if none)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.lower().split())
    return frozenset()


def choose_precision(
    flag: str,
    device: torch.device,
    *,
    cpu: Collection[str] | None = None,
    cuda_bf16: bool | None = None,
) -> PrecisionChoice:
    """The precision for `flag` on `device` (the rule is in this module's docstring).

    cpu: the CPU's flags (default: `cpu_flags()`); cuda_bf16: whether the CUDA device supports
    bf16 (default: asks torch). Pass them to decide for a machine other than this one.
    """
    flag = parse_flag(flag)
    if flag != "auto":
        return PrecisionChoice(flag, flag == "bf16", f"loop.precision = {flag!r}")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return PrecisionChoice(flag, ok, f"auto: the CUDA device {'has' if ok else 'lacks'} bf16")
    if device.type == "cpu":
        ok = AMX_BF16 in (cpu_flags() if cpu is None else cpu)
        return PrecisionChoice(flag, ok, f"auto: the CPU {'has' if ok else 'lacks'} AMX-BF16")
    return PrecisionChoice(flag, False, f"auto: float32 on {device.type}")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: `choose_precision(precision, device).bf16`."""
    return choose_precision(precision, device).bf16
