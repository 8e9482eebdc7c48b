"""Pair sources and the batch mixer: every batch is a pure function of (seed, step).

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
stream (a duplicate). Only a source that fails `max_bad_in_a_row` times in a row stops the run.

Batch composition for step b (rounding): with f = text_pair_fraction and B = batch_size, batch b
holds `floor((b+1)*f*B) - floor(b*f*B)` text/text pairs, computed with exact fractions: exactly
f*B every step when that is an integer (0.25 of 8 = 2), otherwise floor or ceil so that the
running total never drifts from f*B*steps by one or more. The image/text and text/text slots are
split over their sources with a seeded multinomial draw on the weights. Images come first in the
batch, then text pairs (`is_text_pair` marks them).

Resuming: `mixer.loader(collate, start_step=s)` yields exactly the batches s, s+1, ... of an
uninterrupted run with the same seed, sources, rank/world size and num_workers (DataLoader
workers are handed consecutive steps round-robin, which is the order the DataLoader returns).
`state_dict(step)` / `load_state_dict(state)` record and check that fingerprint.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ImageTextPair",
    "TextPair",
    "SkipSample",
    "SkipStats",
    "RandomAccessSource",
    "ShardedSource",
    "MapSource",
    "MixerConfig",
    "MixedBatch",
    "BatchMixer",
    "SOURCE_KINDS",
    "build_source",
]

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

    def __reduce__(self):
        return (type(self), (self.kind, self.message))


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


def _seed(*parts: int | str) -> np.random.SeedSequence:
    """A SeedSequence from ints and strings (strings hashed with crc32: stable across runs)."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    if any(i < 0 for i in ints):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    return np.random.SeedSequence(ints)


def _rng(*parts: int | str) -> np.random.Generator:
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


class _RandomAccessStream:
    """Position -> sample for one rank's view of a random-access source (caches one permutation)."""

    def __init__(self, source, label, part, num_parts, seed, stats, max_bad_in_a_row):
        self.source, self.label, self.stats = source, label, stats
        self.part, self.num_parts, self.seed = part, num_parts, seed
        self.max_bad = max_bad_in_a_row
        self.n = len(source)
        if self.n == 0:
            raise ValueError(f"source {label!r} is empty")
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _index(self, g: int) -> int:
        epoch, offset = divmod(g, self.n)
        if not self.source.shuffle:
            return offset
        if epoch != self._perm_epoch:
            self._perm = _rng(self.seed, self.label, "epoch", epoch).permutation(self.n)
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
            index = int(_rng(self.seed, self.label, "substitute", g, attempt).integers(self.n))
        raise RuntimeError(
            f"source {self.label!r}: {self.max_bad + 1} bad samples in a row at position {position};"
            f" skipped so far: {self.stats.summary()}"
        )


# ---- sharded (streamed) sources ----------------------------------------------------------------


class ShardedSource(ABC):
    """A source read unit by unit (a tar shard, a parquet row group, a corpus file).

    Subclasses give the number of units, each unit's record count (may read the unit; cached by
    the subclass), `read_unit(u)` -> a sequence of raw records (`__len__`, `__getitem__`,
    optional `close()` and `problems`: list of (kind, message) found while reading it), and
    `decode(record, item_seed)` -> sample, raising `SkipSample`.
    """

    name: str = "sharded"
    shuffle: bool = True

    @abstractmethod
    def num_units(self) -> int: ...

    @abstractmethod
    def unit_length(self, unit: int) -> int: ...

    @abstractmethod
    def read_unit(self, unit: int) -> Sequence[Any]: ...

    @abstractmethod
    def decode(self, record: Any, item_seed: int) -> Sample: ...


def _partition_units(num_units: int, part: int, num_parts: int) -> tuple[list[int], int, int]:
    """(units this partition reads, record stride, record offset)."""
    if num_units >= num_parts:
        return list(range(part, num_units, num_parts)), 1, 0
    return list(range(num_units)), num_parts, part


def _sharded_records(source: ShardedSource, label, part, num_parts, seed, start, stats):
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
        order = units
        if source.shuffle:
            # not seeded by `part`: when partitions share units (stride > 1) they need one order
            perm = _rng(seed, label, "units", epoch).permutation(len(units))
            order = [units[i] for i in perm]
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
                    raise RuntimeError(
                        f"source {label!r}: unit {unit} has {n} records, "
                        f"but unit_length said {lengths[unit]}"
                    )
                for kind, message in getattr(reader, "problems", ()):
                    stats.add(label, kind, message)
                chosen = range((offset - j) % stride, n, stride)
                local = np.arange(n)
                if source.shuffle:
                    local = _rng(seed, label, "records", epoch, unit).permutation(n)
                position += skip
                for k in chosen[skip:]:
                    yield position, reader[int(local[k])]
                    position += 1
                skip = 0
                selected += len(chosen)
                j += n
            finally:
                close = getattr(reader, "close", None)
                if close is not None:
                    close()
        if selected == 0:
            raise ValueError(
                f"source {label!r}: partition {part} of {num_parts} has no records "
                f"({len(units)} units)"
            )
        per_epoch = selected
        epoch += 1


def _sharded_stream(source, label, part, num_parts, seed, start, stats, max_bad_in_a_row):
    """Good samples of one partition from `start`; a bad record is replaced by the next good one."""
    pending = 0
    for position, record in _sharded_records(source, label, part, num_parts, seed, start, stats):
        try:
            sample = source.decode(record, _item_seed(seed, label, part, num_parts, position))
        except SkipSample as e:
            stats.add(label, e.kind, e.message)
            pending += 1
            if pending > max_bad_in_a_row:
                raise RuntimeError(
                    f"source {label!r}: {pending} bad samples in a row (partition {part} of "
                    f"{num_parts}, position {position}); skipped so far: {stats.summary()}"
                ) from None
            continue
        for _ in range(pending + 1):
            yield sample
        pending = 0


# ---- the mixer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixerConfig:
    """batch_size: pairs per batch on this rank. text_pair_fraction: share of text/text pairs."""

    batch_size: int
    text_pair_fraction: float = 0.0
    seed: int = 0
    max_bad_in_a_row: int = 100

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.text_pair_fraction <= 1.0:
            raise ValueError(f"text_pair_fraction must be in [0, 1], got {self.text_pair_fraction}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"unknown MixerConfig keys {sorted(unknown)}; expected {sorted(names)}"
            )
        return cls(**d)


@dataclass
class MixedBatch:
    """One batch before collation. left[i] is np.uint8 [H,W,3] (image) or str (text pair)."""

    step: int
    left: list[Any]
    right: list[str]
    is_text_pair: np.ndarray  # bool [B]
    keys: list[str]  # "source_label/sample_key"
    skipped: dict[str, int]  # skip counts ("source/kind" -> n) found while making this batch


_BLOCK = 256  # batch compositions are drawn in blocks of this many steps


def _as_source(obj: Any, label: str) -> RandomAccessSource | ShardedSource:
    if isinstance(obj, (RandomAccessSource, ShardedSource)):
        return obj
    if hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        return MapSource(obj, name=label)
    raise TypeError(f"{label}: expected a RandomAccessSource, ShardedSource or map-style dataset")


class BatchMixer:
    """Draws batches of image/text and text/text pairs from weighted sources.

    image_sources / text_sources: sequences of (source, weight). Sources may be
    `RandomAccessSource`, `ShardedSource` or map-style datasets (wrapped in `MapSource`).
    rank / world_size: this process's place in distributed training (each rank gets its own
    batch of `config.batch_size`, drawn from disjoint parts of every source).
    """

    def __init__(
        self,
        config: MixerConfig,
        image_sources: Sequence[tuple[Any, float]] = (),
        text_sources: Sequence[tuple[Any, float]] = (),
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.image_sources = [
            _as_source(s, f"image_text/{j}") for j, (s, _) in enumerate(image_sources)
        ]
        self.text_sources = [
            _as_source(s, f"text_pairs/{j}") for j, (s, _) in enumerate(text_sources)
        ]
        self.image_labels = [f"image_text/{j}:{s.name}" for j, s in enumerate(self.image_sources)]
        self.text_labels = [f"text_pairs/{j}:{s.name}" for j, s in enumerate(self.text_sources)]
        self.image_weights = self._weights([w for _, w in image_sources], "image_sources")
        self.text_weights = self._weights([w for _, w in text_sources], "text_sources")
        frac = Fraction(config.text_pair_fraction).limit_denominator(1_000_000)
        self._text_per_step = frac * config.batch_size  # exact rational
        if frac > 0 and not self.text_sources:
            raise ValueError("text_pair_fraction > 0 needs at least one text/text source")
        if frac < 1 and not self.image_sources:
            raise ValueError("text_pair_fraction < 1 needs at least one image/text source")
        self.start_step = 0
        self._block_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _weights(weights: Sequence[float], what: str) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)
        if w.size and (np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0):
            raise ValueError(
                f"{what}: weights must be finite, >= 0 and not all 0, got {list(weights)}"
            )
        return w / w.sum() if w.size else w

    # -- composition ------------------------------------------------------------------------------

    def text_pairs_in_batch(self, step: int) -> int:
        """Number of text/text pairs in batch `step` (see the module doc for the rounding)."""
        q = self._text_per_step
        return int((step + 1) * q.numerator // q.denominator - step * q.numerator // q.denominator)

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if self._block_cache is not None and self._block_cache[0] == block:
            return self._block_cache[1], self._block_cache[2]
        steps = np.arange(block * _BLOCK, (block + 1) * _BLOCK, dtype=np.int64)
        q = self._text_per_step
        n_text = (steps + 1) * q.numerator // q.denominator - steps * q.numerator // q.denominator
        n_img = self.config.batch_size - n_text
        rng = _rng(self.config.seed, "composition", block)
        img = np.zeros((_BLOCK, len(self.image_sources)), np.int64)
        txt = np.zeros((_BLOCK, len(self.text_sources)), np.int64)
        if self.image_sources:
            img = rng.multinomial(n_img, self.image_weights)
        if self.text_sources:
            txt = rng.multinomial(n_text, self.text_weights)
        self._block_cache = (block, img, txt)
        return img, txt

    def composition(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(image/text counts per source [J_img], text/text counts per source [J_txt]) of a step."""
        img, txt = self._block(step // _BLOCK)
        return img[step % _BLOCK].copy(), txt[step % _BLOCK].copy()

    def _consumed(
        self, step: int, modulus: int = 1, residue: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-source sample counts summed over steps < `step` with step % modulus == residue."""
        img = np.zeros(len(self.image_sources), np.int64)
        txt = np.zeros(len(self.text_sources), np.int64)
        for block in range((step + _BLOCK - 1) // _BLOCK):
            bi, bt = self._block(block)
            steps = np.arange(block * _BLOCK, (block + 1) * _BLOCK)
            keep = (steps < step) & (steps % modulus == residue)
            img += bi[keep].sum(axis=0)
            txt += bt[keep].sum(axis=0)
        return img, txt

    # -- iteration --------------------------------------------------------------------------------

    def batches(
        self,
        start_step: int | None = None,
        *,
        stop_step: int | None = None,
        worker: int = 0,
        num_workers: int = 1,
    ) -> Iterator[MixedBatch]:
        """This worker's batches: steps start+worker, start+worker+num_workers, ... (< stop)."""
        start = self.start_step if start_step is None else start_step
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker {worker} out of range for num_workers {num_workers}")
        stats = SkipStats()
        first = start + worker
        residue = first % num_workers  # the "virtual worker": stable across resumes
        part, num_parts = self.rank * num_workers + residue, self.world_size * num_workers
        seed, max_bad = self.config.seed, self.config.max_bad_in_a_row
        all_img, all_txt = self._consumed(first)
        own_img, own_txt = self._consumed(first, num_workers, residue)

        def open_side(sources, labels, consumed, own):
            handles = []
            for src, label, c_own in zip(sources, labels, own):
                if isinstance(src, ShardedSource):
                    stream = _sharded_stream(
                        src, label, part, num_parts, seed, int(c_own), stats, max_bad
                    )
                    handles.append(("sharded", stream))
                else:
                    ra = _RandomAccessStream(
                        src, label, self.rank, self.world_size, seed, stats, max_bad
                    )
                    handles.append(("random", ra))
            return handles, consumed.copy()

        img_handles, img_pos = open_side(self.image_sources, self.image_labels, all_img, own_img)
        txt_handles, txt_pos = open_side(self.text_sources, self.text_labels, all_txt, own_txt)

        for step in itertools.count(first, num_workers):
            if stop_step is not None and step >= stop_step:
                return
            n_img, n_txt = self.composition(step)
            left: list[Any] = []
            right: list[str] = []
            keys: list[str] = []
            for handles, pos, counts, labels in (
                (img_handles, img_pos, n_img, self.image_labels),
                (txt_handles, txt_pos, n_txt, self.text_labels),
            ):
                for (how, handle), p, n, label in zip(handles, pos, counts, labels):
                    for k in range(int(n)):
                        sample = handle.item(int(p) + k) if how == "random" else next(handle)
                        left.append(sample[0])
                        right.append(sample[1])
                        keys.append(f"{label}/{sample[2]}")
            # random-access positions advance over every step (other workers' steps included)
            for s in range(step, step + num_workers):
                ci, ct = self.composition(s)
                img_pos += ci
                txt_pos += ct
            is_text = np.zeros(len(left), dtype=bool)
            is_text[int(n_img.sum()) :] = True
            yield MixedBatch(step, left, right, is_text, keys, stats.pop_delta())

    def dataset(self, start_step: int | None = None, stop_step: int | None = None):
        """A torch IterableDataset of `MixedBatch`es; use with DataLoader(batch_size=None)."""
        from clippo.data.collate import MixerDataset  # torch lives there, not here

        first = self.start_step if start_step is None else start_step
        return MixerDataset(self, first, stop_step)

    def loader(
        self,
        collate: Callable[[MixedBatch], Any],
        *,
        start_step: int | None = None,
        stop_step: int | None = None,
        num_workers: int = 0,
        **dataloader_kwargs: Any,
    ):
        """A DataLoader yielding `collate(batch)` for steps start_step, start_step+1, ..."""
        from torch.utils.data import DataLoader

        return DataLoader(
            self.dataset(start_step, stop_step),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=collate,
            **dataloader_kwargs,
        )

    # -- resume bookkeeping -----------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a resumed run to see the same data (num_workers is not included:
        it matters only for sharded sources; record it next to this)."""
        return {
            "config": self.config.to_dict(),
            "rank": self.rank,
            "world_size": self.world_size,
            "image_sources": [
                [lbl, float(w)] for lbl, w in zip(self.image_labels, self.image_weights)
            ],
            "text_sources": [
                [lbl, float(w)] for lbl, w in zip(self.text_labels, self.text_weights)
            ],
        }

    def state_dict(self, step: int) -> dict[str, Any]:
        """State to save with a checkpoint taken after `step` batches were consumed."""
        return {"step": int(step), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check the fingerprint and make `step` the default start of `batches/dataset/loader`."""
        mine, theirs = self.fingerprint(), state.get("fingerprint")
        if theirs != mine:
            raise ValueError(f"data mixer changed since the checkpoint: saved {theirs}, now {mine}")
        self.start_step = int(state["step"])


# ---- registry ----------------------------------------------------------------------------------


def _registry() -> dict[str, Callable[..., Any]]:
    from clippo.data import image_text, text_pairs  # here: those modules import this one

    return {
        "webdataset": image_text.TarShards,
        "parquet": image_text.ParquetImageText,
        "hf_dataset": image_text.HFImageText,
        "csv": image_text.CSVImageText,
        "sentences": text_pairs.ConsecutiveSentences,
        "word_dropout": text_pairs.WordDropoutPairs,
        "pair_file": text_pairs.PairFile,
        "aligned_files": text_pairs.AlignedFiles,
    }


SOURCE_KINDS = (
    "webdataset",
    "parquet",
    "hf_dataset",
    "csv",
    "sentences",
    "word_dropout",
    "pair_file",
    "aligned_files",
)


def build_source(kind: str, path: Any, options: Mapping[str, Any] | None = None):
    """Make a source by registry name (exact match): `build_source("csv", "pairs.csv", {...})`.

    Unknown kinds and unknown option names are ValueErrors that list what is accepted.
    """
    import inspect

    registry = _registry()
    if kind not in registry:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {sorted(registry)}")
    factory = registry[kind]
    options = dict(options or {})
    params = inspect.signature(factory).parameters
    allowed = [
        n
        for n, p in params.items()
        if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    unknown = sorted(set(options) - set(allowed[1:]))
    if unknown:
        raise ValueError(f"source {kind!r}: unknown options {unknown}; accepted: {allowed[1:]}")
    return factory(path, **options)
