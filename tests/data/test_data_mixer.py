"""BatchMixer: batch composition, weights, determinism, resuming, ranks, workers, bad samples."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from clippo.data.mixer import BatchMixer, MixerConfig
from clippo.data.registry import build_source
from clippo.data.sources import (
    ImageTextPair,
    RandomAccessSource,
    ShardedSource,
    SkipSample,
    TextPair,
)
from clippo.errors import DataError


class Numbers(RandomAccessSource):
    """Image/text pairs whose image is a 1x1 array holding the index; `bad` indices fail."""

    def __init__(self, n, bad=(), name="numbers", text=False):
        self.n, self.bad, self.name, self.text = n, set(bad), name, text

    def __len__(self):
        return self.n

    def load(self, index, item_seed):
        if index in self.bad:
            raise SkipSample("broken", f"index {index} is broken")
        if self.text:
            return TextPair(f"{self.name} {index}", f"{self.name} {index} b", str(index))
        return ImageTextPair(
            np.full((1, 1, 3), index, np.uint8), f"{self.name} {index}", str(index)
        )


class Shards(ShardedSource):
    """`units` units of `per_unit` text-pair records; records listed in `bad` fail to decode."""

    def __init__(self, units=3, per_unit=5, bad=(), name="shards"):
        self.units, self.per_unit, self.bad, self.name = units, per_unit, set(bad), name

    def num_units(self):
        return self.units

    def unit_length(self, unit):
        return self.per_unit

    def read_unit(self, unit):
        return [f"u{unit}r{i}" for i in range(self.per_unit)]

    def decode(self, record, item_seed):
        if record in self.bad:
            raise SkipSample("broken", record)
        return TextPair(record, f"{record} {item_seed % 1000}", record)  # uses the item seed


def take(mixer, start, n, num_workers=1):
    """Steps start..start+n-1 as a DataLoader would deliver them from `num_workers` workers."""
    its = [mixer.batches(start, worker=w, num_workers=num_workers) for w in range(num_workers)]
    out = []
    for it in itertools.cycle(its):
        out.append(next(it))
        if len(out) == n:
            return out


def sig(batch):
    return (
        batch.step,
        batch.keys,
        [x if isinstance(x, str) else int(x[0, 0, 0]) for x in batch.left],
        batch.right,
    )


def test_text_pairs_per_batch_exact_when_integral():
    m = BatchMixer(MixerConfig(8, 0.25), [(Numbers(100), 1)], [(Numbers(100, text=True), 1)])
    for b in take(m, 0, 30):
        assert b.is_text_pair.sum() == 2 and len(b.left) == 8
        assert not b.is_text_pair[:6].any() and b.is_text_pair[6:].all()  # images first
        assert all(isinstance(x, str) for x in b.left[6:]) and all(
            isinstance(x, np.ndarray) for x in b.left[:6]
        )


@pytest.mark.parametrize("fraction, batch", [(0.3, 8), (1 / 3, 10), (0.05, 7), (0.0, 4), (1.0, 4)])
def test_rounding_never_drifts(fraction, batch):
    img = [(Numbers(50), 1)] if fraction < 1 else []
    txt = [(Numbers(50, text=True), 1)] if fraction > 0 else []
    m = BatchMixer(MixerConfig(batch, fraction), img, txt)
    counts = [m.text_pairs_in_batch(s) for s in range(500)]
    exact = Fraction(fraction).limit_denominator(1_000_000) * batch
    lo, hi = int(exact), -int(-exact // 1)
    assert set(counts) <= {lo, hi}
    running = np.cumsum(counts)
    target = np.arange(1, 501) * float(exact)
    assert np.abs(running - target).max() < 1.0
    assert [int(b.is_text_pair.sum()) for b in take(m, 0, 20)] == counts[:20]


def test_weights_are_respected():
    a, b = Numbers(1000, name="a"), Numbers(1000, name="b")
    m = BatchMixer(MixerConfig(16, 0.0, seed=3), [(a, 3.0), (b, 1.0)])
    totals = sum(m.composition(s)[0] for s in range(2000))
    assert totals.sum() == 16 * 2000
    assert abs(totals[0] / totals.sum() - 0.75) < 0.01
    zero = BatchMixer(MixerConfig(4), [(a, 1.0), (b, 0.0)])
    assert all(zero.composition(s)[0][1] == 0 for s in range(100))


def test_random_access_epochs_and_ranks_cover_everything_once():
    src = Numbers(24)
    seen = []
    for rank in range(2):
        m = BatchMixer(MixerConfig(4, seed=5), [(src, 1)], rank=rank, world_size=2)
        keys = [k for b in take(m, 0, 6) for k in b.keys]  # 24 samples per rank = 2 epochs
        seen.append(keys)
    epoch0 = seen[0][:12] + seen[1][:12]
    assert sorted(int(k.rsplit("/", 1)[1]) for k in epoch0) == list(range(24))
    epoch1 = seen[0][12:] + seen[1][12:]
    assert sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0


def make_mixer(seed=0, bad=()):
    img = [(Numbers(37, bad=bad, name="a"), 2.0), (Numbers(11, name="b"), 1.0)]
    txt = [
        (Shards(4, 6, bad={"u1r2", "u1r3", "u2r0"}), 1.0),
        (Numbers(13, text=True, name="t"), 1.0),
    ]
    return BatchMixer(MixerConfig(6, 0.5, seed=seed, max_bad_in_a_row=10), img, txt)


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_resume_is_exact(num_workers):
    m = make_mixer(bad={3, 4})
    full = [sig(b) for b in take(m, 0, 40, num_workers)]
    assert [s[0] for s in full] == list(range(40))
    for start in (1, 7, 23):
        resumed = [sig(b) for b in take(make_mixer(bad={3, 4}), start, 40 - start, num_workers)]
        assert resumed == full[start:]


def test_random_access_sources_do_not_depend_on_num_workers():
    img = [(Numbers(37, name="a"), 1.0)]
    txt = [(Numbers(13, text=True, name="t"), 1.0)]
    ref = [sig(b) for b in take(BatchMixer(MixerConfig(6, 0.5), img, txt), 0, 20, 1)]
    for w in (2, 3):
        assert [sig(b) for b in take(BatchMixer(MixerConfig(6, 0.5), img, txt), 0, 20, w)] == ref


def test_sharded_source_same_samples_per_epoch_for_any_num_workers():
    # 4 units x 6 records; with 1 or 2 workers every record appears once per epoch per rank.
    for w in (1, 2):
        m = BatchMixer(MixerConfig(4, 1.0, seed=1), (), [(Shards(4, 6), 1.0)])
        keys = [k.rsplit("/", 1)[1] for b in take(m, 0, 6, w) for k in b.keys]
        assert sorted(keys) == sorted(f"u{u}r{r}" for u in range(4) for r in range(6))


def test_seed_changes_order():
    a = [sig(b) for b in take(make_mixer(seed=0), 0, 5)]
    b = [sig(b) for b in take(make_mixer(seed=1), 0, 5)]
    assert a != b


def test_bad_samples_are_replaced_and_counted():
    bad = set(range(0, 37, 2))  # half of source "a" is broken
    m = make_mixer(bad=bad)
    batches = take(m, 0, 30)
    values = [
        int(x[0, 0, 0]) for b in batches for x, k in zip(b.left, b.keys) if "image_text/0" in k
    ]
    assert values and not set(values) & bad
    skipped = {}
    for b in batches:
        for k, n in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + n
    assert skipped["image_text/0:a/broken"] > 0
    assert skipped.get("text_pairs/0:shards/broken", 0) > 0
    # a sharded source replaces a bad record with the next good one of its stream
    shard_items = [x for b in batches for x, k in zip(b.left, b.keys) if "text_pairs/0" in k]
    assert not {"u1r2", "u1r3", "u2r0"} & set(shard_items)
    assert all(len(b.left) == 6 for b in batches)


def test_a_source_that_is_all_bad_stops_with_a_clear_error():
    m = BatchMixer(MixerConfig(2, max_bad_in_a_row=5), [(Numbers(10, bad=range(10)), 1)])
    with pytest.raises(DataError, match="6 bad samples in a row"):
        next(m.batches(0))
    m = BatchMixer(
        MixerConfig(2, 1.0, max_bad_in_a_row=5),
        (),
        [(Shards(1, 9, bad={f"u0r{i}" for i in range(9)}), 1)],
    )
    with pytest.raises(DataError, match="bad samples in a row"):
        next(m.batches(0))


def test_map_style_datasets_are_accepted():
    images = [(np.full((2, 2, 3), i, np.uint8), f"cap {i}") for i in range(5)]
    texts = [(f"a {i}", f"b {i}") for i in range(5)]
    m = BatchMixer(MixerConfig(4, 0.5), [(images, 1)], [(texts, 1)])
    b = next(m.batches(0))
    assert b.right[:2] == [f"cap {int(x[0, 0, 0])}" for x in b.left[:2]]
    assert [s.split()[1] for s in b.left[2:]] == [s.split()[1] for s in b.right[2:]]


def test_config_and_state_validation():
    with pytest.raises(ValueError, match="text/text source"):
        BatchMixer(MixerConfig(4, 0.5), [(Numbers(4), 1)])
    with pytest.raises(ValueError, match="image/text source"):
        BatchMixer(MixerConfig(4, 0.5), (), [(Numbers(4, text=True), 1)])
    with pytest.raises(ValueError):
        MixerConfig(4, 1.5)
    with pytest.raises(ValueError, match="unknown key 'bacth' in MixerConfig"):
        MixerConfig.from_dict({"batch_size": 4, "bacth": 1})
    assert MixerConfig.from_dict(MixerConfig(4, 0.25, 7).to_dict()) == MixerConfig(4, 0.25, 7)
    with pytest.raises(ValueError, match="weights"):
        BatchMixer(MixerConfig(4), [(Numbers(4), -1)])
    m = make_mixer()
    state = m.state_dict(17)
    other = make_mixer()
    other.load_state_dict(state)
    assert other.start_step == 17 and next(other.batches()).step == 17
    with pytest.raises(ValueError, match="changed"):
        make_mixer(seed=9).load_state_dict(state)


def test_build_source_registry(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("a\tb\n")
    src = build_source("pair_file", str(path), {"shuffle": False})
    assert src.load(0, 0) == TextPair("a", "b", "1")
    with pytest.raises(ValueError, match="unknown source kind"):
        build_source("pairs", str(path))
    with pytest.raises(ValueError, match="unknown options"):
        build_source("pair_file", str(path), {"colums": (0, 1)})
