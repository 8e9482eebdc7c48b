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

__all__ = [
    "SCHEDULE_KINDS",
    "Schedule",
    "ScheduleConfig",
    "build_schedule",
    "check_number",
    "schedule_value",
]

SCHEDULE_KINDS = ("rsqrt", "cosine", "linear", "constant")


def check_number(
    owner: str,
    name: str,
    value: float,
    *,
    low: float,
    high: float = math.inf,
    low_ok: bool = True,
    high_ok: bool = True,
    hint: str = "",
) -> None:
    """A config dataclass's range check (also used by `clippo.train.optim`): raise ValueError
    "<owner>.<name> must be ..." unless `value` is finite and within low..high (bounds included
    where *_ok). NaN fails every comparison, so it is refused too; `typed_config.from_dict`
    turns "<owner>.<name>" into the dotted key (`optim.lr`)."""
    above = low <= value if low_ok else low < value
    below = value <= high if high_ok else value < high
    if above and below and (isinstance(value, int) or math.isfinite(value)):  # no float(10**400)
        return
    if high == math.inf:
        want = f"finite and {'>=' if low_ok else '>'} {low:g}"
    else:
        want = f"in {'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
    raise ValueError(f"{owner}.{name} must be {want}, got {value}" + (f" ({hint})" if hint else ""))


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
        check_number("ScheduleConfig", "warmup_steps", self.warmup_steps, low=0)
        check_number("ScheduleConfig", "cooldown_steps", self.cooldown_steps, low=0)
        check_number("ScheduleConfig", "timescale", self.timescale, low=0, low_ok=False)
        # the multiplier stays in [0, 1]: a negative shift lifts it above 1 (and at -timescale
        # divides by zero), a negative power blows it up as progress reaches 1
        check_number("ScheduleConfig", "shift", self.shift, low=0)
        check_number("ScheduleConfig", "linear_end", self.linear_end, low=0, high=1)
        check_number("ScheduleConfig", "power", self.power, low=0)

    def within(self, steps: int) -> ScheduleConfig:
        """This schedule for a run of `steps` (a shortened run, a quick one): warm-up and
        cool-down kept to at most a fifth of the run each, so the peak rate is still reached and
        held."""
        return dataclasses.replace(
            self,
            warmup_steps=min(self.warmup_steps, steps // 5),
            cooldown_steps=min(self.cooldown_steps, steps // 5),
        )

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
