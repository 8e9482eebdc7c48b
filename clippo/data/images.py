"""Robust image decoding: bytes or a path in, a fully loaded RGB PIL image out; and image files.

    img = decode_image(jpeg_bytes)                 # PIL.Image.Image, mode "RGB", pixels loaded
    decode_image("x.png", max_pixels=50_000_000)   # raises ImageDecodeError on bad input
    load_image("x.png", 224)                       # decode|resize: uint8 [224, 224, 3] or why not
    list_images("photos/")                         # the image files below a folder, by suffix

Reference behaviour (big_vision's `decode` op = `tf.io.decode_image(channels=3)`), kept by default:
- EXIF orientation is NOT applied (`exif_transpose=False`): TF's JPEG decoder ignores it, and
  CLIPPO was trained on the raw pixel order.
- Alpha is dropped, not composited (`alpha_background=None`): TF (and PIL's `convert("RGB")`)
  keep the colour channels and discard alpha. Pass e.g. `alpha_background=(255, 255, 255)` to
  composite onto white instead; transparent logos then read as dark-on-white, not as whatever
  colour the encoder left under the transparent pixels.
- 16-bit samples keep their high byte (`v >> 8`), as libpng's `strip_16` and PIL's own 16-bit
  RGB loader do, so 16-bit grey and 16-bit colour files agree.
- Animated GIF/WebP: the first frame (TF's `expand_animations=False`).
- CMYK uses PIL's conversion (Adobe-inverted JPEGs are un-inverted by PIL's decoder).

Every failure is an `ImageDecodeError` whose message is the reason and whose `kind` is one of
`ERROR_KINDS` (stable keys for counting skipped samples).
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ERROR_KINDS",
    "IMAGE_SUFFIXES",
    "ImageDecodeError",
    "decode_image",
    "list_images",
    "load_image",
    "to_rgb",
]

# What counts as an image file when a folder is listed (compared lower-cased).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# PIL's own default limit; images above it are decompression-bomb suspects.
DEFAULT_MAX_PIXELS = 89_478_485

ERROR_KINDS = ("missing", "empty", "corrupt", "truncated", "bomb", "unconvertible")


class ImageDecodeError(ValueError):
    """An image that cannot be used. `str(err)` is the reason; `err.kind` in `ERROR_KINDS`."""

    def __init__(self, reason: str, kind: str = "corrupt") -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(
                f"unknown ImageDecodeError kind {kind!r}; expected one of {ERROR_KINDS}"
            )
        super().__init__(reason)
        self.reason = reason
        self.kind = kind

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, str]]:
        # keep `kind` when the error crosses a process boundary
        return (type(self), (self.reason, self.kind))


def _read(data: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        where = "image bytes"
    elif isinstance(data, (str, os.PathLike)):
        where = os.fspath(data)
        try:
            with open(where, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise ImageDecodeError(f"file not found: {where}", "missing") from None
        except OSError as e:
            raise ImageDecodeError(f"cannot read {where}: {e}", "missing") from None
    else:
        raise TypeError(f"decode_image expects bytes or a path, got {type(data).__name__}")
    if not raw:
        raise ImageDecodeError(f"zero-byte input ({where})", "empty")
    return raw


def _looks_truncated(fmt: str | None, raw: bytes) -> bool:
    """Structural check (not message parsing): does the container end where its format says?"""
    tail = raw.rstrip(b"\x00")  # some writers pad files with zeros after the end marker
    if fmt == "JPEG":
        return not tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" not in raw[-64:]
    if fmt == "GIF":
        return not tail.endswith(b"\x3b")
    if fmt == "WEBP" and len(raw) >= 8:
        (riff_size,) = struct.unpack("<I", raw[4:8])
        return len(raw) < riff_size + 8
    return False


def to_rgb(img: Image.Image, alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    """Convert any PIL mode to RGB (see module doc for the rules). Raises ImageDecodeError."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I":  # PIL's 32-bit int mode; 16-bit PNG/TIFF grey files load as this too
            a = np.clip(a, 0, 65535)
        grey = (a.astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if mode == "F":
        raise ImageDecodeError(
            "unconvertible mode F (float samples have no fixed range)", "unconvertible"
        )
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        # P with tRNS must go through RGBA: PIL's direct P->RGB warns and ignores transparency.
        rgba = img.convert("RGBA")
        if alpha_background is None:
            return rgba.convert("RGB")
        background = Image.new("RGBA", rgba.size, (*alpha_background, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageDecodeError(f"unconvertible mode {mode}: {e}", "unconvertible") from None


def decode_image(
    data: bytes | bytearray | memoryview | str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha_background: tuple[int, int, int] | None = None,
    exif_transpose: bool = False,
) -> Image.Image:
    """Decode an encoded image to a loaded RGB `PIL.Image.Image`.

    The size is checked against `max_pixels` from the header, before any pixel is decoded.
    PIL itself refuses images above 2 * `Image.MAX_IMAGE_PIXELS` at open time (reported here as
    kind "bomb" too), so a `max_pixels` above that needs PIL's limit raised by the caller.
    Raises `ImageDecodeError` (kinds: missing, empty, corrupt, truncated, bomb, unconvertible).
    """
    raw = _read(data)
    try:
        img = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"decompression bomb: {e}", "bomb") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a recognised image ({len(raw)} bytes)", "corrupt") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise ImageDecodeError(f"corrupt header: {e}", "corrupt") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"empty image size {width}x{height}", "corrupt")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"decompression bomb: {width}x{height} = {width * height} pixels > max_pixels={max_pixels}",
            "bomb",
        )
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 -- decoders raise many types (OSError, SyntaxError, ...)
        kind = "truncated" if _looks_truncated(img.format, raw) else "corrupt"
        raise ImageDecodeError(f"{kind} {img.format} data: {e}", kind) from None
    out = to_rgb(ImageOps.exif_transpose(img) if exif_transpose else img, alpha_background)
    out.load()
    return out


def load_image(path: str | os.PathLike, size: int) -> np.ndarray | str:
    """big_vision `decode|resize(size)` of an image file: uint8 [size, size, 3], or the reason
    the file is unusable (undecodable, unreadable, vanished), for the caller to report."""
    # imported here: clippo.preprocess imports torch, which decoding alone does not need
    from clippo.preprocess import resize_uint8

    try:
        return resize_uint8(decode_image(path), size)
    except ImageDecodeError as e:
        return str(e) or e.kind
    except OSError as e:  # permissions, a file that vanished
        return f"{type(e).__name__}: {e}"


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files (by `IMAGE_SUFFIXES`, case-insensitive) under `directory`, recursively,
    sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
