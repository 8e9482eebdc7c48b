"""`clippo index`: a nearest-neighbour index (faiss) over what `clippo embed` wrote."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clippo.commands.args import positive_int


def metadata_for(
    ids: list[str], modality: str, image_root: str | None, texts: str | None
) -> dict[str, list[Any]]:
    """Row-aligned metadata: `key` (the embed id), and `image_path` (images: the root joined to
    the id) or `caption` (texts: line `id` of the texts file, when given)."""
    columns: dict[str, list[Any]] = {"key": list(ids)}
    if modality == "image":
        root = Path(image_root) if image_root else None
        columns["image_path"] = [str(root / i) if root else i for i in ids]
    elif texts is not None:
        from clippo.embed import read_texts

        lines = read_texts(texts)
        captions = []
        for i in ids:
            if not i.isdigit() or not 1 <= int(i) <= len(lines):
                raise ValueError(f"{texts}: id {i!r} is not a line number of this file")
            captions.append(lines[int(i) - 1])
        columns["caption"] = captions
    return columns


def _run(args: argparse.Namespace) -> int:
    from clippo.embed import read_embeddings
    from clippo.search import Index, IndexParams

    emb = Path(args.embeddings)
    if not emb.is_file():
        raise FileNotFoundError(f"{emb}: no such embeddings file")
    vectors, ids = read_embeddings(emb)
    if len(ids) != len(vectors):
        raise ValueError(f"{emb}: {len(vectors)} embeddings but {len(ids)} ids")
    index = Index.build(
        vectors,
        metadata_for(ids, args.modality, args.image_root, args.texts),
        exact_up_to=args.exact_up_to,
        params=IndexParams(approximate=args.approximate),
        model=args.model_name,
        modality=args.modality,
    )
    out = index.save(args.out)
    recall = index.meta["recall_at_10"]
    print(
        f"indexed {len(index)} x {index.dim} ({index.kind}, recall@10 vs exact {recall:.4f}) "
        f"-> {out}",
        file=sys.stderr,
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "index",
        help="build a nearest-neighbour index over embeddings",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("embeddings", metavar="EMB", help="FILE.npy (+ FILE.ids.txt) or FILE.parquet")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--modality", choices=("image", "text"), default="image")
    p.add_argument(
        "--exact-up-to",
        type=positive_int,
        default=100_000,
        help="exact search up to this many vectors, approximate beyond",
    )
    p.add_argument("--approximate", choices=("hnsw", "ivf"), default="hnsw")
    p.add_argument("--image-root", help="folder the image ids are relative to (for --grid)")
    p.add_argument("--texts", help="the texts file that was embedded (captions in the hits)")
    p.add_argument("--model-name", help="name of the model that embedded (kept in meta.json)")
    p.set_defaults(func=_run)
