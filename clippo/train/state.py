"""Training checkpoints: written atomically, pruned to the last K, found again by `resume="auto"`.

Layout (agreed in apis.md):

    <run_dir>/checkpoints/step_000000123/
        config.json, model.safetensors   # exactly what `model.save` writes: `clippo.load(dir)` works
        train_config.json                # the resolved TrainConfig
        optimizer.pt                     # optimiser, schedule, loss-module and RNG states
        trainer_state.json               # step, data position, counters; written last

A checkpoint is built in `checkpoints/.tmp-step_...` and renamed into place, so a directory named
`step_*` is always complete; a run killed mid-write leaves only a temp directory, removed later.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clippo.atomic import write_json_atomic

CHECKPOINTS = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d{9,})$")
STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"
CONFIG_FILE = "train_config.json"


@dataclass
class TrainerState:
    """What the loop needs besides weights to continue exactly where it stopped.

    step: optimiser steps done; data: the data stream's position (JSON, from its `state_dict`);
    pairs_seen: pairs consumed so far; extra: anything else JSON-friendly.
    """

    step: int = 0
    pairs_seen: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "pairs_seen": self.pairs_seen,
            "data": self.data,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "trainer_state") -> TrainerState:
        unknown = set(d) - {"step", "pairs_seen", "data", "extra"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        return cls(
            step=int(d["step"]),
            pairs_seen=int(d.get("pairs_seen", 0)),
            data=dict(d.get("data", {})),
            extra=dict(d.get("extra", {})),
        )


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:09d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, path)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


# ---- RNG ---------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA, when initialised) generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- save / load -------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike,
    state: TrainerState,
    *,
    save_model: Callable[[Path], None],
    optim_state: Mapping[str, Any],
    train_config: Mapping[str, Any],
    keep_last: int,
) -> Path:
    """Write `<run_dir>/checkpoints/step_<state.step>/` atomically; keep the newest `keep_last`.

    save_model(dir): writes config.json + model.safetensors (normally `model.save`).
    optim_state: picklable dict saved with `torch.save` (optimiser, schedule, RNG, ...).
    Call on one rank only. Returns the checkpoint directory.
    """
    final = checkpoint_dir(run_dir, state.step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        save_model(tmp)
        torch.save(dict(optim_state), tmp / OPTIM_FILE)
        write_json_atomic(dict(train_config), tmp / CONFIG_FILE, sort_keys=True)
        # last: marks the directory complete
        write_json_atomic(state.to_dict(), tmp / STATE_FILE, sort_keys=True)
        if final.exists():  # same step saved again (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on every filesystem
    finally:
        os.close(fd)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints and any stale temp dirs."""
    ckpts = list_checkpoints(run_dir)
    for _, path in ckpts[: max(len(ckpts) - keep_last, 0)]:
        shutil.rmtree(path, ignore_errors=True)
    root = Path(run_dir) / CHECKPOINTS
    for p in root.glob(".tmp-step_*"):
        # temp dirs of other live writers cannot exist: only rank 0 of one run writes here
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainerState, dict[str, Any], Path]:
    """Read a checkpoint directory -> (trainer state, optim_state dict, model directory).

    The model weights are read by the caller (`clippo.load(path)` or a state-dict load).
    """
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path}: not a complete training checkpoint (no {STATE_FILE})")
    with open(state_file, encoding="utf-8") as f:
        state = TrainerState.from_dict(json.load(f), where=str(state_file))
    optim_state = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=False)
    return state, optim_state, path


def resolve_resume(resume: str, run_dir: str | os.PathLike) -> Path | None:
    """ "" -> None; "auto" -> newest complete checkpoint of run_dir or None; else that path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"checkpoint.resume={resume!r}: not a complete training checkpoint")
    return path


# ---- sharded (FSDP2) state and preemption ------------------------------------------------------


def gather_full_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, model_config: Any
) -> tuple[Any, dict[str, Any]]:
    """Under FSDP: (a CPU CLIPPO holding the full weights, the full optimiser state dict).

    Collective: every rank must call it. `module` wraps the model as `module.model`.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from clippo.model.one_tower import CLIPPO

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(module, optimizer, options=opts)
    with torch.device("meta"):
        model = CLIPPO(model_config)
    sd = {k[len("model.") :]: v for k, v in msd.items() if k.startswith("model.")}
    if sd:  # only rank 0 receives the gathered tensors with cpu_offload
        model.load_state_dict(sd, assign=True)
    return model, osd


def load_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, osd: Mapping[str, Any], sharded: bool
) -> None:
    """Restore an optimiser state saved by this trainer (full state dict when `sharded`)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(module, optimizer, dict(osd), options=opts)
    else:
        optimizer.load_state_dict(dict(osd))


@contextlib.contextmanager
def sigterm_flag(enabled: bool = True) -> Iterator[list[bool]]:
    """A one-item list that turns True when SIGTERM arrives, so the loop can checkpoint and
    stop at the next step boundary. Only the main thread can install signal handlers."""
    flag = [False]
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag[0] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
