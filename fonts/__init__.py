"""Bundled fonts, located with importlib.resources (never relative to the working directory).

GNU Unifont 9.0.06 (GPLv2+ with the font-embedding exception) ships as two separate data files,
exactly the ones big_vision's CLIPPO renderer reads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

UNIFONT_PLANE0 = "unifont-9.0.06.hex.gz"
UNIFONT_UPPER = "unifont_upper-9.0.06.hex.gz"


def font_path(name: str) -> Path:
    """Filesystem path of a bundled font file; raises FileNotFoundError naming it."""
    path = resources.files(__name__).joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(f"bundled font {name!r} not found in package {__name__}")
    return Path(str(path))


def unifont_paths() -> tuple[Path, Path]:
    """(plane-0 hex, upper-planes hex) of the bundled Unifont 9.0.06."""
    return font_path(UNIFONT_PLANE0), font_path(UNIFONT_UPPER)
