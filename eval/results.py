"""Evaluation results: JSON-ready values, a plain-text table, a retrieval-examples PNG.

write_json_atomic(jsonable(results), out / "results.json")  # clippo.atomic: the one writer
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clippo.atomic import write_bytes_atomic


def jsonable(x: Any) -> Any:
    """A copy of `x` that strict JSON can hold: numpy scalars/arrays -> Python numbers/lists,
    NaN/inf -> None, paths -> str, mapping keys -> str, tuples -> lists."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def _cell(v: Any, floatfmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else format(float(v), floatfmt)
    return str(v)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    floatfmt: str = ".3f",
) -> str:
    """A Markdown table (readable in a terminal and in a README) of `rows`.

    columns: default every key in order of first appearance; a missing value prints as "-".
    Floats use `floatfmt`; numeric columns are right-aligned.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    if not columns:
        raise ValueError("format_table needs at least one column")
    cells = [[_cell(row.get(c), floatfmt) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), (int, float, np.number)) or row.get(c) is None for row in rows)
        and any(row.get(c) is not None for row in rows)
        for c in columns
    ]
    widths = [max([len(str(c)), 3, *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)
        )
        + "|"
    )
    return "\n".join([line([str(c) for c in columns]), rule, *(line(r) for r in cells)])


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def save_retrieval_examples(
    path: str | os.PathLike,
    images: np.ndarray,
    texts: Sequence[str],
    sim_img_txt: np.ndarray,
    image_ids_for_text: np.ndarray,
    indices: Sequence[int] | np.ndarray | None = None,
    top: int = 3,
    thumb: int = 128,
) -> Path:
    """PNG of image->text retrieval: per query image its `top` captions, green when they describe
    that image, red otherwise. images uint8 [N, H, W, 3]; sim [N, M]; indices: which images
    (default the first 6). Written atomically; returns the path."""
    images = np.asarray(images)
    sim = np.asarray(sim_img_txt)
    ids = np.asarray(image_ids_for_text)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if sim.shape != (len(images), len(texts)) or ids.shape != (len(texts),):
        raise ValueError(
            f"sim {sim.shape} must be [{len(images)}, {len(texts)}] and image_ids_for_text "
            f"{ids.shape} [{len(texts)}]"
        )
    if indices is None:
        indices = range(min(6, len(images)))
    indices = list(indices)
    if not indices:
        raise ValueError("no query images to show")
    font, pad, line_h = _font(15), 10, 22
    row_h = max(thumb, line_h * (top + 1)) + pad
    width = pad + thumb + pad + 620
    canvas = Image.new("RGB", (width, pad + row_h * len(indices)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, i in enumerate(indices):
        y = pad + r * row_h
        img = Image.fromarray(images[i]).resize((thumb, thumb), Image.Resampling.BILINEAR)
        canvas.paste(img, (pad, y))
        x = pad + thumb + pad
        truth = [texts[int(j)] for j in np.nonzero(ids == i)[0]]
        draw.text(
            (x, y),
            f"query {i}: {truth[0] if truth else '(no caption)'}",
            fill=(90, 90, 90),
            font=font,
        )
        order = np.argsort(-sim[i], kind="stable")[:top]
        for k, j in enumerate(order):
            hit = ids[j] == i
            colour = (20, 130, 40) if hit else (190, 30, 30)
            mark = "ok " if hit else "-- "
            draw.text(
                (x, y + line_h * (k + 1)),
                f"{k + 1}. {mark}{texts[j]}  ({sim[i, j]:.3f})",
                fill=colour,
                font=font,
            )
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())
