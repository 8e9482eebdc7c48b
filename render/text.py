"""`TextRenderer`: multilingual text -> uint8 images, shaped, bidi-ordered and word-wrapped.

pip-only and deterministic: HarfBuzz (`uharfbuzz`) shapes, python-bidi orders, FreeType
(`freetype-py`) rasterises, all from self-contained wheels, with the bundled fonts of
`clippo.render.text_fonts` only (no Pillow, raqm, fontconfig or system font). The same text
gives the same pixels on every machine with the same wheel versions.

Speed comes from a bounded word cache: each distinct item (a word, a run of spaces, one CJK
character or Thai cluster; see `text_layout`) is shaped and rasterised once into a small
coverage bitmap; a text is then wrapped from the cached widths, and its bitmaps are
composited into the canvas with numpy.
"""

from __future__ import annotations

import operator
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from clippo.render.text_fonts import BOX, INVISIBLE, UNIFONT, FontSet, font_set
from clippo.render.text_layout import (
    SPACE,
    WORD,
    Item,
    folded_tokens,
    itemize,
    split_folded,
    visual_order,
    wrap,
)
from clippo.render.unifont import ink_mask, to_pixels

if TYPE_CHECKING:
    import torch

Colour = int | tuple[int, int, int]
# sys.getrefcount counts every holder of an object (see `TextRenderer._output`): CPython with
# the GIL (a free-threaded build defers some counts; PyPy has no reference counts)
_COUNTS_EVERY_REFERENCE = (
    sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()
)
_SURROGATES = re.compile("[\ud800-\udfff]")
# line and paragraph separators all break the line; a tab is drawn as one space
_TO_NORMALISE = re.compile("[\r\u2028\u2029\x85\t]")
_NORMALISE = str.maketrans({"\r": "\n", "\u2028": "\n", "\u2029": "\n", "\x85": "\n", "\t": " "})


@dataclass(frozen=True)
class TextRenderConfig:
    """Settings of `TextRenderer`.

    image_size: side of a square image; `width`/`height` (0: image_size) make any rectangle,
    e.g. a one-line strip 16 or 32 px high. font_size: pixels per em. margin: blank pixels on
    every side. line_spacing: line pitch in font sizes. max_lines: 0 draws as many lines as
    fit. max_chars: 0 keeps every character. Colours are a grey level or an (r, g, b) triple.
    """

    image_size: int = 224
    width: int = 0
    height: int = 0
    font_size: int = 16
    margin: int = 4
    line_spacing: float = 1.25
    max_lines: int = 0
    max_chars: int = 0
    background_brightness: Colour = 127
    text_brightness: Colour = 0

    def __post_init__(self) -> None:
        # Exact types: configs arrive from JSON and argparse alike ("false" is truthy, a float
        # size would be cast silently), and JSON has lists where the dataclass has tuples.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("brightness"):
                if isinstance(value, list | tuple):
                    value = tuple(value)
                    object.__setattr__(self, f.name, value)
                parts = value if isinstance(value, tuple) else (value,)
                if len(parts) not in (1, 3) or not all(
                    type(v) is int and 0 <= v <= 255 for v in parts
                ):
                    raise ValueError(
                        f"TextRenderConfig.{f.name} must be a grey level or an (r, g, b) "
                        f"triple of integers in [0, 255], got {value!r}"
                    )
            elif f.name == "line_spacing":
                if type(value) not in (int, float) or not 0.5 <= value <= 10:
                    raise ValueError(
                        f"TextRenderConfig.line_spacing must be a number in [0.5, 10], got {value!r}"
                    )
            elif type(value) is not int or value < 0:
                raise ValueError(
                    f"TextRenderConfig.{f.name} must be a non-negative integer, got {value!r}"
                )
        if self.image_size == 0 and not (self.width and self.height):
            raise ValueError(
                "TextRenderConfig.image_size must be positive (or give width and height)"
            )
        if not 4 <= self.font_size <= 256:
            raise ValueError(f"TextRenderConfig.font_size={self.font_size} must be in [4, 256]")
        h, w = self.shape
        if 2 * self.margin >= min(h, w):
            raise ValueError(
                f"TextRenderConfig.margin={self.margin} leaves no room in a {w}x{h} image"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return self.height or self.image_size, self.width or self.image_size

    @property
    def line_pitch(self) -> int:
        return max(1, round(self.font_size * self.line_spacing))

    @property
    def lines_fit(self) -> int:
        """Lines drawn: the ones whose em box fits inside the margins (at least one)."""
        h = self.shape[0] - 2 * self.margin
        fit = max(1, (h - self.font_size) // self.line_pitch + 1)
        return min(fit, self.max_lines) if self.max_lines else fit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class Word:
    """A cached item: coverage `alpha` uint8 [h, w] whose top-left sits at (pen + x0,
    baseline + y0); `advance` in px; per glyph (cluster, advance) in logical character
    offsets, for breaking an over-long word; `missing`: characters drawn as boxes. `rgb`:
    uint8 [h, w, 3], the bitmap in the owning renderer's colours (set by the renderer)."""

    alpha: np.ndarray
    x0: int
    y0: int
    advance: float
    clusters: tuple[tuple[int, float], ...]
    missing: int
    rgb: np.ndarray | None = None
    # a full cell: the bitmap spans exactly its advance from the pen (a CJK character from
    # Unifont), so consecutive cells tile a line with no gap and no overlap
    cell: bool = False
    # what `render_batch` reads: (rgb, x0, y0, height, width), set by it (see `_set_draw`)
    draw: tuple[np.ndarray, int, int, int, int] | None = None


class CellRun:
    """Consecutive cells of one line with the same height and top, placed as one item: drawn
    with one `np.concatenate` into the canvas instead of one copy per character (CJK lines)."""

    __slots__ = ("cells", "x0", "y0", "advance", "missing", "_alpha")
    draw = None  # drawn apart from words (`Word.draw`)

    def __init__(self, cells: list[Word], width: int) -> None:
        self.cells = cells
        self.x0, self.y0 = 0, cells[0].y0
        self.advance = float(width)  # the cells' advances are their widths, whole pixels
        self.missing = sum(map(_missing, cells))
        self._alpha: np.ndarray | None = None

    @property
    def alpha(self) -> np.ndarray:
        """Coverage uint8 [h, sum of the cells' widths]."""
        if self._alpha is None:
            self._alpha = np.concatenate([c.alpha for c in self.cells], axis=1)
        return self._alpha


# what a layout places: one item, or a run of cells drawn as one
Placed = Word | CellRun


# a folded token as `_place_ltr`/`_place_rtl` read it: its word (None: leading spaces), the
# word's advance, the spaces' advance (None: no spaces), whether the word has ink, its items
# (the hits a lookup counts) and, for a left-to-right cell (`Word.cell`), its (y0, height,
# width): cells that touch with the same y0 and height are drawn as one `CellRun`
_Folded = tuple[Word | None, float, float | None, bool, int, tuple[int, int, int] | None]


@dataclass(frozen=True)
class TextLayout:
    """Where each text's items go. Arrays are int64/bool [B]; `placed[b]` lists
    (word, x, baseline) of the lines drawn."""

    rows_used: np.ndarray  # 16-px rows down to the last line's bottom (what render_pair stacks by)
    lines: np.ndarray  # lines of text after wrapping (counted up to lines_fit + 1)
    overflow: np.ndarray  # bool: some text did not fit (more lines than drawn, or max_chars cut)
    missing: np.ndarray  # characters no bundled font covers, drawn as boxes (in drawn lines)
    placed: list[list[tuple[Placed, int, int]]]


def _font_runs(fs: FontSet, text: str) -> list[tuple[int, int, int]]:
    """(font, start, end) runs: a letter goes to the first font covering it; anything else
    (spaces, digits, punctuation, marks, joiners) stays in the current run's font if covered."""
    runs: list[tuple[int, int, int]] = []
    cur, start = -1, 0
    for i, ch in enumerate(text):
        mask = fs.candidates(ch)
        if cur >= 0 and cur < UNIFONT and mask >> cur & 1 and not ch.isalpha():
            continue
        font = (mask & -mask).bit_length() - 1 if mask else fs.fallback(ch)
        if font != cur:
            if i > start:
                runs.append((cur, start, i))
            cur, start = font, i
    if len(text) > start:
        runs.append((cur, start, len(text)))
    return runs


def build_word(fs: FontSet, text: str, rtl: bool) -> Word:
    """Shape and rasterise one item into its coverage bitmap."""
    runs = _font_runs(fs, text)
    placements: list[tuple[int, int, float, float]] = []  # font, gid, x, y (up)
    clusters: list[tuple[int, float]] = []
    pen, missing = 0.0, 0
    for font, start, end in reversed(runs) if rtl else runs:
        if font < UNIFONT:
            s = fs.shape(font, text[start:end], rtl)
            for gid, cl, adv, dx, dy in zip(
                s.gids, s.clusters, s.x_advance, s.x_offset, s.y_offset
            ):
                placements.append((font, gid, pen + dx, dy))
                clusters.append((start + cl, adv))
                pen += adv
            continue
        offsets = range(end - 1, start - 1, -1) if rtl else range(start, end)
        for i in offsets:
            cp = ord(text[i])
            if font == INVISIBLE:
                continue
            adv = fs.unifont_advance(cp) if font == UNIFONT else fs.box_advance()
            missing += font == BOX
            placements.append((font, cp, pen, 0.0))
            clusters.append((i, float(adv)))
            pen += adv
    boxes = []
    for font, gid, x, y in placements:
        g = fs.glyph(font, gid)
        if g.alpha.size:
            boxes.append((g.alpha, round(x) + g.left, -round(y) - g.top))
    if not boxes:
        return Word(np.zeros((0, 0), np.uint8), 0, 0, pen, tuple(clusters), missing)
    x0 = min(b[1] for b in boxes)
    y0 = min(b[2] for b in boxes)
    x1 = max(b[1] + b[0].shape[1] for b in boxes)
    y1 = max(b[2] + b[0].shape[0] for b in boxes)
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for a, x, y in boxes:
        view = alpha[y - y0 : y - y0 + a.shape[0], x - x0 : x - x0 + a.shape[1]]
        np.maximum(view, a, out=view)
    cell = x0 == 0 and alpha.shape[1] == pen
    return Word(alpha, x0, y0, pen, tuple(clusters), missing, cell=cell)


class TextRenderer:
    """Text -> uint8 [H, W, 3] images in every script the bundled fonts cover.

    Options: see `TextRenderConfig`. `cache_words` bounds the word cache (items, oldest out
    first). `render_batch` keeps its last two outputs, to reuse their memory once the caller
    has dropped them. Picklable: only the settings travel; fonts and caches are rebuilt in the new
    process, so DataLoader workers (forked or spawned) draw the same pixels.
    """

    def __init__(self, *, cache_words: int = 100_000, **kwargs: Any) -> None:
        self.config = TextRenderConfig(**kwargs)
        self.cache_words = cache_words
        self._cache: dict[tuple[str, bool], Word] = {}
        # folded tokens, left to right and right to left
        self._folded: tuple[dict[str, _Folded], dict[str, _Folded]] = ({}, {})
        self._geometry: tuple[TextRenderConfig, float, int, int, int] | None = None
        self._spares: list[np.ndarray] = []  # the last outputs (see `_output`)
        self.hits = self.misses = 0

    @classmethod
    def from_config(cls, config: TextRenderConfig, cache_words: int = 100_000) -> TextRenderer:
        return cls(cache_words=cache_words, **config.to_dict())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"TextRenderer({args})"

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "cache_words": self.cache_words}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config, self.cache_words = state["config"], state["cache_words"]
        self._cache, self._folded, self.hits, self.misses = {}, ({}, {}), 0, 0
        self._geometry = None
        self._spares = []

    def cache_info(self) -> dict[str, float]:
        """Word-cache entries, bytes of bitmaps held, and hit rate since construction."""
        total = self.hits + self.misses
        return {
            "words": len(self._cache),
            "bytes": sum(w.alpha.nbytes for w in self._cache.values()),
            "hit_rate": self.hits / total if total else 0.0,
        }

    def _word(self, fs: FontSet, item: Item) -> Word:
        key = (item.text, bool(item.level & 1))
        word = self._cache.get(key)
        if word is not None:
            self.hits += 1
            return word
        self.misses += 1
        word = build_word(fs, item.text, bool(item.level & 1))
        if len(self._cache) >= self.cache_words > 0:
            del self._cache[next(iter(self._cache))]  # oldest first: no bookkeeping per hit
        if self.cache_words > 0:
            self._cache[key] = word
        return word

    def _fold(self, fs: FontSet, token: str, rtl: bool) -> _Folded:
        """A folded token -> what `_place_ltr`/`_place_rtl` read of it (one tuple unpacking
        per token; see `_Folded`), in a cache bounded like the word cache."""
        level = int(rtl)
        text, trailing = split_folded(token)
        word = self._word(fs, Item(text, WORD, level)) if text else None
        spaces = self._word(fs, Item(trailing, SPACE, level)) if trailing else None
        entry: _Folded = (
            word,
            word.advance if word is not None else 0.0,
            spaces.advance if spaces is not None else None,
            word is not None and word.alpha.size > 0,
            (word is not None) + (spaces is not None),
            (word.y0, word.alpha.shape[0], word.alpha.shape[1])
            if word is not None and word.cell and word.alpha.size and not rtl
            else None,
        )
        cache = self._folded[level]
        if len(cache) >= self.cache_words > 0:
            del cache[next(iter(cache))]
        if self.cache_words > 0:
            cache[token] = entry
        return entry

    def _place_ltr(
        self,
        fs: FontSet,
        placed: list[tuple[Placed, int, int]],
        tokens: list[str],
        max_width: float,
        n_lines: int,
        fit: int,
        baseline: int,
        pitch: int,
    ) -> int | None:
        """Wrap and place a left-to-right paragraph of folded tokens (`folded_tokens`) in one
        pass, its first line at `baseline` (line `n_lines` of `fit`, lines `pitch` apart): the
        lines `wrap` makes of its items, placed as the general path of `_place` places them
        (the same float sums, so the same pixels); drawn lines' words appended to `placed` ->
        the paragraph's lines (at least 1), or None, with nothing appended, when a word alone
        is wider than a line (`wrap` splits it: the general path)."""
        max_lines = fit - n_lines
        margin = float(self.config.margin)
        start = len(placed)
        lines, cur_w, x, empty, hits = 0, 0.0, margin, True, 0
        run: list[Word] = []  # cells that touch, the first at (run_left, run_y)
        run_left = run_end = run_y = 0
        run_cell: tuple[int, int, int] | None = None
        cached = self._folded[0].get
        for token in tokens:
            if lines > max_lines:
                break
            entry = cached(token)
            if entry is None:
                entry = self._fold(fs, token, False)
            else:
                hits += entry[4]
            word, w, spaces, inked, _, cell = entry
            if word is None:  # leading spaces: dropped at a line's start
                continue
            if not empty and cur_w + w > max_width:
                lines += 1
                cur_w, x, empty = 0.0, margin, True
                baseline += pitch
            if empty and w > max_width:
                self.hits += hits
                del placed[start:]
                return None
            if inked and lines < max_lines:
                left = round(x)
                if (
                    cell is not None
                    and left == run_end
                    and run
                    and baseline == run_y
                    and cell == run_cell
                ):
                    run.append(word)  # touching the cell before it: one CellRun with it
                    run_end += cell[2]
                else:
                    if run:
                        placed.append(
                            (
                                CellRun(run, run_end - run_left) if run[1:] else run[0],
                                run_left,
                                run_y,
                            )
                        )
                        run = []
                    if cell is None:
                        placed.append((word, left, baseline))
                    else:
                        run, run_left, run_end, run_cell = [word], left, left + cell[2], cell
                        run_y = baseline
            empty = False
            cur_w += w
            x += w
            if spaces is not None:  # added apart, as `wrap` does: the same float sums
                cur_w += spaces
                x += spaces
        if run:
            placed.append(
                (CellRun(run, run_end - run_left) if run[1:] else run[0], run_left, run_y)
            )
        self.hits += hits
        # the line begun (or the empty paragraph's one line), counted up to `max_lines` + 1
        return min(lines, max_lines) + 1

    def _split(
        self, fs: FontSet, entry: tuple[Item, Word], max_width: float
    ) -> list[tuple[Item, Word]]:
        """Cut an item wider than a line at cluster boundaries into pieces that fit."""
        item, word = entry
        widths: dict[int, float] = {}
        for cluster, adv in word.clusters:
            widths[cluster] = widths.get(cluster, 0.0) + adv
        pieces, start, run = [], 0, 0.0
        for cluster in sorted(widths):
            if cluster > start and run + widths[cluster] > max_width:
                pieces.append(Item(item.text[start:cluster], item.kind, item.level))
                start, run = cluster, 0.0
            run += widths[cluster]
        pieces.append(Item(item.text[start:], item.kind, item.level))
        return [(p, self._word(fs, p)) for p in pieces]

    def _place(self, fs: FontSet, text: str) -> tuple[list[tuple[Placed, int, int]], int, bool]:
        """One text -> ((word, x, baseline) of the drawn lines, lines wrapped, overflowed)."""
        cfg = self.config
        geometry = self._geometry
        if geometry is None or geometry[0] is not cfg:  # computed once per config, not per text
            max_width = float(cfg.shape[1] - 2 * cfg.margin)
            ascent = round(cfg.font_size * 0.8)  # baseline below a line's top
            geometry = self._geometry = (cfg, max_width, cfg.lines_fit, cfg.line_pitch, ascent)
        _, max_width, fit, pitch, ascent = geometry
        placed: list[tuple[Placed, int, int]] = []
        n_lines, cut = 0, False
        if cfg.max_chars and len(text) > cfg.max_chars:
            text, cut = text[: cfg.max_chars], True
        if not text:
            return placed, 0, cut
        if _TO_NORMALISE.search(text):  # translate is slow on non-ASCII text: only when needed
            text = text.replace("\r\n", "\n").translate(_NORMALISE)
        for paragraph in text.split("\n"):
            if n_lines > fit:
                break
            folded = folded_tokens(paragraph)
            if folded is not None and not folded[1]:
                baseline = cfg.margin + n_lines * pitch + ascent
                count = self._place_ltr(
                    fs, placed, folded[0], max_width, n_lines, fit, baseline, pitch
                )
                if count is not None:
                    n_lines += count
                    continue
            elif folded is not None:
                baseline = cfg.margin + n_lines * pitch + ascent
                count = self._place_rtl(
                    fs, placed, folded[0], max_width, n_lines, fit, baseline, pitch
                )
                if count is not None:
                    n_lines += count
                    continue
            items, base = itemize(paragraph)
            lines = wrap(
                ((it, self._word(fs, it)) for it in items),
                max_width,
                _advance,
                lambda entry, mw: self._split(fs, entry, mw),
                fit - n_lines,
            )
            for line in lines or [[]]:
                if n_lines < fit:
                    ordered = visual_order(line)
                    x = float(cfg.margin)
                    if base:  # right-aligned
                        x = cfg.shape[1] - cfg.margin - sum(wd.advance for _, wd in ordered)
                    baseline = cfg.margin + n_lines * pitch + ascent
                    for _, wd in ordered:
                        if wd.alpha.size:
                            placed.append((wd, round(x), baseline))
                        x += wd.advance
                n_lines += 1
        return placed, n_lines, cut or n_lines > fit

    def _place_rtl(
        self,
        fs: FontSet,
        placed: list[tuple[Placed, int, int]],
        tokens: list[str],
        max_width: float,
        n_lines: int,
        fit: int,
        baseline: int,
        pitch: int,
    ) -> int | None:
        """`_place_ltr` for a paragraph all at level 1: lines wrapped in logical order (the
        same float sums as `wrap`), then right-aligned with their items in reverse."""
        max_lines = fit - n_lines
        start = len(placed)
        lines, cur_w, hits = 0, 0.0, 0
        line: list[_Folded] = []
        cached = self._folded[1].get
        for token in tokens:
            if lines > max_lines:
                break
            entry = cached(token)
            if entry is None:
                entry = self._fold(fs, token, True)
            else:
                hits += entry[4]
            if entry[0] is None:  # leading spaces: dropped at a line's start
                continue
            w = entry[1]
            if line and cur_w + w > max_width:
                if lines < max_lines:
                    self._right_aligned(placed, line, baseline)
                lines += 1
                line, cur_w = [], 0.0
                baseline += pitch
            if not line and w > max_width:
                self.hits += hits
                del placed[start:]
                return None
            line.append(entry)
            cur_w += w
            if entry[2] is not None:  # added apart, as `wrap` does: the same float sums
                cur_w += entry[2]
        if line and lines < max_lines:
            self._right_aligned(placed, line, baseline)
        self.hits += hits
        return min(lines, max_lines) + 1  # as `_place_ltr`

    def _right_aligned(
        self, placed: list[tuple[Placed, int, int]], line: list[_Folded], baseline: int
    ) -> None:
        """Place one right-to-left line as `_place` places the same items: in reverse, the
        line's last spaces dropped, the width summed in that order (the same pixels)."""
        total = 0.0
        last = len(line) - 1
        for i in range(last, -1, -1):
            _, w, spaces, _, _, _ = line[i]
            if spaces is not None and i != last:
                total += spaces
            total += w
        x = self.config.shape[1] - self.config.margin - total
        for i in range(last, -1, -1):
            word, w, spaces, inked, _, _ = line[i]
            if spaces is not None and i != last:
                x += spaces
            if inked and word is not None:
                placed.append((word, round(x), baseline))
            x += w

    def layout(self, texts: Sequence[str | bytes]) -> TextLayout:
        """Wrap and place every text (see `TextLayout`)."""
        if isinstance(texts, str | bytes):
            raise TypeError("expected a sequence of texts, got a single text")
        fs = font_set(self.config.font_size)
        cfg = self.config
        placed, lines, overflow = [], [], []
        for t in texts:
            p, n, o = self._place(fs, _as_str(t))
            placed.append(p)
            lines.append(n)
            overflow.append(o)
        n_arr = np.asarray(lines, np.int64)
        drawn = np.minimum(n_arr, cfg.lines_fit)
        bottom = cfg.margin + drawn * cfg.line_pitch
        rows = np.where(drawn > 0, -(-bottom // 16), 0).astype(np.int64)
        missing = np.asarray([sum(wd.missing for wd, _, _ in p) for p in placed], np.int64)
        return TextLayout(rows, n_arr, np.asarray(overflow, bool), missing, placed)

    def coverage(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """Ink coverage uint8 [B, H, W] (0: background, 255: full ink)."""
        h, w = self.config.shape
        lay = self.layout(texts)
        out = np.zeros((len(lay.placed), h, w), np.uint8)
        for canvas, placed in zip(out, lay.placed):
            for word, x, baseline in placed:
                _composite(canvas, word.alpha, x + word.x0, baseline + word.y0, np.maximum)
        return out

    def _placements(self, texts: Sequence[str | bytes]) -> list[list[tuple[Placed, int, int]]]:
        """`layout(texts).placed` alone (what drawing needs)."""
        if isinstance(texts, str | bytes):
            raise TypeError("expected a sequence of texts, got a single text")
        fs = font_set(self.config.font_size)
        place = self._place
        return [place(fs, _as_str(t))[0] for t in texts]

    def _output(self, shape: tuple[int, int, int, int]) -> np.ndarray:
        """An uninitialised uint8 array for `render_batch`: one of the last two calls'
        outputs that nothing but this renderer refers to any more (the caller dropped it and
        every view of it: a view, memoryview or tensor sharing its memory holds a reference),
        else a new one. Two, so that `images = renderer.render_batch(texts)` in a loop, which
        holds the last output during the next call, reuses the one before.

        Fresh memory costs more to fill than drawing the text does (the kernel zeroes each
        page first: ~2.5x a fill of memory already mapped). Reuse is decided by CPython's
        reference counts, so only where they count every holder: CPython with the GIL.
        """
        spares = self._spares
        out = None
        if _COUNTS_EVERY_REFERENCE:
            for spare in spares:
                # its references: the list's, `spare` and getrefcount's argument (a thread
                # looking at it too adds one: then neither takes it)
                if spare.shape == shape and sys.getrefcount(spare) == 3:
                    out = spare
                    break
        if out is None:
            out = np.empty(shape, np.uint8)
        # a new list, not changed in place: another thread may be iterating the old one
        self._spares = [s for s in spares if s is not out][-1:] + [out]
        return out

    def render_batch(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """Render texts -> np.uint8 [B, H, W, 3]: text colour over the background, blended
        by coverage (equal to the colour table applied to `coverage(texts)`). The array is
        the caller's; its memory may be that of an earlier output nothing refers to any more
        (`_output`)."""
        h, w = self.config.shape
        all_placed = self._placements(texts)
        table = self._colour_table()
        out = self._output((len(all_placed), h, w, 3))
        bg = table[0]
        grey = bg[0] == bg[1] == bg[2]
        # Each channel's colour is monotonic in coverage, so max-blending coverage and then
        # colouring equals blending the coloured bitmaps by that channel's min (ink darker than
        # the background) or max: words are composited in colour, with no pass over the canvas.
        # Over untouched background that blend is the bitmap itself: a plain copy, ~3x cheaper.
        darker = table[255].astype(int) - bg.astype(int)
        channels = [(c, np.minimum if darker[c] < 0 else np.maximum) for c in range(3) if darker[c]]
        whole = len(channels) == 3 and all(op_c is channels[0][1] for _, op_c in channels)
        if not channels:  # text in the background's colour: nothing shows
            if grey:
                out.fill(bg[0])
            else:
                out[...] = bg
            return out
        op = channels[0][1]
        for canvas, placed in zip(out, all_placed):
            # each canvas filled just before its words go in: they land in cache-hot memory
            if grey:
                canvas.fill(bg[0])  # a plain memset, many times faster than broadcasting a triple
            else:
                canvas[...] = bg
            # `clear_top`: rows below every earlier line's bitmaps; `clear_left`: columns right
            # of the earlier bitmaps of this line (words are placed left to right per line)
            clear_top, clear_left, line_y, line_bottom = 0, 0, None, 0
            for word, x, baseline in placed:
                d = word.draw
                if d is None:
                    if isinstance(word, CellRun):
                        rgbs = [
                            cell.rgb if cell.rgb is not None else _set_rgb(cell, table)
                            for cell in word.cells
                        ]
                        top, left = baseline + word.y0, x
                        if baseline != line_y:
                            clear_top, clear_left, line_y = max(clear_top, line_bottom), 0, baseline
                        bottom, right = top + rgbs[0].shape[0], left + int(word.advance)
                        if bottom > line_bottom:
                            line_bottom = bottom
                        inside = top >= 0 and left >= 0 and bottom <= h and right <= w
                        if whole and inside and top >= clear_top and left >= clear_left:
                            # only background under the run: one copy of its cells side by side
                            np.concatenate(rgbs, axis=1, out=canvas[top:bottom, left:right])
                        else:
                            for rgb in rgbs:
                                for c, op_c in channels:
                                    _composite(canvas[..., c], rgb[..., c], left, top, op_c)
                                left += rgb.shape[1]
                        if right > clear_left:
                            clear_left = right
                        continue
                    d = _set_draw(word, table)
                rgb, x0, y0, ah, aw = d
                top, left = baseline + y0, x + x0
                if baseline != line_y:
                    clear_top, clear_left, line_y = max(clear_top, line_bottom), 0, baseline
                bottom, right = top + ah, left + aw
                if bottom > line_bottom:
                    line_bottom = bottom
                if whole and top >= 0 and left >= 0 and bottom <= h and right <= w:
                    if top >= clear_top and left >= clear_left:  # the common case, inline:
                        # only background under it, where blending changes nothing
                        canvas[top:bottom, left:right] = rgb
                    else:
                        view = canvas[top:bottom, left:right]
                        op(view, rgb, out=view)
                    if right > clear_left:
                        clear_left = right
                    continue
                if right > clear_left:
                    clear_left = right
                for c, op_c in channels:
                    _composite(canvas[..., c], rgb[..., c], left, top, op_c)
        return out

    def __call__(self, text: str | bytes) -> np.ndarray:
        """Render one text -> np.uint8 [H, W, 3]."""
        if not isinstance(text, str | bytes | bytearray | memoryview):
            raise TypeError(f"text must be str or UTF-8 bytes, got {type(text).__name__}")
        return self.render_batch([text])[0]

    def _colour_table(self) -> np.ndarray:
        """uint8 [256, 3]: the colour of each coverage level."""
        bg = np.broadcast_to(np.asarray(self.config.background_brightness, np.float64), 3)
        fg = np.broadcast_to(np.asarray(self.config.text_brightness, np.float64), 3)
        a = np.arange(256, dtype=np.float64)[:, None] / 255
        return np.round(bg + (fg - bg) * a).astype(np.uint8)

    def ink_mask(self, images: np.ndarray, patch_size: int = 16) -> np.ndarray:
        """Patches holding any non-background pixel: bool [B, H/p, W/p] (RGB backgrounds too)."""
        images = np.asarray(images)
        bg = np.asarray(self.config.background_brightness, np.uint8)
        return ink_mask(np.any(images != bg, axis=-1), patch_size, background=0)

    to_pixels = staticmethod(to_pixels)

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
        """-> torch.float32 [B, 3, H, W] in [-1, 1] on `device` (and ink bool [B, H/16, W/16]).

        Unlike Unifont's, this renderer draws on the CPU (shaping has no device kernel): the
        uint8 images cross to the device and become pixels there, equal to
        `to_pixels(render_batch(texts))`. torch is imported here, not at module import.
        """
        import torch

        from clippo.render.unifont_torch import to_pixels_torch

        images = self.render_batch(texts)
        pixels = to_pixels_torch(torch.from_numpy(images).to(device))
        if not return_ink:
            return pixels
        return pixels, torch.from_numpy(self.ink_mask(images)).to(device)


_advance = operator.attrgetter("advance")
_missing = operator.attrgetter("missing")


def _set_draw(word: Word, table: np.ndarray) -> tuple[np.ndarray, int, int, int, int]:
    """`word.draw`, kept on it: (its `_set_rgb` bitmap, x0, y0, height, width)."""
    rgb = word.rgb if word.rgb is not None else _set_rgb(word, table)
    word.draw = (rgb, word.x0, word.y0, rgb.shape[0], rgb.shape[1])
    return word.draw


def _set_rgb(word: Word, table: np.ndarray) -> np.ndarray:
    """The word's bitmap in the renderer's colours (`table`: uint8 [256, 3]), kept on it."""
    word.rgb = table[word.alpha]
    return word.rgb


def _as_str(text: str | bytes) -> str:
    if isinstance(text, bytes | bytearray | memoryview):
        return bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"text must be str or UTF-8 bytes, got {type(text).__name__}")
    return _SURROGATES.sub("\ufffd", text)  # lone surrogates cannot be encoded for HarfBuzz


def _composite(canvas: np.ndarray, bitmap: np.ndarray, left: int, top: int, op: Any) -> None:
    """Blend `bitmap` [h, w, ...] into `canvas` [H, W, ...] with its top-left at (left, top),
    clipped, by the elementwise `op` (np.maximum or np.minimum) in place."""
    h, w = canvas.shape[:2]
    ah, aw = bitmap.shape[:2]
    t, lft = max(top, 0), max(left, 0)
    b, r = min(top + ah, h), min(left + aw, w)
    if t >= b or lft >= r:
        return
    view = canvas[t:b, lft:r]
    op(view, bitmap[t - top : b - top, lft - left : r - left], out=view)
