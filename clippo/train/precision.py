"""The training precision: bf16 or fp16 autocast, or float32, from the user's flag and the
processor.

`loop.precision` is "bf16", "fp16", "fp32" or "auto". "auto" decides from what the processor
supports, never from a timing race (a race between two close timings flips from run to run on a
busy machine, and the two precisions train to different numbers), so the same command on the
same machine always runs in the same precision:

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

"auto" never picks fp16: its 5-bit exponent can overflow in the forward pass (which loss scaling
does not help), so it is the user's explicit choice, as in CLIP's and open_clip's trainers.

fp16 ("fp16") is for GPUs without bf16 (V100, T4: fp16 tensor cores). It trains under fp16
autocast with a gradient scaler (`torch.amp.GradScaler`): the loss is multiplied by a scale before
backward, the gradients are unscaled before clipping, and a step whose gradients hold inf/NaN is
skipped while the scale is halved (it doubles again after 2,000 good steps). Where it is allowed
(`check_precision`, also called by the config's validation):
- CUDA: always;
- CPU: where torch's CPU autocast supports float16 (torch 2.14 does), but without a float16
  matrix unit (AMX-FP16) it is slow: forward and backward of the `tiny-test` tower (batch 8,
  32 px, one thread) took 8x the float32 time on a Xeon with AMX-BF16 and AVX512-FP16 but no
  AMX-FP16 (bf16: 2.6x). It is there so the fp16 path can be tested on a CPU, not to train;
- other devices: where torch has an autocast and a gradient scaler for them;
- never with `loop.parallel = "fsdp"`: each rank would look for inf/NaN in its own gradient
  shards only, and ranks that disagree about skipping a step diverge. DDP is fine (every rank
  holds the same all-reduced gradients).

Small models gain nothing even with AMX (the casts around LayerNorm, GELU and softmax cost what
the matmuls save): the `demo` preset asks for "fp32" itself. Its full training step (data
workers included, two threads) took 557 ms in float32 and 740 ms under bf16 autocast on that
CPU (medians of five interleaved 40-step blocks each, after one warm-up pair; bf16/fp32 per
block 1.11-1.36).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Flag = Literal["bf16", "fp16", "fp32", "auto"]
FLAGS: tuple[Flag, ...] = ("bf16", "fp16", "fp32", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# the CPU flag that makes bf16 pay off (cpuinfo's and Linux's /proc/cpuinfo name)
AMX_BF16 = "amx_bf16"


class PrecisionError(ValueError):
    """A precision this device or setup cannot train in; the message says what is allowed."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What the trainer runs in ("bf16", "fp16" or "fp32"), and why: `reason` says whether the flag
    or the processor chose."""

    flag: str
    name: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def fp16(self) -> bool:
        """Whether the trainer needs a gradient scaler."""
        return self.name == "fp16"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for float32 (no autocast)."""
        return _DTYPES.get(self.name)

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
        return PrecisionChoice(flag, flag, f"loop.precision = {flag!r}")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return PrecisionChoice(
            flag, _bf16_or_fp32(ok), f"auto: the CUDA device {'has' if ok else 'lacks'} bf16"
        )
    if device.type == "cpu":
        ok = AMX_BF16 in (cpu_flags() if cpu is None else cpu)
        return PrecisionChoice(
            flag, _bf16_or_fp32(ok), f"auto: the CPU {'has' if ok else 'lacks'} AMX-BF16"
        )
    return PrecisionChoice(flag, "fp32", f"auto: float32 on {device.type}")


def _bf16_or_fp32(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


def autocast_supports(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch autocasts to `dtype` on `device_type` (an unsupported pair is switched off
    with only a warning, which would train in float32 while claiming otherwise)."""
    if not torch.amp.is_autocast_available(device_type):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device_type, dtype=dtype):
            return torch.is_autocast_enabled(device_type) and (
                torch.get_autocast_dtype(device_type) == dtype
            )


def check_precision(flag: str, device_type: str | None, parallel: str = "auto") -> None:
    """Raise PrecisionError (a ValueError naming `loop.precision`) unless `flag` can train on
    `device_type` ("cpu", "cuda", ...; None: not known yet) with `parallel` (the rule is in this
    module's docstring)."""
    flag = parse_flag(flag)
    if flag != "fp16":
        return
    if parallel == "fsdp":
        raise PrecisionError(
            "loop.precision = 'fp16' is not supported with loop.parallel = 'fsdp' (the gradient "
            "scaler would look for inf/NaN in each rank's shards only): use 'bf16' or 'fp32' "
            "with FSDP, or fp16 with DDP (loop.parallel = 'ddp' or 'auto')"
        )
    if device_type is None or device_type == "cuda":
        return
    if not autocast_supports(device_type, torch.float16):
        raise PrecisionError(
            "loop.precision = 'fp16' needs float16 autocast, which this torch "
            f"({torch.__version__}) lacks on {device_type!r}: fp16 is for CUDA GPUs without bf16 (V100, T4); on "
            f"{device_type!r} use 'bf16' or 'fp32'"
        )


def grad_scaler(choice: PrecisionChoice, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler for `choice` on `device`: enabled for fp16 only (a disabled one passes
    the loss, gradients and optimiser step through unchanged)."""
    if not choice.fp16:
        return torch.amp.GradScaler(device.type, enabled=False)
    check_precision(choice.name, device.type)
    return torch.amp.GradScaler(device.type)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: `choose_precision(precision, device).bf16`."""
    return choose_precision(precision, device).bf16
