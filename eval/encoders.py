"""Turn a model (or a pair of callables) into batch encoders that return numpy embeddings.

Evaluation code only needs two callables: `encode_images(batch) -> [B, D]` and
`encode_texts(list[str]) -> [B, D]` (numpy arrays or torch tensors). `as_encoders` builds them
from a CLIPPO model, accepting uint8 images [B, H, W, 3] as the synthetic and decoded datasets
give them. Embeddings are L2-normalised by the model's own rule (`clippo.model.l2_normalize`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

Encoder = Callable[[Any], Any]


def to_numpy(x: Any) -> np.ndarray:
    """numpy float32 from a numpy array, a list, or a torch tensor (any device or dtype)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 [N, D] -> the same rows divided by their L2 norm, by the model's `l2_normalize`
    (`x / (||x|| + 1e-8)`), so that evaluation and model embeddings agree."""
    import torch  # on first use: importing this module stays cheap (no torch, no timm)

    from clippo.model.one_tower import l2_normalize

    return l2_normalize(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


def embed(
    encode: Encoder,
    items: Any,
    batch_size: int = 64,
    *,
    desc: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Encode `items` (anything sliceable with len) in batches: float32 [N, D], L2-normalised."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(items)
    if n == 0:
        raise ValueError(f"nothing to encode{f' for {desc}' if desc else ''}")
    out = []
    for lo in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        batch = items[lo : lo + batch_size]
        z = to_numpy(encode(batch))
        if z.ndim != 2 or len(z) != len(batch):
            raise ValueError(
                f"encoder{f' for {desc}' if desc else ''} returned shape {z.shape} for a batch "
                f"of {len(batch)}; expected [{len(batch)}, D]"
            )
        out.append(z)
    return _unit_rows(np.concatenate(out))


def as_encoders(
    model_or_encoders: Any, *, device: Any = None, ink_only: bool | None = None
) -> tuple[Encoder, Encoder]:
    """(encode_images, encode_texts) from a pair of callables, or from an object with
    `encode_images`/`encode_texts` (a CLIPPO model).

    Texts are encoded as the model was trained (a CLIPPO with `ink_only_text` encodes only the
    inked patches); `ink_only=True/False` says otherwise (passed to `model.encode_texts`).

    For a torch module the image encoder accepts uint8 [B, H, W, 3] (numpy, or a list of
    [H, W, 3]) and converts it to the model's pixels (x/255*2-1), or float [B, 3, H, W] as is;
    both run under `torch.inference_mode()` in eval mode (the training mode is restored after).
    """
    if isinstance(model_or_encoders, (tuple, list)):
        if len(model_or_encoders) != 2 or not all(callable(f) for f in model_or_encoders):
            raise TypeError("expected (encode_images, encode_texts): two callables")
        return model_or_encoders[0], model_or_encoders[1]
    if not (
        hasattr(model_or_encoders, "encode_images") and hasattr(model_or_encoders, "encode_texts")
    ):
        raise TypeError(
            f"{type(model_or_encoders).__name__} has no encode_images/encode_texts; pass a model "
            "or a pair of callables"
        )
    if not hasattr(model_or_encoders, "parameters"):
        if ink_only is not None:
            raise TypeError("ink_only applies to a model, not to an object's own encoders")
        return model_or_encoders.encode_images, model_or_encoders.encode_texts
    return _module_encoders(model_or_encoders, device, ink_only)


def _module_encoders(model: Any, device: Any, ink_only: bool | None) -> tuple[Encoder, Encoder]:
    import torch

    from clippo.render import to_pixels

    if device is None:
        device = next(model.parameters()).device

    def run(fn: Callable[[], Any]) -> Any:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return fn()
        finally:
            model.train(was_training)

    def encode_images(batch: Any) -> Any:
        if isinstance(batch, Sequence) and not isinstance(batch, np.ndarray):
            batch = np.stack([np.asarray(b) for b in batch])
        if isinstance(batch, np.ndarray):
            if batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[-1] == 3:
                batch = to_pixels(batch)
            batch = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return run(lambda: model.encode_images(batch.to(device)))

    # only an explicit choice is passed: token-based towers' encode_texts have no such option
    options = {} if ink_only is None else {"ink_only": ink_only}

    def encode_texts(texts: Sequence[str]) -> Any:
        return run(lambda: model.encode_texts(list(texts), **options))

    return encode_images, encode_texts
