"""Training checkpoints: written atomically, pruned to the last K, found again by `resume="auto"`.

Layout:

    <run_dir>/checkpoints/step_000000123/
        config.json, model.safetensors   # exactly what `model.save` writes: `clippo.load(dir)` works
        loss.safetensors                 # the loss module's parameters (the sigmoid loss's bias)
        train_config.json                # the resolved TrainConfig
        optimizer.pt                     # optimiser and RNG states
        trainer_state.json               # step, data position, counters; written last

A checkpoint is built in `checkpoints/.tmp-step_...` and renamed into place, so a directory named
`step_*` is always complete; a run killed mid-write leaves only a temp directory, removed later.
Checkpoints written before `loss.safetensors` existed kept the bias in optimizer.pt as
"logit_bias"; `load_checkpoint` reads them in today's form.
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
from torch import Tensor, nn

from clippo import typed_config
from clippo.atomic import write_json_atomic
from clippo.typed_config import ConfigError

CHECKPOINTS = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d{9,})$")
STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"
LOSS_FILE = "loss.safetensors"
CONFIG_FILE = "train_config.json"
# Before LOSS_FILE, the sigmoid bias was the training step's own parameter "logit_bias" (saved in
# optimizer.pt); it is now the loss module's, "loss.logit_bias" in the training step.
_OLD_BIAS, _BIAS = "logit_bias", "loss.logit_bias"


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
        """The `to_dict` form back; errors are `ConfigError`s (ValueErrors) naming `where`."""
        try:
            if "step" not in d:  # a state that does not say where it stopped cannot be resumed
                raise ConfigError("missing key 'step'")
            return typed_config.from_dict(cls, d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


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
    loss_state: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write `<run_dir>/checkpoints/step_<state.step>/` atomically; keep the newest `keep_last`.

    save_model(dir): writes config.json + model.safetensors (normally `model.save`).
    optim_state: picklable dict saved with `torch.save` (optimiser, RNG, ...).
    loss_state: the loss module's state dict, written as loss.safetensors (when given).
    Call on one rank only. Returns the checkpoint directory.
    """
    final = checkpoint_dir(run_dir, state.step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; checkpoints are meant to be shared like the files
    try:
        save_model(tmp)
        if loss_state is not None:
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in loss_state.items()}
            save_file(tensors, str(tmp / LOSS_FILE), metadata={"format": "pt"})
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


@dataclass(frozen=True)
class Checkpoint:
    """A training checkpoint read back. `path` is also a model directory (`clippo.load(path)`).

    optim: "optimizer" (its state dict) and "rng"; loss: the loss module's state dict.
    """

    path: Path
    state: TrainerState
    optim: dict[str, Any]
    loss: dict[str, Tensor]


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint directory (the model weights are left to the caller)."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path}: not a complete training checkpoint (no {STATE_FILE})")
    with open(state_file, encoding="utf-8") as f:
        state = TrainerState.from_dict(json.load(f), where=str(state_file))
    optim = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=False)
    if (path / LOSS_FILE).is_file():
        from safetensors.torch import load_file

        loss = load_file(str(path / LOSS_FILE), device="cpu")
    else:  # written before LOSS_FILE: the bias (if any) sits in optimizer.pt
        bias = optim.pop(_OLD_BIAS, None)
        loss = {} if bias is None else {"logit_bias": bias}  # ContrastiveLoss's name for it
        optim["optimizer"] = _renamed_param(optim["optimizer"], _OLD_BIAS, _BIAS)
    return Checkpoint(path, state, optim, loss)


def _renamed_param(osd: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """An optimiser state dict with parameter `old` called `new`. Only the full state dicts that
    FSDP saves name parameters; a plain `optimizer.state_dict()` numbers them (left as it is)."""
    state = {new if k == old else k: v for k, v in osd["state"].items()}
    groups = [
        {**g, "params": [new if p == old else p for p in g["params"]]} for g in osd["param_groups"]
    ]
    return {**osd, "state": state, "param_groups": groups}


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
    module: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Under FSDP: (the module's full state dict, the full optimiser state dict), on the CPU.

    Collective: every rank must call it; with the CPU offload only rank 0 receives the tensors.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(module, optimizer, options=opts)
    return msd, osd


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
