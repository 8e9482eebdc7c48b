"""`clippo rank`: score every candidate image in a folder against a prompt, best first."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clippo.commands.args import nonnegative_int, positive_int, resolve_device


def _run(args: argparse.Namespace) -> int:
    import clippo
    from clippo.atomic import write_json_atomic
    from clippo.commands.search import print_and_write
    from clippo.rank import rank_folder

    device = resolve_device(args.device)
    model = clippo.load(args.model)
    ranked, skipped = rank_folder(
        model,
        args.prompt,
        args.candidates,
        batch_size=args.batch_size,
        device=device,
        num_workers=args.num_workers,
    )
    root = Path(args.candidates)
    rows = [{**asdict(r), "image_path": str(root / r.id)} for r in ranked]
    for key, reason in skipped:
        print(f"skipped {key}: {reason}", file=sys.stderr)
    # the table and the grid show the top K; ranked.json holds every candidate
    print_and_write(rows[: args.top or len(rows)], None, args.grid)
    if args.out:
        write_json_atomic(rows, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rank",
        help="rank candidate images against a prompt",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("candidates", metavar="CANDIDATE_DIR", help="folder of candidate images")
    p.add_argument("--model", required=True, help="big_vision .npz or a saved/trainer directory")
    p.add_argument("--prompt", required=True, help="the text the candidates are scored against")
    p.add_argument("--top", type=nonnegative_int, default=10, help="shown in table/grid (0: all)")
    p.add_argument("--out", help="ranked.json (every candidate) to write")
    p.add_argument("--grid", help="PNG of the top K to write")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--num-workers", type=nonnegative_int, default=4, help="image decoding threads")
    p.set_defaults(func=_run)
