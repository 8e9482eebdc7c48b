"""`clippo embed`: embeddings of a folder of images, a file of texts (one per line) or, with
`--layout clip-retrieval`, an image/caption source (webdataset tar, parquet, CSV).

Layouts: `files` writes one FILE.npy (+ FILE.ids.txt) or FILE.parquet; `clip-retrieval` writes
the folder clip-retrieval's inference writes (img_emb/, text_emb/, metadata/, one part per
--part-size inputs, float16 unit vectors), which `clippo index` and autofaiss read. A re-run
skips the parts already written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clippo.commands.args import nonnegative_int, positive_int, resolve_device

PAIR_KINDS = {".tar": "webdataset", ".parquet": "parquet", ".csv": "csv"}


def _pairs_source(args: argparse.Namespace, image_size: int) -> Any:
    from clippo.data.registry import build_source

    kind = args.pairs_kind
    if kind is None:
        suffix = next((s for s in PAIR_KINDS if args.pairs.lower().endswith(s)), None)
        if suffix is None:
            raise ValueError(f"{args.pairs}: say --pairs-kind (webdataset, parquet or csv)")
        kind = PAIR_KINDS[suffix]
    options: dict[str, Any] = {"image_size": image_size, "shuffle": False}
    if kind == "csv":
        options["columns"] = (args.image_column, args.caption_column)
    elif kind == "parquet":
        options.update(image_column=args.image_column, text_column=args.caption_column)
    return build_source(kind, args.pairs, options)


OUTPUT_SUFFIXES = (".npy", ".parquet")


def _output(value: str) -> str:
    """FILE.npy / FILE.parquet, or a folder (no suffix, for --layout clip-retrieval)."""
    suffix = Path(value).suffix
    if suffix and suffix not in OUTPUT_SUFFIXES:
        raise argparse.ArgumentTypeError("must end in .npy or .parquet (or be a folder)")
    return value


def _run(args: argparse.Namespace) -> int:
    """Bad input (CheckpointError, unreadable files, no GPU) raises; `clippo.cli` prints it."""
    import clippo
    from clippo import embed

    if args.layout == "files":
        if args.pairs is not None:
            raise ValueError("--pairs needs --layout clip-retrieval")
        if not args.out.endswith(OUTPUT_SUFFIXES):
            raise ValueError(f"--out {args.out}: must end in .npy or .parquet (--layout files)")
    elif args.out.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"--out {args.out}: --layout clip-retrieval writes a folder")
    device = resolve_device(args.device)
    model = clippo.load(args.model)
    if args.layout == "clip-retrieval":
        pairs = None
        if args.pairs is not None:
            pairs = _pairs_source(args, model.config.vit.image_size)
        run = embed.embed_clip_retrieval(
            model,
            args.out,
            images=args.images,
            texts=args.texts,
            pairs=pairs,
            part_size=args.part_size,
            batch_size=args.batch_size,
            device=device,
            bf16=args.bf16,
            num_workers=args.num_workers,
        )
        print(run.summary(args.out), file=sys.stderr)
        return 0
    if args.images is not None:
        result = embed.embed_image_dir(
            model,
            args.images,
            num_workers=args.num_workers,
            batch_size=args.batch_size,
            device=device,
            bf16=args.bf16,
        )
    else:
        texts = embed.read_texts(args.texts)
        result = embed.embed_texts(
            model, texts, batch_size=args.batch_size, device=device, bf16=args.bf16
        )
    written = embed.write_embeddings(result, args.out)
    print(embed.summary(result, written), file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed images or texts with a CLIPPO model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="big_vision .npz or a saved/trainer directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (searched recursively)")
    src.add_argument("--texts", help="UTF-8 text file, one text per line")
    src.add_argument(
        "--pairs",
        help="image/caption source (clip-retrieval layout): tar shards (globs, {000..009}), "
        ".parquet or .csv; both images and captions are embedded",
    )
    p.add_argument(
        "--out",
        required=True,
        type=_output,
        help="files: FILE.npy (ids in FILE.ids.txt, row-aligned) or FILE.parquet (id, "
        "embedding); clip-retrieval: a folder",
    )
    p.add_argument("--layout", choices=("files", "clip-retrieval"), default="files")
    p.add_argument(
        "--part-size",
        type=positive_int,
        default=10**6,
        help="clip-retrieval: inputs per part (its write_batch_size) (default: %(default)s)",
    )
    p.add_argument("--pairs-kind", choices=("webdataset", "parquet", "csv"))
    p.add_argument("--image-column", default="image", help="--pairs parquet/CSV image column")
    p.add_argument("--caption-column", default="caption", help="--pairs parquet/CSV caption")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--num-workers", type=nonnegative_int, default=4, help="image decoding threads")
    p.set_defaults(func=_run)
