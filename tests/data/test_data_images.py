"""decode_image: good files, every kind of bad file, and the odd modes, each written to tmp_path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from clippo.data.images import ImageDecodeError, decode_image


def _kind(data, **kw) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kw)
    assert str(info.value) == info.value.reason and info.value.reason
    return info.value.kind


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF"])
def test_lossless_formats_roundtrip_exactly(helpers, tmp_path, fmt):
    a = helpers.random_rgb(17, 23)
    data = helpers.encode(a, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == (23, 17)
    np.testing.assert_array_equal(np.asarray(img), a)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    np.testing.assert_array_equal(np.asarray(decode_image(path)), a)
    np.testing.assert_array_equal(np.asarray(decode_image(str(path))), a)


def test_jpeg_decodes_close_to_source(helpers):
    a = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    img = decode_image(helpers.encode(a, "JPEG", quality=95))
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img).astype(int) - a).max() <= 4


def test_zero_byte_missing_and_garbage(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _kind(b"") == "empty"
    assert _kind(empty) == "empty"
    assert _kind(tmp_path / "nope.jpg") == "missing"
    assert _kind(b"this is not an image at all") == "corrupt"
    with pytest.raises(TypeError):
        decode_image(123)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_truncated_files(helpers, tmp_path, fmt):
    data = helpers.encode(helpers.random_rgb(48, 48), fmt)
    path = tmp_path / "cut.img"
    path.write_bytes(data[: len(data) // 2])
    assert _kind(path) == "truncated"
    # cut inside the header: not recognisable as an image at all
    assert _kind(data[:10]) == "corrupt"


def test_corrupt_png_data_with_intact_end_is_corrupt_not_truncated(helpers):
    data = bytearray(helpers.encode(helpers.random_rgb(48, 48), "PNG"))
    mid = len(data) // 2
    data[mid : mid + 40] = b"\x00" * 40  # damage the compressed stream; IEND still there
    assert _kind(bytes(data)) == "corrupt"


def test_decompression_bomb_checked_before_decoding(helpers):
    # The file has no pixel data: if decoding were attempted first it would fail as corrupt or
    # truncated. "bomb" proves the size check comes from the header, before any decoding.
    header_only = helpers.png_header_only(5000, 4000)
    assert _kind(header_only, max_pixels=1_000_000) == "bomb"
    assert _kind(helpers.encode(helpers.random_rgb(40, 40)), max_pixels=1599) == "bomb"
    assert decode_image(helpers.encode(helpers.random_rgb(40, 40)), max_pixels=1600).size == (
        40,
        40,
    )
    # above PIL's own hard limit (2 * MAX_IMAGE_PIXELS) PIL refuses at open: still "bomb"
    assert _kind(helpers.png_header_only(100_000, 100_000)) == "bomb"


def test_cmyk_converts(helpers, tmp_path):
    a = helpers.random_rgb(12, 12)
    cmyk = Image.fromarray(a).convert("CMYK")  # c = 255 - r, ..., k = 0: exactly invertible
    path = tmp_path / "cmyk.tiff"
    cmyk.save(path)
    np.testing.assert_array_equal(np.asarray(decode_image(path)), a)
    flat = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    red = np.asarray(decode_image(helpers.encode(flat, "JPEG", quality=95)))
    assert np.abs(red.astype(int) - [255, 0, 0]).max() <= 6


def _palette_with_transparency() -> Image.Image:
    p = Image.new("P", (4, 2))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    p.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    p.info["transparency"] = 0  # index 0 (red) is fully transparent
    return p


def test_palette_with_transparency(helpers):
    data = helpers.encode(_palette_with_transparency(), "PNG", transparency=0)
    idx = np.array([0, 1, 0, 1, 1, 1, 0, 0]).reshape(2, 4)
    dropped = np.asarray(decode_image(data))  # reference: alpha dropped, colour kept
    np.testing.assert_array_equal(dropped[idx == 0], np.tile([255, 0, 0], ((idx == 0).sum(), 1)))
    np.testing.assert_array_equal(dropped[idx == 1], np.tile([0, 255, 0], ((idx == 1).sum(), 1)))
    white = np.asarray(decode_image(data, alpha_background=(255, 255, 255)))
    np.testing.assert_array_equal(white[idx == 0], np.full(((idx == 0).sum(), 3), 255))
    np.testing.assert_array_equal(white[idx == 1], dropped[idx == 1])


def test_plain_palette(helpers):
    p = _palette_with_transparency()
    del p.info["transparency"]
    out = np.asarray(decode_image(helpers.encode(p, "PNG")))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 255, 0]


def test_rgba_alpha_dropped_or_composited(helpers):
    rgba = np.array([[[100, 50, 0, 128], [10, 20, 30, 255], [200, 200, 200, 0]]], np.uint8)
    data = helpers.encode(rgba, "PNG")
    np.testing.assert_array_equal(np.asarray(decode_image(data)), rgba[..., :3])
    out = np.asarray(decode_image(data, alpha_background=(255, 255, 255))).astype(float)
    a = rgba[..., 3:] / 255.0
    expected = rgba[..., :3] * a + 255 * (1 - a)  # naive "over" compositing onto white
    assert np.abs(out - expected).max() <= 1.0


def test_la_and_grey_and_bilevel(helpers):
    la = np.stack([np.array([[0, 128, 255]], np.uint8), np.array([[255, 255, 0]], np.uint8)], -1)
    out = np.asarray(decode_image(helpers.encode(Image.fromarray(la, "LA"), "PNG")))
    np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=2))
    grey = np.array([[0, 7, 200]], np.uint8)
    np.testing.assert_array_equal(
        np.asarray(decode_image(helpers.encode(grey, "PNG"))), np.repeat(grey[..., None], 3, 2)
    )
    bits = Image.fromarray(np.array([[True, False, True]]))
    assert bits.mode == "1"
    out = np.asarray(decode_image(helpers.encode(bits, "PNG")))
    np.testing.assert_array_equal(out[0, :, 0], [255, 0, 255])


def test_16_bit_grey_keeps_high_byte(helpers, tmp_path):
    values = np.array([[0, 255, 256, 4660, 65535]], np.uint16)
    img16 = Image.fromarray(values)
    assert img16.mode.startswith("I;16")
    path = tmp_path / "sixteen.png"
    img16.save(path)
    out = np.asarray(decode_image(path))
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 1, 18, 255]])
    assert (out[..., 0] == out[..., 2]).all()
    # 32-bit int mode (PIL "I") follows the same 16-bit rule, clipped
    img32 = Image.fromarray(np.array([[-5, 256, 70000]], np.int32), "I")
    out = np.asarray(decode_image(helpers.encode(img32, "TIFF")))
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 255]])


def test_float_mode_is_unconvertible(helpers):
    f = Image.fromarray(np.array([[0.5, 1.0]], np.float32), "F")
    assert _kind(helpers.encode(f, "TIFF")) == "unconvertible"


def test_exif_orientation_ignored_by_default(helpers):
    img = Image.fromarray(helpers.random_rgb(10, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = helpers.encode(img, "JPEG", exif=exif)
    assert decode_image(data).size == (30, 10)  # the reference (TF) ignores EXIF orientation
    assert decode_image(data, exif_transpose=True).size == (10, 30)


def test_animated_gif_gives_first_frame(helpers):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = helpers.encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(decode_image(data))
    assert out[0, 0].tolist() == [255, 0, 0]


def test_error_pickles_with_kind():
    err = pickle.loads(pickle.dumps(ImageDecodeError("too big", "bomb")))
    assert err.kind == "bomb" and str(err) == "too big"
    with pytest.raises(ValueError):
        ImageDecodeError("x", "no-such-kind")
