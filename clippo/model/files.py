"""The saved-model folder: `config.json` (format, version, model + renderer config) beside
`model.safetensors`. Written here, read by `clippo.model.checkpoint`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clippo.atomic import write_bytes_atomic, write_json_atomic

FORMAT = "clippo-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
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
    directory: str | os.PathLike, config: dict[str, Any], state: Mapping[str, torch.Tensor]
) -> Path:
    """Write `config` (a `ModelConfig.to_dict()`) and the weights `state` into `directory`,
    each file atomically. Returns the directory."""
    from safetensors.torch import save

    directory = check_model_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # serialised in memory, then written by the atomic writer: safetensors' save_file replaces
    # the file it is given, which would drop the writer's 0644 mode for its own 0600
    write_bytes_atomic(directory / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config}
    write_json_atomic(meta, directory / CONFIG_FILE)
    return directory
