"""Text rendering throughput: clippo's Unifont renderer vs. the Pillow loops a user would write.

Run: `python benchmarks/render.py` (pins itself to one CPU core). Prints images/s for short
captions (~50 chars) and paragraphs (~450 chars) in batches of 256, all methods on the same
strings in the same run:
  render_batch      clippo, vectorised numpy over the batch
  __call__          clippo, one string at a time
  render_torch      clippo, on the torch device (CPU here; CUDA too when present, batch 4,096)
  Pillow+Unifont    ImageDraw into a 224x224 canvas with Unifont's glyphs as a Pillow bitmap font
  Pillow TrueType   ImageDraw with a 16-px TrueType font (Pillow's bundled default)
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import textwrap
import time
from collections.abc import Callable

import numpy as np
from PIL import BdfFontFile, Image, ImageDraw, ImageFont

from clippo.render import UnifontRenderer

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


def pillow_loop(font, chars_per_line: int, size: int = 224) -> Callable[[list[str]], np.ndarray]:
    def render(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), size, size, 3), np.uint8)
        for i, text in enumerate(texts):
            canvas = Image.new("L", (size, size), 127)
            lines = textwrap.wrap(text, chars_per_line)[: size // 16]
            ImageDraw.Draw(canvas).multiline_text(
                (0, 0), "\n".join(lines), fill=0, font=font, spacing=0
            )
            out[i] = np.asarray(canvas)[:, :, None]
        return out

    return render


def throughput(
    fn: Callable[[list[str]], object], texts: list[str], seconds: float, sync=None
) -> float:
    """Median images/s over 3 timed rounds of at least `seconds` / 3 each."""
    fn(texts[: min(8, len(texts))])  # warm-up (tables, caches)
    rates = []
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            fn(texts)
            n += len(texts)
        if sync:
            sync()
        rates.append(n / (time.perf_counter() - start))
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per method and text kind")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--all-cores", action="store_true", help="do not pin to CPU core 0")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    r = UnifontRenderer()
    kinds = {
        "captions (50 ch)": make_texts(args.batch, 50, 0),
        "paragraphs (450 ch)": make_texts(args.batch, 450, 1),
    }
    methods: dict[str, Callable] = {
        "clippo render_batch": r.render_batch,
        "clippo __call__ loop": lambda ts: [r(t) for t in ts],
        "clippo render_torch (cpu)": lambda ts: r.render_torch(ts, "cpu"),
        "Pillow + Unifont bitmap font": pillow_loop(unifont_pil_font(r), 30),
        "Pillow TrueType 16 px": pillow_loop(ImageFont.load_default(size=16), 30),
    }
    results = {
        m: {k: throughput(fn, ts, args.seconds) for k, ts in kinds.items()}
        for m, fn in methods.items()
    }
    if torch.cuda.is_available():
        big = {k: (ts * (4096 // len(ts) + 1))[:4096] for k, ts in kinds.items()}
        fn = lambda ts: r.render_torch(ts, "cuda")  # noqa: E731
        results["clippo render_torch (cuda, batch 4096)"] = {
            k: throughput(fn, ts, args.seconds, sync=torch.cuda.synchronize)
            for k, ts in big.items()
        }
    base = results["Pillow TrueType 16 px"]
    header = f"{'method':42s}" + "".join(f"{k + ' img/s':>26s}{'vs TrueType':>13s}" for k in kinds)
    print(f"Unifont rendering, 224x224, batch {args.batch}, torch threads 1, "
          f"{'1 core' if not args.all_cores else 'all cores'}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for m, row in results.items():
        print(f"{m:42s}" + "".join(f"{row[k]:26,.0f}{row[k] / base[k]:12.1f}x" for k in kinds))


if __name__ == "__main__":
    main()
