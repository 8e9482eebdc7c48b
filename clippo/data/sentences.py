"""Rule-based sentence splitting for building consecutive-sentence pairs.

    split_sentences("Dr. Smith paid $3.14. He left!")  ->  ["Dr. Smith paid $3.14.", "He left!"]

Rules (in order), applied at every run of terminal punctuation:
- Unambiguous non-Latin terminators always end a sentence, with or without a following space:
  CJK 。！？｡．, Arabic ؟, Urdu ۔, Devanagari । ॥, Armenian ։, Ethiopic ። ፧ ፨, Myanmar ။,
  Khmer ។ ៕, Tibetan ། , and ‼ ⁇ ⁈ ⁉.
- Latin-style terminators (. ! ? … and runs like ?! or ...) end a sentence only when followed by
  whitespace or the end of the text, and not when the next word starts with a lowercase letter
  ("e.g. this", "“Help!” she said").
- After ".", the preceding token decides: titles (Mr, Dr, Prof, St, ...), never-final
  abbreviations (e.g., i.e., cf., vs.), single-letter initials (J. K.) and the starts of dotted
  initialisms never end a sentence; other known abbreviations (etc., Inc., U.S., a.m., Jan., ...)
  end one only when the next word is a common sentence opener ("The", "He", ...), except "etc."
  which ends one before any capitalised word. Numbers ("in 1999. The") end normally; decimals
  ("3.14") have no space after the point and are never split.
- Closing quotes and brackets after a terminator belong to the sentence ("He said "hi."").
- A blank line always ends a sentence (paragraph break). Other whitespace runs, newlines
  included, are collapsed to one space in the output; empty sentences are dropped.
Known limits: scripts without sentence punctuation (Thai) are not split; a Japanese quote that
ends in 。 followed by と is split; all-lowercase text splits only at ! ? and non-Latin marks.
"""

from __future__ import annotations

import re

__all__ = ["split_sentences", "TITLES", "NONFINAL_ABBREVIATIONS", "ABBREVIATIONS"]

# Word lists are written as space-separated strings for readability.
# Always followed by a name or number: never the end of a sentence.
TITLES = frozenset(
    "mr mrs ms mssrs messrs dr prof rev hon gov gen col capt cpt lt sgt cmdr adm maj sen rep "  # noqa: SIM905
    "pres st mt fr sr mme mlle mm dra sra srta herr".split()
)
# Abbreviations that never end a sentence in practice.
NONFINAL_ABBREVIATIONS = frozenset("e.g i.e cf vs viz ca approx incl esp resp".split())  # noqa: SIM905
# Abbreviations that may end a sentence (decided by the next word).
ABBREVIATIONS = frozenset(
    "etc inc ltd co corp jr llc plc bros al no nos vol vols fig figs pp pg ch sec ed eds est "  # noqa: SIM905
    "dept univ assn ave blvd rd hwy ft oz lb lbs kg km cm mm min max misc ref refs tel "
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun "
    "a.m p.m u.s u.k u.n e.u u.s.a ph.d b.a m.a b.sc m.sc d.c".split()
)
# Words that typically open a sentence: after an ambiguous abbreviation they signal a boundary.
_OPENERS = frozenset(
    "the a an he she it they we i you this that these those there here his her its their our my "  # noqa: SIM905
    "but and so yet or if when while after before then however in on at for as by from with "
    "what who why how where which some many most all no one two both each every".split()
)

_ALWAYS = "。！？｡．։؟۔।॥።፧፨။។៕།‼⁇⁈⁉"
_LATIN = ".!?…"
_CLOSERS = "\"'”’»›)]}」』】〕）〉》〗〙〛］｝"
_TERMINATOR = re.compile(
    f"(?P<always>[{re.escape(_ALWAYS)}][{re.escape(_ALWAYS + _LATIN)}]*)"
    f"|(?P<latin>[{re.escape(_LATIN)}]+)"
)
_CLOSER_RUN = re.compile(f"[{re.escape(_CLOSERS)}]*")
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n\s*")
_SPACE = re.compile(r"\s+")
_OPENING_PUNCT = "\"'“‘«‹([{¿¡"
_INITIALISM = re.compile(r"^(?:[^\W\d_]\.)+[^\W\d_]$")


_WORD_AHEAD = re.compile(r"\s*(\S*)")


def _next_word(text: str, pos: int) -> str:
    """The next whitespace-delimited word at or after `pos`, without opening punctuation."""
    m = _WORD_AHEAD.match(text, pos)  # always matches (every part of the pattern is optional)
    return m.group(1).lstrip(_OPENING_PUNCT) if m else ""


def _token_before(text: str, pos: int) -> str:
    """The run of non-space characters that ends at `pos`."""
    start = pos
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:pos]


def _ends_at_period(token: str, next_word: str) -> bool:
    """Decide a "." (already followed by whitespace, next word not lowercase)."""
    if not next_word:  # end of text
        return True
    bare = token.lstrip(_OPENING_PUNCT)
    low = bare.lower()
    if low in TITLES or low in NONFINAL_ABBREVIATIONS:
        return False
    if len(bare) == 1 and bare.isalpha() and bare.isupper():  # an initial: "J. K. Rowling"
        return False
    ambiguous = low in ABBREVIATIONS or bool(_INITIALISM.match(bare))
    if not ambiguous:
        return True
    first = next_word[0]
    if low == "etc":
        return first.isupper()
    return first.isupper() and next_word.rstrip(",;:").lower() in _OPENERS


def _split_paragraph(text: str) -> list[str]:
    cuts = [0]
    for m in _TERMINATOR.finditer(text):
        closers = _CLOSER_RUN.match(text, m.end())  # always matches (may be empty)
        end = closers.end() if closers else m.end()
        if m.group("always"):
            cuts.append(end)
            continue
        if end < len(text) and not text[end].isspace():
            continue  # "3.14", "e.g.,", "example.com", "U.S.A"
        nxt = _next_word(text, end)
        if nxt and nxt[0].islower():
            continue
        if m.group("latin")[-1] == "." and not _ends_at_period(_token_before(text, m.start()), nxt):
            continue
        cuts.append(end)
    cuts.append(len(text))
    parts = (text[a:b] for a, b in zip(cuts, cuts[1:]))
    return [s for s in (_SPACE.sub(" ", p).strip() for p in parts) if s]


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences (see the module doc for the rules). Pure; no state."""
    if not isinstance(text, str):
        raise TypeError(f"split_sentences expects str, got {type(text).__name__}")
    out: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        out.extend(_split_paragraph(paragraph))
    return out
