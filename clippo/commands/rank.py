"""`clippo rank`: score every candidate image in a folder against a prompt, best first.

With `--prompts FILE`, CANDIDATE_DIR holds one sub-folder of candidates per prompt and FILE
pairs them, one `NAME<TAB>PROMPT` line each (NAME: the sub-folder); every sub-folder must be
named once. Each prompt's ranking goes to OUT/NAME/ranked.json and its top K to OUT/NAME/grid.png.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clippo.commands.args import nonnegative_int, positive_int, resolve_device


def _rows(ranked: list[Any], root: Path, prompt: str | None = None) -> list[dict[str, Any]]:
    extra = {} if prompt is None else {"prompt": prompt}
    return [{**asdict(r), "image_path": str(root / r.id), **extra} for r in ranked]


def _run(args: argparse.Namespace) -> int:
    import clippo
    from clippo.atomic import write_json_atomic
    from clippo.commands.search import print_and_write
    from clippo.rank import rank_folder, rank_prompts, read_prompts_file

    if (args.prompt is None) == (args.prompts is None):
        raise ValueError("give --prompt or --prompts (one of them)")
    if args.prompts is not None:
        if not args.out:
            raise ValueError("--prompts needs --out DIR (a ranked.json and grid.png per prompt)")
        if args.grid:
            raise ValueError("--grid is for one prompt; with --prompts grids go to OUT/NAME/")
        prompts = read_prompts_file(args.prompts, args.candidates)  # errors before the model loads
    device = resolve_device(args.device)
    model = clippo.load(args.model)
    kwargs = dict(batch_size=args.batch_size, device=device, num_workers=args.num_workers)
    root = Path(args.candidates)
    if args.prompts is None:
        ranked, skipped = rank_folder(model, args.prompt, root, **kwargs)
        rows = _rows(ranked, root)
        for key, reason in skipped:
            print(f"skipped {key}: {reason}", file=sys.stderr)
        # the table and the grid show the top K; ranked.json holds every candidate
        print_and_write(rows[: args.top or len(rows)], None, args.grid)
        if args.out:
            write_json_atomic(rows, args.out)
            print(f"wrote {args.out}", file=sys.stderr)
        return 0
    results = rank_prompts(model, prompts, root, **kwargs)
    for name, prompt in prompts:
        ranked, skipped = results[name]
        rows = _rows(ranked, root / name, prompt)
        for key, reason in skipped:
            print(f"skipped {name}/{key}: {reason}", file=sys.stderr)
        print(f"\n{name}: {prompt}")
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        print_and_write(rows[: args.top or len(rows)], None, str(out / "grid.png"))
        write_json_atomic(rows, out / "ranked.json")
    print(f"wrote {len(prompts)} rankings under {args.out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rank",
        help="rank candidate images against a prompt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "candidates",
        metavar="CANDIDATE_DIR",
        help="folder of candidate images (--prompts: one sub-folder per prompt)",
    )
    p.add_argument("--model", required=True, help="big_vision .npz or a saved/trainer directory")
    p.add_argument("--prompt", help="the text the candidates are scored against")
    p.add_argument("--prompts", help="file of NAME<TAB>PROMPT lines (NAME: a sub-folder)")
    p.add_argument("--top", type=nonnegative_int, default=10, help="shown in table/grid (0: all)")
    p.add_argument("--out", help="ranked.json (every candidate) to write; --prompts: a folder")
    p.add_argument("--grid", help="PNG of the top K to write")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--num-workers", type=nonnegative_int, default=4, help="image decoding threads")
    p.set_defaults(func=_run)
