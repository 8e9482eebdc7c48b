"""`clippo render`: a text corpus -> rendered images in webdataset tar or parquet shards.

Shard s holds input rows [s * rows_per_shard, (s + 1) * rows_per_shard) and is written by job
`s % num_jobs`, so a cluster job array covers one corpus exactly once. A shard appears only by
atomic rename (`NAME.tmp` -> `NAME`): a shard that exists is finished and skipped on a re-run, a
leftover `.tmp` is simply rewritten. Bad rows (null, non-string, bad UTF-8, missing column) are
skipped and reported by row number; they never stop the run.

The shard file formats are described in `clippo.render.shards`.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clippo.atomic import write_json_atomic
from clippo.render import RenderConfig, UnifontRenderer
from clippo.render.corpus_io import BadRow, CorpusSource, open_reader, shard_path
from clippo.render.shards import KEY_DIGITS, KIND, WRITERS, encode_png

OUTPUT_FORMATS = ("tar", "parquet")


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
    render: RenderConfig
    options: ShardOptions


@dataclass(frozen=True)
class _ShardResult:
    shard: int
    rows_written: int
    skipped: list[SkippedRow]


@functools.lru_cache(maxsize=4)
def _renderer(config: RenderConfig) -> UnifontRenderer:
    # One renderer per process and config: its ink table takes ~0.2 s to build, once per shard
    # would dominate small shards.
    return UnifontRenderer.from_config(config)


def _render_rows(renderer: UnifontRenderer, texts: Sequence[str]) -> list[np.ndarray | str]:
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
    """Render one shard into `path.tmp`, then rename it to `path` (the shard is then finished)."""
    renderer = _renderer(task.render)
    tmp = task.path + ".tmp"
    writer = WRITERS[task.options.output_format](tmp, task.render)
    written, skipped = 0, []
    try:
        bs = task.options.batch_size
        for i in range(0, len(task.rows), bs):
            batch = task.rows[i : i + bs]
            for (row, text), image in zip(batch, _render_rows(renderer, [t for _, t in batch])):
                if isinstance(image, str):
                    skipped.append(SkippedRow(row, image))
                    continue
                writer.add(row, text, encode_png(image, task.options.png_compress_level))
                written += 1
            if on_rows is not None:
                on_rows(len(batch))
        writer.finish()
        os.replace(tmp, task.path)
    except BaseException:
        writer.abort()
        Path(tmp).unlink(missing_ok=True)
        raise
    return _ShardResult(task.shard, written, skipped)


def _check_manifest(render: RenderConfig, options: ShardOptions) -> None:
    """Refuse to mix shards made with other settings in one output folder; record ours."""
    manifest = {
        "kind": KIND,
        "render": render.to_dict(),
        "rows_per_shard": options.rows_per_shard,
        "output_format": options.output_format,
        "key_digits": KEY_DIGITS,
    }
    path = Path(options.output_dir) / f"{options.prefix}-manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(manifest)):
            diff = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
            raise ValueError(
                f"{path}: shards here were made with other settings ({', '.join(diff)}); "
                "use another output folder or prefix"
            )
        return
    write_json_atomic(manifest, path, sort_keys=True)


def render_corpus(
    source: CorpusSource, render: RenderConfig, options: ShardOptions, *, progress: bool = True
) -> RenderSummary:
    """Render this job's shards of `source` (skipping finished ones) and return the summary."""
    reader = open_reader(source)
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    _check_manifest(render, options)
    R, K, J = options.rows_per_shard, options.num_jobs, options.job_index
    total = None
    if reader.num_rows is not None:
        total = sum(min(R, reader.num_rows - s * R) for s in range(J, -(-reader.num_rows // R), K))
    bar = tqdm(total=total, unit="rows", disable=not progress, desc="render", dynamic_ncols=True)
    done: list[int] = []

    def wanted(shard: int) -> bool:
        if shard % K != J:
            return False
        if shard_path(options.output_dir, options.prefix, shard, options.suffix).exists():
            done.append(shard)
            if reader.num_rows is not None:
                bar.update(min(R, reader.num_rows - shard * R))
            return False
        return True

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

    start = time.perf_counter()
    try:
        if options.num_workers == 1:
            for task, bad in tasks():
                bar.update(bad)
                results.append(_write_shard(task, bar.update))
        else:
            results = _run_pool(tasks(), options.num_workers, bar)
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
    )


def _run_pool(
    tasks: Iterable[tuple[_ShardTask, int]], num_workers: int, bar: tqdm
) -> list[_ShardResult]:
    """Shards over `num_workers` spawned processes, at most 2 per worker in flight (bounded memory)."""
    results: list[_ShardResult] = []
    # spawn, not fork: the parent may hold pyarrow/tqdm threads that a fork would copy mid-lock.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        pending: dict[cf.Future[_ShardResult], int] = {}

        def drain(until: int) -> None:
            while len(pending) > until:
                finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    rows = pending.pop(fut)
                    results.append(fut.result())  # a worker error (disk full, ...) stops the run
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
    return results


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
