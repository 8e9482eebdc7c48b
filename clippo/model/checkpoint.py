"""Checkpoint entry points: `clippo.load`, `clippo.load_image_init`, `convert`, `CLIPPO.save`.

Three inputs load with `clippo.load(path)`:
- a big_vision `.npz` as released (`params/...` keys; `opt/...` ignored; bfloat16 arrays stored
  as numpy void `V2`). All sizes are inferred from the array shapes (see `clippo.model.bigvision`).
- a directory written by `save` of any architecture (`clippo.model.architectures`: CLIPPO,
  CLIP*, 1T-CLIP): `config.json` (its "architecture" key says which; absent: CLIPPO) +
  `model.safetensors`, and `tokenizer.json` for the token-based ones.
- a trainer checkpoint directory: the same files plus extras (ignored here).

Nothing is ever unpickled: `.npz` files open with `allow_pickle=False`, weights are safetensors,
and a torch `.pt`/`.bin` (accepted in a directory instead of safetensors) goes through
`torch.load(weights_only=True)`. Files are written atomically (temp file + `os.replace`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar, cast

import torch

from clippo.model.architectures import ARCHITECTURES, AnyConfig, AnyModel, build_model
from clippo.model.bigvision import (
    CheckpointError,
    image_init_params,
    infer_config,
    infer_vit,
    read_npz,
    shape_error,
    state_dict_from_big_vision,
    tower_state_dict,
)
from clippo.model.config import ModelConfig, ViTConfig
from clippo.model.files import (
    CONFIG_FILE,
    DEFAULT_ARCHITECTURE,
    FORMAT,
    FORMAT_VERSION,
    TORCH_WEIGHTS_FILES,
    WEIGHTS_FILE,
    check_model_dir,
)
from clippo.model.one_tower import CLIPPO
from clippo.model.tokenizer import TOKENIZER_FILE, TextTokenizer

_M = TypeVar("_M", bound=torch.nn.Module)

# ---- big_vision .npz -> CLIPPO ------------------------------------------------------------------


def load_npz(path: str | os.PathLike) -> CLIPPO:
    """A released big_vision CLIPPO `.npz` -> CLIPPO (sizes inferred from the file)."""

    params = read_npz(path)
    cfg = infer_config(params, path)
    state = state_dict_from_big_vision(params, cfg, path)
    with torch.device("meta"):  # skip the random init that the weights replace anyway
        model = CLIPPO(cfg)
    return _with_weights(model, state)


def _with_weights(model: _M, state: dict[str, torch.Tensor]) -> _M:
    """`model` (built on the meta device) holding exactly `state` (checked already), in float32
    and eval mode."""
    # a copy in freshly allocated memory: tensors viewed straight from a safetensors buffer can sit
    # off the usual alignment, and some BLAS paths then sum in another order (outputs differing
    # by ~1e-7 from the saved model's on some processors)
    state = {k: v.to(torch.float32, copy=True) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


# ---- save / load directories --------------------------------------------------------------------


def read_config(directory: str | os.PathLike) -> AnyConfig:
    """The model config stored in a saved-model or trainer checkpoint directory (a ModelConfig
    for CLIPPO, a TokenModelConfig for the token baselines; `read_model_config` also says
    which architecture)."""
    return read_model_config(directory)[1]


def read_model_config(directory: str | os.PathLike) -> tuple[str, AnyConfig]:
    """(architecture name, its config) of a saved-model or trainer checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a saved CLIPPO directory)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: 'format' is not {FORMAT!r}")
    version = meta.get("format_version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:  # True is no version
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this clippo reads 1 to "
            f"{FORMAT_VERSION}; a newer file needs a newer clippo)"
        )
    # a newer layout bumps format_version; an unknown key at this version is a foreign file
    known = ("format", "format_version", "architecture", "model")
    unknown = sorted(set(meta) - set(known))
    if unknown:
        raise CheckpointError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    if "model" not in meta:
        raise CheckpointError(f"{path}: missing key 'model' (the model config)")
    name = meta.get("architecture", DEFAULT_ARCHITECTURE)  # absent: every pre-baseline file
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: 'architecture' {name!r} is not one of {', '.join(ARCHITECTURES)}"
        )
    try:  # under the prefix "model", so errors name the key as it stands in the file
        return name, ARCHITECTURES[name].read_config(meta["model"], "model")
    except ValueError as e:  # ConfigError, and the renderer's own checks
        raise CheckpointError(f"{path}: bad model config: {e}") from e


def _read_weights(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the weights file, its tensors), every one a floating-point tensor."""
    path = directory / WEIGHTS_FILE
    if path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
        return path, _floating(path, tensors)
    for name in TORCH_WEIGHTS_FILES:
        path = directory / name
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for bad files
                raise CheckpointError(f"{path}: cannot read torch weights ({e})") from e
            if not isinstance(state, dict):
                raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
            return path, _floating(path, state)
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE} (or {', '.join(TORCH_WEIGHTS_FILES)})")


def _floating(path: Path, state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """`state` if every value is a floating-point tensor. Weights stored as integers or booleans
    are a broken or foreign file: cast to float they would load as nonsense without a word (the
    .npz reader refuses them too). The error names every offending key."""
    bad = [
        f"{k} ({v.dtype})" if isinstance(v, torch.Tensor) else f"{k} ({type(v).__name__})"
        for k, v in state.items()
        if not (isinstance(v, torch.Tensor) and v.is_floating_point())
    ]
    if bad:
        raise CheckpointError(
            f"{path}: weights must be floating-point tensors; not so: {', '.join(sorted(bad))}"
        )
    return cast("dict[str, torch.Tensor]", dict(state))


def load_dir(directory: str | os.PathLike) -> AnyModel:
    """A directory from any architecture's `save`, or the trainer -> that model (CLIPPO, CLIP*
    or 1T-CLIP, as config.json says), with its tokenizer where it reads tokens."""
    directory = Path(directory)
    name, cfg = read_model_config(directory)
    tokenizer = None
    if ARCHITECTURES[name].tokens:
        tokenizer = TextTokenizer.load(directory)
    try:
        with torch.device("meta"):
            model = build_model(name, cfg, tokenizer)
    except ValueError as e:  # a tokenizer that does not fit the config
        raise CheckpointError(f"{directory / TOKENIZER_FILE}: {e}") from e
    own = model.state_dict()
    path, state = _read_weights(directory)
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        raise shape_error(path, missing, unexpected, misshaped)
    return _with_weights(model, state)


def load(path: str | os.PathLike) -> AnyModel:
    """`clippo.load`: a big_vision `.npz` (CLIPPO), or a directory saved by any architecture or
    by the trainer -> that model on the CPU in eval mode."""
    path = Path(path)
    if path.is_dir():
        return load_dir(path)
    return load_npz(path)


def convert(npz_path: str | os.PathLike, out_dir: str | os.PathLike) -> CLIPPO:
    """big_vision `.npz` -> `CLIPPO.save` directory; returns the loaded model."""
    check_model_dir(out_dir)  # before the (long) load, not after it
    model = load_npz(npz_path)
    model.save(out_dir)
    return model


# ---- ImageNet-21k ("I21k init") starting weights -----------------------------------------------


def load_image_init(path: str | os.PathLike, model: CLIPPO | None = None) -> CLIPPO:
    """Start the tower from an ImageNet-21k AugReg ViT `.npz`, as big_vision's "I21k init".

    Copies the patch and position embeddings and the encoder (the class-token slot of a
    197-entry position embedding is dropped; a different grid is resampled linearly) and skips
    `cls`, `head`, `pre_logits` and any `MAPHead_0`; the MAP head, `head` and `t` keep their
    fresh big_vision init. A CLIPPO `.npz` works too (its `img/` tower is used).
    With `model=None` a new CLIPPO is built with the file's tower sizes, MAP pooling and
    out_dim = width; otherwise `model` is filled in place (sizes must match) and returned.
    """
    path = Path(path)
    params = image_init_params(read_npz(path))
    file_vit = infer_vit(params, "", path)
    if model is None:
        vit = ViTConfig(**{**file_vit.to_dict(), "pool_type": "map"})
        model = CLIPPO(ModelConfig(vit=vit, out_dim=vit.width))
    target = model.config.vit
    sizes = ("width", "depth", "num_heads", "mlp_dim", "patch_size")
    if any(getattr(file_vit, s) != getattr(target, s) for s in sizes):
        raise CheckpointError(
            f"{path}: tower {[getattr(file_vit, s) for s in sizes]} does not match the model's "
            f"{[getattr(target, s) for s in sizes]} ({', '.join(sizes)})"
        )
    state = tower_state_dict(params, target, path)
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:  # strict=False only so the MAP head, head and t may stay as they are
        raise RuntimeError(f"tower keys not in the model: {unexpected}")
    return model
