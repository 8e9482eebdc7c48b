"""Frozen-encoder features for the GLUE and VQA suites: pooled representations, cached on disk;
and the on-disk array cache they share with zero-shot class embeddings (`clippo.eval.zeroshot`).

`extract_features(model, items, to_images, ...)` turns any sequence of items (sentences, pairs,
(photo, question) rows) into float32 [N, width] with `model.pooled`, the MAP head's output
before the projection, where task heads sit. The caller's `to_images(batch) -> uint8
[B, H, W, 3]` renders or loads the pixels (with the model's own renderer: `model.renderer`,
`clippo.render.render_pair`, `render_on_image`); it runs one batch ahead in a thread.

With `cache_dir`, the result is stored as `<cache_dir>/features-<digest>.npy` beside a JSON
sidecar that spells out the key and a sha256 of the array. The key covers the model
(`model_fingerprint`: its config and every tensor), the renderer settings, the data (a
fingerprint of the items in order, or a caller-given `data_key`), bf16, and the caller's extra
key parts (pair mode, band height...). A file that cannot be read or whose sidecar or checksum
does not match is recomputed with a warning, never trusted. Other cached arrays use the same
pieces: `json_key`, `model_key`, `cache_path`, `load_cached`, `save_cached`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clippo.atomic import atomic_path, write_json_atomic
from clippo.embed import autocast
from clippo.model.one_tower import CLIPPO
from clippo.preprocess import images_to_pixels

CACHE_VERSION = 1  # bump when the stored features change meaning

ToImages = Callable[[Any], np.ndarray]

# model -> (token, digest). The token (each tensor's storage address and in-place version
# counter) changes whenever a weight is modified or moved, so a stale digest is never reused.
_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = (
    weakref.WeakKeyDictionary()
)


def model_fingerprint(model: CLIPPO) -> str:
    """sha256 (hex) over the config dict and every state-dict tensor (name, dtype, shape, bytes).

    Hashing a B/16 state dict (374 MB) takes about 0.3 s here; the digest is remembered per
    model object until a tensor changes (`_version`) or moves (`data_ptr`)."""
    state = model.state_dict()
    token = tuple((k, t.data_ptr(), t._version, t.device.type) for k, t in state.items())
    known = _FINGERPRINTS.get(model)
    if known is not None and known[0] == token:
        return known[1]
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, t in state.items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().data)
    digest = h.hexdigest()
    _FINGERPRINTS[model] = (token, digest)
    return digest


def _feed(h: Any, x: Any) -> None:
    """Hash `x` unambiguously: a type tag and a length before each value."""

    def put(tag: str, payload: bytes) -> None:
        h.update(f"{tag}{len(payload)}:".encode())
        h.update(payload)

    if x is None or isinstance(x, bool | int | float):
        put("n", repr(x).encode())
    elif isinstance(x, str):
        put("s", x.encode("utf-8", "surrogatepass"))
    elif isinstance(x, bytes | bytearray):
        put("b", bytes(x))
    elif isinstance(x, os.PathLike):  # the path, not the file's content
        put("p", os.fspath(x).encode("utf-8", "surrogateescape"))
    elif isinstance(x, np.ndarray | np.generic):
        a = np.ascontiguousarray(x)
        put("a", f"{a.dtype.str}{a.shape}".encode())
        put("d", a.tobytes())
    elif isinstance(x, list | tuple):
        put("l", str(len(x)).encode())
        for v in x:
            _feed(h, v)
    elif isinstance(x, Mapping):
        put("m", str(len(x)).encode())
        for k in sorted(x, key=repr):
            _feed(h, k)
            _feed(h, x[k])
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        put("c", type(x).__qualname__.encode())
        _feed(h, [getattr(x, f.name) for f in dataclasses.fields(x)])
    else:
        text = repr(x)
        if " at 0x" in text:  # an identity repr says nothing about the content
            raise ValueError(
                f"cannot fingerprint a {type(x).__name__} item by its repr; pass data_key"
            )
        put("r", text.encode())


def data_fingerprint(items: Sequence[Any]) -> str:
    """sha256 (hex) over the items in order: strings, bytes, numbers, numpy arrays (dtype, shape,
    bytes), paths (as paths), lists/tuples/dicts/dataclasses of these; anything else by repr."""
    h = hashlib.sha256()
    for item in items:
        _feed(h, item)
    return h.hexdigest()


def combine_pair(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The "concat" pair mode: u, v [N, D] -> [u, v, |u - v|, u * v], float32 [N, 4D]."""
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(
            f"combine_pair needs two [N, D] arrays of one shape, got {u.shape}, {v.shape}"
        )
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1).astype(np.float32, copy=False)


def json_key(key: Mapping[str, Any]) -> dict[str, Any]:
    """`key` as its JSON round trip (what a sidecar holds, so keys compare in that form); a part
    that is not a JSON value is a ValueError naming it."""
    try:
        return json.loads(json.dumps(dict(key), sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"cache key parts must be JSON values: {dict(key)!r} ({e})") from e


def model_key(model: CLIPPO) -> dict[str, Any]:
    """The model's part of a cache key: its weights' fingerprint and its renderer settings."""
    return {"model": model_fingerprint(model), "renderer": model.renderer.config.to_dict()}


def cache_path(cache_dir: str | os.PathLike, key: Mapping[str, Any], stem: str) -> Path:
    """`<cache_dir>/<stem>-<digest>.npy` for a JSON-normalised key (`json_key`)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{stem}-{digest[:32]}.npy"


def _cache_key(
    model: CLIPPO, items: Sequence[Any], data_key: str | None, extra: Mapping[str, Any], bf16: bool
) -> dict[str, Any]:
    return json_key(
        {
            "version": CACHE_VERSION,
            **model_key(model),
            "data": data_key if data_key is not None else data_fingerprint(items),
            "data_key_given": data_key is not None,
            "rows": len(items),
            "extra": dict(extra),
            "bf16": bf16,
        }
    )


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def load_cached(
    path: Path, key: dict[str, Any], shape: tuple[int, ...], what: str = "cache"
) -> np.ndarray | None:
    """The float32 array of `shape` cached at `path` under `key` (`json_key` form), or None: no
    file, or one that cannot be trusted (unreadable, another key in its sidecar, another shape,
    a checksum mismatch), with a warning that names `what` and the file."""
    if not path.exists():
        return None
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise ValueError(f"{sidecar} describes another key")
        with open(path, "rb") as f:
            arr = np.load(f, allow_pickle=False)
        if arr.dtype != np.float32 or arr.shape != shape:
            raise ValueError(f"float32 {list(shape)} expected, found {arr.dtype} {list(arr.shape)}")
        if _sha256(arr) != meta.get("sha256"):
            raise ValueError("checksum does not match the sidecar")
        return arr
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        warnings.warn(f"{path}: {what} not usable ({e}); recomputing", stacklevel=3)
        return None


def save_cached(path: Path, key: dict[str, Any], arr: np.ndarray, desc: str) -> None:
    """Write `arr` (float32) to `path` and its JSON sidecar (the key, `desc`, the shape and a
    sha256 of the array), each atomically: a reader sees the old files or the new ones."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)
    meta = {"key": key, "desc": desc, "shape": list(arr.shape), "sha256": _sha256(arr)}
    write_json_atomic(meta, path.with_suffix(".json"))


@torch.no_grad()
def _run(
    model: CLIPPO,
    items: Sequence[Any],
    to_images: ToImages,
    batch_size: int,
    device: torch.device,
    bf16: bool,
    desc: str,
    progress: bool | None,
    ink_only: bool,
) -> np.ndarray:
    size = model.config.vit.image_size
    starts = range(0, len(items), batch_size)
    out = []
    with (
        ThreadPoolExecutor(1) as pool,
        tqdm(
            total=len(items),
            desc=desc,
            unit="item",
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        pending = pool.submit(to_images, items[0:batch_size])
        for lo in starts:
            images = np.asarray(pending.result())
            if lo + batch_size < len(items):  # render the next batch while this one runs
                pending = pool.submit(to_images, items[lo + batch_size : lo + 2 * batch_size])
            n = min(batch_size, len(items) - lo)
            if images.shape != (n, size, size, 3) or images.dtype != np.uint8:
                raise ValueError(
                    f"{desc}: to_images returned {images.dtype} {list(images.shape)} for items "
                    f"{lo}..{lo + n - 1}; expected uint8 [{n}, {size}, {size}, 3]"
                )
            pixels = images_to_pixels(images).to(device)
            with autocast(device, bf16):
                z = model.pooled(pixels, model.ink_of(pixels)) if ink_only else model.pooled(pixels)
            out.append(z.float().cpu().numpy())
            bar.update(n)
    return np.concatenate(out)


def extract_features(
    model: CLIPPO,
    items: Sequence[Any],
    to_images: ToImages,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    bf16: bool = False,
    cache_dir: str | os.PathLike | None = None,
    key: Mapping[str, Any] | None = None,
    data_key: str | None = None,
    desc: str = "features",
    progress: bool | None = None,
    ink_only: bool = False,
) -> np.ndarray:
    """items (N, any sequence) -> `model.pooled` features, float32 [N, width].

    `ink_only`: encode only the patches with ink (for rendered texts of a model trained with
    `ink_only_text`; photos, also VQA's photo under its question band, stay whole).

    `to_images(items[i:j])` returns uint8 [j-i, S, S, 3] at the model's image size S. The model
    runs in eval mode under no_grad (its training mode is restored after), on `device` (None:
    where it is; otherwise it is moved there), under bf16 autocast when `bf16`. `cache_dir`:
    see the module docstring; `key` holds extra JSON-able key parts, `data_key` replaces the
    item fingerprint (e.g. for photos given as paths, whose content the fingerprint skips).
    `progress` None shows the bar only on a terminal.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    width = model.config.vit.width
    if len(items) == 0:
        return np.zeros((0, width), np.float32)
    path, cache_key = None, None
    if cache_dir is not None:
        # ink-only features are another key; dense ones keep the key they always had
        extra = {**(key or {}), "ink_only": True} if ink_only else (key or {})
        cache_key = _cache_key(model, items, data_key, extra, bf16)
        path = cache_path(cache_dir, cache_key, "features")
        cached = load_cached(path, cache_key, (len(items), width), "feature cache")
        if cached is not None:
            return cached
    dev = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    try:
        feats = _run(model, items, to_images, batch_size, dev, bf16, desc, progress, ink_only)
    finally:
        model.train(was_training)
    if path is not None and cache_key is not None:
        save_cached(path, cache_key, feats, desc)
    return feats


__all__ = [
    "cache_path",
    "combine_pair",
    "data_fingerprint",
    "extract_features",
    "json_key",
    "load_cached",
    "model_fingerprint",
    "model_key",
    "save_cached",
]
