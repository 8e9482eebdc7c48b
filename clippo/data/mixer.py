"""The batch mixer: every batch is a pure function of (seed, step). Sources: `clippo.data.sources`.

Batch composition for step b (rounding): with f = text_pair_fraction and B = batch_size, batch b
holds `floor((b+1)*f*B) - floor(b*f*B)` text/text pairs, computed with exact fractions: exactly
f*B every step when that is an integer (0.25 of 8 = 2), otherwise floor or ceil so that the
running total never drifts from f*B*steps by one or more. The image/text and text/text slots are
split over their sources with a seeded multinomial draw on the weights. Images come first in the
batch, then text pairs (`is_text_pair` marks them).

Resuming: `mixer_loader(mixer, collate, start_step=s)` (`clippo.data.loader`) yields exactly the batches s, s+1, ... of an
uninterrupted run with the same seed, sources, rank/world size and num_workers (DataLoader
workers are handed consecutive steps round-robin, which is the order the DataLoader returns).
`state_dict(step)` / `load_state_dict(state)` record and check that fingerprint.

Streamed sharded sources (and every sharded source with `resampled`) read in stream mode (see
`clippo.data.sources`): their position cannot be computed from the step, so every batch carries
`positions` (source label -> `StreamCursor` after the batch, for the batch's virtual worker
`step % num_workers`), and `state_dict(step, positions)` records them per virtual worker; a
resumed run then starts every stream from its cursor (without a recorded cursor, by reading and
discarding the records consumed).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from clippo import typed_config
from clippo.data.sources import (
    MapSource,
    RandomAccessSource,
    RandomAccessStream,
    ShardedSource,
    ShardStream,
    SkipStats,
    StreamCursor,
    seeded_rng,
)

log = logging.getLogger(__name__)

__all__ = ["BatchMixer", "MixedBatch", "MixerConfig"]


# ---- the mixer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixerConfig:
    """batch_size: pairs per batch on this rank. text_pair_fraction: share of text/text pairs.

    resampled: sharded sources draw units with replacement, independently on every rank and
    worker (an endless stream; open_clip's --dataset-resampled); off: the exact order.
    shuffle_buffer: records in the shuffle buffer of stream-mode sources (<= 1: stream order).
    """

    batch_size: int
    text_pair_fraction: float = 0.0
    seed: int = 0
    max_bad_in_a_row: int = 100
    resampled: bool = False
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.text_pair_fraction <= 1.0:
            raise ValueError(f"text_pair_fraction must be in [0, 1], got {self.text_pair_fraction}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixerConfig:
        return typed_config.from_dict(cls, d)


@dataclass
class MixedBatch:
    """One batch before collation. left[i] is np.uint8 [H,W,3] (image) or str (text pair)."""

    step: int
    left: list[Any]
    right: list[str]
    is_text_pair: np.ndarray  # bool [B]
    keys: list[str]  # "source_label/sample_key"
    skipped: dict[str, int]  # skip counts ("source/kind" -> n) found while making this batch
    # stream-mode sources: label -> [count, k, done] (a StreamCursor) after this batch
    positions: dict[str, list[int]] = field(default_factory=dict)


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
        # virtual worker -> source label -> StreamCursor, from load_state_dict
        self.stream_positions: dict[int, dict[str, StreamCursor]] = {}
        self._block_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _weights(weights: Sequence[float], what: str) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)
        if w.size and (np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0):
            raise ValueError(
                f"{what}: weights must be finite, >= 0 and not all 0, got {list(weights)}"
            )
        return w / w.sum() if w.size else w

    def stream_mode(self, source: Any) -> bool:
        """Whether `source` is read in stream mode (its position is a recorded cursor)."""
        return isinstance(source, ShardedSource) and (source.streamed or self.config.resampled)

    @property
    def has_streams(self) -> bool:
        return any(self.stream_mode(s) for s in (*self.image_sources, *self.text_sources))

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
        rng = seeded_rng(self.config.seed, "composition", block)
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

        saved = self.stream_positions.get(residue, {}) if start > 0 else {}

        def open_side(
            sources: Sequence[RandomAccessSource | ShardedSource],
            labels: Sequence[str],
            consumed: np.ndarray,
            own: np.ndarray,
        ) -> tuple[list[RandomAccessStream | ShardStream], np.ndarray]:
            handles: list[RandomAccessStream | ShardStream] = []
            for src, label, c_own in zip(sources, labels, own):
                if isinstance(src, ShardedSource):
                    begin: StreamCursor | int = int(c_own)
                    if self.stream_mode(src) and c_own > 0:
                        begin = self._stream_start(label, int(c_own), saved.get(label), residue)
                    stream = ShardStream(
                        src,
                        label,
                        part,
                        num_parts,
                        seed,
                        begin,
                        stats,
                        max_bad,
                        resampled=self.config.resampled,
                        shuffle_buffer=self.config.shuffle_buffer,
                    )
                    handles.append(stream)
                else:
                    ra = RandomAccessStream(
                        src, label, self.rank, self.world_size, seed, stats, max_bad
                    )
                    handles.append(ra)
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
                for handle, p, n, label in zip(handles, pos, counts, labels):
                    for k in range(int(n)):
                        if isinstance(handle, RandomAccessStream):
                            sample = handle.item(int(p) + k)
                        else:
                            sample = next(handle)
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
            positions = {
                label: [int(x) for x in handle.cursor]
                for handle, label in zip(
                    (*img_handles, *txt_handles), (*self.image_labels, *self.text_labels)
                )
                if isinstance(handle, ShardStream) and isinstance(handle.cursor, StreamCursor)
            }
            yield MixedBatch(step, left, right, is_text, keys, stats.pop_delta(), positions)

    def _stream_start(
        self, label: str, count: int, saved: StreamCursor | None, residue: int
    ) -> StreamCursor | int:
        """Where a stream-mode source resumes: its recorded cursor, which must have given exactly
        the `count` samples the steps before consumed; without one, `count` (read and drop)."""
        if saved is None:
            log.warning(
                "%s: no recorded stream position for worker %d; reading and dropping the %d "
                "records already consumed",
                label,
                residue,
                count,
            )
            return count
        if saved.samples != count:
            raise ValueError(
                f"{label}: the recorded stream position of worker {residue} has {saved.samples} "
                f"samples, but the steps before the resumed one consumed {count}"
            )
        return saved

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

    def state_dict(
        self, step: int, positions: Mapping[int, Mapping[str, Sequence[int]]] | None = None
    ) -> dict[str, Any]:
        """State to save with a checkpoint taken after `step` batches were consumed. positions:
        virtual worker -> the `positions` of its last batch before `step` (stream mode)."""
        out: dict[str, Any] = {"step": int(step), "fingerprint": self.fingerprint()}
        if positions:
            out["positions"] = {
                str(w): {lbl: [int(x) for x in c] for lbl, c in p.items()}
                for w, p in positions.items()
            }
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check the fingerprint and make `step` the default start of `batches/dataset/loader`.

        The rank is not compared: in distributed training one rank writes the checkpoint that
        every rank resumes from (each rank's stream positions are passed in `positions`)."""
        mine, theirs = self.fingerprint(), state.get("fingerprint")
        if isinstance(theirs, Mapping):
            defaults = MixerConfig(batch_size=1).to_dict()
            # checkpoints from before a config key existed: that key had its default value
            config = {**{k: defaults[k] for k in defaults}, **dict(theirs.get("config", {}))}
            theirs = {**theirs, "config": config, "rank": self.rank}
        if theirs != mine:
            raise ValueError(f"data mixer changed since the checkpoint: saved {theirs}, now {mine}")
        self.start_step = int(state["step"])
        try:
            self.stream_positions = {
                int(w): {lbl: StreamCursor(*(int(x) for x in c)) for lbl, c in p.items()}
                for w, p in dict(state.get("positions", {})).items()
            }
        except (TypeError, ValueError) as e:
            raise ValueError(f"data: malformed stream positions in the checkpoint ({e})") from None
