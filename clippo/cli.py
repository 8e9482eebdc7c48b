"""The `clippo` command: argparse subcommands that call library functions.

Each subcommand lives in `clippo/commands/<name>.py` with `register(subparsers)`, which adds its
parser and sets `func` to a callable taking the parsed namespace. Only this layer reads argv.
`COMMANDS` names them as lazy "module:register" entries: a run imports only its own command's
module, and `clippo --help` (or an unknown command) all of them.

Errors: bad input raises the project's error types (ValueError subclasses such as ConfigError,
CheckpointError and DataError; OSError such as FileNotFoundError or a full disk; EOFError). `main`
prints each as one line, `clippo <command>: error: <message>`, and exits 1; argparse usage errors
exit 2; Ctrl-C prints one line and exits 130. `--debug`, anywhere on the command line (`clippo
--debug train run.toml` or `clippo train run.toml --debug`), shows the full traceback instead.
Any other exception is a bug in clippo and keeps its traceback.
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
        for name in (
            "render",
            "train",
            "eval",
            "embed",
            "convert",
            "demo",
            "index",
            "search",
            "rank",
            "clean",
            "compare",
        )
    },
    callables=True,
)

DEBUG_FLAG = "--debug"
# what a command may raise for bad input, printed as one line (anything else is a bug)
USER_ERRORS = (ValueError, OSError, EOFError)
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130  # 130 = 128 + SIGINT, as shells report Ctrl-C
HINT = f" ({DEBUG_FLAG} for the traceback)"
HINT_UNDER = 120  # characters: longer messages go without the hint, to stay readable


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with `command` only (the one a run needs)."""
    parser = argparse.ArgumentParser(prog="clippo", description=(__doc__ or "").splitlines()[0])
    # only for --help: main() takes the flag out of argv wherever it stands
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the full traceback of an error (anywhere)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if command is None else (command,):
        COMMANDS[name](sub)
    return parser


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """argv without `--debug` (before a `--` that ends the options), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    return kept, len(kept) != len(argv)


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. An error re-raised by a torch DataLoader carries the
    worker's whole traceback in its message: its last line is the original message."""
    text = str(error).strip()
    if "\nOriginal Traceback" in text:
        # the traceback's frames are indented; what follows the last of them is "Type: message"
        lines = text.splitlines()
        last_frame = max(i for i, line in enumerate(lines) if line[:1].isspace() or i == 0)
        tail = "\n".join(lines[last_frame + 1 :]) or lines[-1]
        name, sep, message = tail.partition(": ")
        qualified = sep and all(part.isidentifier() for part in name.split("."))
        text = message if qualified else tail
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or repr(error)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    argv, debug = split_debug(list(sys.argv[1:] if argv is None else argv))
    command = argv[0] if argv and argv[0] in COMMANDS else None
    prog = f"clippo {command}" if command else "clippo"
    try:
        args = build_parser(command).parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        if debug:
            raise
        message = one_line(e)
        hint = HINT if len(message) < HINT_UNDER else ""
        print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
