"""Collation of mixed batches into model input, rendering texts in workers or on the device.

    collate = PairCollate(UnifontRenderer(), render_on="worker")
    loader = mixer_loader(mixer, collate, start_step=0, num_workers=4)  # clippo.data.loader
    for batch in loader:
        batch = to_device(batch, "cuda", collate.renderer)
        out = model(images=batch["left_pixels"], texts=batch["right_pixels"])

A batch of B pairs (row i is pair i; image/text pairs first, then text/text pairs) becomes a dict:
- render_on="worker", pixel_format="float32": "left_pixels", "right_pixels" float32 [B,3,H,W]
  in [-1, 1] (x/255*2-1): images, and left-side texts of text/text pairs rendered as their own
  images; right-side texts rendered likewise.
- render_on="worker", pixel_format="uint8": "left_uint8", "right_uint8" uint8 [B,H,W,3] (4x less
  to move between processes and to the device; `to_device` makes the float pixels).
- render_on="device": "left_images" uint8 [N_img,H,W,3] and "image_rows" int64 [N_img]; texts
  stay strings and `to_device` renders them there with `renderer.render_torch`.
Always: "is_text_pair" bool [B], "left_texts" (None for image rows), "right_texts", "keys",
"step", "skipped" (skip counts found while making the batch; merge into a `SkipStats`).
`to_device` gives "left_pixels"/"right_pixels" float32 [B,3,H,W] on the device in every mode,
equal to the worker-mode values.

Ink masks (the ink-only mode, `ModelConfig.ink_only_text`): with `ink_patch_size=p`, worker
collation adds "left_ink"/"right_ink" bool [B,H/p,W/p] (the patches of each rendered text
holding a pixel other than the background; photo rows all True), and `to_device(...,
ink_patch_size=p)` gives them on the device in every mode (taken from the batch, or found on the
device from the rendered pixels with `clippo.model.one_tower.ink_patches`: the same rule).

Token baselines (CLIP*, 1T-CLIP: `clippo.model.architectures`) read texts as token ids:
`TokenCollate(tokenizer, image_size)` tokenises in the workers instead of rendering. Its batch has
the fields above that are always there, "left_images"/"image_rows" as with render_on="device",
and "left_ids" long [N_txt,L1] (the left sides of text/text pairs, in batch order), "right_ids"
long [B,L2] (each side padded to its longest text; padding is `<pad>`, masked by the models).
`to_device` then gives "left_input" (float pixels [B,3,H,W] when every row is a photo, ids [B,L1]
when every row is a text, else a `clippo.model.token_model.MixedSide`) and "right_input" (ids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from clippo.data.mixer import MixedBatch
from clippo.data.sources import ImageTextPair, TextPair
from clippo.model.token_model import MixedSide
from clippo.model.tokenizer import TextTokenizer
from clippo.render.unifont_torch import to_pixels_torch

__all__ = ["PairCollate", "TokenCollate", "to_device", "as_mixed_batch"]


def as_mixed_batch(pairs: Sequence[ImageTextPair | TextPair], step: int = -1) -> MixedBatch:
    """A list of pairs (any order) -> MixedBatch with image/text pairs first."""
    images = [p for p in pairs if isinstance(p, ImageTextPair)]
    texts = [p for p in pairs if isinstance(p, TextPair)]
    if len(images) + len(texts) != len(pairs):
        raise TypeError("pairs must be ImageTextPair or TextPair")
    ordered = images + texts
    is_text = np.arange(len(ordered)) >= len(images)
    return MixedBatch(
        step, [p[0] for p in ordered], [p[1] for p in ordered], is_text, [p[2] for p in ordered], {}
    )


def _image_uint8(image: Any, size: int, key: str) -> np.ndarray:
    """An image -> uint8 [size,size,3] (as it is when it already is that, else resized)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (size, size, 3):
        return image
    from clippo.preprocess import resize_uint8

    try:
        return resize_uint8(image, size)
    except (ValueError, TypeError) as e:
        raise ValueError(f"sample {key}: cannot use image: {e}") from None


def _collate_common(batch: MixedBatch, size: int) -> tuple[dict[str, Any], np.ndarray]:
    """The fields every collation has, and the photos uint8 [N_img,size,size,3] in row order."""
    is_text = np.asarray(batch.is_text_pair, dtype=bool)
    image_rows = np.flatnonzero(~is_text)
    images = [_image_uint8(batch.left[i], size, batch.keys[i]) for i in image_rows]
    out: dict[str, Any] = {
        "is_text_pair": torch.from_numpy(is_text.copy()),
        "left_texts": [batch.left[i] if t else None for i, t in enumerate(is_text)],
        "right_texts": list(batch.right),
        "keys": list(batch.keys),
        "step": batch.step,
        "skipped": dict(batch.skipped),
        "image_rows": torch.from_numpy(image_rows.astype(np.int64)),
    }
    img = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return out, img


class PairCollate:
    """MixedBatch (or a list of pairs) -> dict of tensors; see the module doc for the layout.

    Images that are not already uint8 [S,S,3] at the renderer's size S (PIL images, other sizes)
    are resized here with `clippo.preprocess.resize_uint8`. Picklable (the renderer carries only
    its settings)."""

    def __init__(
        self,
        renderer: Any,
        render_on: Literal["worker", "device"] = "worker",
        pixel_format: Literal["float32", "uint8"] = "float32",
        ink_patch_size: int | None = None,
    ) -> None:
        if render_on not in ("worker", "device"):
            raise ValueError(f"render_on must be 'worker' or 'device', got {render_on!r}")
        if pixel_format not in ("float32", "uint8"):
            raise ValueError(f"pixel_format must be 'float32' or 'uint8', got {pixel_format!r}")
        self.renderer = renderer
        self.render_on = render_on
        self.pixel_format = pixel_format
        self.size = renderer.config.image_size
        if ink_patch_size is not None and (ink_patch_size <= 0 or self.size % ink_patch_size):
            raise ValueError(
                f"ink_patch_size {ink_patch_size} does not divide the image size {self.size}"
            )
        self.ink_patch_size = ink_patch_size

    def __call__(self, batch: MixedBatch | Sequence[ImageTextPair | TextPair]) -> dict[str, Any]:
        if not isinstance(batch, MixedBatch):
            batch = as_mixed_batch(batch)
        out, img = _collate_common(batch, self.size)
        is_text = out["is_text_pair"].numpy()
        n, size = len(is_text), self.size
        image_rows = np.flatnonzero(~is_text)
        if self.render_on == "device":
            out["left_images"] = torch.from_numpy(img)
            return out
        del out["image_rows"]  # worker mode: the rows are in place in left_uint8/left_pixels
        text_rows = np.flatnonzero(is_text)
        # one render call for both sides: the renderer is vectorised over the batch
        rendered = self.renderer.render_batch(
            [batch.left[i] for i in text_rows] + list(batch.right)
        )
        left = np.empty((n, size, size, 3), np.uint8)
        left[image_rows] = img
        left[text_rows] = rendered[: len(text_rows)]
        right = rendered[len(text_rows) :]
        if self.ink_patch_size is not None:
            ink = self._ink(rendered, self.ink_patch_size)
            left_ink = np.ones((n, *ink.shape[1:]), bool)  # photos: every patch counts
            left_ink[text_rows] = ink[: len(text_rows)]
            out["left_ink"] = torch.from_numpy(left_ink)
            out["right_ink"] = torch.from_numpy(np.ascontiguousarray(ink[len(text_rows) :]))
        if self.pixel_format == "uint8":
            out["left_uint8"], out["right_uint8"] = torch.from_numpy(left), torch.from_numpy(right)
        else:
            from clippo.render import to_pixels  # numpy: the fastest of the variants on CPU

            out["left_pixels"] = torch.from_numpy(to_pixels(left))
            out["right_pixels"] = torch.from_numpy(to_pixels(right))
        return out

    def _ink(self, rendered: np.ndarray, patch_size: int) -> np.ndarray:
        """uint8 [B,H,W,3] rendered texts -> bool [B,H/p,W/p]: patches off the background."""
        from clippo.render import ink_mask

        background = np.asarray(self.renderer.config.background_brightness, np.uint8)
        return ink_mask(np.any(rendered != background, axis=-1), patch_size, 0)


class TokenCollate:
    """MixedBatch (or a list of pairs) -> dict with photos as uint8 and texts as token ids, for
    a token baseline (see the module doc). `tokenizer` is the model's (`TextTokenizer`); photos
    are resized to `image_size` as `PairCollate` does. Picklable (a `tokenizers.Tokenizer`
    pickles as its JSON form), so it runs in DataLoader workers."""

    def __init__(self, tokenizer: TextTokenizer, image_size: int) -> None:
        if not isinstance(tokenizer, TextTokenizer):
            raise TypeError(f"expected a TextTokenizer, got {type(tokenizer).__name__}")
        self.tokenizer, self.size = tokenizer, image_size

    def __call__(self, batch: MixedBatch | Sequence[ImageTextPair | TextPair]) -> dict[str, Any]:
        if not isinstance(batch, MixedBatch):
            batch = as_mixed_batch(batch)
        out, img = _collate_common(batch, self.size)
        out["left_images"] = torch.from_numpy(img)
        left = [t for t in out["left_texts"] if t is not None]
        # padded to the side's longest text: the models mask <pad>, so embeddings are the same
        out["left_ids"] = self.tokenizer(left, pad_to_longest=True)[0]
        out["right_ids"] = self.tokenizer(out["right_texts"], pad_to_longest=True)[0]
        return out


def _tokens_on_device(batch: Mapping[str, Any], device: Any, non_blocking: bool) -> dict[str, Any]:
    """`to_device` of a `TokenCollate` batch: "left_input" and "right_input" on `device`."""
    out = dict(batch)
    is_text = batch["is_text_pair"]
    out["is_text_pair"] = is_text.to(device, non_blocking=non_blocking)
    pixels = to_pixels_torch(batch["left_images"].to(device, non_blocking=non_blocking))
    ids = batch["left_ids"].to(device, non_blocking=non_blocking)
    if not len(ids):
        out["left_input"] = pixels
    elif not len(pixels):
        out["left_input"] = ids
    else:  # the rows' order is kept: is_text says which tensor each row comes from
        out["left_input"] = MixedSide(is_text, pixels, ids)
    out["right_input"] = batch["right_ids"].to(device, non_blocking=non_blocking)
    return out


def to_device(
    batch: Mapping[str, Any],
    device: Any,
    renderer: Any = None,
    non_blocking: bool = False,
    ink_patch_size: int | None = None,
) -> dict[str, Any]:
    """Add "left_pixels"/"right_pixels" float32 [B,3,H,W] on `device` (rendering there when the
    batch was collated with render_on="device"; `renderer` is then required).

    With `ink_patch_size=p` also "left_ink"/"right_ink" bool [B,H/p,W/p] on `device` (see the
    module doc): the batch's own when collated with that patch size, else found from the pixels
    (then `renderer` is required, for its background).

    A `TokenCollate` batch gets "left_input" and "right_input" instead (see the module doc)."""
    if "right_ids" in batch:
        return _tokens_on_device(batch, device, non_blocking)
    out = _pixels_on_device(batch, device, renderer, non_blocking)
    if ink_patch_size is None:
        return out
    from clippo.model.one_tower import ink_patches

    is_text = out["is_text_pair"]
    for side in ("left", "right"):
        ink = batch.get(f"{side}_ink")
        grid = out[f"{side}_pixels"].shape[-1] // ink_patch_size
        if ink is not None and tuple(ink.shape[1:]) == (grid, grid):
            out[f"{side}_ink"] = ink.to(device, non_blocking=non_blocking)
            continue
        if renderer is None:
            raise ValueError("ink masks found from the pixels need the renderer (its background)")
        ink = ink_patches(out[f"{side}_pixels"], renderer.config, ink_patch_size)
        if side == "left":  # photos: every patch counts
            ink = ink | ~is_text[:, None, None]
        out[f"{side}_ink"] = ink
    return out


def _pixels_on_device(
    batch: Mapping[str, Any], device: Any, renderer: Any, non_blocking: bool
) -> dict[str, Any]:
    """`to_device` without the ink masks."""
    out = dict(batch)
    out["is_text_pair"] = batch["is_text_pair"].to(device, non_blocking=non_blocking)
    if "left_pixels" in batch:
        out["left_pixels"] = batch["left_pixels"].to(device, non_blocking=non_blocking)
        out["right_pixels"] = batch["right_pixels"].to(device, non_blocking=non_blocking)
        return out
    if "left_uint8" in batch:
        out["left_pixels"] = to_pixels_torch(
            batch["left_uint8"].to(device, non_blocking=non_blocking)
        )
        out["right_pixels"] = to_pixels_torch(
            batch["right_uint8"].to(device, non_blocking=non_blocking)
        )
        return out
    if renderer is None:
        raise ValueError("batch was collated with render_on='device': pass the renderer")
    n = len(batch["right_texts"])
    size = renderer.config.image_size
    left = torch.empty((n, 3, size, size), dtype=torch.float32, device=device)
    rows = batch["image_rows"].to(device)
    if len(rows):
        left[rows] = to_pixels_torch(batch["left_images"].to(device, non_blocking=non_blocking))
    text_rows = [i for i, t in enumerate(batch["left_texts"]) if t is not None]
    if text_rows:
        texts = [batch["left_texts"][i] for i in text_rows]
        left[torch.tensor(text_rows, device=device)] = renderer.render_torch(texts, device=device)
    out["left_pixels"] = left
    out["right_pixels"] = renderer.render_torch(list(batch["right_texts"]), device=device)
    return out
