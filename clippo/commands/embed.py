"""`clippo embed`: embeddings of a folder of images or a file of texts (one per line)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from clippo.commands.args import nonnegative_int, positive_int, resolve_device


def _run(args: argparse.Namespace) -> int:
    """Bad input (CheckpointError, unreadable files, no GPU) raises; `clippo.cli` prints it."""
    import clippo
    from clippo import embed

    device = resolve_device(args.device)
    model = clippo.load(args.model)
    common = dict(batch_size=args.batch_size, device=device, bf16=args.bf16)
    if args.images is not None:
        result = embed.embed_image_dir(model, args.images, num_workers=args.num_workers, **common)
    else:
        result = embed.embed_texts(model, embed.read_texts(args.texts), **common)
    written = embed.write_embeddings(result, args.out)
    print(embed.summary(result, written), file=sys.stderr)
    return 0


def _output(value: str) -> str:
    if not value.endswith((".npy", ".parquet")):
        raise argparse.ArgumentTypeError("must end in .npy or .parquet")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed images or texts with a CLIPPO model",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="big_vision .npz or a saved/trainer directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (searched recursively)")
    src.add_argument("--texts", help="UTF-8 text file, one text per line")
    p.add_argument(
        "--out",
        required=True,
        type=_output,
        help="FILE.npy (ids in FILE.ids.txt, row-aligned) or FILE.parquet (id, embedding)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--num-workers", type=nonnegative_int, default=4, help="image decoding threads")
    p.set_defaults(func=_run)
