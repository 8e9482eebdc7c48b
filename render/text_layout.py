"""Paragraph layout of `TextRenderer`: items, bidi levels, word wrap and visual order.

A paragraph is cut into *items*, the units the renderer shapes, caches and places whole:
  SPACE  a run of spaces; a line may break after it, and it is dropped at a line's end or start
  WORD   the letters between spaces (and between bidi level changes); a line breaks inside a
         word only when the word alone is wider than the line (at HarfBuzz cluster boundaries)
  UNIT   one CJK character, kana, Hangul syllable or emoji, or one Thai/Lao/Khmer cluster (a
         base letter with its marks, a leading vowel kept with the next letter): a line may
         break before and after each one. This is the simple rule for scripts without spaces
         between words; it needs no dictionary.
Bidi levels come from python-bidi's implementation of the Unicode bidi algorithm (UAX #9) over
the paragraph; lines are wrapped in logical order and then each line's items are put in visual
order by rule L2 (reverse every run at or above each odd level, highest first).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from bidi import algorithm as bidi_py
from bidi import get_base_level, get_display

SPACE, WORD, UNIT = 0, 1, 2

# Characters that can make a level odd: R/AL letters and the explicit RTL controls. A
# paragraph without any of them is all level 0, and skips the bidi algorithm.
_RTL_CHARS = re.compile(
    "[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefe\U00010800-\U00010fff\U0001e800-\U0001efff"
    "\u200f\u202b\u202e\u2067\u061c]"
)
_LEVEL = re.compile(r"Level\(\s*(\d+),?\s*\)")


def _rtl_classes() -> tuple[str, str]:
    """A regex class of the characters that leave a paragraph of R/AL letters all at level 1:
    R/AL letters and marks of the RTL blocks, spaces, and ASCII punctuation without numbers
    (neutrals between R letters, or at the ends of an R paragraph, resolve to R by rules N1/N2
    and L1; separators and terminators act as neutrals when no number is near); and the class
    of the strong R/AL letters among them, one of which the paragraph needs."""
    keep, strong = {" "}, set()
    keep.update(chr(c) for c in range(0x21, 0x7F) if unicodedata.bidirectional(chr(c)) in _NEUTRAL)
    for lo, hi in ((0x0590, 0x08FF), (0xFB1D, 0xFDFF), (0xFE70, 0xFEFE)):
        for c in range(lo, hi + 1):
            ch = chr(c)
            if unicodedata.category(ch) != "Cf" and unicodedata.bidirectional(ch) in _RTL_OK:
                keep.add(ch)
                if unicodedata.bidirectional(ch) in ("R", "AL"):
                    strong.add(ch)
    return "".join(re.escape(ch) for ch in sorted(keep)), "".join(map(re.escape, sorted(strong)))


_NEUTRAL = ("ON", "CS", "ES", "ET", "WS")
_RTL_OK = ("R", "AL", "NSM", *_NEUTRAL)
# a paragraph of only `_PURE_RTL` characters, one of them in `_STRONG_RTL`, is all level 1
_PURE_RTL, _STRONG_RTL = (re.compile(f"[{c}]{r}") for c, r in zip(_rtl_classes(), "*+"))


class Item(NamedTuple):
    text: str
    kind: int  # SPACE, WORD or UNIT
    level: int  # bidi embedding level: odd is right-to-left


_SPACES = "\t \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"  # tab and category Zs
# CJK ideographs, kana, Hangul, CJK punctuation, fullwidth forms, emoji and symbols
_UNITS = (
    "\u1100-\u11ff\u2e80-\u2fff\u3001-\ua4cf\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f"
    "\uff00-\uffef\U0001f000-\U0001faff\U00020000-\U0003ffff"
)
# what stays with a unit: combining diacritics, kana voicing, joiners, variation selectors,
# emoji skin tones, tags
_ATTACHED = (
    "\u0300-\u036f\u3099\u309a\u200c\u200d\ufe00-\ufe0f\U0001f3fb-\U0001f3ff\U000e0000-\U000e0fff"
)
_CLUSTER_SCRIPTS = "\u0e00-\u0eff\u1780-\u17ff"  # Thai, Lao, Khmer: no spaces between words
# A Thai/Lao/Khmer cluster: a leading vowel (written before the consonant it follows in
# speech), a base, then its marks and the spacing vowels that never start a cluster; in Khmer a
# coeng (U+17D2) and the consonant after it (drawn as a subscript) stay in the cluster too.
_CLUSTER = (
    "[\u0e40-\u0e44\u0ec0-\u0ec4]?[" + _CLUSTER_SCRIPTS + "]"
    "(?:\u17d2[\u1780-\u17b3]"
    "|[\u0e30-\u0e3a\u0e45\u0e47-\u0e4e\u0eb0-\u0ebc\u0ec8-\u0ecd\u17b4-\u17d3\u17dd])*"
)
_TOKENS = re.compile(
    f"(?P<space>[{_SPACES}]+)"
    f"|(?P<unit>(?:[{_UNITS}]|{_CLUSTER})[{_ATTACHED}]*)"
    f"|(?P<word>[^{_SPACES}{_UNITS}{_CLUSTER_SCRIPTS}]+)"
    f"|(?P<other>.)",  # a stray attached mark or cluster-script sign: a word of its own
    re.S,
)
_ASCII_TOKENS = re.compile(r"[ \t]+|[^ \t]+")
# Folded tokens: a word or unit with the spaces after it (or a paragraph's leading spaces):
# half the items to look up and wrap, for paragraphs that may break after every token.
_FOLDED = re.compile(
    f"(?:[{_UNITS}][{_ATTACHED}]*|[^{_SPACES}{_UNITS}{_CLUSTER_SCRIPTS}]+)[{_SPACES}]*|[{_SPACES}]+"
)
_FOLDED_PARTS = re.compile(f"([^{_SPACES}]*)([{_SPACES}]*)")
_ASCII_FOLDED = re.compile(r"[^ \t]+[ \t]*|[ \t]+")
_CLUSTER_CHARS = re.compile(f"[{_CLUSTER_SCRIPTS}]")
T = TypeVar("T")
_KIND = {"space": 0, "unit": 2, "word": 1, "other": 1}


def bidi_levels(paragraph: str) -> tuple[list[int], int]:
    """(embedding level per character, paragraph base level) by UAX #9 via python-bidi.

    python-bidi's fast Rust core reports its resolved levels only in its debug output (one per
    UTF-8 byte); that is parsed here. Should a release change the format, the package's
    pure-Python implementation of the same algorithm is used instead.
    """
    if not _RTL_CHARS.search(paragraph):
        return [0] * len(paragraph), 0
    debug = str(get_display(paragraph, debug=True))
    at = debug.find("levels: [")
    per_byte = [int(x) for x in _LEVEL.findall(debug, at, debug.find("]", at))] if at >= 0 else []
    utf8 = paragraph.encode("utf-8", "surrogatepass")
    if len(per_byte) == len(utf8):  # keep the level of each character's first byte
        levels = [lv for lv, byte in zip(per_byte, utf8) if byte & 0xC0 != 0x80]
        return levels, get_base_level(paragraph)
    return bidi_levels_python(paragraph)


def bidi_levels_python(paragraph: str) -> tuple[list[int], int]:
    """`bidi_levels` by python-bidi's pure-Python implementation (slower, same algorithm)."""
    storage = bidi_py.get_empty_storage()
    base = bidi_py.get_base_level(paragraph)
    storage["base_level"], storage["base_dir"] = base, ("L", "R")[base]
    bidi_py.get_embedding_levels(paragraph, storage)
    bidi_py.explicit_embed_and_overrides(storage)
    bidi_py.resolve_weak_types(storage)
    bidi_py.resolve_neutral_types(storage, False)
    bidi_py.resolve_implicit_levels(storage, False)
    # rule X9 removed the embedding controls (invisible): they take the level before them
    kept, levels, k, level = storage["chars"], [], 0, base
    for ch in paragraph:
        if k < len(kept) and kept[k]["ch"] == ch:
            level = kept[k]["level"]
            k += 1
        levels.append(level)
    return levels, base


def _all_rtl(paragraph: str) -> bool:
    """Whether every character of `paragraph` resolves to bidi level 1 (`_rtl_classes`)."""
    return bool(_PURE_RTL.fullmatch(paragraph) and _STRONG_RTL.search(paragraph))


def folded_tokens(paragraph: str) -> tuple[list[str], int] | None:
    """A paragraph (no newlines) of words, units and spaces at one bidi level (no Thai-like
    clusters, numbers in RTL or mixed directions) -> (its folded tokens, that level); None for
    any other paragraph (then `itemize` it). Each token is a word or unit and the spaces after
    it (`split_folded`), except a leading run of spaces. A line may break after every token:
    words never touch (spaces or units come between them), and units break on both sides."""
    if paragraph.isascii():
        return _ASCII_FOLDED.findall(paragraph), 0
    if _CLUSTER_CHARS.search(paragraph):
        return None
    if not _RTL_CHARS.search(paragraph):
        return _FOLDED.findall(paragraph), 0
    if _all_rtl(paragraph):
        return _FOLDED.findall(paragraph), 1
    return None


def split_folded(token: str) -> tuple[str, str]:
    """A folded token -> (its word, its trailing spaces); the word is empty for leading spaces."""
    m = _FOLDED_PARTS.match(token)
    assert m is not None  # the pattern matches any string (both groups may be empty)
    return m.group(1), m.group(2)


def itemize(paragraph: str) -> tuple[Iterator[Item], int]:
    """A paragraph (no newlines) -> (its items in logical order, lazily; base level)."""
    if paragraph.isascii():  # the common case, tokenised in one C call
        return (
            Item(t, SPACE if t[0] in " \t" else WORD, 0) for t in _ASCII_TOKENS.findall(paragraph)
        ), 0
    if not _RTL_CHARS.search(paragraph):  # all level 0: no bidi, tokens in one C call
        return (
            Item(sp, SPACE, 0)
            if sp
            else Item(unit, UNIT, 0)
            if unit
            else Item(word or other, WORD, 0)
            for sp, unit, word, other in _TOKENS.findall(paragraph)
        ), 0
    if _all_rtl(paragraph):  # all level 1: no bidi call (~60 us a caption)
        return (
            Item(sp, SPACE, 1)
            if sp
            else Item(unit, UNIT, 1)
            if unit
            else Item(word or other, WORD, 1)
            for sp, unit, word, other in _TOKENS.findall(paragraph)
        ), 1
    levels, base = bidi_levels(paragraph)
    return _items(paragraph, levels, base), base


def _items(paragraph: str, levels: list[int], base: int) -> Iterator[Item]:
    for m in _TOKENS.finditer(paragraph):
        kind = _KIND[m.lastgroup or "other"]
        start, end = m.span()
        if not base and not levels[start] and not levels[end - 1]:  # an all-LTR token
            yield Item(m.group(), kind, 0)
            continue
        # a token whose characters have different bidi levels becomes one item per level
        for level, group in itertools.groupby(range(start, end), levels.__getitem__):
            span = list(group)
            yield Item(paragraph[span[0] : span[-1] + 1], kind, level)


def _break_before(prev: Item, item: Item) -> bool:
    return prev.kind == SPACE or item.kind == UNIT or prev.kind == UNIT


def _trim(line: list[tuple[Item, T]]) -> list[tuple[Item, T]]:
    while line and line[-1][0].kind == SPACE:
        line.pop()
    return line


def wrap(
    entries: Iterable[tuple[Item, T]],
    max_width: float,
    width: Callable[[T], float],
    split: Callable[[tuple[Item, T], float], list[tuple[Item, T]]],
    max_lines: int,
) -> list[list[tuple[Item, T]]]:
    """Greedy word wrap in logical order of (item, payload) entries, `width(payload)` wide ->
    lines (stops after `max_lines` + 1 lines: enough to know the text overflowed).
    `split(entry, max_width)` cuts an entry wider than a line into pieces that fit (a single
    cluster may not)."""
    lines: list[list[tuple[Item, T]]] = []
    cur: list[tuple[Item, T]] = []
    cur_w = 0.0
    for entry in entries:
        if len(lines) > max_lines:
            break
        item = entry[0]
        w = width(entry[1])
        if item.kind == SPACE:
            if cur:
                cur.append(entry)
                cur_w += w
            continue
        if cur and cur_w + w > max_width:
            # break at the last opportunity: here, or earlier when glued to the words before
            j = len(cur)
            if not _break_before(cur[-1][0], item):
                j = next(
                    (
                        k
                        for k in range(len(cur) - 1, 0, -1)
                        if _break_before(cur[k - 1][0], cur[k][0])
                    ),
                    0,
                )
            if j > 0:
                carried = cur[j:]
                lines.append(_trim(cur[:j]))
                cur = carried
                cur_w = sum(width(x[1]) for x in cur)
            if cur and cur_w + w > max_width:
                lines.append(_trim(cur))
                cur, cur_w = [], 0.0
        if not cur and w > max_width:
            pieces = split(entry, max_width)
            lines.extend([p] for p in pieces[:-1])
            entry = pieces[-1]
            w = width(entry[1])
        cur.append(entry)
        cur_w += w
    if _trim(cur):
        lines.append(cur)
    return lines[: max_lines + 1]


def visual_order(line: list[tuple[Item, T]]) -> list[tuple[Item, T]]:
    """Entries of one line in display order, left to right (UAX #9 rule L2)."""
    levels = [entry[0].level for entry in line]
    if not any(levels):
        return line
    order = list(range(len(line)))
    lowest_odd = min(levels) | 1
    for level in range(max(levels), lowest_odd - 1, -1):
        i = 0
        while i < len(order):
            if levels[order[i]] >= level:
                j = i
                while j < len(order) and levels[order[j]] >= level:
                    j += 1
                order[i:j] = order[i:j][::-1]
                i = j
            else:
                i += 1
    return [line[i] for i in order]
