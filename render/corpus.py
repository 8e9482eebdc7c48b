"""`clippo render`: a text corpus -> rendered images in webdataset tar or parquet shards.

Shard s holds input rows [s * rows_per_shard, (s + 1) * rows_per_shard) and is written by job
`s % num_jobs`, so a cluster job array covers one corpus exactly once. A shard appears only by
atomic rename from a fresh temporary file (`clippo.atomic`), and is then recorded (rows, bytes)
in `PREFIX-manifest.json` beside the settings that made it. On a re-run a shard that matches its
record is skipped; one that does not (truncated, replaced, never recorded) is rendered again.
Bad rows (null, non-string, bad UTF-8, missing column) are skipped and reported by row number;
they never stop the run.

One run at a time per output folder: a run holds `.clippo-render.lock` there (flock, so a killed
run never leaves a stale lock); the jobs of one job array share it and each holds its own job
lock. Pool workers exit when the run's process dies, even by SIGKILL.

The shard file formats are described in `clippo.render.shards`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import fcntl
import functools
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clippo.atomic import atomic_file, write_json_atomic
from clippo.render import AnyRenderConfig, Renderer, build_renderer, renderer_name
from clippo.render.corpus_io import BadRow, CorpusReader, CorpusSource, open_reader, shard_path
from clippo.render.shards import (
    KEY_DIGITS,
    KIND,
    MEMBERS_PER_ROW,
    WRITERS,
    count_members,
    encode_png,
)

OUTPUT_FORMATS = ("tar", "parquet")
LOCK_NAME = ".clippo-render.lock"
_MANIFEST_LOCK_NAME = ".clippo-render-manifest.lock"


class OutputBusyError(OSError):
    """Another `clippo render` is writing into the output folder (the message names both)."""


@dataclass(frozen=True)
class ShardOptions:
    """Where and how shards are written.

    job_index/num_jobs: this job writes the shards s with s % num_jobs == job_index (the CLI's
    --shard-index/--num-shards). num_workers: processes, each rendering whole shards.
    """

    output_dir: str
    prefix: str = "shard"
    output_format: str = "tar"
    rows_per_shard: int = 10_000
    job_index: int = 0
    num_jobs: int = 1
    num_workers: int = 1
    batch_size: int = 256
    png_compress_level: int = 6

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}"
            )
        for name in ("rows_per_shard", "num_jobs", "num_workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.job_index < self.num_jobs:
            raise ValueError(f"job_index must be in [0, {self.num_jobs}), got {self.job_index}")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError(f"png_compress_level must be in [0, 9], got {self.png_compress_level}")
        if not self.prefix or "/" in self.prefix or os.sep in self.prefix:
            raise ValueError(f"prefix must be a non-empty file name part, got {self.prefix!r}")

    @property
    def suffix(self) -> str:
        return ".tar" if self.output_format == "tar" else ".parquet"

    def manifest_path(self) -> Path:
        return Path(self.output_dir) / f"{self.prefix}-manifest.json"

    def summary_path(self) -> Path:
        """Default summary file; one per job when the corpus is split over a job array."""
        job = f"-job{self.job_index:06d}-of-{self.num_jobs:06d}" if self.num_jobs > 1 else ""
        return Path(self.output_dir) / f"{self.prefix}-summary{job}.json"


@dataclass(frozen=True)
class SkippedRow:
    row: int
    reason: str


@dataclass(frozen=True)
class RenderSummary:
    """What one run did. Counts cover the shards this run wrote; finished shards are only counted."""

    rows: int
    rows_written: int
    shards_written: int
    shards_skipped: int
    seconds: float
    skipped_rows: tuple[SkippedRow, ...]
    options: ShardOptions
    render: dict[str, Any] = field(default_factory=dict)
    renderer: str = "unifont"  # which renderer `render` configures

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_per_second"] = self.rows_per_second
        return d

    def format_table(self, max_skipped: int = 20) -> str:
        """A plain-text table for the terminal (at most `max_skipped` skipped rows listed)."""
        o = self.options
        items = [
            ("output", f"{o.output_dir}/{o.prefix}-*{o.suffix}"),
            ("job", f"{o.job_index} of {o.num_jobs}"),
            ("rows read", f"{self.rows:,}"),
            ("rows written", f"{self.rows_written:,}"),
            ("rows skipped", f"{len(self.skipped_rows):,}"),
            ("shards written", f"{self.shards_written:,}"),
            ("shards already done", f"{self.shards_skipped:,}"),
            ("seconds", f"{self.seconds:.1f}"),
            ("rows/s", f"{self.rows_per_second:,.0f}"),
        ]
        width = max(len(k) for k, _ in items)
        lines = [f"{k:<{width}}  {v}" for k, v in items]
        if self.skipped_rows:
            lines += ["", f"{'row':>12}  reason"]
            lines += [f"{s.row:>12}  {s.reason}" for s in self.skipped_rows[:max_skipped]]
            if len(self.skipped_rows) > max_skipped:
                lines.append(
                    f"{'':>12}  ... {len(self.skipped_rows) - max_skipped} more (see JSON)"
                )
        return "\n".join(lines)


@dataclass(frozen=True)
class _ShardTask:
    """Everything a worker needs to write one shard (picklable)."""

    shard: int
    path: str
    rows: list[tuple[int, str]]
    render: AnyRenderConfig
    options: ShardOptions


@dataclass(frozen=True)
class _ShardResult:
    shard: int
    rows_written: int
    skipped: list[SkippedRow]
    bytes: int  # size of the finished file, recorded in the manifest


@functools.lru_cache(maxsize=4)
def _renderer(config: AnyRenderConfig) -> Renderer:
    # One renderer per process and config: Unifont's ink table takes ~0.2 s to build and the
    # text renderer's word cache warms over a run; once per shard would dominate small shards.
    return build_renderer(config)


def _render_rows(renderer: Renderer, texts: Sequence[str]) -> list[np.ndarray | str]:
    """Greyscale images np.uint8 [H, W] per text; if the batch fails, render row by row so that only the
    failing rows are lost (their entry is the error message)."""
    try:
        # Channel 0 only (the three are identical), copied once for the batch: contiguous rows
        # make the PNG encoder's input cheap.
        return list(np.ascontiguousarray(renderer.render_batch(list(texts))[..., 0]))
    except Exception:  # noqa: BLE001 - a bad row must not stop the run; reported per row below
        out: list[np.ndarray | str] = []
        for text in texts:
            try:
                out.append(np.ascontiguousarray(renderer(text)[..., 0]))
            except Exception as e:  # noqa: BLE001
                out.append(f"render error: {type(e).__name__}: {e}")
        return out


def _write_shard(task: _ShardTask, on_rows: Callable[[int], None] | None = None) -> _ShardResult:
    """Render one shard into a fresh temporary file, then rename it to `path` (finished)."""
    renderer = _renderer(task.render)
    written, skipped = 0, []
    with atomic_file(task.path) as f:
        writer = WRITERS[task.options.output_format](f, task.render)
        try:
            bs = task.options.batch_size
            for i in range(0, len(task.rows), bs):
                batch = task.rows[i : i + bs]
                texts = [t for _, t in batch]
                for (row, text), image in zip(batch, _render_rows(renderer, texts)):
                    if isinstance(image, str):
                        skipped.append(SkippedRow(row, image))
                        continue
                    writer.add(row, text, encode_png(image, task.options.png_compress_level))
                    written += 1
                if on_rows is not None:
                    on_rows(len(batch))
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    return _ShardResult(task.shard, written, skipped, os.stat(task.path).st_size)


# ---------------------------------------------------------------------------------------------
# the output folder: lock, leftovers, manifest


def _flock(path: Path, *, shared: bool, blocking: bool) -> int | None:
    """An fd holding flock on `path` (created 0644, never through a symlink), or None when another
    process holds a conflicting lock and `blocking` is false. The fd is close-on-exec, so spawned
    workers never hold it; closing it (or the process dying) releases the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        fcntl.flock(fd, flags)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            pid = os.read(fd, 32).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        if pid.isdigit():
            return f"pid {pid}"
    return "pid unknown"


@contextlib.contextmanager
def _output_lock(options: ShardOptions) -> Iterator[None]:
    """Hold the output folder for this run; raise OutputBusyError when another run has it.

    A single-job run locks the folder exclusively. The jobs of a job array write disjoint shards
    into one folder at once, so each holds the folder lock shared (keeping single-job runs out)
    plus an exclusive lock of its own job index.
    """
    folder = Path(options.output_dir)
    locks = [(folder / LOCK_NAME, options.num_jobs > 1)]
    if options.num_jobs > 1:
        job = f"job{options.job_index:06d}-of-{options.num_jobs:06d}"
        locks.append((folder / f".clippo-render-{job}.lock", False))
    held: list[int] = []
    try:
        for path, shared in locks:
            fd = _flock(path, shared=shared, blocking=False)
            if fd is None:
                raise OutputBusyError(
                    f"{folder}: another clippo render ({_lock_holder(path)}) is writing into this "
                    "folder; wait for it to finish, stop it, or use another output folder"
                )
            held.append(fd)
            os.ftruncate(fd, 0)  # the pid, for the message another run prints
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        for fd in held:
            os.close(fd)


def _leftover_pattern(prefix: str) -> re.Pattern[str]:
    """Temporary files of this prefix's shards, manifest and summaries: `clippo.atomic`'s
    `.NAME.XXXXXXXX.tmp` and the fixed `NAME.tmp` of older versions. Group 1: the shard number."""
    names = r"(?:(\d{6})\.(?:tar|parquet)|manifest\.json|summary[\w-]*\.json)"
    p = re.escape(prefix)
    return re.compile(rf"(?:\.{p}-{names}\.\w+|{p}-{names})\.tmp")


def _remove_leftovers(options: ShardOptions) -> None:
    """Delete the temporary files a killed run left (the caller holds the lock). A job of a job
    array removes only those of its own shards: the other jobs may be writing theirs."""
    pattern = _leftover_pattern(options.prefix)
    for entry in os.scandir(options.output_dir):
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        shard = m.group(1) or m.group(2)
        mine = (
            int(shard) % options.num_jobs == options.job_index
            if shard is not None
            else options.num_jobs == 1
        )
        if mine:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)  # a planted symlink is removed, its target untouched


_SHARD_NAME = re.compile(r"-\d{6}\.(?:tar|parquet)")


def _settings(render: AnyRenderConfig, options: ShardOptions) -> dict[str, Any]:
    return {
        "kind": KIND,
        "renderer": renderer_name(render),
        "render": render.to_dict(),
        "rows_per_shard": options.rows_per_shard,
        "output_format": options.output_format,
        "key_digits": KEY_DIGITS,
    }


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`, checked: settings plus "shards": {name: {"rows", "bytes"}}."""
    if path.is_symlink():
        raise ValueError(f"{path}: a symbolic link, not a manifest clippo render wrote; remove it")
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        shards = data.setdefault("shards", {})
        if not isinstance(shards, dict) or not all(
            isinstance(r, dict)
            and all(type(r.get(k)) is int and r[k] >= 0 for k in ("rows", "bytes"))
            for r in shards.values()
        ):
            raise ValueError('"shards" must map shard names to {"rows": int, "bytes": int}')
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"{path}: corrupt shard manifest ({e}); delete the folder's shards and the manifest, "
            "or render into a new folder"
        ) from None
    return data


@contextlib.contextmanager
def _manifest_lock(options: ShardOptions) -> Iterator[None]:
    """Serialise manifest read-modify-writes between the jobs of a job array (held briefly)."""
    fd = _flock(Path(options.output_dir) / _MANIFEST_LOCK_NAME, shared=False, blocking=True)
    assert fd is not None  # a blocking flock waits instead of returning None
    try:
        yield
    finally:
        os.close(fd)


def _check_manifest(render: AnyRenderConfig, options: ShardOptions) -> dict[str, dict[str, int]]:
    """Refuse to mix shards made with other settings in one output folder; record ours.

    Returns the finished shards' records {file name: {"rows", "bytes"}}."""
    settings = _settings(render, options)
    path = options.manifest_path()
    with _manifest_lock(options):
        if not path.exists():
            shards = [
                n
                for n in os.listdir(options.output_dir)
                if n.startswith(options.prefix) and _SHARD_NAME.fullmatch(n[len(options.prefix) :])
            ]
            if shards:
                raise ValueError(
                    f"{options.output_dir} has {len(shards)} shards but no {path.name}: cannot "
                    "tell which settings wrote them; render into a new folder or delete them"
                )
            write_json_atomic({**settings, "shards": {}}, path, sort_keys=True)
            return {}
        old = _read_manifest(path)
    shards = old.pop("shards")
    old.setdefault("renderer", "unifont")  # manifests from before the text renderer
    if old != json.loads(json.dumps(settings)):
        diff = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
        raise ValueError(
            f"{path}: shards here were made with other settings ({', '.join(diff)}); "
            "use another output folder or prefix"
        )
    return shards


def _record_shard(options: ShardOptions, result: _ShardResult) -> None:
    """Add a finished shard's record to the manifest (after its rename: a run killed in between
    leaves an unrecorded shard, which the next run renders again)."""
    name = shard_path("", options.prefix, result.shard, options.suffix).name
    path = options.manifest_path()
    with _manifest_lock(options):
        manifest = _read_manifest(path)
        manifest["shards"][name] = {"rows": result.rows_written, "bytes": result.bytes}
        write_json_atomic(manifest, path, sort_keys=True)


def _verify_shard(path: Path, record: dict[str, int] | None, options: ShardOptions) -> str | None:
    """None when the finished shard at `path` matches its manifest record, else what is wrong."""
    if record is None:
        return f"not recorded in {options.manifest_path().name}"
    if path.is_symlink():
        return "a symbolic link, not a shard this command wrote"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{size} bytes where {record['bytes']} were written"
    members = count_members(path, options.output_format)
    expected = record["rows"] * MEMBERS_PER_ROW[options.output_format]
    if members != expected:
        found = "no complete file" if members is None else f"{members} members"
        return f"{found} where {expected} were written"
    return None


def render_corpus(
    source: CorpusSource, render: AnyRenderConfig, options: ShardOptions, *, progress: bool = True
) -> RenderSummary:
    """Render this job's shards of `source` (skipping verified finished ones); return the summary.

    Raises OutputBusyError while another run writes into the same folder (or the same job of a
    job array), ValueError for a corrupt manifest or shards of unknown settings."""
    for name in ("background_brightness", "text_brightness"):
        colour = getattr(render, name)
        if isinstance(colour, tuple) and len(set(colour)) > 1:
            raise ValueError(
                f"render.{name}={colour}: shards hold greyscale PNGs; give a grey level"
            )
    reader = open_reader(source)
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    with _output_lock(options):
        _remove_leftovers(options)
        records = _check_manifest(render, options)
        return _render_locked(reader, records, render, options, progress)


def _render_locked(
    reader: CorpusReader,
    records: dict[str, dict[str, int]],
    render: AnyRenderConfig,
    options: ShardOptions,
    progress: bool,
) -> RenderSummary:
    R, K, J = options.rows_per_shard, options.num_jobs, options.job_index
    total = None
    if reader.num_rows is not None:
        total = sum(min(R, reader.num_rows - s * R) for s in range(J, -(-reader.num_rows // R), K))
    bar = tqdm(total=total, unit="rows", disable=not progress, desc="render", dynamic_ncols=True)
    done: list[int] = []

    def wanted(shard: int) -> bool:
        if shard % K != J:
            return False
        path = shard_path(options.output_dir, options.prefix, shard, options.suffix)
        if not path.exists() and not path.is_symlink():
            return True
        problem = _verify_shard(path, records.get(path.name), options)
        if problem is not None:
            tqdm.write(f"clippo render: {path}: {problem}; rendering it again", file=sys.stderr)
            return True
        done.append(shard)
        if reader.num_rows is not None:
            bar.update(min(R, reader.num_rows - shard * R))
        return False

    skipped: list[SkippedRow] = []
    results: list[_ShardResult] = []
    rows_read = 0

    def tasks() -> Iterator[tuple[_ShardTask, int]]:
        nonlocal rows_read
        for shard, rows in reader.chunks(R, wanted):
            good = []
            for row, value in enumerate(rows, start=shard * R):
                if isinstance(value, BadRow):
                    skipped.append(SkippedRow(row, value.reason))
                else:
                    good.append((row, value))
            rows_read += len(rows)
            path = shard_path(options.output_dir, options.prefix, shard, options.suffix)
            yield _ShardTask(shard, str(path), good, render, options), len(rows) - len(good)

    def finished(result: _ShardResult) -> None:
        _record_shard(options, result)
        results.append(result)

    start = time.perf_counter()
    try:
        if options.num_workers == 1:
            for task, bad in tasks():
                bar.update(bad)
                finished(_write_shard(task, bar.update))
        else:
            _run_pool(tasks(), options.num_workers, bar, finished)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    for r in results:
        skipped.extend(r.skipped)
    return RenderSummary(
        rows=rows_read,
        rows_written=sum(r.rows_written for r in results),
        shards_written=len(results),
        shards_skipped=len(done),
        seconds=seconds,
        skipped_rows=tuple(sorted(skipped, key=lambda s: s.row)),
        options=options,
        render=render.to_dict(),
        renderer=renderer_name(render),
    )


# ---------------------------------------------------------------------------------------------
# worker processes

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_POLL_SECONDS = 0.5


def _die_with_parent(parent_pid: int) -> None:
    """Pool worker initializer: exit as soon as the process that started us dies, SIGKILL
    included (a worker's queue never reports that: it would block, or render, forever).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Everywhere:
    a daemon thread polls getppid(), which changes when the parent dies (the orphan is adopted).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # the parent may have died before prctl ran: then no signal comes, but getppid already moved
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="clippo-render-parent-watch", daemon=True).start()


def _run_pool(
    tasks: Iterable[tuple[_ShardTask, int]],
    num_workers: int,
    bar: tqdm,
    finished: Callable[[_ShardResult], None],
) -> None:
    """Shards over `num_workers` spawned processes, at most 2 per worker in flight (bounded
    memory); `finished` is called in this process for each shard, as it completes."""
    # spawn, not fork: the parent may hold pyarrow/tqdm threads that a fork would copy mid-lock.
    # (Spawned children also inherit no file descriptors, so never the output folder's lock.)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=num_workers,
        mp_context=ctx,
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        pending: dict[cf.Future[_ShardResult], int] = {}

        def drain(until: int) -> None:
            while len(pending) > until:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    rows = pending.pop(fut)
                    finished(fut.result())  # a worker error (disk full, ...) stops the run
                    bar.update(rows)

        try:
            for task, bad in tasks:
                bar.update(bad)
                pending[pool.submit(_write_shard, task)] = len(task.rows)
                drain(2 * num_workers)
            drain(0)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def preview_texts(source: CorpusSource, n: int) -> list[str]:
    """The first `n` renderable texts of `source` (bad rows skipped)."""
    out: list[str] = []
    if n <= 0:
        return out
    for _, value in open_reader(source).rows():
        if not isinstance(value, BadRow):
            out.append(value)
            if len(out) == n:
                break
    return out
