"""The bundled fonts of `TextRenderer`: which font covers a character, shaping, glyph bitmaps.

Fonts come only from `clippo.fonts` (never a system lookup): the Noto fonts (outlines, shaped
with HarfBuzz through `uharfbuzz`, rasterised unhinted by glyph id with FreeType through
`freetype-py`), then GNU Unifont's bitmaps for everything else they leave out (CJK, Hangul,
kana, emoji and symbols: the whole BMP and the upper-plane glyphs Unifont 9 draws), scaled by
whole pixels from its 16-px cell. A character nothing covers is drawn as an outlined box.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from dataclasses import dataclass

import freetype
import numpy as np
import uharfbuzz as hb
from fontTools.ttLib import TTFont

from clippo.fonts import font_path, unifont_paths
from clippo.render.unifont import GlyphTable, load_glyphs

# Priority order: a letter goes to the first font that covers it (see `FontSet.font_for`).
NOTO_FONTS = (
    "NotoSans-Regular.ttf",  # Latin, Greek, Cyrillic (and common punctuation)
    "NotoSansArabic-Regular.ttf",
    "NotoSansHebrew-Regular.ttf",
    "NotoSansDevanagari-Regular.ttf",
    "NotoSansBengali-Regular.ttf",
    "NotoSansTamil-Regular.ttf",
    "NotoSansThai-Regular.ttf",
    "NotoSansKhmer-Regular.ttf",
)
UNIFONT = len(NOTO_FONTS)  # font index of the Unifont bitmaps
BOX = UNIFONT + 1  # "font" of characters nothing covers: a visible box, counted
INVISIBLE = UNIFONT + 2  # controls and format characters (ZWJ, bidi marks): zero width, no ink

# Unifont draws its glyphs with the baseline 2 rows above the cell's bottom.
UNIFONT_ASCENT = 14


@dataclass(frozen=True)
class Glyph:
    """One rasterised glyph: coverage `alpha` uint8 [h, w], its top-left corner at
    (pen x + left, baseline - top)."""

    alpha: np.ndarray
    left: int
    top: int


@dataclass(frozen=True)
class Shaped:
    """A shaped run: per glyph its id, cluster (character offset in the run's text), and pen
    advance / offsets in pixels (y up), in visual order."""

    gids: list[int]
    clusters: list[int]
    x_advance: list[float]
    x_offset: list[float]
    y_offset: list[float]


@functools.lru_cache(maxsize=1)
def _coverage() -> dict[int, int]:
    """Code point -> bit mask of the Noto fonts whose cmap maps it (read once per process)."""
    cover: dict[int, int] = {}
    for i, name in enumerate(NOTO_FONTS):
        path = font_path(name)
        try:
            cmap = TTFont(path, lazy=True).getBestCmap()
        except Exception as e:  # fontTools raises assorted errors on a damaged file
            raise ValueError(f"{path}: not a readable TrueType font ({e})") from None
        for cp in cmap:
            cover[cp] = cover.get(cp, 0) | (1 << i)
    return cover


class FontSet:
    """Every bundled font at one pixel size, loaded in (and owned by) one process."""

    def __init__(self, font_size: int) -> None:
        self.font_size = font_size
        self.cover = _coverage()
        self.hb_fonts: list[hb.Font] = []
        self.ft_faces: list[freetype.Face] = []
        self.scales: list[float] = []
        for name in NOTO_FONTS:
            path = str(font_path(name))
            face = hb.Face(hb.Blob.from_file_path(path))
            self.hb_fonts.append(hb.Font(face))
            self.scales.append(font_size / face.upem)
            ft = freetype.Face(path)
            ft.set_char_size(font_size * 64)  # 26.6 fixed point at 72 dpi: font_size pixels/em
            self.ft_faces.append(ft)
        self.unifont: GlyphTable = load_glyphs(*map(str, unifont_paths()))
        self.space = self.shape(0, " ", False).x_advance[0]
        self._font_of: dict[str, int] = {}
        self._glyphs: dict[tuple[int, int], Glyph] = {}

    def candidates(self, ch: str) -> int:
        """Bit mask of the Noto fonts covering `ch`."""
        return self.cover.get(ord(ch), 0)

    def fallback(self, ch: str) -> int:
        """Font index for a character no Noto font covers: Unifont, invisible or the box."""
        font = self._font_of.get(ch)
        if font is None:
            cp = ord(ch)
            cat = unicodedata.category(ch)
            if (
                cat in ("Cc", "Cf", "Zl", "Zp")
                or 0xFE00 <= cp <= 0xFE0F
                or 0xE0000 <= cp <= 0xE0FFF
            ):
                font = INVISIBLE  # incl. variation selectors (and their supplement) and tags
            elif cat in ("Cs", "Co", "Cn"):
                font = BOX  # surrogates, private use, unassigned
            elif cat == "Zs" or self.unifont.bitmaps[self.unifont.index[cp]].any():
                font = UNIFONT
            else:
                font = BOX
            self._font_of[ch] = font
        return font

    def shape(self, font: int, text: str, rtl: bool) -> Shaped:
        """Shape `text` with Noto font `font` (HarfBuzz; script and language guessed)."""
        buf = hb.Buffer()
        buf.add_str(text)
        buf.guess_segment_properties()
        buf.direction = "rtl" if rtl else "ltr"
        hb.shape(self.hb_fonts[font], buf, {})
        s = self.scales[font]
        pos = buf.glyph_positions
        return Shaped(
            gids=[g.codepoint for g in buf.glyph_infos],
            clusters=[g.cluster for g in buf.glyph_infos],
            x_advance=[p.x_advance * s for p in pos],
            x_offset=[p.x_offset * s for p in pos],
            y_offset=[p.y_offset * s for p in pos],
        )

    def glyph(self, font: int, gid: int) -> Glyph:
        """The bitmap of glyph `gid` of Noto font `font` (unhinted, anti-aliased), cached;
        for UNIFONT `gid` is a code point, for BOX it is ignored."""
        key = (font, gid)
        g = self._glyphs.get(key)
        if g is None:
            if font == UNIFONT:
                g = self._unifont_glyph(gid)
            elif font == BOX:
                g = self._box()
            else:
                g = self._freetype_glyph(font, gid)
            self._glyphs[key] = g
        return g

    def _freetype_glyph(self, font: int, gid: int) -> Glyph:
        face = self.ft_faces[font]
        face.load_glyph(gid, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING)
        slot = face.glyph
        bm = slot.bitmap
        rows, width, pitch = bm.rows, bm.width, bm.pitch
        if rows == 0 or width == 0:
            return Glyph(np.zeros((0, 0), np.uint8), 0, 0)
        data = np.asarray(bm.buffer, np.uint8).reshape(rows, abs(pitch))[:, :width]
        return Glyph(np.ascontiguousarray(data), slot.bitmap_left, slot.bitmap_top)

    def unifont_advance(self, cp: int) -> int:
        """Advance of a Unifont glyph: its 8- or 16-px cell, scaled to the font size."""
        cell = self.unifont.bitmaps[self.unifont.index[cp]]
        wide = cell[:, 8:].any() or unicodedata.east_asian_width(chr(cp)) in ("W", "F")
        return (16 if wide else 8) * self.font_size // 16

    def _unifont_glyph(self, cp: int) -> Glyph:
        cell = self.unifont.bitmaps[self.unifont.index[cp]]
        if not cell.any():
            return Glyph(np.zeros((0, 0), np.uint8), 0, 0)
        n = self.font_size
        # nearest-neighbour to font_size px: whole-pixel scaling keeps the bitmap crisp
        src = np.arange(n) * 16 // n
        alpha = cell[np.ix_(src, src)].astype(np.uint8) * 255
        width = self.unifont_advance(cp)
        return Glyph(alpha[:, :width], 0, UNIFONT_ASCENT * n // 16)

    def box_advance(self) -> int:
        return max(3, round(self.font_size * 0.6))

    def _box(self) -> Glyph:
        w, h = self.box_advance() - 1, max(3, round(self.font_size * 0.75))
        alpha = np.zeros((h, w), np.uint8)
        alpha[[0, -1], :] = 255
        alpha[:, [0, -1]] = 255
        return Glyph(alpha, 0, h)


@functools.lru_cache(maxsize=8)
def _font_set(font_size: int, pid: int) -> FontSet:
    return FontSet(font_size)


def font_set(font_size: int) -> FontSet:
    """The process's `FontSet` at `font_size`: a forked DataLoader worker builds its own
    FreeType faces instead of sharing the parent's."""
    return _font_set(font_size, os.getpid())
