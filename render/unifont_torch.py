"""The Unifont renderer on any torch device, from code points.

Only the string -> code point step runs on the host; glyph lookup, trimming widths, the
reference's wrap rule and the canvas fill all run on the device, so rendered text never crosses
the host-device bus. Imported lazily by `UnifontRenderer.render_torch` (torch is optional for
`clippo.render`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from clippo.render.unifont import batch_codepoints

if TYPE_CHECKING:
    from clippo.render.unifont import UnifontRenderer


def _tables(renderer: UnifontRenderer, device: torch.device) -> dict[str, torch.Tensor]:
    """The renderer's lookup tables on `device`, built once per device and renderer."""
    key = str(device)
    if key not in renderer._torch_tables:
        ink = renderer.ink_table
        renderer._torch_tables[key] = {
            "index": torch.from_numpy(renderer.glyphs.index).to(device),
            "width": torch.from_numpy(ink.width).to(device),
            "ink_start": torch.from_numpy(ink.ink_start).to(device),
            "ink_count": torch.from_numpy(ink.ink_count).to(device),
            "ink_offset": torch.from_numpy(ink.ink_offset).to(device),
        }
    return renderer._torch_tables[key]


def _ink_flat(renderer: UnifontRenderer, cps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Flat indices into a [B, H, W] canvas of every ink pixel (same rule as `layout`)."""
    cfg, t = renderer.config, _tables(renderer, cps.device)
    size, n, dev = cfg.image_size, lengths.numel(), cps.device
    if cfg.lower:
        cps = torch.where((cps >= 65) & (cps <= 90), cps + 32, cps)
    text = torch.repeat_interleave(torch.arange(n, device=dev), lengths)
    glyph = t["index"][cps].long()
    width = t["width"][glyph]
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
    count = t["ink_count"][glyph]
    base = (text * size + row * 16) * size + x
    run_start = torch.cumsum(count, 0) - count
    pos = torch.repeat_interleave(t["ink_start"][glyph] - run_start, count)
    pos = pos + torch.arange(pos.numel(), device=dev)
    offset = t["ink_offset"][pos]
    flat = torch.repeat_interleave(base, count) + offset
    col = torch.repeat_interleave(x, count) + offset % size
    return flat[col < size]  # never drops anything under the reference's wrap rule


def render_on_device(
    renderer: UnifontRenderer, texts: Sequence[str | bytes], device, return_ink: bool = False
):
    """-> float32 [B, 3, H, W] in [-1, 1] (and, with `return_ink`, bool [B, H/16, W/16])."""
    cfg, size = renderer.config, renderer.config.image_size
    device = torch.device(device)
    cps_np, len_np = batch_codepoints(texts, cfg.max_chars)
    cps = torch.from_numpy(cps_np).to(device, non_blocking=True)
    lengths = torch.from_numpy(len_np).to(device, non_blocking=True)
    flat = _ink_flat(renderer, cps, lengths)
    if cfg.text_brightness == cfg.background_brightness:
        flat = flat[:0]  # ink is invisible: a blank canvas and no ink patches, as ink_mask sees it

    def value(v: int) -> float:  # exactly to_pixels' float32 arithmetic
        return float(np.float32(v) / np.float32(255) * np.float32(2) - np.float32(1))

    b, hw = len(len_np), size * size
    out = torch.full((b, 3, size, size), value(cfg.background_brightness), device=device)
    chan = (flat // hw) * (3 * hw) + flat % hw
    out.view(-1)[torch.cat([chan, chan + hw, chan + 2 * hw])] = value(cfg.text_brightness)
    if not return_ink:
        return out
    g = size // 16
    pix = flat % hw
    patch = (flat // hw) * (g * g) + (pix // size // 16) * g + (pix % size) // 16
    ink = torch.zeros(b * g * g, dtype=torch.bool, device=device)
    ink[patch] = True
    return out, ink.view(b, g, g)
