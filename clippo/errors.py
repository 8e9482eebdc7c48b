"""The project's data error type and the one UTF-8 file reader whose errors name file and line.

Library code reports bad input as a ValueError subclass (`clippo.typed_config.ConfigError`,
`clippo.model.bigvision.CheckpointError`, `DataError` here) or an OSError, with one sentence that
names the file, row or key; `clippo.cli` prints that sentence without a traceback. Stdlib only,
so every room may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataError", "read_utf8"]


class DataError(ValueError):
    """Bad training or evaluation data (a source without usable records, a file that is not
    UTF-8, a damaged archive); the message names the file or source."""


def read_utf8(path: str | os.PathLike, error: type[ValueError] = DataError) -> str:
    """The text of a UTF-8 file. Bytes that are not UTF-8 raise `error` (DataError, or e.g.
    ConfigError for config files) naming the file, line and byte offset; a raw
    UnicodeDecodeError would name neither."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise error(
            f"{path}:{line}: not valid UTF-8 (byte {e.start}: {e.reason}); save it as UTF-8"
        ) from None
