"""Draw one sentence in every supported script with both renderers, side by side -> a PNG.

    .venv/bin/python scripts/render_scripts_png.py [docs/renderers.png]

Left: `UnifontRenderer` (big_vision's, one bitmap per code point); right: `TextRenderer`
(shaped, bidi-ordered). Each sentence is drawn on one 400-px line; the image is greyscale.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from clippo.atomic import write_bytes_atomic
from clippo.render import TextRenderer, UnifontRenderer

# (script, sentence): "the cat sleeps on the warm windowsill" or close, written by hand
SENTENCES = [
    ("Latin", "The cat sleeps on the warm windowsill."),
    ("Greek", "Η γάτα κοιμάται στο ζεστό περβάζι."),
    ("Cyrillic", "Кошка спит на тёплом подоконнике."),
    ("Arabic", "القطة تنام على حافة النافذة الدافئة."),
    ("Hebrew", "החתול ישן על אדן החלון החם."),
    ("Devanagari", "बिल्ली गर्म खिड़की पर सो रही है।"),
    ("Bengali", "বিড়ালটি উষ্ণ জানালায় ঘুমাচ্ছে।"),
    ("Tamil", "பூனை சூடான ஜன்னலில் தூங்குகிறது."),
    ("Thai", "แมวนอนหลับอยู่บนขอบหน้าต่างที่อบอุ่น"),
    ("Khmer", "ឆ្មាដេកលើបង្អួចដ៏កក់ក្ដៅ។"),
    ("Chinese", "猫在温暖的窗台上睡觉。"),
    ("Japanese", "猫は暖かい窓辺で眠っています。"),
    ("Korean", "고양이가 따뜻한 창턱에서 잔다."),
    ("Emoji", "🐈 💤 ☀️ 🏠 ❤️ 🙂"),
]
WIDTH, ROW, LABEL, GAP = 400, 32, 112, 8


def sheet() -> np.ndarray:
    """uint8 [H, W] greyscale: a header row, then per script its label, Unifont, TextRenderer."""
    # Unifont draws squares only: one wide square, of which the first 16-px text line is kept
    unifont = UnifontRenderer(image_size=WIDTH, lower=False, background_brightness=255)
    text = TextRenderer(width=WIDTH, height=ROW, margin=6, background_brightness=255)
    label = TextRenderer(width=LABEL, height=ROW, margin=6, background_brightness=255)
    rows = [
        np.concatenate(
            [
                label("script")[..., 0],
                np.full((ROW, GAP), 255, np.uint8),
                text("UnifontRenderer (default)")[..., 0],
                np.full((ROW, GAP), 255, np.uint8),
                text("TextRenderer")[..., 0],
            ],
            axis=1,
        )
    ]
    for name, sentence in SENTENCES:
        uni = np.full((ROW, WIDTH), 255, np.uint8)
        uni[8:24] = unifont(sentence)[:16, :, 0]  # centred like the text renderer's line
        rows.append(
            np.concatenate(
                [
                    label(name)[..., 0],
                    np.full((ROW, GAP), 255, np.uint8),
                    uni,
                    np.full((ROW, GAP), 220, np.uint8),
                    text(sentence)[..., 0],
                ],
                axis=1,
            )
        )
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="docs/renderers.png")
    args = parser.parse_args()
    buf = io.BytesIO()
    Image.fromarray(sheet(), "L").save(buf, format="PNG", optimize=True)
    path = write_bytes_atomic(args.out, buf.getvalue())
    print(f"{path}: {len(buf.getvalue()) / 1024:.1f} KB")


if __name__ == "__main__":
    main()
