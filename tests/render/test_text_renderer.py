"""TextRenderer: every script shaped and ordered right, wrap and overflow, the renderer protocol.

Golden images: `golden/<script>.png` (looked at by eye once: joined Arabic, right-aligned RTL,
Devanagari/Bengali conjuncts, stacked Thai vowels, Unifont CJK and emoji) and the SHA-256 of
their pixels in `golden/hashes.json`. The pixels depend on the exact FreeType and HarfBuzz
builds inside the freetype-py and uharfbuzz wheels (and the bundled fonts), which the project
pins; after an intended upgrade, look at the new images and regenerate them with
`python tests/render/test_text_renderer.py`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from clippo.render import TextRenderConfig, TextRenderer, render_on_image, render_pair, to_pixels
from clippo.render.text_layout import bidi_levels, bidi_levels_python

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_CONFIG = {"width": 192, "height": 48, "font_size": 16, "margin": 2}
SAMPLES = {
    "latin": "The quick brown fox jumps over the lazy dog.",
    "greek": "Γειά σου κόσμε, ένα μικρό κείμενο.",
    "cyrillic": "Съешь же ещё этих мягких булок.",
    "arabic": "مرحبا بالعالم، هذا نص عربي قصير.",
    "hebrew": "שלום עולם, זה טקסט קצר בעברית.",
    "devanagari": "नमस्ते दुनिया, यह हिन्दी का वाक्य है।",
    "bengali": "ওহে বিশ্ব, এটি একটি বাংলা বাক্য।",
    "tamil": "வணக்கம் உலகம், இது தமிழ் வாக்கியம்.",
    "thai": "สวัสดีชาวโลก นี่คือประโยคภาษาไทย",
    "khmer": "សួស្តីពិភពលោក នេះជាប្រយោគខ្មែរ",
    "chinese": "你好，世界。这是一个简短的中文句子。",
    "japanese": "こんにちは世界。これは日本語の文です。",
    "korean": "안녕하세요 세계, 이것은 한국어 문장입니다.",
    "emoji": "Party 🎉 pizza 🍕 thumbs 👍 heart ❤ star ★",
}


def pixel_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def ink(image: np.ndarray, background: int = 127) -> np.ndarray:
    """bool [H, W]: pixels that differ from the background."""
    return np.any(image != background, axis=-1)


def ink_columns(image: np.ndarray) -> np.ndarray:
    return np.flatnonzero(ink(image).any(axis=0))


@pytest.fixture(scope="module")
def golden_renderer() -> TextRenderer:
    return TextRenderer(**GOLDEN_CONFIG)


@pytest.fixture(scope="module")
def strip() -> TextRenderer:
    """One line, 32 px high, wide enough for a short word."""
    return TextRenderer(width=256, height=32, margin=2)


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_golden_images(golden_renderer, script):
    image = golden_renderer(SAMPLES[script])
    expected = np.asarray(Image.open(GOLDEN / f"{script}.png").convert("RGB"))
    hashes = json.loads((GOLDEN / "hashes.json").read_text())
    assert image.shape == (48, 192, 3) and image.dtype == np.uint8
    assert pixel_hash(expected) == hashes[script], "golden PNG does not match its hash"
    assert np.array_equal(image, expected)
    assert ink(image).sum() > 200  # and not blank, which a broken font would also be


def test_golden_images_repeat_and_survive_pickling():
    texts = [SAMPLES[s] for s in sorted(SAMPLES)]
    first = TextRenderer(**GOLDEN_CONFIG)
    once = first.render_batch(texts)
    again = first.render_batch(texts)  # now from the warm word cache
    assert first.cache_info()["hit_rate"] > 0.4
    clone = pickle.loads(pickle.dumps(first))
    assert clone.cache_info()["words"] == 0  # only the settings travel
    assert np.array_equal(once, again)
    assert np.array_equal(once, clone.render_batch(texts))
    one_by_one = np.stack([TextRenderer(**GOLDEN_CONFIG)(t) for t in texts])
    assert np.array_equal(once, one_by_one)


class _TextDataset:
    def __init__(self, renderer: TextRenderer, texts: list[str]) -> None:
        self.renderer, self.texts = renderer, texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.renderer(self.texts[i])


def test_dataloader_workers_render_identically(golden_renderer):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    texts = [SAMPLES[s] for s in sorted(SAMPLES)] * 2
    golden_renderer.render_batch(texts)  # a warm cache and FreeType faces get forked
    loader = DataLoader(_TextDataset(golden_renderer, texts), batch_size=5, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    assert np.array_equal(got, TextRenderer(**GOLDEN_CONFIG).render_batch(texts))


def test_arabic_letters_join(strip):
    """Joined, the word's letters are one stroke; HarfBuzz-less isolated forms would be three."""
    joined, apart = strip.render_batch(["سمع", "س م ع"])
    n_joined = ndimage.label(ink(joined), structure=np.ones((3, 3)))[1]
    n_apart = ndimage.label(ink(apart), structure=np.ones((3, 3)))[1]
    assert n_joined < n_apart
    assert n_joined == 1


def test_khmer_subscript_consonant(strip):
    """ក្ស: the coeng puts ស under ក (narrower and deeper than the two letters side by side),
    shaped from the bundled Khmer font (no box, no Unifont cells)."""
    stacked, side = strip.render_batch(["ក្ស", "កស"])
    assert strip.layout(["ក្ស"]).missing.tolist() == [0]
    assert len(ink_columns(stacked)) < len(ink_columns(side))
    assert (
        np.flatnonzero(ink(stacked).any(axis=1)).max() > np.flatnonzero(ink(side).any(axis=1)).max()
    )


def test_devanagari_conjunct(strip):
    """स्त forms a conjunct; a zero-width non-joiner keeps the visible virama, so it is wider."""
    conjunct, broken = strip.render_batch(["स्त", "स्\u200cत"])
    assert not np.array_equal(conjunct, broken)
    assert len(ink_columns(conjunct)) < len(ink_columns(broken))


def test_rtl_first_logical_character_at_the_right(strip):
    """Lamed (ל) rises above the other Hebrew letters: logically first, it is drawn rightmost."""
    # within a word (HarfBuzz's visual order) and across words (the bidi reordering of items)
    lamed_first, lamed_last, words_first, words_last = strip.render_batch(
        ["לא", "אל", "ל א", "א ל"]
    )
    alef_only = strip("א")
    top = np.flatnonzero(ink(alef_only).any(axis=1))[0]  # letters other than lamed start here
    for image, lamed_right in (
        (lamed_first, True),
        (lamed_last, False),
        (words_first, True),
        (words_last, False),
    ):
        cols = ink_columns(image)
        tall = np.flatnonzero(ink(image)[:top].any(axis=0))
        middle = (cols[0] + cols[-1]) / 2
        assert tall.size and (tall.mean() > middle) == lamed_right
    # right-aligned: the ink ends at the right margin, not the left
    assert ink_columns(lamed_first)[-1] > 256 - 2 - 4
    assert ink_columns(lamed_first)[0] > 128


@pytest.mark.parametrize(
    "text",
    [
        "abc שלום 123 def",
        "مرحبا 2024 world! نعم",
        "(שלום) [abc] ״ציטוט״",
        "עברית123אנגלית",
        "\u202bembedded text\u202c after",
        "سلام، 3.14 و 42%",
    ],
)
def test_bidi_levels_match_the_pure_python_algorithm(text):
    """The levels parsed from python-bidi's Rust core equal its pure-Python implementation's."""
    (fast, base), (slow, slow_base) = bidi_levels(text), bidi_levels_python(text)
    visible = [i for i, ch in enumerate(text) if not "\u202a" <= ch <= "\u202e"]
    assert base == slow_base and len(fast) == len(slow) == len(text)
    assert [fast[i] for i in visible] == [slow[i] for i in visible]
    assert any(fast)  # not the all-left-to-right shortcut


def test_combining_mark_stacks_on_its_base(strip):
    base, marked = strip.render_batch(["x", "x\u0301"])
    assert not np.array_equal(base, marked)  # the mark is drawn
    cols_base, cols_marked = ink_columns(base), ink_columns(marked)
    assert cols_marked[0] >= cols_base[0] - 1 and cols_marked[-1] <= cols_base[-1] + 1
    # above the letter, not beside it
    rows_base, rows_marked = (np.flatnonzero(ink(im).any(axis=1)) for im in (base, marked))
    assert rows_marked[0] < rows_base[0]


def test_thai_vowels_stack_and_thai_wraps_between_clusters():
    narrow = TextRenderer(width=64, height=160, margin=2)
    text = "ประโยคภาษาไทยยาวมาก"
    lay = narrow.layout([text])
    assert lay.lines[0] > 1 and not lay.overflow[0]
    image = narrow(text)
    assert ink(image)[:, 64 - 2 :].sum() == 0  # nothing crosses the right margin


def test_cjk_wraps_between_characters_and_latin_at_spaces():
    r = TextRenderer(width=80, height=160, margin=0)
    text = "一二三四五六七八九十"  # 16 px each: 5 per 80-px line
    assert r.layout([text]).lines[0] == 2
    words = "alpha beta gamma delta"
    lay = r.layout([words])
    assert lay.lines[0] >= 2
    for line_words in ("alpha", "beta", "gamma", "delta"):  # no word broken across lines
        alone = r.layout([line_words])
        assert alone.lines[0] == 1
    long_word = "x" * 60  # wider than the line: broken inside, nothing past the edge
    lay = r.layout([long_word])
    assert lay.lines[0] > 1
    assert ink(r(long_word))[:, 80:].sum() == 0


def test_line_breaks_and_tabs(strip):
    two = TextRenderer(image_size=64)
    assert list(two.layout(["a\nb", "a\r\nb", "a\u2029b", "a b"]).lines) == [2, 2, 2, 1]
    assert np.array_equal(strip("a\tb"), strip("a b"))


def test_empty_text_and_overflow(strip):
    empty = strip("")
    assert (empty == 127).all()
    lay = strip.layout(["", "short", "many words " * 40, "a\nb"])
    assert list(lay.rows_used[:2]) == [0, 2]
    assert list(lay.overflow) == [False, False, True, True]  # one-line strip: the \n overflows
    assert lay.lines[0] == 0 and lay.lines[2] == 2  # wrapping stops once overflow is known
    capped = TextRenderer(image_size=64, max_lines=1).layout(["one two three four five six"])
    assert capped.overflow[0]
    cut = TextRenderer(image_size=64, max_chars=3).layout(["abcdef"])
    assert cut.overflow[0]


def test_uncovered_characters_are_boxes_and_controls_are_invisible(strip):
    lay = strip.layout(["\U0010fffd", "a\u200db", "\U000e0001"])
    assert list(lay.missing) == [1, 0, 0]
    box, joined, tag = strip.render_batch(["\U0010fffd", "a\u200db", "\U000e0001"])
    assert ink(box).any() and not ink(tag).any()
    assert np.array_equal(joined, strip("ab"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(st.characters(codec=None, exclude_categories=()), max_size=40), max_size=3))
def test_fuzz_any_unicode(texts):
    r = TextRenderer(width=64, height=48, margin=1)
    out = r.render_batch(texts)
    assert out.shape == (len(texts), 48, 64, 3) and out.dtype == np.uint8
    lay = r.layout(texts)
    assert lay.rows_used.shape == (len(texts),)


def test_shapes_without_pillow_raqm(strip):
    """Pillow's FreeType/raqm module is made unimportable: shaping still joins Arabic, and the
    pixels equal this process's."""
    code = (
        "import sys; sys.modules['PIL._imagingft'] = None; sys.modules['PIL.ImageFont'] = None\n"
        "import hashlib\n"
        "from clippo.render import TextRenderer\n"
        "r = TextRenderer(width=256, height=32, margin=2)\n"
        "img = r.render_batch(['سمع', 'स्त'])\n"
        "import PIL.features\n"
        "assert not PIL.features.check('raqm')\n"
        "print(hashlib.sha256(img.tobytes()).hexdigest())\n"
    )
    got = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert got == pixel_hash(strip.render_batch(["سمع", "स्त"]))


def test_colours_sizes_and_strips():
    r = TextRenderer(
        width=128,
        height=16,
        margin=0,
        background_brightness=[255, 255, 255],
        text_brightness=(200, 0, 0),
    )
    assert r.config.background_brightness == (255, 255, 255)  # JSON lists become tuples
    image = r("Hi")
    assert image.shape == (16, 128, 3)
    inked = image[ink(image, 255)]
    assert inked.size and (inked[:, 1] == inked[:, 2]).all() and (inked[:, 0] >= 200).all()
    full = image[(image == (200, 0, 0)).all(-1)]
    assert len(full) > 0  # fully covered pixels are exactly the text colour
    # colour per channel: only the channels that differ change, each in its own direction
    mixed = TextRenderer(
        image_size=64, background_brightness=(100, 100, 100), text_brightness=(100, 0, 255)
    )
    pixels = mixed("Hi").reshape(-1, 3)
    coverage = mixed.coverage(["Hi"]).reshape(-1)
    expected = np.round(100 + np.outer(coverage / 255, [0, -100, 155])).astype(np.uint8)
    assert np.array_equal(pixels, expected)
    assert (TextRenderer(image_size=64, text_brightness=127)("Hi") == 127).all()
    big = TextRenderer(image_size=96, font_size=32)
    assert ink_columns(big("Hi"))[-1] > ink_columns(TextRenderer(image_size=96)("Hi"))[-1]


@pytest.mark.parametrize(
    "bad",
    [
        {"font_size": 2},
        {"image_size": "224"},
        {"margin": 200},
        {"line_spacing": True},
        {"text_brightness": (1, 2)},
        {"background_brightness": 300},
        {"max_lines": -1},
    ],
)
def test_config_errors_name_the_key(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TextRenderConfig(**bad)


def test_protocol_render_pair_on_image_and_torch():
    r = TextRenderer(image_size=64)
    a, b = "first text", "second"
    pair = render_pair(r, a, b)
    # a pair is the two texts as two paragraphs, stacked by whole lines of this renderer
    assert np.array_equal(pair, r(a + "\n" + b)) and not np.array_equal(pair, r(a))
    photo = np.full((10, 10, 3), 200, np.uint8)
    on_image = render_on_image(r, photo, "caption")
    assert np.array_equal(on_image[:32], r("caption")[:32]) and (on_image[32:] == 200).all()
    torch = pytest.importorskip("torch")
    texts = ["hello", "שלום", ""]
    pixels, ink_t = r.render_torch(texts, "cpu", return_ink=True)
    images = r.render_batch(texts)
    assert pixels.dtype == torch.float32
    assert np.array_equal(pixels.numpy(), to_pixels(images))
    assert np.array_equal(ink_t.numpy(), r.ink_mask(images))
    assert ink_t[0].any() and not ink_t[2].any()


def _regenerate() -> None:
    """Rewrite the golden PNGs and hashes (after an intended change: look at them first)."""
    GOLDEN.mkdir(exist_ok=True)
    r = TextRenderer(**GOLDEN_CONFIG)
    hashes = {}
    for script, text in sorted(SAMPLES.items()):
        image = r(text)
        Image.fromarray(image).save(GOLDEN / f"{script}.png", optimize=True)
        hashes[script] = pixel_hash(image)
    (GOLDEN / "hashes.json").write_text(json.dumps(hashes, indent=2) + "\n")


if __name__ == "__main__":
    _regenerate()


_MIXED = [
    "The cat sleeps on the warm windowsill.",
    "  leading spaces and   runs\tof tabs  ",
    "القطة تنام على حافة النافذة الدافئة.",
    "שלום, עולם!",
    "猫在温暖的窗台上睡觉。 and some Latin",
    "बिल्ली गर्म खिड़की पर सो रही है।",
    "a supercalifragilisticexpialidocious-and-then-some-more-words-without-spaces word",
    "Привет мир 🐈 zzz",
    "mixed עברית and English 123",
]


def test_the_folded_fast_path_draws_what_the_general_path_draws(monkeypatch):
    # speed path (spaces folded into the word before them) vs the general itemised path
    import clippo.render.text as text_module

    for cfg in ({"image_size": 64}, {"width": 300, "height": 32}, {"image_size": 96}):
        fast = TextRenderer(**cfg).render_batch(_MIXED)
        monkeypatch.setattr(text_module, "folded_tokens", lambda paragraph: None)
        slow = TextRenderer(**cfg).render_batch(_MIXED)
        monkeypatch.undo()
        assert np.array_equal(fast, slow), cfg


_RTL_ALPHABET = (
    "אבגדהוזחטיכלמנסעפצקרשתابتثجحخدذرسشصضطظعغفقكلمنهوي" + " .,!?:;-'\"()" + "\u05b0\u064b\u0651"
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_RTL_ALPHABET + "a1٣\u200f\u202b", max_size=30))
def test_the_all_rtl_shortcut_agrees_with_the_bidi_algorithm(paragraph):
    from clippo.render.text_layout import _all_rtl

    if _all_rtl(paragraph):
        assert bidi_levels_python(paragraph) == ([1] * len(paragraph), 1)


_CJK_ALPHABET = "猫在温暖的窗台上睡觉。，日本語のテキスト한국어" + "ab Z." + "  "


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=_CJK_ALPHABET, max_size=60), min_size=1, max_size=4))
def test_cjk_cell_runs_draw_what_one_copy_per_character_draws(texts):
    # a line's touching CJK cells are drawn with one concatenate (CellRun); with every item
    # marked as no cell, each character is placed and copied on its own
    import clippo.render.text as text_module

    build_word = text_module.build_word

    def no_cells(*args):
        word = build_word(*args)
        word.cell = False
        return word

    configs = (
        {"image_size": 64},
        {"width": 300, "height": 32, "margin": 0},  # the first line's cells start above row 0
        {"image_size": 96, "text_brightness": (200, 20, 20), "background_brightness": 90},
    )
    for cfg in configs:
        runs = TextRenderer(**cfg)
        fast, fast_cov = runs.render_batch(texts), runs.coverage(texts)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(text_module, "build_word", no_cells)
            single = TextRenderer(**cfg)
            assert np.array_equal(fast, single.render_batch(texts)), cfg
            assert np.array_equal(fast_cov, single.coverage(texts)), cfg
