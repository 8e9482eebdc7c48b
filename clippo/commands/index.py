"""`clippo index`: a nearest-neighbour index (faiss) over what `clippo embed` wrote: FILE.npy
(+ FILE.ids.txt), FILE.parquet, or a clip-retrieval folder (img_emb/, text_emb/, metadata/;
`--modality` picks the embeddings, the metadata's image_path/caption columns are kept; an
approximate index's recall is measured with the other modality's embeddings as held-out
queries when the folder has them)."""

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
    from clippo.embed import CR_IMAGE, CR_METADATA, CR_TEXT, read_clip_retrieval, read_embeddings
    from clippo.search import Index, IndexParams

    emb = Path(args.embeddings)
    held_out = None  # queries for the approximate index's recall (None: perturbed rows)
    if emb.is_dir():
        if not (emb / CR_METADATA).is_dir():
            raise FileNotFoundError(
                f"{emb}: a folder without {CR_METADATA}/ (not clip-retrieval's)"
            )
        vectors, metadata = read_clip_retrieval(emb, args.modality)
        other = "text" if args.modality == "image" else "image"
        if (
            len(vectors) > args.exact_up_to
            and (emb / {"image": CR_IMAGE, "text": CR_TEXT}[other]).is_dir()
        ):
            held_out = read_clip_retrieval(emb, other)[0]
    elif not emb.is_file():
        raise FileNotFoundError(f"{emb}: no such embeddings file")
    else:
        vectors, ids = read_embeddings(emb)
        if len(ids) != len(vectors):
            raise ValueError(f"{emb}: {len(vectors)} embeddings but {len(ids)} ids")
        metadata = metadata_for(ids, args.modality, args.image_root, args.texts)
    index = Index.build(
        vectors,
        metadata,
        exact_up_to=args.exact_up_to,
        params=IndexParams(approximate=args.approximate),
        model=args.model_name,
        modality=args.modality,
        recall_queries=held_out,
    )
    out = index.save(args.out)
    recall = index.meta["recall_at_10"]
    how = f" on {index.meta['recall_queries']} queries" if "recall_queries" in index.meta else ""
    print(
        f"indexed {len(index)} x {index.dim} ({index.kind}, recall@10 vs exact {recall:.4f}"
        f"{how}) -> {out}",
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
    p.add_argument(
        "embeddings",
        metavar="EMB",
        help="FILE.npy (+ FILE.ids.txt), FILE.parquet or a clip-retrieval folder",
    )
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
