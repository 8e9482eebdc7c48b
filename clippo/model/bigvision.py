"""big_vision `.npz` checkpoints: reading the file, its key tree, and the mapping to torch.

- `read_npz`: the float32 parameter arrays of a `.npz` (bfloat16 stored as numpy void `V2`
  widened exactly; `opt/...` never read). Nothing is unpickled (`allow_pickle=False`).
- `infer_config` / `infer_vit`: model sizes from the array shapes alone.
- `state_dict_from_big_vision`: CLIPPO params -> `CLIPPO` state dict, via a table of entries
  (torch key <- big_vision keys + expected shapes + converter); any missing, unexpected or
  mis-shaped key raises one `CheckpointError` that lists them all.
- `image_init_params` / `tower_state_dict`: the ImageNet-21k AugReg ViT ("I21k init") tree ->
  tower weights (pre-linen renumbering, class-token slot dropped, position embedding resampled).

Building the model from these lives in `clippo.model.checkpoint`.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clippo.model.config import ModelConfig, ViTConfig
from clippo.model.files import CONFIG_FILE

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def shape_error(
    path: Path, missing: Collection[str], unexpected: Collection[str], misshaped: Collection[str]
) -> CheckpointError:
    """One error listing every missing, unexpected and mis-shaped key of the file at `path`."""
    parts = [f"{path}: checkpoint does not fit the model"]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(sorted(missing))}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(sorted(unexpected))}")
    if misshaped:
        parts.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(sorted(misshaped))}")
    return CheckpointError("\n  ".join(parts))


# ---- reading .npz ------------------------------------------------------------------------------


def _to_float32(name: str, a: np.ndarray, path: Path) -> np.ndarray:
    if (a.dtype.kind == "V" and a.dtype.itemsize == 2) or a.dtype.name == "bfloat16":
        # bfloat16 is the top half of a float32: widen the bits, exact
        return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    raise CheckpointError(f"{path}: array {name!r} has unsupported dtype {a.dtype}")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The float32 arrays of a big_vision `.npz` that hold parameters.

    Keys under `params/` are returned with that prefix removed and everything else (`opt/`,
    `chrono/`, ...) is skipped without being read. A file with no `params/` key (an ImageNet-21k
    AugReg ViT, say) is returned whole.
    """
    path = Path(path)
    if path.is_dir():
        saved = (path / CONFIG_FILE).is_file()
        hint = " (it holds a saved CLIPPO model: clippo.load reads it)" if saved else ""
        raise IsADirectoryError(f"{path} is a folder, not a big_vision .npz file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a .npz file (no zip header)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if any(n.startswith("params/") for n in names):
                wanted = {n[len("params/") :]: n for n in names if n.startswith("params/")}
            else:
                wanted = {n: n for n in names}
            return {key: _to_float32(key, npz[name], path) for key, name in wanted.items()}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated .npz ({type(e).__name__}: {e})") from e


# ---- big_vision key tree -> torch state dict -----------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One torch tensor built by `fn` from big_vision arrays `sources` = ((key, shape), ...)."""

    torch_key: str
    sources: tuple[tuple[str, tuple[int, ...]], ...]
    fn: Callable[..., np.ndarray]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _conv(k: np.ndarray) -> np.ndarray:
    return k.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def _dense(k: np.ndarray) -> np.ndarray:
    return k.T  # (in, out) -> Linear.weight (out, in)


def _heads_in(*ks: np.ndarray) -> np.ndarray:
    # [width, heads, head_dim] each; head_dim is the fast axis, as torch's view(B, L, H, hd) splits
    return np.concatenate([k.reshape(k.shape[0], -1).T for k in ks], axis=0)


def _heads_bias(*bs: np.ndarray) -> np.ndarray:
    return np.concatenate([b.reshape(-1) for b in bs])


def _heads_out(k: np.ndarray) -> np.ndarray:
    return k.reshape(-1, k.shape[-1]).T  # [heads, head_dim, width] -> (width, heads*head_dim)


def _tower_entries(v: ViTConfig, src: str, with_pool: bool = True) -> list[_Entry]:
    """Entries for the ViT tower (`vit.*`) read from big_vision keys under `src`."""
    w, nh, m, p = v.width, v.num_heads, v.mlp_dim, v.patch_size
    hd = w // nh
    entries: list[_Entry] = []

    def add(
        torch_key: str, fn: Callable[..., np.ndarray], *sources: tuple[str, Sequence[int]]
    ) -> None:
        entries.append(_Entry(torch_key, tuple((k, tuple(s)) for k, s in sources), fn))

    def layernorm(t: str, b: str) -> None:
        add(f"{t}.weight", _same, (f"{b}/scale", (w,)))
        add(f"{t}.bias", _same, (f"{b}/bias", (w,)))

    def dense(t: str, b: str, d_in: int, d_out: int) -> None:
        add(f"{t}.weight", _dense, (f"{b}/kernel", (d_in, d_out)))
        add(f"{t}.bias", _same, (f"{b}/bias", (d_out,)))

    def mlp(t: str, b: str) -> None:
        dense(f"{t}.fc1", f"{b}/Dense_0", w, m)
        dense(f"{t}.fc2", f"{b}/Dense_1", m, w)

    def heads_in(t: str, b: str, names: tuple[str, ...]) -> None:
        add(f"{t}.weight", _heads_in, *[(f"{b}/{n}/kernel", (w, nh, hd)) for n in names])
        add(f"{t}.bias", _heads_bias, *[(f"{b}/{n}/bias", (nh, hd)) for n in names])

    def heads_out(t: str, b: str) -> None:
        add(f"{t}.weight", _heads_out, (f"{b}/out/kernel", (nh, hd, w)))
        add(f"{t}.bias", _same, (f"{b}/out/bias", (w,)))

    add("vit.patch_embed.proj.weight", _conv, (f"{src}embedding/kernel", (p, p, 3, w)))
    add("vit.patch_embed.proj.bias", _same, (f"{src}embedding/bias", (w,)))
    add("vit.pos_embed", _same, (f"{src}pos_embedding", (1, v.num_tokens, w)))
    for i in range(v.depth):
        b, t = f"{src}Transformer/encoderblock_{i}", f"vit.blocks.{i}"
        attn = f"{b}/MultiHeadDotProductAttention_0"
        layernorm(f"{t}.norm1", f"{b}/LayerNorm_0")
        heads_in(f"{t}.attn.qkv", attn, ("query", "key", "value"))
        heads_out(f"{t}.attn.proj", attn)
        layernorm(f"{t}.norm2", f"{b}/LayerNorm_1")
        mlp(f"{t}.mlp", f"{b}/MlpBlock_0")
    layernorm("vit.norm", f"{src}Transformer/encoder_norm")
    if with_pool and v.pool_type == "map":
        b, attn = f"{src}MAPHead_0", f"{src}MAPHead_0/MultiHeadDotProductAttention_0"
        add("vit.attn_pool.latent", _same, (f"{b}/probe", (1, 1, w)))
        heads_in("vit.attn_pool.q", attn, ("query",))
        heads_in("vit.attn_pool.kv", attn, ("key", "value"))
        heads_out("vit.attn_pool.proj", attn)
        layernorm("vit.attn_pool.norm", f"{b}/LayerNorm_0")
        mlp("vit.attn_pool.mlp", f"{b}/MlpBlock_0")
    return entries


def _model_entries(cfg: ModelConfig) -> list[_Entry]:
    w, d = cfg.vit.width, cfg.out_dim
    return [
        *_tower_entries(cfg.vit, "img/"),
        _Entry("head.weight", (("img/head/kernel", (w, d)),), _dense),
        _Entry("head.bias", (("img/head/bias", (d,)),), _same),
        _Entry("t", (("t", (1,)),), _same),
    ]


def _convert(
    params: Mapping[str, np.ndarray], entries: list[_Entry], path: Path
) -> dict[str, torch.Tensor]:
    """Apply `entries`; any missing, unexpected or mis-shaped key -> one CheckpointError."""
    expected = {k: s for e in entries for k, s in e.sources}
    missing = set(expected) - set(params)
    unexpected = set(params) - set(expected)
    misshaped = [
        f"{k} {tuple(params[k].shape)} (expected {s})"
        for k, s in expected.items()
        if k in params and tuple(params[k].shape) != s
    ]
    if missing or unexpected or misshaped:
        raise shape_error(path, missing, unexpected, misshaped)
    return {
        e.torch_key: torch.from_numpy(
            np.ascontiguousarray(e.fn(*(params[k] for k, _ in e.sources)))
        )
        for e in entries
    }


def _block_indices(params: Mapping[str, np.ndarray], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/")
    return sorted({int(m.group(1)) for k in params if (m := pattern.match(k))})


def infer_vit(params: Mapping[str, np.ndarray], src: str, path: Path) -> ViTConfig:
    """Tower sizes from array shapes: patch/width from the conv kernel, image size from the
    position embedding (sqrt(tokens) x patch), depth from the block count, heads from the query
    kernel [width, heads, head_dim], MLP size from Dense_0, pooling from MAPHead_0's presence.

    `src` is the tower's key prefix (`"img/"` in a CLIPPO file, `""` for a bare ViT)."""
    need = [
        f"{src}embedding/kernel",
        f"{src}pos_embedding",
        f"{src}Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel",
        f"{src}Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
    ]
    missing = [k for k in need if k not in params]
    if missing:
        raise shape_error(path, missing, [], [])
    kh, kw, c_in, width = params[need[0]].shape
    tokens = params[need[1]].shape[1]
    grid = math.isqrt(tokens)
    if kh != kw or c_in != 3 or grid * grid != tokens:
        raise CheckpointError(
            f"{path}: expected a square RGB patch kernel and a square token grid, got kernel "
            f"{params[need[0]].shape} and {tokens} position embeddings"
        )
    blocks = _block_indices(params, src)
    pool = "map" if any(k.startswith(f"{src}MAPHead_0/") for k in params) else "gap"
    return ViTConfig(
        width=int(width),
        depth=max(blocks) + 1,
        num_heads=int(params[need[2]].shape[1]),
        mlp_dim=int(params[need[3]].shape[1]),
        patch_size=int(kh),
        image_size=int(grid * kh),
        pool_type=pool,
    )


def infer_config(
    params: Mapping[str, np.ndarray], path: str | os.PathLike = "<params>"
) -> ModelConfig:
    """ModelConfig of a big_vision CLIPPO parameter dict (keys as `read_npz` returns them).

    The renderer gets big_vision's defaults at the inferred image size."""
    path = Path(path)
    vit = infer_vit(params, "img/", path)
    if "img/head/kernel" not in params:
        raise shape_error(path, ["img/head/kernel"], [], [])
    return ModelConfig(vit=vit, out_dim=int(params["img/head/kernel"].shape[1]))


def state_dict_from_big_vision(
    params: Mapping[str, np.ndarray], cfg: ModelConfig, path: str | os.PathLike = "<params>"
) -> dict[str, torch.Tensor]:
    """big_vision CLIPPO params (without `params/`) -> `CLIPPO` state dict (float32)."""
    return _convert(params, _model_entries(cfg), Path(path))


# ---- ImageNet-21k ("I21k init") starting weights -----------------------------------------------


def _renumber_pre_linen(tree: dict[str, Any]) -> dict[str, Any]:
    """flax `convert_pre_linen`: old checkpoints number submodules across types
    (`LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3`); linen numbers
    each type from 0. Renumber `<name>_<n>` siblings per name, in order of n."""
    out: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def order(key: str) -> tuple[str, int]:
        m = re.fullmatch(r"(.*)_(\d+)", key)
        return (m.group(1), int(m.group(2))) if m else (key, -1)

    for key in sorted(tree, key=order):
        value = tree[key]
        m = re.fullmatch(r"(.*)_(\d+)", key)
        if m:
            n = counts.get(m.group(1), 0)
            counts[m.group(1)] = n + 1
            key = f"{m.group(1)}_{n}"
        out[key] = _renumber_pre_linen(value) if isinstance(value, dict) else value
    return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _resample_posemb(pe: np.ndarray, grid: int) -> np.ndarray:
    """[1, g*g, W] -> [1, grid*grid, W], linear like big_vision's scipy.ndimage.zoom(order=1)
    (which maps corner to corner, i.e. align_corners=True)."""
    g = math.isqrt(pe.shape[1])
    x = torch.from_numpy(pe).reshape(1, g, g, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=True)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).numpy()


def image_init_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An ImageNet-21k AugReg ViT (or CLIPPO) parameter dict -> its tower keys, without prefix.

    A CLIPPO file's `img/` tower is used; pre-linen numbering is renumbered; the position
    embedding is renamed to `pos_embedding` with the class-token slot of a 197-entry table
    dropped; `cls`, `head`, `pre_logits` and any `MAPHead_0` are skipped.
    """
    if "img/embedding/kernel" in params:
        params = {k[4:]: v for k, v in params.items() if k.startswith("img/")}
    out = _flatten(_renumber_pre_linen(_unflatten(params)))
    for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
        if old in out:
            out["pos_embedding"] = out.pop(old)
    pe = out.get("pos_embedding")
    if pe is not None and pe.ndim == 3 and math.isqrt(pe.shape[1] - 1) ** 2 == pe.shape[1] - 1:
        out["pos_embedding"] = pe[:, 1:]  # class-token slot first (old vit.py layout)
    skip = re.compile(r"(cls|head/.*|pre_logits/.*|MAPHead_0/.*)")
    return {k: v for k, v in out.items() if not skip.fullmatch(k)}


def tower_state_dict(
    params: Mapping[str, np.ndarray], vit: ViTConfig, path: Path
) -> dict[str, torch.Tensor]:
    """`image_init_params` output -> the tower's `vit.*` tensors without the pooling head.

    A position embedding on another square grid is resampled linearly to `vit`'s grid."""
    pe = params.get("pos_embedding")
    if pe is not None and pe.ndim == 3:
        tokens = pe.shape[1]
        if math.isqrt(tokens) ** 2 == tokens and math.isqrt(tokens) != vit.grid_size:
            params = {**params, "pos_embedding": _resample_posemb(pe, vit.grid_size)}
    return _convert(params, _tower_entries(vit, "", with_pool=False), path)
