"""Shards that are not seekable local files: `pipe:CMD` and URLs (through fsspec), read as streams.

Specs as webdataset users write them:
- `pipe:aws s3 cp s3://bucket/shard-0001.tar -`: the command runs in a shell, its stdout is read
  as a tar stream; a non-zero exit (a missing command exits 127) is a `DataError` naming the spec.
- `https://host/shard-0001.tar`, `s3://bucket/shard-0001.tar`, `gs://...`: opened with
  `fsspec.open`; the scheme's filesystem package must be installed (s3fs, gcsfs, ...; http(s)
  needs aiohttp). An unknown scheme or a missing package is a `DataError` at construction,
  naming the scheme and what to install.

A stream is read once, front to back (`StreamedTar`), so the mixer reads such sources in stream
mode (records in stream order, shuffled within a bounded buffer: `buffer_shuffle`); see
`clippo.data.sources` for the resume rule.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

import numpy as np

from clippo.errors import DataError

__all__ = ["PIPE", "StreamedTar", "buffer_shuffle", "check_stream_spec", "is_stream_spec"]

PIPE = "pipe:"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

T = TypeVar("T")


def url_scheme(spec: str) -> str | None:
    """ "s3" for "s3://b/k"; None for a local path, "file://" URLs and pipe: specs."""
    m = _SCHEME.match(spec)
    if m is None or m.group(1).lower() == "file":
        return None
    return m.group(1).lower()


def is_stream_spec(spec: str) -> bool:
    """True for `pipe:` commands and non-file URLs (read as streams, never globbed)."""
    return spec.startswith(PIPE) or url_scheme(spec) is not None


def check_stream_spec(spec: str) -> None:
    """Fail early (DataError) on an empty pipe command, an unknown URL scheme or a scheme whose
    filesystem package is not installed."""
    if spec.startswith(PIPE):
        if not spec[len(PIPE) :].strip():
            raise DataError(f"{spec!r}: empty pipe: command")
        return
    scheme = url_scheme(spec)
    if scheme is None:
        return
    import fsspec
    from fsspec.registry import known_implementations

    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        hint = known_implementations.get(scheme, {}).get("err") or str(e)
        raise DataError(
            f"{spec}: the {scheme}:// filesystem is not installed ({hint}); install its "
            "fsspec package or use a pipe: command"
        ) from None
    except ValueError:
        raise DataError(
            f"{spec}: unknown URL scheme {scheme!r} (fsspec has no filesystem for it); use a "
            "local path, a pipe: command or a scheme fsspec knows (s3, gs, http, https, ...)"
        ) from None


class _Opened:
    """A binary stream for a spec, and how to finish it (check a command's exit status)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._closers: list[Any] = []
        if spec.startswith(PIPE):
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by finish()
            # a session of its own so that closing early stops the whole pipeline, not just sh
            self.proc = subprocess.Popen(
                spec[len(PIPE) :],
                shell=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,
            )
            assert self.proc.stdout is not None
            self.file: IO[bytes] = self.proc.stdout
        elif url_scheme(spec) is not None:
            import fsspec

            check_stream_spec(spec)
            # block_size=0: one streaming GET (no range requests, which simple servers lack)
            kw = {"block_size": 0} if url_scheme(spec) in ("http", "https") else {}
            try:
                opener = fsspec.open(spec, "rb", **kw)
                self.file = opener.open()
            except (OSError, ValueError) as e:
                raise DataError(f"{spec}: cannot open ({type(e).__name__}: {e})") from None
            self._closers.append(self.file)
        else:
            self.file = open(spec, "rb")  # noqa: SIM115 -- closed by finish()
            self._closers.append(self.file)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode("utf-8", errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""

    def finish(self, complete: bool) -> None:
        """Close the stream. After a complete read, a command's non-zero exit is a DataError;
        after an early close the command is stopped (its exit status then means nothing)."""
        for f in self._closers:
            f.close()
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            if complete:
                assert proc.stdout is not None
                while proc.stdout.read(1 << 16):  # the rest (tar padding) so the writer can exit
                    pass
                rc = proc.wait()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = 0
            if proc.stdout is not None:
                proc.stdout.close()
            if rc != 0:
                why = self._stderr_tail()
                raise DataError(
                    f"{self.spec!r}: command exited with status {rc}" + (f": {why}" if why else "")
                )
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None


def split_member(name: str) -> tuple[str, str]:
    """webdataset naming: "dir/KEY.ext.more" -> ("dir/KEY", "ext.more")."""
    head, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower() if dot else ""


class StreamedTar:
    """One tar shard read front to back: an iterable of webdataset records
    (key, {ext: bytes}, spec), members grouped by consecutive key, only extensions in `keep`.

    A damaged or truncated tar ends the shard: records before the damage are kept and the damage
    is listed in `problems` as ("bad_shard", message). A failing command raises DataError.
    Iterate once; `close()` (also called at the end of the iteration) releases the stream.
    """

    def __init__(self, spec: str, keep: frozenset[str]) -> None:
        self.spec, self.keep = spec, keep
        self.problems: list[tuple[str, str]] = []
        self._opened: _Opened | None = None

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes | Exception], str]]:
        self._opened = opened = _Opened(self.spec)
        key: str | None = None
        group: dict[str, bytes | Exception] = {}
        try:
            try:
                with tarfile.open(fileobj=opened.file, mode="r|*") as tf:
                    for member in tf:
                        if not member.isfile():
                            continue
                        k, ext = split_member(member.name)
                        if ext not in self.keep:
                            continue
                        if k != key:
                            if key is not None:
                                yield key, group, self.spec
                            key, group = k, {}
                        f = tf.extractfile(member)
                        group[ext] = f.read() if f is not None else b""
            except (tarfile.TarError, OSError, EOFError) as e:
                # a command that failed explains the damage better than tarfile does
                self._opened = None
                opened.finish(complete=True)
                why = " ".join(str(e).split())
                self.problems.append(("bad_shard", f"{self.spec}: {type(e).__name__}: {why}"))
            if key is not None:
                yield key, group, self.spec
            if self._opened is not None:
                self._opened = None
                opened.finish(complete=True)
        finally:
            self.close()

    def close(self) -> None:
        if self._opened is not None:
            opened, self._opened = self._opened, None
            opened.finish(complete=False)


def buffer_shuffle(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """`items` in a seeded order within a buffer of `size`: fill the buffer, then for every new
    item emit a uniformly chosen buffered one and put the new one in its place; at the end emit
    the rest in random order. A permutation of the input in which no item comes out more than
    `size - 1` places earlier than it went in (it may come out arbitrarily later). size <= 1:
    the input order."""
    if size <= 1:
        yield from items
        return
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(size))
        out, buf[i] = buf[i], item
        yield out
    for i in rng.permutation(len(buf)):
        yield buf[int(i)]
