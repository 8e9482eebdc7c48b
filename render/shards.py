"""Shard writers for `clippo render`: webdataset tar and parquet, plus the PNG encoder.

Tar members per row, KEY = the global row number zero-padded to KEY_DIGITS:
  KEY.png  8-bit greyscale PNG (the renderer's three channels are identical; channel 0 is stored)
  KEY.txt  the text, UTF-8
  KEY.json {"row": int, "kind": "rendered-text", "renderer": "unifont" | "text",
            "render": the renderer's config .to_dict()}
Parquet shards hold columns row (int64), text (string), image (PNG bytes) and carry the same
settings as JSON in the schema metadata key b"clippo". A writer fills one open file (the caller's
`clippo.atomic.atomic_file`, renamed into place once `finish()` returns); it never opens a path.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import IO, Protocol

import numpy as np
from PIL import Image

from clippo.render import AnyRenderConfig, renderer_name

KIND = "rendered-text"
KEY_DIGITS = 10


def _ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file with fixed owner/mode/mtime (reproducible bytes).

    Written by hand because tarfile's generic header code costs about as much as the PNG encoding
    of a caption.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name too long for ustar: {name!r}")
    header = bytearray(512)
    header[0 : len(raw)] = raw
    header[100:108] = b"0000644\0"  # mode
    header[108:116] = b"0000000\0"  # uid
    header[116:124] = b"0000000\0"  # gid
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"  # mtime 0
    header[148:156] = b" " * 8  # checksum counts itself as spaces
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class _TarShard:
    """Webdataset tar (ustar), members in row order, reproducible bytes for the same input."""

    def __init__(self, file: IO[bytes], render: AnyRenderConfig) -> None:
        self._file = file
        self._render = render.to_dict()
        self._renderer = renderer_name(render)

    def _add(self, name: str, data: bytes) -> None:
        self._file.write(_ustar_header(name, len(data)))
        self._file.write(data)
        self._file.write(bytes(-len(data) % 512))

    def add(self, row: int, text: str, png: bytes) -> None:
        key = f"{row:0{KEY_DIGITS}d}"
        meta = {"row": row, "kind": KIND, "renderer": self._renderer, "render": self._render}
        self._add(f"{key}.png", png)
        self._add(f"{key}.txt", text.encode("utf-8"))
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))

    def abort(self) -> None:
        pass

    def finish(self) -> None:
        # End of archive: two zero blocks, padded to tar's 10 KiB record size like tarfile does.
        self._file.write(bytes(1024 + (-(self._file.tell() + 1024) % 10240)))


class _ParquetShard:
    """Parquet with columns row, text, image (PNG bytes); settings in the schema metadata."""

    def __init__(self, file: IO[bytes], render: AnyRenderConfig) -> None:
        self.file, self.render = file, render
        self.rows: list[int] = []
        self.texts: list[str] = []
        self.images: list[bytes] = []

    def add(self, row: int, text: str, png: bytes) -> None:
        self.rows.append(row)
        self.texts.append(text)
        self.images.append(png)

    def abort(self) -> None:
        pass

    def finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = {
            "kind": KIND,
            "renderer": renderer_name(self.render),
            "render": self.render.to_dict(),
        }
        schema = pa.schema(
            [("row", pa.int64()), ("text", pa.string()), ("image", pa.binary())],
            metadata={"clippo": json.dumps(meta, sort_keys=True)},
        )
        table = pa.table([self.rows, self.texts, self.images], schema=schema)
        pq.write_table(table, self.file)


class ShardWriter(Protocol):
    """Fills one open shard file: `add` per row, then `finish()` (all written) or `abort()`."""

    def add(self, row: int, text: str, png: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


# ShardOptions.output_format -> writer of a shard into an open file, with these render settings
WRITERS: dict[str, Callable[[IO[bytes], AnyRenderConfig], ShardWriter]] = {
    "tar": _TarShard,
    "parquet": _ParquetShard,
}


# files per row in a shard of each format (tar: KEY.png, KEY.txt, KEY.json; parquet: one table row)
MEMBERS_PER_ROW = {"tar": 3, "parquet": 1}


def count_members(path: str | os.PathLike[str], output_format: str) -> int | None:
    """Tar members or parquet rows in a finished shard; None when the file is not a whole one.

    Reads headers only (tar: one 512-byte header per member; parquet: the footer)."""
    if output_format == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a torn file
            return None
    count = 0
    with open(path, "rb") as f:
        while True:
            header = f.read(512)
            if len(header) < 512:
                return None  # cut before the end-of-archive blocks
            if not any(header):
                return count if f.read(512) == bytes(512) else None
            try:
                size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
            except ValueError:
                return None
            if int(header[148:156].rstrip(b"\0 ") or b"-1", 8) != sum(
                header[:148] + b" " * 8 + header[156:]
            ):
                return None
            f.seek(size + (-size % 512), os.SEEK_CUR)
            count += 1


def encode_png(gray: np.ndarray, compress_level: int = 6) -> bytes:
    """np.uint8 [H, W] -> 8-bit greyscale PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
