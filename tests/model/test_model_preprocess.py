"""big_vision `resize(size)|value_range(-1,1)` vs a naive per-pixel TF reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clippo.preprocess import images_to_pixels, preprocess, resize_uint8

f32 = np.float32


def naive_tf_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF2 `ResizeBilinear(half_pixel_centers=True)` one output value at a time, float32 scalars,
    then big_vision's clip + cast to uint8."""
    in_h, in_w, c = img.shape
    out = np.zeros((out_h, out_w, c), np.uint8)

    def source(i, in_size, out_size):
        scale = f32(in_size) / f32(out_size)
        s = (f32(i) + f32(0.5)) * scale - f32(0.5)
        lo = max(math.floor(s), 0)
        hi = min(math.ceil(s), in_size - 1)
        return lo, hi, f32(s - f32(math.floor(s)))

    for y in range(out_h):
        y0, y1, ly = source(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, lx = source(x, in_w, out_w)
            for ch in range(c):
                tl, tr = f32(img[y0, x0, ch]), f32(img[y0, x1, ch])
                bl, br = f32(img[y1, x0, ch]), f32(img[y1, x1, ch])
                top = f32(tl + f32(f32(tr - tl) * lx))
                bottom = f32(bl + f32(f32(br - bl) * lx))
                value = f32(top + f32(f32(bottom - top) * ly))
                out[y, x, ch] = int(min(max(value, 0.0), 255.0))  # truncation, like tf.cast
    return out


CASES = [(32, 32, 72), (7, 5, 16), (37, 53, 40), (60, 41, 16), (16, 16, 16), (1, 9, 8)]


@pytest.mark.parametrize(("h", "w", "size"), CASES)
def test_resize_matches_naive_tf_reference(h, w, size):
    img = np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_uint8(img, size), naive_tf_resize(img, size, size))


def test_resize_non_square_target_and_smooth_image():
    y, x = np.mgrid[0:23, 0:31]
    img = np.stack([y * 11 % 256, x * 8, (x + y) * 3], -1).astype(np.uint8)  # gradients: lerp paths
    np.testing.assert_array_equal(resize_uint8(img, (29, 13)), naive_tf_resize(img, 29, 13))


def test_pil_input_and_errors():
    img = np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_uint8(Image.fromarray(img), 20), resize_uint8(img, 20))
    grey = Image.fromarray(img[..., 0])  # mode "L" -> RGB with equal channels
    out = resize_uint8(grey, 20)
    assert out.shape == (20, 20, 3) and np.array_equal(out[..., 0], out[..., 2])
    with pytest.raises(ValueError):
        resize_uint8(img.astype(np.float32), 20)


def test_torch_bilinear_differs_as_documented():
    """The module docstring's claims: float torch + truncation is off by at most one level on
    few pixels; torch on uint8 rounds instead of truncating."""
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ours = resize_uint8(img, 224).astype(int)
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    flt = F.interpolate(t.float(), size=(224, 224), mode="bilinear", align_corners=False)
    flt = flt.clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(flt - ours)
    assert diff.max() <= 1 and diff.mean() < 0.01
    rounded = F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False)
    rounded = rounded[0].permute(1, 2, 0).numpy().astype(int)
    assert set(np.unique(rounded - ours)) <= {0, 1} and (rounded != ours).mean() > 0.3


def test_value_range():
    batch = np.array([[[[0, 127, 255]]]], np.uint8)  # [1,1,1,3]
    px = images_to_pixels(batch)
    assert px.shape == (1, 3, 1, 1) and px.dtype == torch.float32
    expected = np.float32(-1) + (
        np.array([0, 127, 255], np.float32) / np.float32(255)
    ) * np.float32(2)
    np.testing.assert_array_equal(px[0, :, 0, 0].numpy(), expected)
    assert px[0, 1, 0, 0].item() == pytest.approx(-0.0039215686)
    imgs = [np.full((4, 4, 3), 10, np.uint8), np.full((6, 5, 3), 200, np.uint8)]
    out = preprocess(imgs, 8)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out[1], torch.full((3, 8, 8), 200 / 255 * 2 - 1))
    with pytest.raises(ValueError):
        images_to_pixels(np.zeros((2, 4, 4), np.uint8))
