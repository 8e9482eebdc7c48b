"""The `clippo` command: argparse subcommands that call library functions.

Each subcommand lives in `clippo/commands/<name>.py` with `register(subparsers)`, which adds its
parser and sets `func` to a callable taking the parsed namespace. Only this layer reads argv.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("render", "train", "eval", "embed", "convert", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clippo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"clippo.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
