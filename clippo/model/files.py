"""The saved-model folder: `config.json` (format, version, architecture, model config) beside
`model.safetensors`, and whatever else an architecture needs (the token baselines' tokenizer.json).
Written here, read by `clippo.model.checkpoint`.

    {"format": "clippo-model", "format_version": 1, "architecture": "clip-star", "model": {...}}

`architecture` names an entry of `clippo.model.architectures.ARCHITECTURES`; a file without it
(every one written before the baselines existed) is a CLIPPO."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clippo.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

FORMAT = "clippo-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_ARCHITECTURE = "clippo"  # what a config.json without "architecture" holds
TORCH_WEIGHTS_FILES = ("pytorch_model.bin", "model.pt")  # read with weights_only=True only


def check_model_dir(directory: str | os.PathLike) -> Path:
    """`directory` as a Path, if a model can be saved there: new, or an existing folder. A file
    of that name is a FileExistsError that says so (mkdir's own says only "File exists")."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(
            f"{directory} exists and is a file; a model is saved as a folder "
            f"({CONFIG_FILE} + {WEIGHTS_FILE}): give a new or existing folder"
        )
    return directory


def save_model(
    directory: str | os.PathLike,
    config: dict[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    architecture: str = DEFAULT_ARCHITECTURE,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write `config` (the model config's `to_dict()`), the weights `state` and `files` (file
    name -> text, e.g. tokenizer.json) into `directory`, each file atomically; config.json,
    which names the `architecture`, is written last. Returns the directory."""
    from safetensors.torch import save

    directory = check_model_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # serialised in memory, then written by the atomic writer: safetensors' save_file replaces
    # the file it is given, which would drop the writer's 0644 mode for its own 0600
    write_bytes_atomic(directory / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    for name, text in (files or {}).items():
        if name in (CONFIG_FILE, WEIGHTS_FILE) or Path(name).name != name:
            raise ValueError(
                f"extra model file {name!r} must be a plain name, not {CONFIG_FILE} "
                f"or {WEIGHTS_FILE}"
            )
        write_text_atomic(directory / name, text)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "model": config,
    }
    write_json_atomic(meta, directory / CONFIG_FILE)
    return directory
