"""The torch side of `clippo.render`: the uint8 -> [-1, 1] pixel rule on tensors, and the Unifont
canvas filled on any torch device from code points.

Only the string -> code point step runs on the host (`UnifontRenderer.render_torch` does it);
glyph lookup, trimming widths, the reference's wrap rule and the canvas fill all run on the
device, so rendered text never crosses the host-device bus. This module imports nothing of the
renderer: `UnifontRenderer` hands it its lookup tables and settings as a `DeviceTables`. Imported
lazily, so `import clippo.render` never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DeviceTables", "render_on_device", "to_pixels_torch"]


def _unit_range_(x: torch.Tensor) -> torch.Tensor:
    """In place: float32 levels 0..255 -> x/255*2-1, `clippo.render.to_pixels`' float32 ops."""
    # Divide by a tensor on x's device, not by a Python number: CUDA turns division by a host
    # scalar into multiplication by its reciprocal, which rounds differently and would change
    # the result for 111 of the 256 levels.
    return x.div_(x.new_tensor(255.0)).mul_(2.0).sub_(1.0)


def to_pixels_torch(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] on any device -> float32 [B, 3, H, W] = x/255*2-1 there, bit-equal to
    the numpy `clippo.render.to_pixels`."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    b, h, w, _ = images.shape
    out = torch.empty((b, 3, h, w), dtype=torch.float32, device=images.device)
    out.copy_(images.permute(0, 3, 1, 2))  # one strided pass; the rest runs in place
    return _unit_range_(out)


@dataclass(frozen=True)
class DeviceTables:
    """A renderer's lookup tables on one device, and the settings the device side reads.

    index int32 [0x110000] (code point -> glyph row); per glyph: width, ink_start, ink_count
    int64 [G]; ink_offset int64 [total ink pixels] (flat `dy * image_size + dx` offsets of each
    glyph's ink, a run of ink_count of them from ink_start). background/ink: the two fill values
    in [-1, 1]; blank: the ink is invisible (text and background brightness are equal).
    """

    index: torch.Tensor
    width: torch.Tensor
    ink_start: torch.Tensor
    ink_count: torch.Tensor
    ink_offset: torch.Tensor
    image_size: int
    lower: bool
    background: float
    ink: float
    blank: bool

    @classmethod
    def build(
        cls,
        device: Any,
        *,
        index: np.ndarray,
        width: np.ndarray,
        ink_start: np.ndarray,
        ink_count: np.ndarray,
        ink_offset: np.ndarray,
        image_size: int,
        lower: bool,
        background_brightness: int,
        text_brightness: int,
    ) -> DeviceTables:
        """Copy the host tables (numpy, see the fields) to `device`."""
        device = torch.device(device)
        levels = torch.tensor([background_brightness, text_brightness], dtype=torch.float32)
        background, ink = _unit_range_(levels).tolist()

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device)

        return cls(
            index=put(index),
            width=put(width),
            ink_start=put(ink_start),
            ink_count=put(ink_count),
            ink_offset=put(ink_offset),
            image_size=image_size,
            lower=lower,
            background=background,
            ink=ink,
            blank=background_brightness == text_brightness,
        )


def _ink_flat(t: DeviceTables, cps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Flat indices into a [B, H, W] canvas of every ink pixel (same rule as `layout`)."""
    size, n, dev = t.image_size, lengths.numel(), cps.device
    if t.lower:
        cps = torch.where((cps >= 65) & (cps <= 90), cps + 32, cps)
    text = torch.repeat_interleave(torch.arange(n, device=dev), lengths)
    glyph = t.index[cps].long()
    width = t.width[glyph]
    csum = torch.cumsum(width, 0)
    starts = torch.cumsum(lengths, 0) - lengths
    text_base = torch.cat([csum.new_zeros(1), csum])[starts]
    incl = csum - text_base[text]
    max_w = torch.zeros(n, dtype=torch.long, device=dev).scatter_reduce(0, text, width, "amax")
    div = (size - max_w[text]).to(torch.float32)
    row_f = torch.floor(incl.to(torch.float32) / div)
    row = torch.where(torch.isfinite(row_f), row_f, torch.zeros_like(row_f)).long()
    excl = incl - width
    new_line = torch.ones_like(row, dtype=torch.bool)
    new_line[1:] = (text[1:] != text[:-1]) | (row[1:] != row[:-1])
    idx = torch.arange(row.numel(), device=dev)
    line_start = torch.cummax(torch.where(new_line, idx, torch.zeros_like(idx)), 0).values
    x = excl - excl[line_start]
    keep = row < size // 16
    text, glyph, row, x = text[keep], glyph[keep], row[keep], x[keep]
    count = t.ink_count[glyph]
    base = (text * size + row * 16) * size + x
    run_start = torch.cumsum(count, 0) - count
    pos = torch.repeat_interleave(t.ink_start[glyph] - run_start, count)
    pos = pos + torch.arange(pos.numel(), device=dev)
    offset = t.ink_offset[pos]
    flat = torch.repeat_interleave(base, count) + offset
    col = torch.repeat_interleave(x, count) + offset % size
    return flat[col < size]  # never drops anything under the reference's wrap rule


def render_on_device(
    tables: DeviceTables, codepoints: np.ndarray, lengths: np.ndarray, return_ink: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Code points int64 [N] of B texts (text i has lengths[i] of them, already cut to
    max_chars) -> float32 [B, 3, H, W] in [-1, 1] on the tables' device (and, with
    `return_ink`, bool [B, H/16, W/16]: which patches hold ink)."""
    size, device = tables.image_size, tables.index.device
    cps = torch.from_numpy(codepoints).to(device, non_blocking=True)
    lens = torch.from_numpy(lengths).to(device, non_blocking=True)
    flat = _ink_flat(tables, cps, lens)
    if tables.blank:
        flat = flat[:0]  # ink is invisible: a blank canvas and no ink patches, as ink_mask sees it
    b, hw = len(lengths), size * size
    out = torch.full((b, 3, size, size), tables.background, device=device)
    chan = (flat // hw) * (3 * hw) + flat % hw
    out.view(-1)[torch.cat([chan, chan + hw, chan + 2 * hw])] = tables.ink
    if not return_ink:
        return out
    g = size // 16
    pix = flat % hw
    patch = (flat // hw) * (g * g) + (pix // size // 16) * g + (pix % size) // 16
    ink = torch.zeros(b * g * g, dtype=torch.bool, device=device)
    ink[patch] = True
    return out, ink.view(b, g, g)
