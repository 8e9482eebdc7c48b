"""`clippo search`: query an index built by `clippo index` with a text, an image, or both."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clippo.commands.args import positive_int, resolve_device

if TYPE_CHECKING:
    import numpy as np

    from clippo.model.one_tower import CLIPPO


def encode_image_file(model: CLIPPO, path: str, device: Any = "cpu") -> np.ndarray:
    """One image file -> its embedding float32 [D]; a missing or undecodable file is an OSError
    naming it."""
    from clippo.embed import embed_images

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such image")
    result = embed_images(model, [path], device=device, num_workers=0, progress=False)
    if result.skipped:
        raise OSError(f"{path}: cannot read the image ({result.skipped[0][1]})")
    return result.vectors[0]


def encode_text(model: CLIPPO, text: str, device: Any = "cpu") -> np.ndarray:
    from clippo.embed import embed_texts

    return embed_texts(model, [text], device=device, progress=False).vectors[0]


def save_grid(path: str | Path, hits: Sequence[Mapping[str, Any]], thumb: int = 128) -> Path:
    """PNG of the hits in rank order: thumbnail (from `image_path`, grey when absent or
    unreadable) over "rank. score" and the caption or id. Written atomically."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from clippo.atomic import write_bytes_atomic
    from clippo.data.images import load_image

    if not hits:
        raise ValueError("no hits to draw")
    cols, pad, text_h = min(5, len(hits)), 8, 36
    rows = -(-len(hits) // cols)
    cell_w, cell_h = thumb + pad, thumb + text_h + pad
    canvas = Image.new("RGB", (pad + cols * cell_w, pad + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for n, hit in enumerate(hits):
        x, y = pad + (n % cols) * cell_w, pad + (n // cols) * cell_h
        pixels = load_image(hit["image_path"], thumb) if hit.get("image_path") else "none"
        if isinstance(pixels, np.ndarray):
            canvas.paste(Image.fromarray(pixels), (x, y))
        else:
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=(200, 200, 200))
        label = str(hit.get("caption", hit.get("image_path", hit.get("id", ""))))
        draw.text((x, y + thumb + 2), f"{hit['rank']}. {hit['score']:.3f}", fill=0, font=font)
        draw.text((x, y + thumb + 16), label[-22:], fill=(90, 90, 90), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


def print_and_write(hits: list[dict[str, Any]], out: str | None, grid: str | None) -> None:
    """The hits as a table on stdout, then hits.json and the grid PNG when asked for."""
    from clippo.atomic import write_json_atomic
    from clippo.eval.results import format_table, jsonable

    print(format_table(hits, floatfmt=".4f"))
    if out:
        write_json_atomic(jsonable(hits), out)
        print(f"wrote {out}", file=sys.stderr)
    if grid:
        save_grid(grid, hits)
        print(f"wrote {grid}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    import clippo
    from clippo.search import Index, combined_query

    if args.image is None and args.text is None:
        raise ValueError("give --text, --image, or both")
    device = resolve_device(args.device)
    index = Index.load(args.index)
    model = clippo.load(args.model)
    if model.config.out_dim != index.dim:
        raise ValueError(
            f"{args.model}: embeds to {model.config.out_dim} values, the index {args.index} "
            f"holds {index.dim}"
        )
    model = model.to(device).eval()
    image = encode_image_file(model, args.image, device) if args.image else None
    text = encode_text(model, args.text, device) if args.text is not None else None
    if image is not None and text is not None:
        query = combined_query(image, text, args.weight)
    elif image is not None:
        query = image
    else:
        assert text is not None  # checked at the start: --text, --image or both
        query = text
    scores, ids = index.query(query, args.k)
    hits = [
        {"rank": r + 1, "score": float(s), "id": int(i), **row}
        for r, (s, i, row) in enumerate(zip(scores[0], ids[0], index.rows(ids[0])))
        if i >= 0  # faiss pads with -1 when an approximate search finds fewer than k
    ]
    print_and_write(hits, args.out, args.grid)
    return 0


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "search",
        help="search an index by text, image, or image+text",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("index", metavar="INDEX_DIR", help="folder written by `clippo index`")
    p.add_argument("--model", required=True, help="big_vision .npz or a saved/trainer directory")
    p.add_argument("--text", help="text query")
    p.add_argument("--image", help="image query (a file)")
    p.add_argument(
        "--weight", type=_weight, default=0.5, help="image weight W of W*image + (1-W)*text"
    )
    p.add_argument("-k", type=positive_int, default=10, help="number of hits")
    p.add_argument("--out", help="hits.json to write")
    p.add_argument("--grid", help="PNG of the hits to write")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.set_defaults(func=_run)
