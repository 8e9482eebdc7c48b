"""Atomic file writes: write a temporary file beside the target, then `os.replace` it into place.

A reader sees the old file or the new one, never a torn one; a failed or interrupted write leaves
the old file as it was and removes the temporary file. Stdlib only (no torch/numpy imports), so
every layer can use it, `clippo.render` included: this is the project's one file writer.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic"]


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target` (its folder is created); when the block ends without
    an error the file written there replaces `target` in one step, otherwise it is deleted.

        with atomic_path("out/model.safetensors") as tmp:
            save_file(state, str(tmp))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and checkpoints are meant to be shared
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (flushed and fsynced before the rename). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
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
