"""`clippo clean`: ALIGN's filtering rules over image/alt-text shards (tar, parquet, CSV).

  clippo clean count SHARD... --out COUNTS_DIR      phase 1, one counts file per shard
  clippo clean merge COUNTS_DIR [--out FILE]        phase 2, COUNTS_DIR/merged.npz
  clippo clean filter SHARD... --counts FILE --out OUT_DIR [rules]
  clippo clean run SHARD... --out OUT_DIR [rules]   all three (counts in OUT_DIR/counts)

Each phase skips the shards it already finished, so a job array (one shard per task) can run
count and filter, and a killed run resumes. OUT/clean_report.json totals the shards of one
invocation: after a job array, run `filter` once over every shard (all skipped) for the total.
Each shard's own report is OUT/<shard>.report.json. See `clippo.data.clean` for the rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clippo.commands.args import nonnegative_int


def _shards(specs: list[str]) -> list[str]:
    from clippo.data.image_text import expand_paths

    return expand_paths(specs)


def _config(args: argparse.Namespace) -> Any:
    from clippo.data.clean import CleanConfig

    fields = dict(image_column=args.image_column, caption_column=args.caption_column)
    if hasattr(args, "min_side"):
        fields.update(
            min_side=args.min_side,
            max_aspect_ratio=args.max_aspect_ratio,
            max_alt_texts_per_image=args.max_alt_texts_per_image,
            max_images_per_alt_text=args.max_images_per_alt_text,
            min_unigrams=args.min_unigrams,
            max_unigrams=args.max_unigrams,
            min_token_count=args.min_token_count,
            eval_images=args.eval_images,
            near_dup_bits=args.near_dup_bits,
            examples=args.examples,
        )
    return CleanConfig(**fields)


def _count(args: argparse.Namespace) -> int:
    from clippo.data.clean import count_shard

    config = _config(args)
    shards = _shards(args.shards)
    done = sum(count_shard(shard, args.out, config)[1] for shard in shards)
    print(
        f"counted {done} shards ({len(shards) - done} already done) -> {args.out}", file=sys.stderr
    )
    return 0


def _merge(args: argparse.Namespace) -> int:
    from clippo.data.clean import MERGED_FILE, merge_counts

    out = args.out or str(Path(args.counts_dir) / MERGED_FILE)
    merged = merge_counts(args.counts_dir, out)
    print(
        f"merged {len(merged.shards)} shards: {len(merged.image_hash)} images, "
        f"{len(merged.text_hash)} alt-texts, {len(merged.token_hash)} unigrams/bigrams -> {out}",
        file=sys.stderr,
    )
    return 0


def _finish(report: Any, skipped: int, out: str) -> int:
    from clippo.data.clean import REPORT_FILE

    print(report.table())
    if skipped:
        print(f"{skipped} shards were already cleaned (skipped)", file=sys.stderr)
    print(f"wrote {out} (report: {Path(out) / REPORT_FILE})", file=sys.stderr)
    return 0


def _filter(args: argparse.Namespace) -> int:
    from clippo.data.clean import MergedCounts, filter_shards

    counts = MergedCounts.load(args.counts)
    report, skipped = filter_shards(_shards(args.shards), counts, args.out, _config(args))
    return _finish(report, skipped, args.out)


def _run(args: argparse.Namespace) -> int:
    from clippo.data.clean import clean

    report, skipped = clean(_shards(args.shards), args.out, _config(args), args.counts_dir)
    return _finish(report, skipped, args.out)


def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-column", default="image", help="parquet/CSV image column")
    p.add_argument("--caption-column", default="caption", help="parquet/CSV caption column")


def _add_rules(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rules (ALIGN's values by default)")
    g.add_argument("--min-side", type=nonnegative_int, default=200, help="shorter side, px")
    g.add_argument("--max-aspect-ratio", type=float, default=3.0, help="long side / short side")
    g.add_argument("--max-alt-texts-per-image", type=nonnegative_int, default=1000)
    g.add_argument("--max-images-per-alt-text", type=nonnegative_int, default=10)
    g.add_argument("--min-unigrams", type=nonnegative_int, default=3)
    g.add_argument("--max-unigrams", type=nonnegative_int, default=20)
    g.add_argument(
        "--min-token-count",
        type=nonnegative_int,
        default=5,
        help="drop alt-texts with a unigram/bigram seen fewer times in the corpus (<= 1: off)",
    )
    g.add_argument("--eval-images", help="folder of evaluation images: drop (near) duplicates")
    g.add_argument(
        "--near-dup-bits",
        type=nonnegative_int,
        default=10,
        help="perceptual-hash bits (of 64) within which an image is a near duplicate",
    )
    g.add_argument("--examples", type=nonnegative_int, default=3, help="examples kept per rule")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "clean",
        help="filter image/alt-text shards with ALIGN's rules",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="phase", required=True, metavar="PHASE")
    shards_help = "shards: .tar, .parquet, .csv/.tsv (globs and {000..009} braces work)"

    c = sub.add_parser("count", help="phase 1: per-shard counts")
    c.add_argument("shards", nargs="+", metavar="SHARD", help=shards_help)
    c.add_argument("--out", required=True, help="counts folder")
    _add_columns(c)
    c.set_defaults(func=_count)

    m = sub.add_parser("merge", help="phase 2: merge the counts")
    m.add_argument("counts_dir", metavar="COUNTS_DIR")
    m.add_argument("--out", help="merged counts file (default: COUNTS_DIR/merged.npz)")
    m.set_defaults(func=_merge)

    f = sub.add_parser("filter", help="phase 3: write the kept pairs, shard by shard")
    f.add_argument("shards", nargs="+", metavar="SHARD", help=shards_help)
    f.add_argument("--counts", required=True, help="the merged counts file")
    f.add_argument("--out", required=True, help="output folder (one cleaned shard per input)")
    _add_columns(f)
    _add_rules(f)
    f.set_defaults(func=_filter)

    r = sub.add_parser("run", help="count, merge and filter in one go")
    r.add_argument("shards", nargs="+", metavar="SHARD", help=shards_help)
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--counts-dir", help="counts folder (default: OUT/counts)")
    _add_columns(r)
    _add_rules(r)
    r.set_defaults(func=_run)
