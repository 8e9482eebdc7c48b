"""Training logs: JSONL metrics, optional TensorBoard and Weights & Biases, a tqdm bar with
pairs/s, loss-curve PNGs.

Only rank 0 should build these; other ranks pass `enabled=False` and every call is a no-op.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from clippo.atomic import atomic_path, write_text_atomic
from clippo.typed_config import ConfigError

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging (`logging.wandb`; needs the `wandb` package): every record of
    metrics.jsonl is also logged to a W&B run, with the resolved training config as its config.

    project, entity ("" = W&B's default), name ("" = the run folder's name), tags: the W&B run's.
    mode: "online", "offline" (written under `dir` only, no network; `wandb sync` uploads it
    later) or "disabled". It is passed to `wandb.init`, never read from the environment here.
    dir: the folder wandb writes into ("" = the run folder). A resumed training run continues
    the same W&B run (its id is saved in the checkpoint's trainer state).
    """

    enabled: bool = False
    project: str = "clippo"
    entity: str = ""
    name: str = ""
    tags: tuple[str, ...] = ()
    mode: Literal["online", "offline", "disabled"] = "online"
    dir: str = ""


def require_wandb() -> None:
    """ConfigError unless the `wandb` package can be imported (the config asked for it)."""
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "logging.wandb.enabled is true but the wandb package is not installed "
            "(pip install wandb), or set logging.wandb.enabled = false"
        )


def start_wandb(
    cfg: WandbConfig, run_dir: Path, config: Mapping[str, Any], run_id: str | None = None
) -> Any:
    """A `wandb` run for `cfg` (continuing `run_id` when given); ConfigError when wandb is not
    installed, since the config asked for it."""
    require_wandb()
    import wandb

    folder = Path(cfg.dir) if cfg.dir else run_dir
    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity or None,
        name=cfg.name or run_dir.resolve().name,
        tags=list(cfg.tags),
        mode=cfg.mode,
        dir=str(folder),
        config=dict(config),
        id=run_id,
        resume="allow" if run_id else None,
        # wandb's console capture would wrap this process's stdout and stderr
        settings=wandb.Settings(console="off"),
    )


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics JSONL file; a torn last line (killed mid-write) is ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break  # the writer was killed mid-line; everything before it is intact
            raise ValueError(f"{path}: line {i + 1} is not JSON: {e}") from None
    return records


class MetricsLogger:
    """Appends `{"step": s, **metrics}` lines to `<run_dir>/metrics.jsonl` (and TensorBoard).

    `resume_step`: records after that step (written by a run that died before its next
    checkpoint) are dropped so the file matches the resumed run exactly.
    `wandb`: also log to Weights & Biases (`WandbConfig`), with `config` as the W&B run's config
    and `wandb_id` the W&B run to continue (a resumed run's); `wandb_id` is then this run's id.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        enabled: bool = True,
        resume_step: int | None = None,
        wandb: WandbConfig | None = None,
        config: Mapping[str, Any] | None = None,
        wandb_id: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        self._wandb: Any = None
        self.wandb_id = wandb_id
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = read_metrics(self.path)
            if resume_step is not None:
                kept = [r for r in kept if int(r.get("step", 0)) <= resume_step]
            else:
                kept = []  # a fresh run owns the file
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = _open_append_no_follow(self.path)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb is not None and wandb.enabled:
            self._wandb = start_wandb(wandb, Path(run_dir), config or {}, wandb_id)
            self.wandb_id = self._wandb.id

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled or self._file is None:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            record[k] = _plain(v)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(v: Any) -> Any:
    """JSON-friendly scalars: tensors/numpy -> float; non-finite floats kept as strings."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)


class Progress:
    """tqdm bar over optimiser steps showing loss and pairs/s; a no-op when disabled."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, loss: float, pairs_per_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", pairs_s=f"{pairs_per_s:.1f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def plot_curves(
    records: Iterable[Mapping[str, Any]],
    out_png: str | os.PathLike,
    keys: Sequence[str] = ("loss",),
    title: str = "training loss",
) -> Path:
    """Write a PNG of `keys` against step (atomically); records as from `read_metrics`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    records = list(records)
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(keys) > 1:
        ax.legend()
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def plot_loss_curve(run_dir: str | os.PathLike, out_png: str | os.PathLike | None = None) -> Path:
    """`<run_dir>/loss.png` from `<run_dir>/metrics.jsonl`."""
    run_dir = Path(run_dir)
    out = Path(out_png) if out_png is not None else run_dir / "loss.png"
    return plot_curves(read_metrics(run_dir / METRICS_FILE), out)


def _open_append_no_follow(path: Path) -> TextIO:
    """Open `path` for appending without following a symlink planted there (which could send the
    log to a file outside the run folder): O_NOFOLLOW makes that an error naming the path."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise OSError(
                f"{path}: is a symbolic link; refusing to write metrics through it"
            ) from e
        raise
    return os.fdopen(fd, "a", encoding="utf-8")
