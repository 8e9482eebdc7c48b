"""Atomic file writes: write a temporary file beside the target, then `os.replace` it into place.

A reader sees the old file or the new one, never a torn one; a failed or interrupted write leaves
the old file as it was and removes the temporary file. The temporary file gets a fresh name,
created exclusively (`mkstemp`: O_CREAT | O_EXCL), so a symlink planted in the folder can never
redirect the data. A killed writer leaves `.NAME.*.tmp` behind (`temp_files` finds them). Stdlib
only (no torch/numpy imports), so every layer can use it, `clippo.render` included: this is the
project's one file writer.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_file",
    "atomic_path",
    "temp_files",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
]

TEMP_SUFFIX = ".tmp"


def _mkstemp(target: Path) -> tuple[int, str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results and checkpoints are meant to be shared
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def _discard(tmp: str) -> None:
    # lexists: a temp name swapped for a dangling link is removed too (unlink never follows links)
    if os.path.lexists(tmp):
        os.unlink(tmp)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target` (its folder is created); when the block ends without
    an error the file written there replaces `target` in one step, otherwise it is deleted.

        with atomic_path("out/model.safetensors") as tmp:
            save_file(state, str(tmp))

    For a library that takes a path. Where the writer can take an open file, `atomic_file` is
    tighter: nothing reopens the name.
    """
    target = Path(target)
    fd, tmp = _mkstemp(target)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        _discard(tmp)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Yield a binary file open on a fresh temporary file beside `target`; when the block ends
    without an error it is flushed, fsynced, closed and renamed to `target`, otherwise deleted.

        with atomic_file("out/shard-000000.tar") as f:
            f.write(data)
    """
    target = Path(target)
    fd, tmp = _mkstemp(target)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        _discard(tmp)


def temp_files(folder: str | os.PathLike, name_glob: str = "*") -> list[Path]:
    """The temporary files that writes to `folder/<name matching name_glob>` left behind (a killed
    writer's `.NAME.XXXXXXXX.tmp`), sorted. Only a caller that knows no writer is running (it
    holds the folder's lock) may delete them."""
    return sorted(Path(folder).glob(f".{name_glob}.*{TEMP_SUFFIX}"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (flushed and fsynced before the rename). Returns the path."""
    path = Path(path)
    with atomic_file(path) as f:
        f.write(data)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically. Returns the path."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(obj: Any, path: str | os.PathLike, *, sort_keys: bool = False) -> Path:
    """Write `obj` as indented JSON (plus a final newline) to `path` atomically. Returns the path.

    The object is serialised before anything is written, so an unserialisable one raises and
    leaves `path` untouched. Convert numpy values and NaN first where a caller can have them
    (`clippo.eval.results.jsonable`)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
