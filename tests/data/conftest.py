"""Helpers for the data tests: tiny encoded images and webdataset shards written to tmp_path."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image


def encode(array_or_image, fmt: str = "PNG", **save_kwargs) -> bytes:
    img = (
        array_or_image
        if isinstance(array_or_image, Image.Image)
        else Image.fromarray(array_or_image)
    )
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def random_rgb(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with no image data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def pil_resize(img, size: int) -> np.ndarray:
    """A trivial stand-in for clippo.preprocess.resize_uint8 (injected to test the hook)."""
    return np.asarray(img.convert("RGB").resize((size, size), Image.NEAREST), dtype=np.uint8)


@pytest.fixture
def helpers():
    class H:
        pass

    h = H()
    h.encode, h.random_rgb, h.png_header_only = encode, random_rgb, png_header_only
    h.write_tar, h.pil_resize = write_tar, pil_resize
    return h
