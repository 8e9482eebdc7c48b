"""Training checkpoints: written atomically with a manifest, pruned to the last K complete ones,
found again by `resume="auto"`. Nothing in a checkpoint is a pickle.

Layout:

    <run_dir>/checkpoints/step_000000123/
        config.json, model.safetensors   # exactly what `model.save` writes: `clippo.load(dir)` works
        loss.safetensors                 # the loss module's parameters (the sigmoid loss's bias)
        optimizer.safetensors            # the optimiser state's tensors and the torch RNG states
        optimizer.json                   # the rest of it: param groups, python/numpy RNG states,
                                         # the fp16 gradient scaler's state (fp16 runs only)
        train_config.json                # the resolved TrainConfig: what ran
        trainer_state.json               # step, data position, counters (in `extra`: the
                                         # W&B run id, fp16 steps skipped)
        manifest.json                    # written last: every file above with size and sha256

A checkpoint is built in `checkpoints/.tmp-step_...` and renamed into place; it is complete when
its manifest exists and every file it lists is present and verifies (`check_checkpoint`).
`resume="auto"` takes the newest complete checkpoint: a damaged newer one (a file missing,
truncated or changed, the manifest missing or unreadable) is reported in one line naming the file,
and skipped. An explicit checkpoint path that is damaged is an error naming the file. Pruning
counts complete checkpoints only, so damaged ones never push the last good one out.

Legacy checkpoints (written before the manifest: `optimizer.pt`, a torch pickle) load only with
`allow_legacy_pickle=True` (`clippo train --allow-legacy-pickle`), a keyword and never a config key
so that a shared config file cannot make a run trust pickles. Without it any folder holding a
pickle (`*.pt`, `*.pth`, `*.pkl`, `*.pickle`, `*.bin`) is refused, since unpickling runs code.
Legacy checkpoints from before `loss.safetensors` kept the bias in optimizer.pt as "logit_bias";
`load_checkpoint` reads them in today's form.

On resume, the sections the checkpoint fixes must equal this run's (`check_resume_config`): the
model (every `model.*` key but `grad_checkpointing` and `compile`, which say how it runs, not what
it is: the weights come from the checkpoint), the optimiser (`optim.*`: the restored optimiser
state brings its own peak lr, weight decay and betas) and `loop.loss` (the loss's own parameters
come from the checkpoint). Anything else may change, and `train_config.json` records what ran.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from clippo import typed_config
from clippo.atomic import write_bytes_atomic, write_json_atomic
from clippo.model.bigvision import CheckpointError
from clippo.train.ckpt_files import (
    MANIFEST_FILE,
    DamagedCheckpointError,
    PickleCheckpointError,
    find_pickles,
    load_legacy,
    load_state,
    load_tensors,
    save_state,
    verify_manifest,
    write_manifest,
)
from clippo.train.optim import OptimConfig
from clippo.typed_config import ConfigError

if TYPE_CHECKING:
    from clippo.train.config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d{9,})$")
STATE_FILE = "trainer_state.json"
OPTIM_STATE = "optimizer"  # optimizer.safetensors + optimizer.json
LEGACY_OPTIM_FILE = "optimizer.pt"
LOSS_FILE = "loss.safetensors"
CONFIG_FILE = "train_config.json"
# what a complete checkpoint's manifest must list (the model files are `save_model`'s business)
REQUIRED_FILES = (STATE_FILE, CONFIG_FILE, f"{OPTIM_STATE}.safetensors", f"{OPTIM_STATE}.json")
# model keys that say how the model runs, not what it is: free to change on resume
_RUNTIME_MODEL_KEYS = frozenset({"grad_checkpointing", "compile"})


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
            if not isinstance(d, Mapping) or "step" not in d:  # it must say where it stopped
                raise ConfigError("missing key 'step'")
            return typed_config.from_dict(cls, d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


# ---- finding checkpoints -----------------------------------------------------------------------


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:09d}"


def step_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every `step_*` folder of a run, complete or not, oldest first, as (step, path)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def check_checkpoint(path: str | os.PathLike, *, allow_legacy_pickle: bool = False) -> None:
    """Raise unless `path` is a complete checkpoint that may be loaded: PickleCheckpointError when
    it holds a pickle (unless allowed), DamagedCheckpointError naming the damaged file. With
    `allow_legacy_pickle`, a legacy checkpoint (optimizer.pt, no manifest) passes when its
    optimizer.pt and trainer_state.json exist (it has nothing to verify them against)."""
    path = Path(path)
    pickles = find_pickles(path)
    if pickles and not allow_legacy_pickle:
        raise PickleCheckpointError(path, pickles)
    if not (path / MANIFEST_FILE).exists() and (path / LEGACY_OPTIM_FILE).is_file():
        if (path / STATE_FILE).is_file():
            return
        raise DamagedCheckpointError(path, STATE_FILE, "is missing")
    verify_manifest(path, REQUIRED_FILES)


def is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` has a manifest and every file it lists verifies."""
    try:
        verify_manifest(Path(path), REQUIRED_FILES)
    except DamagedCheckpointError:
        return False
    return True


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (every file verified), oldest first, as (step, path)."""
    return [(s, p) for s, p in step_dirs(run_dir) if is_complete(p)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (older ones are not verified)."""
    for _, path in reversed(step_dirs(run_dir)):
        if is_complete(path):
            return path
    return None


def resolve_resume(
    resume: str,
    run_dir: str | os.PathLike,
    *,
    allow_legacy_pickle: bool = False,
    report: bool = True,
) -> Path | None:
    """ "" -> None; "auto" -> the newest complete checkpoint of run_dir, or None; else that path,
    which must be a complete checkpoint (else DamagedCheckpointError naming the file).

    "auto" skips damaged checkpoints, logging one line for each (when `report`); a checkpoint
    holding a pickle stops it (PickleCheckpointError) rather than being skipped."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint.resume={resume!r}: no such checkpoint folder")
        check_checkpoint(path, allow_legacy_pickle=allow_legacy_pickle)
        return path
    damaged: list[DamagedCheckpointError] = []
    found = None
    for _, path in reversed(step_dirs(run_dir)):
        try:
            check_checkpoint(path, allow_legacy_pickle=allow_legacy_pickle)
        except DamagedCheckpointError as e:
            damaged.append(e)
            continue
        found = path
        break
    outcome = (
        f"resuming from {found} instead" if found else "no complete one before it: starting fresh"
    )
    for skipped in damaged if report else ():
        log.warning("%s; %s", skipped, outcome)
    return found


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


# ---- save --------------------------------------------------------------------------------------


def check_writable(folders: Iterable[str | os.PathLike]) -> None:
    """Create each folder and a temporary file in it, or raise an OSError naming the folder:
    call before training, so an unwritable output folder is not found at the first save."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=folder, prefix=".write-test-")
            os.close(fd)
            os.unlink(name)
        except OSError as e:
            raise _os_error(e, f"output folder {folder} is not writable: {e.strerror or e}") from e


def _os_error(e: OSError, message: str) -> OSError:
    """An OSError of `e`'s kind (same errno) with our message."""
    return OSError(e.errno, message) if e.errno else OSError(message)


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
    """Write `<run_dir>/checkpoints/step_<state.step>/` atomically; keep the newest `keep_last`
    complete ones.

    save_model(dir): writes config.json + model.safetensors (normally `model.save`).
    optim_state: a nested dict of tensors, numbers, strings, lists, tuples, numpy arrays and torch
    dtypes (optimiser, RNG, ...), written as optimizer.safetensors + optimizer.json.
    loss_state: the loss module's state dict, written as loss.safetensors (when given).
    A write that fails (a full disk) raises an OSError naming the checkpoint; the temporary folder
    is removed and earlier checkpoints are untouched. Call on one rank only. Returns the folder.
    """
    from safetensors.torch import save

    final = checkpoint_dir(run_dir, state.step)
    root = final.parent
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; checkpoints are meant to be shared
        save_model(tmp)
        if loss_state is not None:
            tensors = {k: v.detach().cpu().contiguous() for k, v in loss_state.items()}
            write_bytes_atomic(tmp / LOSS_FILE, save(tensors, metadata={"format": "pt"}))
        save_state(tmp, OPTIM_STATE, optim_state)
        write_json_atomic(dict(train_config), tmp / CONFIG_FILE, sort_keys=True)
        write_json_atomic(state.to_dict(), tmp / STATE_FILE, sort_keys=True)
        write_manifest(tmp)  # last: marks the folder complete
        _replace_dir(tmp, final)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            why = "no space left on device" if e.errno == errno.ENOSPC else str(e.strerror or e)
            raise _os_error(e, f"cannot write checkpoint {final}: {why}") from e
        raise
    prune_checkpoints(run_dir, keep_last, known_complete=final)
    return final


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; a `final` already there (the same step saved again, e.g. SIGTERM
    right after a periodic save) is moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.with_name(f".tmp-{final.name}-replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def prune_checkpoints(
    run_dir: str | os.PathLike, keep_last: int, *, known_complete: Path | None = None
) -> None:
    """Keep the newest `keep_last` complete checkpoints and whatever is newer than the oldest of
    them; delete what is older, and stale temp dirs. Damaged checkpoints are not counted, so they
    never push out the last complete one. `known_complete`: a folder just written (not re-hashed).
    """
    complete = 0
    dirs = list(reversed(step_dirs(run_dir)))
    for i, (_, path) in enumerate(dirs):
        complete += path == known_complete or is_complete(path)
        if complete >= keep_last:
            for _, older in dirs[i + 1 :]:
                shutil.rmtree(older, ignore_errors=True)
            break
    for p in (Path(run_dir) / CHECKPOINTS).glob(".tmp-step_*"):
        # temp dirs of other live writers cannot exist: only rank 0 of one run writes here
        shutil.rmtree(p, ignore_errors=True)


# ---- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A training checkpoint read back. `path` is also a model directory (`clippo.load(path)`).

    optim: "optimizer" (its state dict) and "rng"; loss: the loss module's state dict.
    """

    path: Path
    state: TrainerState
    optim: dict[str, Any]
    loss: dict[str, Tensor]


def load_checkpoint(path: str | os.PathLike, *, allow_legacy_pickle: bool = False) -> Checkpoint:
    """Read a checkpoint folder (the model weights are left to the caller). Files are not
    re-verified against the manifest here (`check_checkpoint` does that); a file that cannot be
    read is a CheckpointError naming it. A folder holding a pickle is refused unless
    `allow_legacy_pickle`, which also lets a legacy (optimizer.pt) checkpoint load."""
    path = Path(path)
    pickles = find_pickles(path)
    if pickles and not allow_legacy_pickle:
        raise PickleCheckpointError(path, pickles)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path}: not a complete training checkpoint (no {STATE_FILE})")
    try:
        raw = json.loads(state_file.read_text(encoding="utf-8"))
    except ValueError as e:  # invalid JSON or UTF-8
        raise CheckpointError(f"{state_file}: not a readable trainer state ({e})") from None
    state = TrainerState.from_dict(raw, where=str(state_file))
    if not (path / MANIFEST_FILE).exists() and (path / LEGACY_OPTIM_FILE).is_file():
        optim, loss = load_legacy(path / LEGACY_OPTIM_FILE, path / LOSS_FILE)
        return Checkpoint(path, state, optim, loss)
    optim = load_state(path, OPTIM_STATE)
    for key in ("optimizer", "rng"):
        if key not in optim:
            raise CheckpointError(f"{path / f'{OPTIM_STATE}.json'}: no {key!r} state")
    return Checkpoint(path, state, optim, load_tensors(path / LOSS_FILE))


def check_resume_config(cfg: TrainConfig, checkpoint: str | os.PathLike) -> None:
    """Raise ConfigError naming every key of the sections a checkpoint fixes (the model but its
    run-time switches, the optimiser, `loop.loss`: see the module docstring) whose value in `cfg`
    differs from the checkpoint's train_config.json."""
    from clippo.train.config import ModelSection

    file = Path(checkpoint) / CONFIG_FILE
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        theirs = {
            "model": typed_config.to_plain(
                typed_config.from_dict(ModelSection, saved.get("model", {}), "model")
            ),
            "optim": typed_config.to_plain(
                typed_config.from_dict(OptimConfig, saved.get("optim", {}), "optim")
            ),
            "loop": {"loss": saved.get("loop", {}).get("loss", "softmax")},
        }
    except (ValueError, AttributeError) as e:  # invalid JSON, or a section that is not a table
        raise CheckpointError(f"{file}: not a readable training config ({e})") from None
    mine = {
        "model": typed_config.to_plain(cfg.model),
        "optim": typed_config.to_plain(cfg.optim),
        "loop": {"loss": cfg.loop.loss},
    }
    diffs = [
        f"{section}.{key}: {_show(value)} in this run's config, "
        f"{_show(theirs[section].get(key))} in {file}"
        for section, values in mine.items()
        for key, value in values.items()
        if not (section == "model" and key in _RUNTIME_MODEL_KEYS)
        and value != theirs[section].get(key)
    ]
    if diffs:
        raise ConfigError(
            "; ".join(diffs) + "; a resumed run keeps the checkpoint's model, optimiser and loss: "
            "start a new run folder or revert the change"
        )


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


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
