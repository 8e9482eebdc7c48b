"""The `clippo` command: argparse subcommands that call library functions.

Each subcommand lives in `clippo/commands/<name>.py` with `register(subparsers)`, which adds its
parser and sets `func` to a callable taking the parsed namespace. Only this layer reads argv.
`COMMANDS` names them as lazy "module:register" entries: a run imports only its own command's
module, and `clippo --help` (or an unknown command) all of them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from clippo.registry import Registry

COMMANDS: Registry[Callable[[Any], None]] = Registry(
    "command",
    {
        name: f"clippo.commands.{name}:register"
        for name in ("render", "train", "eval", "embed", "convert", "demo")
    },
    callables=True,
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with `command` only (the one a run needs)."""
    parser = argparse.ArgumentParser(prog="clippo", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if command is None else (command,):
        COMMANDS[name](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
