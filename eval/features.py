"""Frozen-encoder features for the GLUE and VQA suites: pooled representations, cached on disk;
and the on-disk array cache they share with zero-shot class embeddings (`clippo.eval.zeroshot`).

`extract_features(model, items, to_images, ...)` turns any sequence of items (sentences, pairs,
(photo, question) rows) into float32 [N, width] with `model.pooled`, the MAP head's output
before the projection, where task heads sit. The caller's `to_images(batch) -> uint8
[B, H, W, 3]` renders or loads the pixels (with the model's own renderer: `model.renderer`,
`clippo.render.render_pair`, `render_on_image`); it runs one batch ahead in a thread.

`extract_text_features(model, texts, ...)` is the same for texts, read as the model reads
them: CLIPPO renders them (`extract_features` with `model.renderer`, only the inked patches
for a model trained with `ink_only_text`); a token baseline (CLIP*, 1T-CLIP: `TokenModel`, no
renderer) tokenises them and takes its text side's pooled representation (`txt/pre_logits`,
the text counterpart of `pooled`), as two-tower models are evaluated on text tasks.

With `cache_dir`, the result is stored as `<cache_dir>/features-<digest>.npy` beside a JSON
sidecar that spells out the key and a sha256 of the array. The key covers the model
(`model_fingerprint`: its config and every tensor), how it reads text (`model_key`: the
renderer settings, or a token model's tokenizer), the data (a fingerprint of the items in
order, or a caller-given `data_key`), bf16, and the caller's extra key parts (pair mode, band
height...). A file that cannot be read or whose sidecar or checksum
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
from clippo.model.token_model import TokenModel
from clippo.preprocess import images_to_pixels

CACHE_VERSION = 1  # bump when the stored features change meaning

ToImages = Callable[[Any], np.ndarray]
Encoder = CLIPPO | TokenModel  # a model of any registered architecture

# model -> (token, digest). The token (each tensor's storage address and in-place version
# counter) changes whenever a weight is modified or moved, so a stale digest is never reused.
_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = (
    weakref.WeakKeyDictionary()
)


def model_fingerprint(model: Encoder) -> str:
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


def combine_photo_question(
    photos: np.ndarray,
    photo_rows: Sequence[int] | np.ndarray,
    questions: np.ndarray,
    question_rows: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """A token model's VQA features, as two-tower models are evaluated: photos [P, D] (the image
    tower's pooled photos), questions [Q, D] (the text side's pooled questions); row j is
    [photos[photo_rows[j]], questions[question_rows[j]]] -> float32 [N, 2D]."""
    p, q = np.asarray(photo_rows, np.int64), np.asarray(question_rows, np.int64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"one photo row per question row, got {p.shape} and {q.shape}")
    return np.concatenate([photos[p], questions[q]], axis=1).astype(np.float32, copy=False)


def json_key(key: Mapping[str, Any]) -> dict[str, Any]:
    """`key` as its JSON round trip (what a sidecar holds, so keys compare in that form); a part
    that is not a JSON value is a ValueError naming it."""
    try:
        return json.loads(json.dumps(dict(key), sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"cache key parts must be JSON values: {dict(key)!r} ({e})") from e


def model_key(model: Encoder) -> dict[str, Any]:
    """The model's part of a cache key: its weights' fingerprint and how it turns text into
    input: CLIPPO's renderer settings, or for a token model no renderer and a sha256 of its
    tokenizer (not a tensor, so not in the fingerprint, yet it decides every text's ids)."""
    if isinstance(model, TokenModel):
        tok = model.tokenizer
        digest = None if tok is None else hashlib.sha256(tok.to_json().encode()).hexdigest()
        return {"model": model_fingerprint(model), "renderer": None, "tokenizer": digest}
    return {"model": model_fingerprint(model), "renderer": model.renderer.config.to_dict()}


def cache_path(cache_dir: str | os.PathLike, key: Mapping[str, Any], stem: str) -> Path:
    """`<cache_dir>/<stem>-<digest>.npy` for a JSON-normalised key (`json_key`)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{stem}-{digest[:32]}.npy"


def _cache_key(
    model: Encoder, items: Sequence[Any], data_key: str | None, extra: Mapping[str, Any], bf16: bool
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


def _bar(total: int, desc: str, progress: bool | None) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="item", disable=None if progress is None else not progress
    )


@torch.no_grad()
def _run(
    model: Encoder,
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
    with ThreadPoolExecutor(1) as pool, _bar(len(items), desc, progress) as bar:
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
                if ink_only and isinstance(model, CLIPPO):
                    z = model.pooled(pixels, model.ink_of(pixels))
                else:
                    z = model.pooled(pixels)
            out.append(z.float().cpu().numpy())
            bar.update(n)
    return np.concatenate(out)


@torch.no_grad()
def _run_tokens(
    model: TokenModel,
    texts: Sequence[str],
    batch_size: int,
    device: torch.device,
    bf16: bool,
    desc: str,
    progress: bool | None,
) -> np.ndarray:
    out = []
    with _bar(len(texts), desc, progress) as bar:
        for lo in range(0, len(texts), batch_size):
            ids, mask = model.tokenize(list(texts[lo : lo + batch_size]))  # on the model's device
            with autocast(device, bf16):
                z = model(texts=ids, texts_mask=mask, intermediates=True)["txt/pre_logits"]
            out.append(z.float().cpu().numpy())
            bar.update(len(ids))
    return np.concatenate(out)


def _features(
    model: Encoder,
    items: Sequence[Any],
    compute: Callable[[torch.device], np.ndarray],
    device: str | torch.device | None,
    bf16: bool,
    cache_dir: str | os.PathLike | None,
    key: Mapping[str, Any],
    data_key: str | None,
    desc: str,
) -> np.ndarray:
    """The cache around `compute(device) -> float32 [N, width]`, which runs with the model in
    eval mode on `device` (None: where it is); the model's training mode is restored after."""
    width = model.config.vit.width
    if len(items) == 0:
        return np.zeros((0, width), np.float32)
    path, cache_key = None, None
    if cache_dir is not None:
        cache_key = _cache_key(model, items, data_key, key, bf16)
        path = cache_path(cache_dir, cache_key, "features")
        cached = load_cached(path, cache_key, (len(items), width), "feature cache")
        if cached is not None:
            return cached
    dev = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    try:
        feats = compute(dev)
    finally:
        model.train(was_training)
    if path is not None and cache_key is not None:
        save_cached(path, cache_key, feats, desc)
    return feats


def extract_features(
    model: Encoder,
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
    `ink_only_text`; photos, also VQA's photo under its question band, stay whole; CLIPPO only).

    `to_images(items[i:j])` returns uint8 [j-i, S, S, 3] at the model's image size S. The model
    runs in eval mode under no_grad (its training mode is restored after), on `device` (None:
    where it is; otherwise it is moved there), under bf16 autocast when `bf16`. `cache_dir`:
    see the module docstring; `key` holds extra JSON-able key parts, `data_key` replaces the
    item fingerprint (e.g. for photos given as paths, whose content the fingerprint skips).
    `progress` None shows the bar only on a terminal.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if ink_only and not isinstance(model, CLIPPO):
        raise ValueError(f"ink_only: a {type(model).__name__} does not read rendered text")
    # ink-only features are another key; dense ones keep the key they always had
    extra = {**(key or {}), "ink_only": True} if ink_only else (key or {})

    def compute(dev: torch.device) -> np.ndarray:
        return _run(model, items, to_images, batch_size, dev, bf16, desc, progress, ink_only)

    return _features(model, items, compute, device, bf16, cache_dir, extra, data_key, desc)


def extract_text_features(
    model: Encoder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    bf16: bool = False,
    cache_dir: str | os.PathLike | None = None,
    key: Mapping[str, Any] | None = None,
    desc: str = "text features",
    progress: bool | None = None,
) -> np.ndarray:
    """N texts -> their pooled representation as the model reads text, float32 [N, width].

    CLIPPO: each text rendered by `model.renderer` and encoded by `extract_features` (only its
    inked patches when the model was trained with `ink_only_text`). A token model: the texts
    tokenised by its tokenizer (`model.tokenize`, truncated to its `max_length`) and its text
    side's pooled output `txt/pre_logits` (before the projection head, as `pooled` is for
    images), batched by `batch_size`; its cache key says so (`"input": "tokens"`). Device,
    bf16, cache and progress as `extract_features`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    if isinstance(model, CLIPPO):
        return extract_features(
            model,
            texts,
            model.renderer.render_batch,
            batch_size=batch_size,
            device=device,
            bf16=bf16,
            cache_dir=cache_dir,
            key=key,
            desc=desc,
            progress=progress,
            ink_only=model.config.ink_only_text,  # texts as the model was trained
        )

    def compute(dev: torch.device) -> np.ndarray:
        return _run_tokens(model, texts, batch_size, dev, bf16, desc, progress)

    extra = {**(key or {}), "input": "tokens"}  # never a CLIPPO's key for the same texts
    return _features(model, texts, compute, device, bf16, cache_dir, extra, None, desc)


__all__ = [
    "Encoder",
    "cache_path",
    "combine_pair",
    "combine_photo_question",
    "data_fingerprint",
    "extract_features",
    "extract_text_features",
    "json_key",
    "load_cached",
    "model_fingerprint",
    "model_key",
    "save_cached",
]
