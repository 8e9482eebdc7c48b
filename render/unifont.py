"""big_vision's `render_unifont`, bit-exact, vectorised over a whole batch in numpy.

The reference (big_vision `pp/proj/clippo/pp_ops.py`) renders one string at a time in TF graph
ops. Here a batch is laid out at once: every character gets a (row, x) position from per-text
cumulative widths, and only the *ink* pixels of each placed glyph are scattered into a
background-filled canvas, so the cost is proportional to the ink, not to glyph cells.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from clippo.fonts import unifont_paths

if TYPE_CHECKING:  # torch is optional here: only `render_torch` imports it, when called
    import torch

    from clippo.render.unifont_torch import DeviceTables

NUM_CODEPOINTS = 0x110000
REPLACEMENT = 0xFFFD


@dataclass(frozen=True)
class RenderConfig:
    """Settings of `render_unifont`, under big_vision's keyword names and defaults."""

    image_size: int = 224
    font_size: int = 16
    max_chars: int = 768
    background_brightness: int = 127
    text_brightness: int = 0
    lower: bool = True
    monospace: bool = False
    spacing: int = 1
    min_width: int = 4

    def __post_init__(self) -> None:
        # Exact types, checked here because configs arrive from JSON and argparse alike: a
        # string "false" is truthy and a float brightness would be cast silently by numpy.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"RenderConfig.{f.name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"RenderConfig.{f.name} must be an integer, got {value!r}")
        if self.font_size != 16:
            raise ValueError(
                f"RenderConfig.font_size={self.font_size} is not supported: Unifont glyphs are "
                "16 px and CLIPPO always renders at 16 (big_vision only resizes glyphs otherwise)"
            )
        if self.image_size <= 0 or self.image_size % 16:
            raise ValueError(
                f"RenderConfig.image_size={self.image_size} must be a positive multiple of 16"
            )
        for name in ("background_brightness", "text_brightness"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"RenderConfig.{name}={getattr(self, name)} must be in [0, 255]")
        # max_chars 0 means no limit; spacing and min_width 0 are valid glyph trims
        for name in ("max_chars", "spacing", "min_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"RenderConfig.{name}={getattr(self, name)} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GlyphTable:
    """All glyphs of a Unifont build. `bitmaps[0]` is the blank glyph of missing code points."""

    index: np.ndarray  # int32 [0x110000]: code point -> glyph row
    bitmaps: np.ndarray  # bool [G, 16, 16]


def _parse_hex(path: Path, digits: int) -> tuple[list[int], list[bytes]]:
    opener = gzip.open if path.suffix == ".gz" else open
    codes, bits = [], []
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("ascii").rstrip("\n")
                except UnicodeDecodeError:
                    raise ValueError(
                        f"{path}:{lineno}: not a Unifont .hex file (non-ASCII bytes)"
                    ) from None
                if not line:
                    continue
                try:
                    code, hexbits = line.split(":")
                    if len(code) != digits or len(hexbits) not in (32, 64):
                        raise ValueError
                    codes.append(int(code, 16))
                    bits.append(bytes.fromhex(hexbits))
                except ValueError:
                    raise ValueError(
                        f"{path}:{lineno}: not a Unifont .hex line: {line[:80]!r}"
                    ) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(
            f"{path}: truncated or corrupt gzip file ({e or type(e).__name__})"
        ) from None
    return codes, bits


@functools.lru_cache(maxsize=4)
def load_glyphs(plane0: str, upper: str) -> GlyphTable:
    """Read a plane-0 `.hex` (4-digit code points) and an upper-planes `.hex` (6 digits).

    8-px glyphs fill the left half of the 16x16 cell, MSB first, as big_vision's loader does.
    Cached per path pair: every renderer (and every forked DataLoader worker) shares one table.
    """
    codes0, bits0 = _parse_hex(Path(plane0), 4)
    codes1, bits1 = _parse_hex(Path(upper), 6)
    codes, bits = codes0 + codes1, bits0 + bits1
    cells = np.zeros((len(codes) + 1, 16, 2), np.uint8)
    for i, b in enumerate(bits, 1):
        raw = np.frombuffer(b, np.uint8)
        if raw.size == 16:
            cells[i, :, 0] = raw  # 8-wide glyph: one byte per row, left half
        else:
            cells[i] = raw.reshape(16, 2)
    bitmaps = np.unpackbits(cells, axis=2).astype(bool)  # [G, 16 rows, 16 cols], MSB first
    index = np.zeros(NUM_CODEPOINTS, np.int32)
    code_arr = np.asarray(codes, np.int64)
    if code_arr.size and code_arr.max() >= NUM_CODEPOINTS:
        raise ValueError(f"{upper}: code point beyond U+10FFFF")
    # later lines win, like the reference's successive assignments into its table
    index[code_arr] = np.arange(1, len(codes) + 1, dtype=np.int32)
    return GlyphTable(index=index, bitmaps=bitmaps)


@dataclass(frozen=True)
class _InkTable:
    """Per-glyph trimmed width and ink pixels as flat offsets `dy * W + dx` for canvas width W."""

    width: np.ndarray  # int64 [G]
    ink_start: np.ndarray  # int64 [G]: start of the glyph's run in `ink_offset`
    ink_count: np.ndarray  # int64 [G]
    ink_offset: np.ndarray  # int64 [total ink pixels]


def _build_ink_table(bitmaps: np.ndarray, cfg: RenderConfig) -> _InkTable:
    g = bitmaps.shape[0]
    cols_with_ink = np.any(bitmaps, axis=1)  # [G, 16]
    if cfg.monospace:
        first = np.zeros(g, np.int64)
        width = np.full(g, 16, np.int64)
    else:
        has_ink = cols_with_ink.any(axis=1)
        first_ink = np.where(has_ink, cols_with_ink.argmax(axis=1), 0)
        last_ink = np.where(has_ink, 15 - cols_with_ink[:, ::-1].argmax(axis=1), 0)
        first = np.maximum(first_ink - cfg.spacing, 0)
        last = np.maximum(last_ink + cfg.spacing, first + cfg.min_width)
        # the reference slices letter[:, first:last], which clamps `last` to the 16-px cell
        width = np.minimum(last, 16) - first
    glyph, dy, dx = np.nonzero(bitmaps)  # sorted by glyph, then row, then column
    dx = dx - first[glyph]
    keep = (dx >= 0) & (dx < width[glyph])
    glyph, dy, dx = glyph[keep], dy[keep], dx[keep]
    count = np.bincount(glyph, minlength=g).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    offset = dy.astype(np.int64) * cfg.image_size + dx
    return _InkTable(
        width=width.astype(np.int64), ink_start=start, ink_count=count, ink_offset=offset
    )


def codepoints(text: str | bytes) -> np.ndarray:
    """Code points of `text` as int64; bad UTF-8 bytes and lone surrogates become U+FFFD."""
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        raise TypeError(f"text must be str or UTF-8 bytes, got {type(text).__name__}")
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4").astype(np.int64)
    cps[(cps >= 0xD800) & (cps <= 0xDFFF)] = REPLACEMENT
    return cps


def batch_codepoints(
    texts: Sequence[str | bytes], max_chars: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """All code points of a batch, concatenated (int64 [N]), and each text's length (int64 [B]).

    Each text is cut to `max_chars` code points (0: no limit), as the reference does after decoding.
    """
    if isinstance(texts, str | bytes):
        raise TypeError("expected a sequence of texts, got a single text")
    strs = [t for t in texts if type(t) is str]
    if len(strs) == len(texts):  # all str: one encode for the whole batch
        cps = codepoints("".join(strs))
        lengths = np.fromiter(map(len, strs), np.int64, len(strs))
    else:
        parts = [codepoints(t) for t in texts]
        lengths = np.fromiter((p.size for p in parts), np.int64, len(parts))
        cps = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if max_chars and lengths.size and lengths.max() > max_chars:
        starts = np.cumsum(lengths) - lengths
        pos = np.arange(cps.size) - np.repeat(starts, lengths)
        cps = cps[pos < max_chars]
        lengths = np.minimum(lengths, max_chars)
    return cps, lengths


@dataclass(frozen=True)
class Layout:
    """Where every kept character of a batch goes. All arrays are flat over the batch."""

    text: np.ndarray  # int64 [N]: which text the character belongs to
    glyph: np.ndarray  # int64 [N]: glyph row
    row: np.ndarray  # int64 [N]: text line (16 px each)
    x: np.ndarray  # int64 [N]: left column within the line
    rows_used: np.ndarray  # int64 [B]: lines the text occupies before cropping (0 when empty)


class UnifontRenderer:
    """Text -> uint8 image, bit-exact with big_vision's `render_unifont` for every option.

    `font=(plane0_hex, upper_hex)` overrides the bundled GNU Unifont 9.0.06 (`.hex` or `.hex.gz`).
    Picklable: only the settings travel; glyph tables are rebuilt (or shared) in the new process.
    """

    def __init__(
        self, font: tuple[str | os.PathLike, str | os.PathLike] | None = None, **kwargs: Any
    ) -> None:
        self.config = RenderConfig(**kwargs)
        plane0, upper = font if font is not None else unifont_paths()
        self.font = (str(plane0), str(upper))
        self._ink: _InkTable | None = None
        self._torch_tables: dict[str, DeviceTables] = {}

    @classmethod
    def from_config(
        cls, config: RenderConfig, font: tuple[str | os.PathLike, str | os.PathLike] | None = None
    ) -> UnifontRenderer:
        return cls(font=font, **config.to_dict())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"UnifontRenderer({args})"

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "font": self.font}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config, self.font = state["config"], state["font"]
        self._ink, self._torch_tables = None, {}

    @property
    def glyphs(self) -> GlyphTable:
        return load_glyphs(*self.font)

    @property
    def ink_table(self) -> _InkTable:
        if self._ink is None:
            self._ink = _build_ink_table(self.glyphs.bitmaps, self.config)
        return self._ink

    def layout(self, texts: Sequence[str | bytes]) -> Layout:
        """Place every character: the reference's per-character wrapping, for a whole batch."""
        cfg = self.config
        cps, lengths = batch_codepoints(texts, cfg.max_chars)
        if cfg.lower:  # tf.strings.lower lower-cases ASCII A-Z only
            cps = np.where((cps >= 65) & (cps <= 90), cps + 32, cps)
        n = len(lengths)
        text = np.repeat(np.arange(n), lengths)
        glyph = self.glyphs.index[cps].astype(np.int64)
        width = self.ink_table.width[glyph]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        csum = np.cumsum(width)
        text_base = np.concatenate([[0], csum])[starts]  # cumulative width before each text
        incl = csum - text_base[text]  # inclusive cumsum within the text
        max_w = np.zeros(n, np.int64)
        np.maximum.at(max_w, text, width)
        div = (cfg.image_size - max_w[text]).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            row_f = np.floor(incl.astype(np.float32) / div)
        row = np.where(np.isfinite(row_f), row_f, 0).astype(np.int64)
        excl = incl - width
        # x within the line = exclusive cumsum minus that of the line's first character
        new_line = np.ones(row.size, bool)
        new_line[1:] = (text[1:] != text[:-1]) | (row[1:] != row[:-1])
        line_start = np.maximum.accumulate(np.where(new_line, np.arange(row.size), 0))
        x = excl - excl[line_start]
        rows_used = np.zeros(n, np.int64)
        np.maximum.at(rows_used, text, row + 1)
        return Layout(text=text, glyph=glyph, row=row, x=x, rows_used=rows_used)

    def _ink_indices(self, lay: Layout) -> np.ndarray:
        """Flat indices into a [B, H, W] canvas of every ink pixel of the batch."""
        size, ink = self.config.image_size, self.ink_table
        keep = lay.row < size // 16
        text, glyph, row, x = lay.text[keep], lay.glyph[keep], lay.row[keep], lay.x[keep]
        count = ink.ink_count[glyph]
        base = (text * size + row * 16) * size + x
        run_start = np.cumsum(count) - count
        total = int(count.sum())
        pos = np.repeat(ink.ink_start[glyph] - run_start, count) + np.arange(total)
        flat = np.repeat(base, count) + ink.ink_offset[pos]
        if (x + ink.width[glyph] > size).any():  # cannot happen with the reference's wrap rule
            col = np.repeat(x, count) + ink.ink_offset[pos] % size
            flat = flat[col < size]
        return flat

    def render_batch(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """Render texts -> np.uint8 [B, H, W, 3] (text_brightness ink on background_brightness)."""
        cfg, size = self.config, self.config.image_size
        flat = self._ink_indices(self.layout(texts))
        out = np.full((len(texts), size, size, 3), cfg.background_brightness, np.uint8)
        out.reshape(-1, 3)[flat] = cfg.text_brightness
        return out

    def __call__(self, text: str | bytes) -> np.ndarray:
        """Render one text -> np.uint8 [H, W, 3]."""
        if not isinstance(text, str | bytes | bytearray | memoryview):
            raise TypeError(f"text must be str or UTF-8 bytes, got {type(text).__name__}")
        return self.render_batch([text])[0]

    @overload
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = ..., return_ink: Literal[False] = ...
    ) -> torch.Tensor: ...
    @overload
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = ..., *, return_ink: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = ..., return_ink: bool = ...
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def render_torch(
        self, texts: Sequence[str | bytes], device: Any = "cpu", return_ink: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Render on `device` -> torch.float32 [B, 3, H, W] in [-1, 1] (and ink bool [B, H/16, W/16]).

        Equal to `to_pixels(render_batch(texts))`; only the code points are computed on the
        host, layout and canvas on the device. torch is imported here, not at module import.
        """
        from clippo.render.unifont_torch import DeviceTables, render_on_device

        key = str(device)
        if key not in self._torch_tables:  # the tables cross to each device once
            cfg, ink = self.config, self.ink_table
            self._torch_tables[key] = DeviceTables.build(
                device,
                index=self.glyphs.index,
                width=ink.width,
                ink_start=ink.ink_start,
                ink_count=ink.ink_count,
                ink_offset=ink.ink_offset,
                image_size=cfg.image_size,
                lower=cfg.lower,
                background_brightness=cfg.background_brightness,
                text_brightness=cfg.text_brightness,
            )
        cps, lengths = batch_codepoints(texts, self.config.max_chars)
        return render_on_device(self._torch_tables[key], cps, lengths, return_ink)


def to_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] or [H, W, 3] -> float32 [B, 3, H, W] = x/255*2-1 (what the model reads)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected [B, H, W, 3] or [H, W, 3] images, got shape {images.shape}")
    x = images.astype(np.float32) / np.float32(255) * np.float32(2) - np.float32(1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def ink_mask(images: np.ndarray, patch_size: int = 16, background: int = 127) -> np.ndarray:
    """Which patches hold any pixel other than the background: bool [B, H/p, W/p].

    Takes `render_batch` output: uint8 NHWC ([B, H, W, 3]) or NHW ([B, H, W]).
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = np.any(images != background, axis=-1)
        background = False
    if images.ndim != 3:
        raise ValueError(f"expected [B, H, W, 3] or [B, H, W], got shape {images.shape}")
    b, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size={patch_size}")
    patches = images.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size)
    return (patches != background).any(axis=(2, 4))
