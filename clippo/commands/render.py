"""`clippo render`: render a text corpus to webdataset tar or parquet shards (argparse only)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from clippo.commands.args import nonnegative_int, positive_int
from clippo.render import RENDERER_NAMES, AnyRenderConfig, RenderConfig, TextRenderConfig

# RenderConfig's integer fields where 0 is meaningful (no limit, no spacing, black ink);
# the others must be positive
_ZERO_OK = {"max_chars", "background_brightness", "text_brightness", "spacing", "min_width"}

_RENDER_HELP = {
    "image_size": "image side in pixels (unifont: a multiple of 16)",
    "font_size": "glyph size (unifont: 16 only)",
    "max_chars": "code points kept per text (text renderer default: 0, no limit)",
    "background_brightness": "background grey value",
    "text_brightness": "ink grey value",
    "lower": "lower-case ASCII A-Z first",
    "monospace": "no glyph trimming",
    "spacing": "pixels between glyphs",
    "min_width": "minimum glyph width after trimming",
}
# TextRenderConfig's own fields (its others share RenderConfig's names): None = its default
_TEXT_OPTIONS: dict[str, tuple[Any, str]] = {
    "width": (nonnegative_int, "image width (0: image size)"),
    "height": (nonnegative_int, "image height (0: image size), e.g. 32 for a one-line strip"),
    "margin": (nonnegative_int, "blank pixels on every side (default: 4)"),
    "line_spacing": (float, "line pitch in font sizes (default: 1.25)"),
    "max_lines": (nonnegative_int, "lines drawn at most (default: 0, as many as fit)"),
}
_GIVEN = "render_options_given"  # the renderer options given on the command line


class _Given(argparse.Action):
    """Stores like "store" and records that the option was given: the text renderer takes the
    shared options only when given (its defaults differ, e.g. max_chars)."""

    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, _GIVEN, {*getattr(namespace, _GIVEN, ()), self.dest})


class _GivenBool(argparse.BooleanOptionalAction):
    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        super().__call__(parser, namespace, values, option)
        setattr(namespace, _GIVEN, {*getattr(namespace, _GIVEN, ()), self.dest})


def _add_render_options(parser: argparse.ArgumentParser) -> None:
    """One option per RenderConfig and TextRenderConfig field, so the CLI always mirrors the
    renderers' settings."""
    group = parser.add_argument_group("renderer (RenderConfig, TextRenderConfig)")
    group.add_argument(
        "--renderer",
        choices=RENDERER_NAMES,
        default="unifont",
        help="unifont: big_vision's (bit-exact, what CLIPPO checkpoints read); text: shaped, "
        "bidi-ordered, every script (clippo.render.TextRenderer) (default: %(default)s)",
    )
    for f in dataclasses.fields(RenderConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{_RENDER_HELP.get(f.name, f.name)} (default: %(default)s)"
        if isinstance(f.default, bool):
            group.add_argument(flag, default=f.default, action=_GivenBool, help=help_)
        else:  # every other field is an int (RenderConfig checks the ranges beyond >= 0 / >= 1)
            kind = nonnegative_int if f.name in _ZERO_OK else positive_int
            group.add_argument(flag, type=kind, default=f.default, action=_Given, help=help_)
    for name, (kind, help_) in _TEXT_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, type=kind, default=None, action=_Given, help=f"text: {help_}")


def _names(renderer: str) -> set[str]:
    cls = RenderConfig if renderer == "unifont" else TextRenderConfig
    return {f.name for f in dataclasses.fields(cls)}


def foreign_options(args: argparse.Namespace) -> list[str]:
    """The options given that belong to the other renderer only, as flags."""
    given: set[str] = getattr(args, _GIVEN, set())
    return ["--" + n.replace("_", "-") for n in sorted(given - _names(args.renderer))]


def render_config(args: argparse.Namespace) -> AnyRenderConfig:
    """The settings of `--renderer` from the options (its own checks raise ValueError)."""
    if args.renderer == "unifont":
        return RenderConfig(**{name: getattr(args, name) for name in _names("unifont")})
    given: set[str] = getattr(args, _GIVEN, set()) & _names("text")
    return TextRenderConfig(**{name: getattr(args, name) for name in given})


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "render",
        help="render a text corpus to image shards",
        description="Render a text corpus to webdataset tar or parquet shards of images "
        "(Unifont's renderer, or the shaped text renderer with --renderer text). "
        "Finished shards are skipped on a re-run; bad rows are skipped and listed in the summary.",
    )
    p.add_argument(
        "input",
        help="text file (one text per line), .jsonl, .csv, .tsv, .parquet "
        "(file or folder), or a folder from datasets.save_to_disk; .gz works for line/csv files",
    )
    p.add_argument("output_dir", nargs="?", help="where shards go (optional with --preview)")
    p.add_argument(
        "--input-format",
        default="auto",
        choices=["auto", "text", "jsonl", "csv", "tsv", "parquet", "dataset"],
        help="input kind (default: %(default)s, from the file name)",
    )
    p.add_argument("--text-column", default=None, help="column holding the text (default: text)")
    p.add_argument("--split", default=None, help="split of a saved DatasetDict")
    p.add_argument(
        "--format",
        dest="output_format",
        default="tar",
        choices=["tar", "parquet"],
        help="shard format (default: %(default)s)",
    )
    p.add_argument(
        "--prefix",
        default="shard",
        help="shards are PREFIX-NNNNNN.tar/.parquet (default: %(default)s)",
    )
    p.add_argument(
        "--rows-per-shard", type=positive_int, default=10_000, help="(default: %(default)s)"
    )
    p.add_argument(
        "--num-workers",
        type=positive_int,
        default=1,
        help="processes, each rendering whole shards (default: %(default)s)",
    )
    p.add_argument(
        "--shard-index",
        type=nonnegative_int,
        default=0,
        help="this job's index in a job array: it writes shards s with s %% K == I",
    )
    p.add_argument("--num-shards", type=positive_int, default=1, help="jobs K in the job array")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="texts per render_batch call (default: %(default)s)",
    )
    p.add_argument(
        "--png-compress-level",
        type=nonnegative_int,
        default=6,
        choices=range(10),
        metavar="0-9",
        help="zlib level of the PNGs (default: %(default)s)",
    )
    p.add_argument(
        "--summary",
        default=None,
        help="summary JSON path (default: OUTPUT_DIR/PREFIX-summary[-jobI-of-K].json)",
    )
    p.add_argument(
        "--preview",
        nargs=2,
        metavar=("N", "PNG"),
        default=None,
        help="also write a grid of the first N rendered texts to PNG",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_render_options(p)
    p.set_defaults(func=lambda args: run(args, p))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Bad settings, input or output folder raise (ValueError, OSError); `clippo.cli` prints
    them as one line. Options that do not fit together are usage errors (exit 2)."""
    from clippo.atomic import write_json_atomic
    from clippo.errors import DataError
    from clippo.render.corpus import CorpusSource, ShardOptions, preview_texts, render_corpus
    from clippo.render.preview import write_preview

    if args.output_dir is None and args.preview is None:
        parser.error("give OUTPUT_DIR, --preview N PNG, or both")
    foreign = foreign_options(args)
    if foreign:
        parser.error(f"{', '.join(foreign)}: not an option of --renderer {args.renderer}")
    render = render_config(args)
    source = CorpusSource(args.input, args.input_format, args.text_column, args.split)
    if args.preview is not None:
        try:
            n, png = positive_int(args.preview[0]), args.preview[1]
        except argparse.ArgumentTypeError as e:
            parser.error(f"--preview N: {e}")
        from clippo.render import build_renderer

        texts = preview_texts(source, n)
        if not texts:
            raise DataError(f"{args.input}: no renderable texts for --preview")
        write_preview(build_renderer(render), texts, png)
        print(f"preview of {len(texts)} texts written to {png}")
    if args.output_dir is None:
        return 0
    options = ShardOptions(
        output_dir=args.output_dir,
        prefix=args.prefix,
        output_format=args.output_format,
        rows_per_shard=args.rows_per_shard,
        job_index=args.shard_index,
        num_jobs=args.num_shards,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        png_compress_level=args.png_compress_level,
    )
    summary = render_corpus(source, render, options, progress=not args.no_progress)
    path = args.summary or options.summary_path()
    write_json_atomic(summary.to_dict(), path, sort_keys=True)
    print(summary.format_table())
    print(f"summary written to {path}")
    return 0
