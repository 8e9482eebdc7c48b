"""Learning-rate schedules as big_vision's `utils.create_learning_rate_schedule`.

A schedule is a pure function of the 0-based update count, returning a multiplier in [0, 1] of
the peak learning rate (`clippo.train.optim.set_lr` applies it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clippo import typed_config

__all__ = ["SCHEDULE_KINDS", "Schedule", "ScheduleConfig", "build_schedule", "schedule_value"]

SCHEDULE_KINDS = ("rsqrt", "cosine", "linear", "constant")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate multiplier schedule as big_vision's create_learning_rate_schedule(base=1).

    kind: "rsqrt" | "cosine" | "linear" | "constant"; warmup_steps: linear ramp 0 -> 1;
    cooldown_steps: linear ramp to 0 over the last steps (on top of any kind);
    timescale/shift: rsqrt only; linear_end/power: "linear" (polynomial) only.
    """

    kind: str = "rsqrt"
    warmup_steps: int = 0
    cooldown_steps: int = 0
    timescale: float = 10_000
    shift: float = 0
    linear_end: float = 0.0
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"ScheduleConfig.kind={self.kind!r}; expected one of {SCHEDULE_KINDS}")
        if self.warmup_steps < 0 or self.cooldown_steps < 0:
            raise ValueError("ScheduleConfig warmup_steps and cooldown_steps must be >= 0")
        if not self.timescale > 0:
            raise ValueError(f"ScheduleConfig.timescale must be > 0, got {self.timescale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScheduleConfig:
        return typed_config.from_dict(cls, d)


def schedule_value(cfg: ScheduleConfig, total_steps: int, step: int) -> float:
    """Multiplier of the peak lr for the update at 0-based `step` (big_vision's formula).

    rsqrt: 1/sqrt(1 + (step + shift - warmup)/timescale) after warm-up, 1/sqrt(1 + shift/timescale)
    during it; cosine: 0.5(1+cos(pi p)); linear: end + (1-end)(1-p)^power, with
    p = clip((step - warmup)/(total - warmup), 0, 1). Then times min(1, step/warmup) and
    min(1, (total - step)/cooldown) (clamped at 0 past the end).
    """
    if step < 0:
        raise ValueError(f"schedule step must be >= 0, got {step}")
    w = cfg.warmup_steps
    progress = min(max((step - w) / max(total_steps - w, 1), 0.0), 1.0)
    if cfg.kind == "rsqrt":
        lr = 1.0 / math.sqrt(
            1.0 + ((step + cfg.shift - w) if step >= w else cfg.shift) / cfg.timescale
        )
    elif cfg.kind == "cosine":
        lr = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.kind == "linear":
        lr = cfg.linear_end + (1.0 - cfg.linear_end) * (1.0 - progress) ** cfg.power
    else:
        lr = 1.0
    if w:
        lr *= min(1.0, step / w)
    if cfg.cooldown_steps:
        lr *= min(1.0, max(total_steps - step, 0) / cfg.cooldown_steps)
    return lr


@dataclass(frozen=True)
class Schedule:
    """`schedule(step) -> float` multiplier; picklable (works as a LambdaLR lambda too)."""

    config: ScheduleConfig
    total_steps: int

    def __call__(self, step: int) -> float:
        return schedule_value(self.config, self.total_steps, step)


def build_schedule(cfg: ScheduleConfig, total_steps: int) -> Schedule:
    """Validate against the run length (as big_vision: warm-up must end before the last step)."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if total_steps > 1 and cfg.warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps={cfg.warmup_steps} must be < total_steps={total_steps}")
    if cfg.cooldown_steps > total_steps:
        raise ValueError(f"cooldown_steps={cfg.cooldown_steps} exceeds total_steps={total_steps}")
    return Schedule(cfg, total_steps)
