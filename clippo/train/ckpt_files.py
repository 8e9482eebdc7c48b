"""The files of a training checkpoint: pickle-free state files, the manifest, and their checks.

Nothing in a checkpoint is a pickle. A nested state (the optimiser's state dict, RNG states, ...)
is written as two files: its tensors in `<name>.safetensors` and everything else as tagged JSON in
`<name>.json` (`save_state` / `load_state`). Python's `random` state and numpy's are plain numbers,
so they round-trip exactly through JSON; torch RNG states are uint8 tensors.

`manifest.json`, written last, lists every file of the checkpoint with its size and sha256. A
checkpoint is complete when its manifest exists and every file it lists is present and verifies
(`verify_manifest`). A folder holding a pickle (`*.pt`, `*.pth`, `*.pkl`, `*.pickle`, `*.bin`) is
refused unless the caller opts in (`find_pickles`, `PickleCheckpointError`); with the opt-in,
`load_legacy` reads the optimizer.pt of checkpoints written before this format, the one place a
pickle is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clippo.atomic import write_bytes_atomic, write_json_atomic
from clippo.model.bigvision import CheckpointError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "clippo-train-checkpoint"
STATE_FORMAT = "clippo-train-state"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")
LEGACY_FLAG = "--allow-legacy-pickle"
# Before loss.safetensors, the sigmoid bias was the training step's own parameter "logit_bias"
# (saved in optimizer.pt); it is now the loss module's, "loss.logit_bias" in the training step.
_OLD_BIAS, _BIAS = "logit_bias", "loss.logit_bias"

# one-key JSON objects that stand for a value JSON has no type for
_TENSOR, _TUPLE, _ITEMS, _NDARRAY, _DTYPE = (
    "__tensor__",
    "__tuple__",
    "__items__",
    "__ndarray__",
    "__dtype__",
)
_TAGS = frozenset({_TENSOR, _TUPLE, _ITEMS, _NDARRAY, _DTYPE})


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file is missing, truncated or does not match the manifest; names both."""

    def __init__(self, checkpoint: str | os.PathLike, file: str, problem: str) -> None:
        super().__init__(f"damaged checkpoint {checkpoint}: {file} {problem}")
        self.checkpoint, self.file = Path(checkpoint), file


class PickleCheckpointError(CheckpointError):
    """A checkpoint folder holds a pickle, which could run code when loaded."""

    def __init__(self, checkpoint: str | os.PathLike, files: list[str]) -> None:
        super().__init__(
            f"checkpoint {checkpoint} holds {', '.join(files)}: a pickle, and loading one can run "
            "any code it carries, so it is refused. If you wrote this checkpoint yourself with an "
            f"older clippo (optimizer.pt layout), pass {LEGACY_FLAG} to `clippo train` "
            "(train(..., allow_legacy_pickle=True)) to load it"
        )
        self.checkpoint, self.files = Path(checkpoint), files


def find_pickles(folder: str | os.PathLike) -> list[str]:
    """Names of the files in `folder` (recursively) that may be pickles, sorted."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in PICKLE_SUFFIXES and not p.is_dir()
    )


# ---- nested state <-> (tagged JSON, tensors) ----------------------------------------------------


def _encode(obj: Any, tensors: dict[str, Tensor], seen: set[int], path: str) -> Any:
    if isinstance(obj, Tensor):
        name = path if path not in tensors else f"{path}#{len(tensors)}"
        t = obj.detach().cpu().contiguous()
        if (
            t.untyped_storage().data_ptr() in seen and t.numel()
        ):  # safetensors refuses shared memory
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {_DTYPE: str(obj).removeprefix("torch.")}
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        return {
            _NDARRAY: {
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "scalar": isinstance(obj, np.generic),
                "data": arr.ravel().tolist(),
            }
        }
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, seen, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, seen, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and set(obj) <= _TAGS)
        if plain:
            return {k: _encode(v, tensors, seen, f"{path}/{k}") for k, v in obj.items()}
        return {
            _ITEMS: [
                [_encode(k, tensors, seen, f"{path}/key"), _encode(v, tensors, seen, f"{path}/{k}")]
                for k, v in obj.items()
            ]
        }
    raise TypeError(f"{path or '/'}: cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and set(obj) <= _TAGS:
        ((tag, value),) = obj.items()
        if tag == _TENSOR:
            if value not in tensors:
                raise ValueError(f"tensor {value!r} is not in the tensor file")
            return tensors[value]
        if tag == _TUPLE:
            return tuple(_decode(v, tensors) for v in value)
        if tag == _ITEMS:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
        if tag == _DTYPE:
            dtype = getattr(torch, str(value), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown torch dtype {value!r}")
            return dtype
        arr = np.array(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
        return arr[()] if value["scalar"] else arr
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(folder: Path, name: str, state: Mapping[str, Any]) -> None:
    """Write `state` as `<name>.safetensors` (its tensors) and `<name>.json` (the rest)."""
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {}
    doc = {
        "format": STATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "state": _encode(dict(state), tensors, set(), ""),
    }
    # serialised in memory, then written by the one atomic writer: a full disk is an OSError
    write_bytes_atomic(folder / f"{name}.safetensors", save(tensors, metadata={"format": "pt"}))
    write_json_atomic(doc, folder / f"{name}.json")


def load_state(folder: Path, name: str) -> dict[str, Any]:
    """`save_state`'s state back (tensors on the CPU); a damaged file is a CheckpointError
    naming it."""
    from safetensors.torch import load

    tensor_file, json_file = folder / f"{name}.safetensors", folder / f"{name}.json"
    try:
        tensors = load(tensor_file.read_bytes())
    except OSError:
        raise
    except Exception as e:  # safetensors raises its own error type for a truncated file
        raise CheckpointError(f"{tensor_file}: not a readable safetensors file ({e})") from None
    try:
        doc = json.loads(json_file.read_text(encoding="utf-8"))
        if doc.get("format") != STATE_FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {STATE_FORMAT!r}")
        state = _decode(doc["state"], tensors)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON errors are ValueErrors
        raise CheckpointError(f"{json_file}: not a readable state file ({e})") from None
    return dict(state)


def load_tensors(file: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors ({} when there is no file); unreadable -> CheckpointError."""
    if not file.is_file():
        return {}
    from safetensors.torch import load

    try:
        return load(file.read_bytes())
    except Exception as e:  # safetensors raises its own error type for a truncated file
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def load_legacy(file: Path, loss_file: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(optimiser + RNG state, loss state) of a checkpoint written before the manifest: `file`
    is its optimizer.pt, `loss_file` its loss.safetensors (absent in the oldest ones). The one
    place a pickle is loaded: `clippo.train.state` calls it only with `allow_legacy_pickle`."""
    try:
        optim = torch.load(file, map_location="cpu", weights_only=False)
        if not isinstance(optim, dict) or "optimizer" not in optim:
            raise ValueError("no 'optimizer' state in it")
    except OSError:
        raise
    except Exception as e:  # a truncated pickle: EOFError, RuntimeError, UnpicklingError, ...
        raise CheckpointError(f"{file}: not a readable optimiser state ({e})") from None
    if loss_file.is_file():
        return optim, load_tensors(loss_file)
    # written before loss.safetensors: the bias (if any) sits in optimizer.pt
    bias = optim.pop(_OLD_BIAS, None)
    loss = {} if bias is None else {"logit_bias": bias}  # ContrastiveLoss's name for it
    optim["optimizer"] = _renamed_param(optim["optimizer"], _OLD_BIAS, _BIAS)
    return optim, loss


def _renamed_param(osd: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """An optimiser state dict with parameter `old` called `new`. Only the full state dicts that
    FSDP saves name parameters; a plain `optimizer.state_dict()` numbers them (left as it is)."""
    state = {new if k == old else k: v for k, v in osd["state"].items()}
    groups = [
        {**g, "params": [new if p == old else p for p in g["params"]]} for g in osd["param_groups"]
    ]
    return {**osd, "state": state, "param_groups": groups}


# ---- the manifest ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> Path:
    """List every file under `folder` (size, sha256) in `folder/manifest.json`; call it last."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    listing = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in files
    }
    doc = {"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, "files": listing}
    return write_json_atomic(doc, folder / MANIFEST_FILE, sort_keys=True)


def verify_manifest(folder: Path, required: Iterable[str] = ()) -> None:
    """Raise DamagedCheckpointError unless `folder/manifest.json` is readable, lists every name in
    `required`, and every file it lists is present with the listed size and sha256."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        raise DamagedCheckpointError(folder, MANIFEST_FILE, "is missing (the save did not finish)")
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        listing = doc["files"]
        entries = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in listing.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedCheckpointError(folder, MANIFEST_FILE, f"is not readable ({e})") from None
    for name in required:
        if name not in entries:
            raise DamagedCheckpointError(folder, MANIFEST_FILE, f"does not list {name}")
    for name, (size, sha) in entries.items():
        path = folder / name
        if not path.is_file():
            raise DamagedCheckpointError(folder, name, "is missing")
        actual = path.stat().st_size
        if actual != size:
            raise DamagedCheckpointError(
                folder, name, f"is truncated or changed: {actual} bytes, the manifest says {size}"
            )
        if _sha256(path) != sha:
            raise DamagedCheckpointError(
                folder, name, f"does not match its sha256 in {MANIFEST_FILE}"
            )
