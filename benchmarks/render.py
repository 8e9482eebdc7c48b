"""Text rendering throughput: clippo's Unifont renderer vs. the Pillow loops a user would write.

Run: `python benchmarks/render.py` (pins itself to one CPU core). Prints images/s (medians of 5
rounds that interleave the methods) for short captions (~50 chars) and paragraphs (~450 chars) in
batches of 256, all methods on the same strings in the same run, each returning uint8
[B, 224, 224, 3]:
  render_batch        clippo, vectorised numpy over the batch
  __call__            clippo, one string at a time
  render_torch        clippo, on the torch device (CPU here; CUDA too when present, batch 4,096)
  Pillow fixed-width  ImageDraw with Unifont's glyphs as a Pillow bitmap font, one `text` call per
                      line of `size // 8` characters: the reference wraps per character at a fixed
                      width too, so this is the fair baseline and the ratio column divides by it
  Pillow textwrap     the same glyphs, canvas and drawing, lines from `textwrap.wrap` (word
                      wrapping: more work than the reference does)
  Pillow TrueType     the textwrap loop with a 16-px TrueType font (Pillow's bundled default)

A second table times the shaped multilingual `TextRenderer` (224x224, 16 px, word-wrapped) on
distinct captions/paragraphs drawn from Zipf-distributed vocabularies (English, Arabic and
Chinese from Faker's lorem word lists: the test extras; Hindi written here), its word cache
warmed on other text from the same vocabulary, and cold (a fresh renderer per batch), beside
Pillow `ImageDraw` (raqm layout when Pillow has it) with the same bundled Noto fonts and
`textwrap` lines, and PangoCairo when it happens to be installed. `--text-only` skips the
Unifont table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import tempfile
import textwrap
import time
from collections.abc import Callable

import numpy as np
from PIL import BdfFontFile, Image, ImageDraw, ImageFont

from clippo.render import TextRenderer, UnifontRenderer

WORDS = [
    "a",
    "the",
    "photo",
    "of",
    "dog",
    "cat",
    "red",
    "blue",
    "small",
    "large",
    "man",
    "woman",
    "with",
    "on",
    "in",
    "at",
    "park",
    "street",
    "car",
    "bus",
    "sitting",
    "playing",
    "next",
    "to",
    "two",
    "three",
    "people",
    "green",
    "table",
    "holding",
    "standing",
    "near",
    "water",
    "white",
]


def make_texts(n: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words: list[str] = []
        while len(" ".join(words)) < length:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words)[:length])
    return out


def unifont_pil_font(renderer: UnifontRenderer) -> ImageFont.ImageFont:
    """Latin-1 Unifont glyphs as a Pillow bitmap font (Pillow bitmap fonts hold 256 glyphs)."""
    glyphs = renderer.glyphs
    lines = ["STARTFONT 2.1", "FONT unifont", "SIZE 16 75 75", "FONTBOUNDINGBOX 16 16 0 -2"]
    lines += ["STARTPROPERTIES 2", "FONT_ASCENT 14", "FONT_DESCENT 2", "ENDPROPERTIES", "CHARS 224"]
    for cp in range(32, 256):
        cell = glyphs.bitmaps[glyphs.index[cp]]
        width = 8 if not cell[:, 8:].any() else 16
        rows = np.packbits(cell[:, :width], axis=1)
        lines += [f"STARTCHAR U{cp:04X}", f"ENCODING {cp}", f"SWIDTH {width * 60} 0"]
        lines += [f"DWIDTH {width} 0", f"BBX {width} 16 0 -2", "BITMAP"]
        lines += ["".join(f"{b:02X}" for b in row) for row in rows]
        lines.append("ENDCHAR")
    lines.append("ENDFONT")
    with tempfile.TemporaryDirectory() as tmp:
        bdf = os.path.join(tmp, "unifont.bdf")
        with open(bdf, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(bdf, "rb") as f:
            BdfFontFile.BdfFontFile(f).save(os.path.join(tmp, "unifont"))
        return ImageFont.load(os.path.join(tmp, "unifont.pil"))


def fixed_width_lines(text: str, chars_per_line: int, max_lines: int) -> list[str]:
    """Slices of `chars_per_line` characters, as many as the canvas shows."""
    end = min(len(text), chars_per_line * max_lines)
    return [text[i : i + chars_per_line] for i in range(0, end, chars_per_line)]


def word_wrapped_lines(text: str, chars_per_line: int, max_lines: int) -> list[str]:
    return textwrap.wrap(text, chars_per_line)[:max_lines]


def pillow_loop(
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    split: Callable[[str, int, int], list[str]],
    size: int = 224,
) -> Callable[[list[str]], np.ndarray]:
    """Texts -> uint8 [B, size, size, 3]: one RGB canvas per text, one `text` call per line.

    Lines hold `size // 8` characters (Unifont's half-width cell is 8 px), 16 px apart.
    """
    blank = Image.new("RGB", (size, size), (127, 127, 127))
    chars, max_lines = size // 8, size // 16

    def render(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), size, size, 3), np.uint8)
        for i, text in enumerate(texts):
            canvas = blank.copy()
            draw = ImageDraw.Draw(canvas)
            for row, line in enumerate(split(text, chars, max_lines)):
                draw.text((0, 16 * row), line, fill=(0, 0, 0), font=font)
            # an RGB canvas converts straight to [H, W, 3]; broadcasting a grey one is slower
            out[i] = np.asarray(canvas)
        return out

    return render


HINDI = [
    "एक",
    "भारत",
    "देश",
    "लोग",
    "समय",
    "साल",
    "काम",
    "दिन",
    "बात",
    "घर",
    "पानी",
    "शहर",
    "गाँव",
    "बच्चा",
    "बच्चे",
    "महिला",
    "पुरुष",
    "सड़क",
    "गाड़ी",
    "नदी",
    "पहाड़",
    "पेड़",
    "फूल",
    "किताब",
    "स्कूल",
    "बाज़ार",
    "खाना",
    "रात",
    "सुबह",
    "शाम",
    "बड़ा",
    "छोटा",
    "नया",
    "पुराना",
    "सुंदर",
    "लाल",
    "नीला",
    "हरा",
    "सफ़ेद",
    "काला",
    "दो",
    "तीन",
    "चार",
    "पाँच",
    "के",
    "की",
    "का",
    "में",
    "पर",
    "से",
    "और",
    "है",
    "हैं",
    "था",
    "थी",
    "साथ",
    "पास",
    "ऊपर",
    "नीचे",
    "खेलते",
    "बैठे",
    "खड़े",
    "चलते",
    "हुए",
    "देखते",
    "हुआ",
    "कुत्ता",
    "बिल्ली",
    "घोड़ा",
    "चिड़िया",
    "आदमी",
    "औरत",
    "परिवार",
    "दोस्त",
    "स्टेशन",
    "मंदिर",
    "त्योहार",
    "संगीत",
    "क्रिकेट",
    "प्रधानमंत्री",
    "विश्वविद्यालय",
    "स्वतंत्रता",
]


def vocabulary(language: str) -> list[str]:
    """Words of `language`, most common first (Faker's lorem lists are roughly so ordered)."""
    if language == "hi":
        return HINDI
    from faker.providers.lorem import ar_AA, en_US, zh_CN

    return list({"en": en_US, "ar": ar_AA, "zh": zh_CN}[language].Provider.word_list)


def zipf_texts(language: str, n: int, length: int, seed: int) -> list[str]:
    """n texts of about `length` characters, words drawn with probability ~ 1/rank."""
    words = vocabulary(language)
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    sep = "" if language == "zh" else " "
    out = []
    for _ in range(n):
        text = ""
        while len(text) < length:
            text += sep + rng.choices(words, weights)[0] if text else rng.choices(words, weights)[0]
            if language == "zh" and rng.random() < 0.15:
                text += "，"
        out.append(text)
    return out


def pillow_text_loop(
    font: ImageFont.FreeTypeFont, chars_per_line: int, rtl: bool, size: int = 224
) -> Callable[[list[str]], np.ndarray]:
    """Pillow ImageDraw (raqm when available) with a bundled Noto font: `textwrap` lines of
    `chars_per_line`, 20 px apart (the TextRenderer's pitch), right-aligned when `rtl`."""
    blank = Image.new("RGB", (size, size), (127, 127, 127))
    lines_fit = (size - 8 - 16) // 20 + 1

    def render(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), size, size, 3), np.uint8)
        for i, text in enumerate(texts):
            canvas = blank.copy()
            draw = ImageDraw.Draw(canvas)
            for row, line in enumerate(textwrap.wrap(text, chars_per_line)[:lines_fit]):
                x = size - 4 - draw.textlength(line, font=font) if rtl else 4
                draw.text((x, 4 + 20 * row), line, fill=(0, 0, 0), font=font)
            out[i] = np.asarray(canvas)
        return out

    return render


def pango_loop(family: str, size: int = 224) -> Callable[[list[str]], np.ndarray] | None:
    """PangoCairo, word-wrapped, when PyGObject with Pango and Cairo is installed."""
    try:
        import cairo  # type: ignore[import-not-found]
        import gi  # type: ignore[import-not-found]

        gi.require_version("Pango", "1.0")
        gi.require_version("PangoCairo", "1.0")
        from gi.repository import Pango, PangoCairo  # type: ignore[import-not-found]
    except (ImportError, ValueError):
        return None

    def render(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), size, size, 3), np.uint8)
        for i, text in enumerate(texts):
            surface = cairo.ImageSurface(cairo.FORMAT_RGB24, size, size)
            ctx = cairo.Context(surface)
            ctx.set_source_rgb(0.5, 0.5, 0.5)
            ctx.paint()
            ctx.set_source_rgb(0, 0, 0)
            layout = PangoCairo.create_layout(ctx)
            layout.set_font_description(Pango.FontDescription(f"{family} 12"))
            layout.set_width((size - 8) * Pango.SCALE)
            layout.set_wrap(Pango.WrapMode.WORD_CHAR)
            layout.set_text(text, -1)
            ctx.move_to(4, 4)
            PangoCairo.show_layout(ctx, layout)
            raw = np.ndarray((size, size, 4), np.uint8, surface.get_data())
            out[i] = raw[..., 2::-1]
        return out

    return render


def text_renderer_table(seconds: float, batch: int) -> None:
    """The TextRenderer rows: warm and cold cache, Pillow(-raqm) and Pango in the same run."""
    from PIL import features

    from clippo.fonts import font_path

    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    kinds = {  # name: (language, length, Noto font for Pillow, chars per line, rtl)
        "English captions": ("en", 50, "NotoSans-Regular.ttf", 30, False),
        "English paragraphs": ("en", 450, "NotoSans-Regular.ttf", 30, False),
        "Arabic captions": ("ar", 50, "NotoSansArabic-Regular.ttf", 34, True),
        "Hindi captions": ("hi", 50, "NotoSansDevanagari-Regular.ttf", 30, False),
        "Chinese captions": ("zh", 25, "NotoSans-Regular.ttf", 13, False),  # Pillow: no CJK font
    }
    header = f"{'text kind':22s}{'warm img/s':>12s}{'cold img/s':>12s}{'hit rate':>10s}"
    header += f"{'cache MB':>10s}{'Pillow img/s':>14s}{'Pango img/s':>13s}"
    print(
        f"\nTextRenderer, 224x224, 16 px, word-wrapped, batch {batch}; Pillow layout: "
        f"{'raqm' if layout == ImageFont.Layout.RAQM else 'basic (no raqm)'}"
    )
    print(header)
    print("-" * len(header))
    for name, (language, length, noto, chars, rtl) in kinds.items():
        texts = zipf_texts(language, batch, length, seed=1)
        warm = TextRenderer()
        warm.render_batch(zipf_texts(language, 2000, length, seed=2))  # other text, same words
        warm.hits = warm.misses = 0
        warm.render_batch(texts)  # the hit rate of the measured texts' first pass
        info = warm.cache_info()
        font = ImageFont.truetype(str(font_path(noto)), 16, layout_engine=layout)
        methods: dict[str, Callable[[list[str]], object]] = {
            "warm": warm.render_batch,
            "cold": lambda ts: TextRenderer().render_batch(ts),
            "pillow": pillow_text_loop(font, chars, rtl),
        }
        pango = pango_loop("Noto Sans")
        if pango is not None:
            methods["pango"] = pango
        rates = measure(methods, {name: texts}, seconds * len(methods) / 3, rounds=3)
        pango_rate = f"{rates['pango'][name]:13,.0f}" if pango is not None else f"{'n/a':>13s}"
        print(
            f"{name:22s}{rates['warm'][name]:12,.0f}{rates['cold'][name]:12,.0f}"
            f"{info['hit_rate']:10.1%}{info['bytes'] / 2**20:10.1f}"
            f"{rates['pillow'][name]:14,.0f}{pango_rate}"
        )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rate(
    fn: Callable[[list[str]], object],
    texts: list[str],
    seconds: float,
    sync: Callable[[], None] | None = None,
) -> float:
    """Images/s of `fn` on `texts`, called repeatedly for at least `seconds`."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(texts)
        n += len(texts)
    if sync:
        sync()
    return n / (time.perf_counter() - start)


def measure(
    methods: dict[str, Callable[[list[str]], object]],
    kinds: dict[str, list[str]],
    seconds: float,
    rounds: int = 5,
    sync: Callable[[], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Median images/s per method and text kind over `rounds` timed rounds.

    The rounds interleave the methods, so when the machine's load changes during the run, every
    method sees the change alike and their ratios stay fair.
    """
    for fn in methods.values():
        for texts in kinds.values():
            fn(texts[:8])  # warm-up (tables, caches)
    rates: dict[str, dict[str, list[float]]] = {m: {k: [] for k in kinds} for m in methods}
    for _ in range(rounds):
        for k, texts in kinds.items():
            for m, fn in methods.items():
                rates[m][k].append(rate(fn, texts, seconds / rounds, sync))
    return {m: {k: float(np.median(v)) for k, v in row.items()} for m, row in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="seconds per method and text kind"
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--all-cores", action="store_true", help="do not pin to CPU core 0")
    parser.add_argument("--text-only", action="store_true", help="only the TextRenderer table")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.text_only:
        text_renderer_table(args.seconds, args.batch)
        return
    import torch

    torch.set_num_threads(1)
    r = UnifontRenderer()
    kinds = {
        "captions (50 ch)": make_texts(args.batch, 50, 0),
        "paragraphs (450 ch)": make_texts(args.batch, 450, 1),
    }
    unifont = unifont_pil_font(r)
    fair = "Pillow + Unifont bitmap, fixed-width slices (as the reference wraps)"
    methods: dict[str, Callable[[list[str]], object]] = {
        "clippo render_batch": r.render_batch,
        "clippo __call__ loop": lambda ts: [r(t) for t in ts],
        "clippo render_torch (cpu)": lambda ts: r.render_torch(ts, "cpu"),
        fair: pillow_loop(unifont, fixed_width_lines),
        "Pillow + Unifont bitmap, textwrap word wrap (more work than the reference)": pillow_loop(
            unifont, word_wrapped_lines
        ),
        "Pillow TrueType 16 px, textwrap word wrap": pillow_loop(
            ImageFont.load_default(size=16), word_wrapped_lines
        ),
    }
    results = measure(methods, kinds, args.seconds)
    if torch.cuda.is_available():
        big = {k: (ts * (4096 // len(ts) + 1))[:4096] for k, ts in kinds.items()}

        def on_cuda(texts: list[str]) -> object:
            return r.render_torch(texts, "cuda")

        cuda = {"clippo render_torch (cuda, batch 4096)": on_cuda}
        results.update(measure(cuda, big, args.seconds, sync=torch.cuda.synchronize))
    base = results[fair]
    width = max(map(len, results)) + 2
    header = f"{'method':{width}s}" + "".join(f"{k + ' img/s':>27s}{'vs fair':>9s}" for k in kinds)
    cores = "all cores" if args.all_cores else "1 core"
    print(f"Unifont rendering, 224x224, batch {args.batch}, torch threads 1, {cores}")
    print(f"{cpu_name()}, {datetime.date.today().isoformat()}; 'vs fair': / the fixed-width loop")
    print(header)
    print("-" * len(header))
    for m, row in results.items():
        print(f"{m:{width}s}" + "".join(f"{row[k]:27,.0f}{row[k] / base[k]:8.2f}x" for k in kinds))
    text_renderer_table(args.seconds, args.batch)


if __name__ == "__main__":
    main()
