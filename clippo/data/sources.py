"""Pair sources for the mixer: samples, sources, seeded streams and skip accounting.

Sources come in two shapes (both yield `ImageTextPair` or `TextPair` samples):
- `RandomAccessSource` (`__len__` + `load(index, item_seed)`): CSV, `datasets` dirs, pair files,
  or any map-style dataset whose `__getitem__` returns `(image, text)` / `(text, text)` (wrapped
  by `MapSource`). Its stream for rank r of R is the per-epoch permutation of its indices, every
  R-th position: independent of the number of DataLoader workers.
- `ShardedSource` (units such as tar shards, parquet row groups or corpus files, read one at a
  time): rank r / worker v reads partition `r * W + v` of `R * W` (whole units round-robin;
  when there are fewer units than partitions, every partition reads all units and keeps every
  P-th record). Unit order and the record order inside a unit are reshuffled every epoch from
  the seed. Its order therefore depends on `num_workers` W; the set of samples per epoch does not.

Bad samples (a source raises `SkipSample`) are counted in `SkipStats` and replaced without
changing any position, so the stream stays a pure function of the seed: a random-access source
substitutes a seeded random other index, a sharded source the next good record of the same
stream (a duplicate). Only a source that fails `max_bad_in_a_row` times in a row stops the run,
with a `clippo.errors.DataError` naming the source's files (as does a source without records).

Stream mode (a sharded source with `streamed = True`: `pipe:` commands and URLs, see
`clippo.data.streams`; and every sharded source when `resampled`): each partition reads an
endless sequence of units, unit k being the k-th of the per-epoch shuffled unit order of its
partition (exact mode: every unit once per epoch) or, resampled, a unit drawn uniformly from
all units with a seed of its own (seed, source, partition, k), so every rank/worker draws
independently and with replacement. A streamed unit's records come in stream order, shuffled
within a buffer of `shuffle_buffer` records (`buffer_shuffle`, seeded by seed, source, partition
and k; the buffer is emptied at the end of each unit); a seekable unit read with resampling is
permuted whole. When partitions outnumber units (exact mode), partition p keeps the records at
stream index i with i % P == p of every unit.

Resume rule of stream mode: the position after every sample is a `StreamCursor` (count of
samples, k of the current unit, records of unit k already given). Resuming from a cursor skips
the units before k without opening them, then reopens unit k and discards its first `done`
records (so at most one unit is read again); the stream then continues exactly where the
interrupted one would have. Without a recorded cursor (count only), the `count` records are
read and discarded. No unit is ever asked for its length.
"""

from __future__ import annotations

import logging
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

from clippo.data.streams import buffer_shuffle
from clippo.errors import DataError

log = logging.getLogger(__name__)


class ImageTextPair(NamedTuple):
    image: Any  # np.uint8 [H, W, 3] (resized by the source) or a PIL image
    text: str
    key: str


class TextPair(NamedTuple):
    text_a: str
    text_b: str
    key: str


Sample = ImageTextPair | TextPair


class SkipSample(Exception):
    """Raised by a source for a sample it cannot use; `kind` is a short stable key for counting."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self) -> tuple[type[SkipSample], tuple[str, str]]:
        return (type(self), (self.kind, self.message))


def text_or_skip(
    value: Any, where: str, *, what: str = "text", bad: str = "bad_row", empty: str = "empty_text"
) -> str:
    """`value` stripped, if it is non-blank text (bytes are decoded as UTF-8, bad bytes -> U+FFFD);
    otherwise SkipSample of kind `bad` (not text) or `empty` (blank), naming `where`."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise SkipSample(bad, f"{where}: {what} is {type(value).__name__}, not text")
    value = value.strip()
    if not value:
        raise SkipSample(empty, f"{where}: empty {what}")
    return value


class SkipStats:
    """Skipped-sample counts keyed "source/kind", plus the first few messages of each key.

    Workers count into their own object and hand the new counts to the trainer with every batch
    (`MixedBatch.skipped`); the trainer merges them with `update()` and logs `counts`/`summary()`.
    """

    def __init__(self, max_examples: int = 3) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self._max_examples = max_examples
        self._delta: dict[str, int] = {}

    def add(self, source: str, kind: str, message: str) -> None:
        key = f"{source}/{kind}"
        self.counts[key] = self.counts.get(key, 0) + 1
        self._delta[key] = self._delta.get(key, 0) + 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < self._max_examples:
            examples.append(message)
            log.warning("skipped sample (%s): %s", key, message)

    def update(self, counts: Mapping[str, int]) -> None:
        """Merge counts from elsewhere (a batch's `skipped`, another worker's `counts`)."""
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(n)

    def pop_delta(self) -> dict[str, int]:
        """Counts added since the last call (what a worker attaches to the batch it just made)."""
        delta, self._delta = self._delta, {}
        return delta

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no samples skipped"
        return ", ".join(f"{k}: {n}" for k, n in sorted(self.counts.items()))

    def why(self, source: str) -> str:
        """The counts of `source`'s skips and its first message (what a user needs to fix)."""
        mine = {k: n for k, n in self.counts.items() if k.startswith(f"{source}/")}
        first = next((m[0] for k, m in sorted(self.examples.items()) if k in mine and m), None)
        counts = ", ".join(f"{k.rpartition('/')[2]} {n}" for k, n in sorted(mine.items()))
        return f"skipped: {counts or 'none'}" + (f"; first: {first}" if first else "")


def source_files(source: object) -> str:
    """Where a source reads from, for messages: its file, or its files' count and folder."""
    paths = getattr(source, "paths", None)
    if paths is None and isinstance(getattr(source, "path", None), str | os.PathLike):
        paths = [source.path]  # type: ignore[attr-defined]
    if not paths:
        return str(getattr(source, "name", type(source).__name__))
    if len(paths) == 1:
        return os.fspath(paths[0])
    try:
        folder = os.path.commonpath([os.path.abspath(p) for p in paths])
    except ValueError:  # paths on different drives
        return f"{len(paths)} files"
    return f"{len(paths)} files in {folder}"


def _seed(*parts: int | str) -> np.random.SeedSequence:
    """A SeedSequence from ints and strings (strings hashed with crc32: stable across runs)."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    if any(i < 0 for i in ints):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    return np.random.SeedSequence(ints)


def seeded_rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(_seed(*parts))


def _item_seed(*parts: int | str) -> int:
    return int(_seed(*parts).generate_state(1, np.uint64)[0])


# ---- random-access sources ---------------------------------------------------------------------


class RandomAccessSource(ABC):
    """A source with `len()` and `load(index, item_seed)`; `load` raises `SkipSample` for bad items.

    `item_seed` is a per-position seed for any randomness in making the sample (word dropout),
    so the sample is a pure function of (seed, position). `shuffle=False` keeps file order.
    """

    name: str = "random_access"
    shuffle: bool = True

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int, item_seed: int) -> Sample: ...


class MapSource(RandomAccessSource):
    """Wraps a map-style dataset whose `ds[i]` is `(image, text)` or `(text, text)`."""

    def __init__(self, dataset: Any, name: str = "map", shuffle: bool = True) -> None:
        self.dataset = dataset
        self.name = name
        self.shuffle = shuffle

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int, item_seed: int) -> Sample:
        a, b = self.dataset[index][:2]
        key = f"{index}"
        if isinstance(a, str):
            return TextPair(a, b, key)
        return ImageTextPair(a, b, key)


class RandomAccessStream:
    """Position -> sample for one rank's view of a random-access source (caches one permutation)."""

    def __init__(
        self,
        source: RandomAccessSource,
        label: str,
        part: int,
        num_parts: int,
        seed: int,
        stats: SkipStats,
        max_bad_in_a_row: int,
    ) -> None:
        self.source, self.label, self.stats = source, label, stats
        self.part, self.num_parts, self.seed = part, num_parts, seed
        self.max_bad = max_bad_in_a_row
        self.n = len(source)
        if self.n == 0:
            raise DataError(f"source {label!r} ({source_files(source)}) is empty")
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _index(self, g: int) -> int:
        epoch, offset = divmod(g, self.n)
        if not self.source.shuffle:
            return offset
        if epoch != self._perm_epoch or self._perm is None:
            self._perm = seeded_rng(self.seed, self.label, "epoch", epoch).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def item(self, position: int) -> Sample:
        g = position * self.num_parts + self.part
        index = self._index(g)
        for attempt in range(self.max_bad + 1):
            try:
                return self.source.load(index, _item_seed(self.seed, self.label, g, attempt))
            except SkipSample as e:
                self.stats.add(self.label, e.kind, e.message)
            index = int(
                seeded_rng(self.seed, self.label, "substitute", g, attempt).integers(self.n)
            )
        raise DataError(
            f"source {self.label!r} ({source_files(self.source)}): {self.max_bad + 1} bad samples "
            f"in a row at position {position}; {self.stats.why(self.label)}"
        )


# ---- sharded (streamed) sources ----------------------------------------------------------------


class Unit(Protocol):
    """What `ShardedSource.read_unit` returns: a sized, indexable run of raw records (it may also
    have `close()` and `problems`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> Any: ...


class ShardedSource(ABC):
    """A source read unit by unit (a tar shard, a parquet row group, a corpus file).

    Subclasses give the number of units, each unit's record count (may read the unit; cached by
    the subclass), `read_unit(u)` -> a sequence of raw records (`__len__`, `__getitem__`,
    optional `close()` and `problems`: list of (kind, message) found while reading it), and
    `decode(record, item_seed)` -> sample, raising `SkipSample`.
    """

    name: str = "sharded"
    shuffle: bool = True
    streamed: bool = False  # True: units are streams (read once, front to back): stream mode

    @abstractmethod
    def num_units(self) -> int: ...

    @abstractmethod
    def unit_length(self, unit: int) -> int: ...

    @abstractmethod
    def read_unit(self, unit: int) -> Unit: ...

    @abstractmethod
    def decode(self, record: Any, item_seed: int) -> Sample: ...

    def iter_unit(self, unit: int) -> Iterable[Any]:
        """Unit `unit`'s raw records in stored order, read once (stream mode). The iterable may
        have `problems` (read after the iteration) and `close()`. Default: via `read_unit`."""
        return _IterUnit(self.read_unit(unit))


class _IterUnit:
    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.problems = getattr(unit, "problems", [])

    def __iter__(self) -> Iterator[Any]:
        return (self.unit[i] for i in range(len(self.unit)))

    def close(self) -> None:
        _close(self.unit)


def _close(reader: object) -> None:
    """Close a unit reader that has `close()` (open files, pipes); others hold nothing open."""
    close = getattr(reader, "close", None)
    if close is not None:
        close()


def _partition_units(num_units: int, part: int, num_parts: int) -> tuple[list[int], int, int]:
    """(units this partition reads, record stride, record offset)."""
    if num_units >= num_parts:
        return list(range(part, num_units, num_parts)), 1, 0
    return list(range(num_units)), num_parts, part


def _unit_order(
    source: ShardedSource, units: list[int], seed: int, label: str, epoch: int
) -> list[int]:
    """The order in which a partition reads its `units` in `epoch` (both modes)."""
    if not source.shuffle:
        return units
    # not seeded by `part`: when partitions share units (stride > 1) they need one order
    perm = seeded_rng(seed, label, "units", epoch).permutation(len(units))
    return [units[int(i)] for i in perm]


def _no_records(
    source: ShardedSource, label: str, part: int, num_parts: int, n_units: int, stats: SkipStats
) -> DataError:
    """The error for a partition that read all its units and found no good record."""
    return DataError(
        f"source {label!r} ({source_files(source)}): partition {part} of {num_parts} has "
        f"no records ({n_units} units read); {stats.why(label)}"
    )


def _sharded_records(
    source: ShardedSource,
    label: str,
    part: int,
    num_parts: int,
    seed: int,
    start: int,
    stats: SkipStats,
) -> Iterator[tuple[int, Any]]:
    """Raw records (position, record) of one partition's infinite stream, from `start`.

    Unit lengths are asked for only while skipping (resuming); a fresh stream just reads."""
    units, stride, offset = _partition_units(source.num_units(), part, num_parts)
    lengths: dict[int, int] = {}
    per_epoch: int | None = None  # records per epoch of this partition, known after one epoch
    epoch, skip, position = 0, start, 0
    while True:
        if per_epoch is not None and skip >= per_epoch:
            whole, skip = divmod(skip, per_epoch)
            epoch, position = epoch + whole, position + whole * per_epoch
        order = _unit_order(source, units, seed, label, epoch)
        j = 0  # index of the unit's first record in this epoch's concatenation (for the stride)
        selected = 0
        for unit in order:
            if skip > 0:  # resuming: step over whole units without reading them
                if unit not in lengths:
                    lengths[unit] = source.unit_length(unit)
                n = lengths[unit]
                chosen = range((offset - j) % stride, n, stride)
                if skip >= len(chosen):
                    skip -= len(chosen)
                    position += len(chosen)
                    selected += len(chosen)
                    j += n
                    continue
            reader = source.read_unit(unit)
            try:
                n = len(reader)
                if lengths.setdefault(unit, n) != n:
                    # a file changed under a running job: positions would no longer resume
                    raise DataError(
                        f"source {label!r} ({source_files(source)}): unit {unit} has {n} "
                        f"records, but unit_length said {lengths[unit]}"
                    )
                for kind, message in getattr(reader, "problems", ()):
                    stats.add(label, kind, message)
                chosen = range((offset - j) % stride, n, stride)
                local = np.arange(n)
                if source.shuffle:
                    local = seeded_rng(seed, label, "records", epoch, unit).permutation(n)
                position += skip
                for k in chosen[skip:]:
                    yield position, reader[int(local[k])]
                    position += 1
                skip = 0
                selected += len(chosen)
                j += n
            finally:
                _close(reader)
        if selected == 0:
            raise _no_records(source, label, part, num_parts, len(units), stats)
        per_epoch = selected
        epoch += 1


class StreamCursor(NamedTuple):
    """Where a stream-mode partition stands: `samples` given, in unit `k` of its unit
    sequence, of which the first `done` records were given (see the module doc)."""

    samples: int
    k: int
    done: int


def _stream_records(
    source: ShardedSource,
    label: str,
    part: int,
    num_parts: int,
    seed: int,
    start: StreamCursor | int,
    stats: SkipStats,
    *,
    resampled: bool,
    shuffle_buffer: int,
) -> Iterator[tuple[StreamCursor, Any]]:
    """Raw records of one partition's endless stream-mode sequence, each with the cursor after
    it, from `start` (a cursor, or a count of records to read and discard)."""
    n_all = source.num_units()
    if n_all == 0:
        raise DataError(f"source {label!r} ({source_files(source)}) has no units")
    if resampled:
        units, stride, offset = list(range(n_all)), 1, 0
    else:
        units, stride, offset = _partition_units(n_all, part, num_parts)
    orders: dict[int, list[int]] = {}

    def unit_at(k: int) -> int:
        if resampled:
            return int(seeded_rng(seed, label, "resample", part, k).integers(n_all))
        epoch, i = divmod(k, len(units))
        if epoch not in orders:
            orders.clear()
            orders[epoch] = _unit_order(source, units, seed, label, epoch)
        return orders[epoch][i]

    if isinstance(start, StreamCursor):
        count, k, discard, skip = start.samples, start.k, start.done, 0
    else:
        count, k, discard, skip = 0, 0, 0, int(start)
    empty_in_a_row: set[int] = set()
    while True:
        unit = unit_at(k)
        rng = seeded_rng(seed, label, "unit", part, num_parts, k)
        reader: Any
        if source.streamed:
            reader = source.iter_unit(unit)
            raw: Iterable[Any] = reader
            if stride > 1:
                raw = (r for i, r in enumerate(reader) if i % stride == offset)
            ordered: Iterable[Any] = raw
            if source.shuffle:
                ordered = buffer_shuffle(raw, shuffle_buffer, rng)
        else:  # a seekable unit (resampled): permuted whole, as in exact mode
            reader = source.read_unit(unit)
            idx = np.arange(len(reader))[offset::stride]
            if source.shuffle:
                idx = rng.permutation(idx)
            ordered = (reader[int(i)] for i in idx)
        done = 0
        try:
            for record in ordered:
                done += 1
                if done <= discard:
                    continue
                if skip > 0:
                    skip -= 1
                    count += 1
                    continue
                count += 1
                yield StreamCursor(count, k, done), record
        finally:
            _close(reader)
        for kind, message in getattr(reader, "problems", ()):
            stats.add(label, kind, message)
        if done == 0:
            empty_in_a_row.add(unit)
            if len(empty_in_a_row) >= len(units):
                raise _no_records(source, label, part, num_parts, len(units), stats)
        else:
            empty_in_a_row.clear()
        k, discard = k + 1, 0


class ShardStream:
    """Good samples of one partition from `start`; a bad record is replaced by the next good one.

    Exact mode (default for seekable shards): `start` is a sample count, the order is the
    whole-unit shuffle of `_sharded_records`. Stream mode (`source.streamed` or `resampled`):
    `start` is a `StreamCursor` or a count (see the module doc). `cursor` is the position after
    the last sample given (an int in exact mode, a StreamCursor in stream mode): what a resumed
    stream starts from.
    """

    def __init__(
        self,
        source: ShardedSource,
        label: str,
        part: int,
        num_parts: int,
        seed: int,
        start: StreamCursor | int,
        stats: SkipStats,
        max_bad_in_a_row: int,
        *,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
    ) -> None:
        self.source, self.label, self.stats = source, label, stats
        self.part, self.num_parts, self.seed = part, num_parts, seed
        self.max_bad = max_bad_in_a_row
        self.stream_mode = resampled or source.streamed
        self.cursor: StreamCursor | int
        records: Iterator[tuple[Any, Any]]
        if self.stream_mode:
            self.cursor = start if isinstance(start, StreamCursor) else int(start)
            records = _stream_records(
                source,
                label,
                part,
                num_parts,
                seed,
                start,
                stats,
                resampled=resampled,
                shuffle_buffer=shuffle_buffer,
            )
        else:
            if isinstance(start, StreamCursor):
                raise ValueError(f"source {label!r}: a stream cursor for an exact-mode stream")
            self.cursor = int(start)
            records = (
                (position + 1, record)
                for position, record in _sharded_records(
                    source, label, part, num_parts, seed, int(start), stats
                )
            )
        self._samples = self._good(records)

    def _good(self, records: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Sample, Any]]:
        seed, label, part, num_parts = self.seed, self.label, self.part, self.num_parts
        pending: list[Any] = []  # cursors after bad records waiting for the next good one
        for after, record in records:
            position = (after.samples if isinstance(after, StreamCursor) else after) - 1
            try:
                sample = self.source.decode(
                    record, _item_seed(seed, label, part, num_parts, position)
                )
            except SkipSample as e:
                self.stats.add(label, e.kind, e.message)
                pending.append(after)
                if len(pending) > self.max_bad:
                    raise DataError(
                        f"source {label!r} ({source_files(self.source)}): {len(pending)} bad "
                        f"samples in a row (partition {part} of {num_parts}, position "
                        f"{position}); {self.stats.why(label)}"
                    ) from None
                continue
            for cursor in (*pending, after):
                yield sample, cursor
            pending = []

    def __iter__(self) -> ShardStream:
        return self

    def __next__(self) -> Sample:
        sample, self.cursor = next(self._samples)
        return sample
