"""Image preprocessing exactly as big_vision's `resize(size)|value_range(-1, 1)`.

`resize` is `tf.image.resize(image, (size, size), method="bilinear", antialias=False)` (TF2,
half-pixel centres), squashing to a square without keeping the aspect ratio, then
`clip_by_value` to [0, 255] and a cast back to uint8, which truncates. `value_range(-1, 1)` is
`-1 + (x / 255) * 2` in float32. `resize_uint8` reproduces TF's CPU kernel arithmetic in float32,
in its order of operations, so its uint8 output matches TF's bit for bit:

    src    = (dst + 0.5) * (in_size / out_size) - 0.5          # float32
    lower  = max(floor(src), 0);  upper = min(ceil(src), in_size - 1);  lerp = src - floor(src)
    top    = tl + (tr - tl) * x_lerp;  bottom = bl + (br - bl) * x_lerp
    value  = top + (bottom - top) * y_lerp

Where torch differs (`F.interpolate(mode="bilinear", align_corners=False, antialias=False)`):
- The sample positions and edge clamping are the same, but torch blends as
  `w0 * a + w1 * b` with `w0 = 1 - lerp`, not `a + (b - a) * lerp`. The float32 results differ in
  the last bits, and after truncation to uint8 a pixel whose exact value is (almost) an integer
  can come out one level lower or higher than TF's. The test measures this: never more than
  one level, on a small fraction of pixels.
- On a uint8 tensor torch rounds to the nearest integer, where big_vision truncates: about half
  of all interpolated pixels end up one level higher.
- `antialias=True` (the default of torchvision's `Resize` on tensors, and what PIL's `resize`
  always does when shrinking) low-pass filters before sampling when downscaling; big_vision
  does not, so plain bilinear sampling of a large photo skips pixels (aliasing). Upscaling
  (e.g. CIFAR's 32 px to 224 px) is not affected by antialiasing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clippo.render.unifont import to_pixels


def _interp(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF's `compute_interpolation_weights` with `HalfPixelScaler`, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    return lower, upper, (src - floor).astype(np.float32)


def resize_bilinear_tf(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`tf.image.resize(..., "bilinear", antialias=False)`: [H,W,C] -> float32 [height,width,C]."""
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
    ylo, yhi, ylerp = _interp(image.shape[0], height)
    xlo, xhi, xlerp = _interp(image.shape[1], width)
    # gather the four neighbours before converting to float32: only output-sized arrays are cast
    top_rows, bottom_rows = image[ylo], image[yhi]  # [height, W, C]
    tl, tr = top_rows[:, xlo].astype(np.float32), top_rows[:, xhi].astype(np.float32)
    bl, br = bottom_rows[:, xlo].astype(np.float32), bottom_rows[:, xhi].astype(np.float32)
    xl = xlerp[None, :, None]
    top = tl + (tr - tl) * xl
    bottom = bl + (br - bl) * xl
    return top + (bottom - top) * ylerp[:, None, None]


def resize_uint8(image: Image.Image | np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """big_vision `resize(size)` on an RGB image: PIL image or uint8 [H,W,3] -> uint8 [h,w,3].

    Squashes to `size` (an int means square), bilinear without antialiasing, then clips and
    truncates to uint8 as big_vision does."""
    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w = (size, size) if isinstance(size, int) else size
    out = resize_bilinear_tf(image, h, w)
    return np.clip(out, 0, 255).astype(np.uint8)  # float -> uint8 truncates, like tf.cast


def images_to_pixels(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """big_vision `value_range(-1, 1)`: uint8 [B,H,W,3] (or a list of [H,W,3] of one size)
    -> float32 [B,3,H,W] = -1 + (x / 255) * 2, on the CPU (`clippo.render.to_pixels`)."""
    batch = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3], got {batch.dtype} {batch.shape}")
    return torch.from_numpy(to_pixels(batch))


def preprocess(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """Photos -> model pixels: `resize_uint8` each, then `images_to_pixels`: [B,3,size,size]."""
    return images_to_pixels([resize_uint8(im, size) for im in images])
