"""Streamed shards (`pipe:`, http through fsspec), the buffer shuffle, the stream-mode resume rule
and resampling. Shards are served by `pipe:cat` and by an HTTP server on 127.0.0.1 started here.
"""

from __future__ import annotations

import functools
import http.server
import re
import shlex
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from clippo.data.image_text import TarShards
from clippo.data.mixer import BatchMixer, MixerConfig
from clippo.data.sources import ShardStream, SkipStats, StreamCursor, seeded_rng
from clippo.data.streams import buffer_shuffle
from clippo.errors import DataError

from .conftest import encode, random_rgb, write_tar

UNITS, PER_UNIT = 4, 6


def make_shards(tmp_path: Path, units: int = UNITS, per_unit: int = PER_UNIT) -> list[str]:
    """Shards s-0.tar ... with records "u{u}r{i}" (a 4x4 PNG and a caption naming the record)."""
    png = encode(random_rgb(4, 4))
    paths = []
    for u in range(units):
        members = []
        for i in range(per_unit):
            members += [(f"u{u}r{i}.png", png), (f"u{u}r{i}.txt", f"cap u{u}r{i}".encode())]
        paths.append(write_tar(tmp_path / f"s-{u}.tar", members))
    return paths


def pipe_specs(paths: list[str], log: Path | None = None) -> list[str]:
    """`pipe:cat FILE` for each shard; with `log`, each command first appends its shard's index."""
    pre = (lambda u: f"echo {u} >> {shlex.quote(str(log))} && ") if log else (lambda u: "")
    return [f"pipe:{pre(u)}cat {shlex.quote(p)}" for u, p in enumerate(paths)]


def keys(stream, n: int) -> list[str]:
    return [next(stream).key for _ in range(n)]


def stream(source, start=0, *, part=0, parts=1, seed=0, resampled=False, buffer=4):
    return ShardStream(
        source,
        "src",
        part,
        parts,
        seed,
        start,
        SkipStats(),
        3,
        resampled=resampled,
        shuffle_buffer=buffer,
    )


@pytest.fixture
def http_root(tmp_path):
    """(base URL, folder) of an HTTP server on 127.0.0.1 serving `folder`, for this test only."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---- reading streams ---------------------------------------------------------------------------


def test_pipe_and_local_give_the_same_records(tmp_path):
    paths = make_shards(tmp_path)
    local = TarShards(paths, image_size=4)
    piped = TarShards(pipe_specs(paths), image_size=4)
    assert not local.streamed and piped.streamed
    for u in range(UNITS):
        want = local.read_unit(u)
        got = list(piped.iter_unit(u))
        assert [r[0] for r in got] == [want[i][0] for i in range(len(want))]
        assert [r[1] for r in got] == [want[i][1] for i in range(len(want))]
        assert len(piped.read_unit(u)) == PER_UNIT == piped.unit_length(u)


def test_pipe_braces_expand_into_one_command_per_shard(tmp_path):
    make_shards(tmp_path)
    src = TarShards(f"pipe:cat {tmp_path}/s-{{0..3}}.tar", image_size=4)
    assert src.paths == [f"pipe:cat {tmp_path}/s-{u}.tar" for u in range(UNITS)]
    s = stream(src, buffer=0)
    assert keys(s, 2 * UNITS * PER_UNIT)  # endless: a second epoch follows


def test_http_shards_through_fsspec(tmp_path, http_root):
    base, root = http_root
    make_shards(root)
    src = TarShards(f"{base}/s-{{0..3}}.tar", image_size=4)
    assert src.streamed and src.paths[0] == f"{base}/s-0.tar"
    local = TarShards(sorted(str(p) for p in root.glob("s-*.tar")), image_size=4)
    for u in range(UNITS):
        got = list(src.iter_unit(u))
        assert [(k, d) for k, d, _ in got] == [local.read_unit(u)[i][:2] for i in range(PER_UNIT)]
    # through the mixer's stream: every record once per epoch, decoded
    s = stream(src, buffer=3)
    seen = [next(s) for _ in range(UNITS * PER_UNIT)]
    assert sorted(x.key for x in seen) == sorted(f"u{u}r{i}" for u in range(4) for i in range(6))
    assert all(x.text == f"cap {x.key}" and x.image.shape == (4, 4, 3) for x in seen)


def test_http_missing_shard_names_the_url(http_root):
    base, _ = http_root
    src = TarShards(f"{base}/nope.tar")
    with pytest.raises(DataError, match="nope.tar"):
        list(src.iter_unit(0))


# ---- errors ------------------------------------------------------------------------------------


def test_failing_pipe_is_an_error_naming_the_spec(tmp_path):
    paths = make_shards(tmp_path, units=1)
    bad = TarShards([f"pipe:cat {paths[0]} && exit 3"], image_size=4)
    with pytest.raises(DataError, match=r"exit 3.*status 3"):
        list(bad.iter_unit(0))
    missing = TarShards(["pipe:clippo-no-such-command-xyz"], image_size=4)
    with pytest.raises(DataError, match=r"clippo-no-such-command-xyz.*status 127"):
        next(stream(missing))


def test_early_close_stops_the_command_without_error(tmp_path):
    paths = make_shards(tmp_path, units=1)
    # a producer that would run for a minute after the shard: closing early must not wait for it
    src = TarShards([f"pipe:cat {paths[0]}; sleep 60"], image_size=4)
    t0 = time.monotonic()
    it = iter(src.iter_unit(0))
    assert next(it)[0] == "u0r0"
    it.close()  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 20


def test_unknown_scheme_and_missing_filesystem_package():
    with pytest.raises(DataError, match="unknown URL scheme 'nosuchfs'"):
        TarShards("nosuchfs://bucket/shard-{0..3}.tar")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"s3://.*s3fs"):
            TarShards("s3://bucket/shard-0.tar")


def test_stream_specs_are_refused_by_sources_that_need_files():
    from clippo.data.image_text import expand_paths

    with pytest.raises(ValueError, match="webdataset"):
        expand_paths("pipe:cat x.parquet")


# ---- the buffer shuffle ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 5, 16])
def test_buffer_shuffle_is_a_bounded_seeded_permutation(size):
    n = 200
    out = list(buffer_shuffle(range(n), size, seeded_rng(7)))
    assert sorted(out) == list(range(n)) and out != list(range(n))
    # nothing comes out more than size-1 places before it went in
    early = max(item - pos for pos, item in enumerate(out))
    assert early <= size - 1
    assert early == size - 1  # and the bound is reached (the buffer is used whole)
    assert out == list(buffer_shuffle(range(n), size, seeded_rng(7)))
    assert out != list(buffer_shuffle(range(n), size, seeded_rng(8)))


def test_buffer_shuffle_reference_and_off():
    """Against a naive restatement of the rule (fill, then swap out a uniform slot)."""
    rng_a, rng_b = seeded_rng(3), seeded_rng(3)
    got = list(buffer_shuffle(range(30), 4, rng_a))
    buf, want = [], []
    for x in range(30):
        if len(buf) < 4:
            buf.append(x)
            continue
        i = int(rng_b.integers(4))
        want.append(buf[i])
        buf[i] = x
    want += [buf[int(i)] for i in rng_b.permutation(len(buf))]
    assert got == want
    assert list(buffer_shuffle(range(10), 1, seeded_rng(0))) == list(range(10))
    assert list(buffer_shuffle(range(10), 0, seeded_rng(0))) == list(range(10))


def test_stream_mode_order_is_buffered_stream_order(tmp_path):
    """Exact stream mode: units in the seeded epoch order, records within `buffer` of file order,
    every record once per epoch; buffer 0 (or shuffle=False) keeps file order."""
    paths = make_shards(tmp_path)
    src = TarShards(pipe_specs(paths), image_size=4)
    order = [
        int(u) for u in seeded_rng(0, "src", "units", 0).permutation(UNITS)
    ]  # the unit order of epoch 0 (as exact mode)
    plain = keys(stream(src, buffer=0), UNITS * PER_UNIT)
    assert plain == [f"u{u}r{i}" for u in order for i in range(PER_UNIT)]
    buffered = keys(stream(src, buffer=3), UNITS * PER_UNIT)
    assert sorted(buffered) == sorted(plain) and buffered != plain
    for j, u in enumerate(order):  # the buffer is emptied at the end of every unit
        chunk = buffered[j * PER_UNIT : (j + 1) * PER_UNIT]
        assert sorted(chunk) == sorted(f"u{u}r{i}" for i in range(PER_UNIT))
        assert all(int(k.split("r")[1]) - pos <= 2 for pos, k in enumerate(chunk))
    unshuffled = TarShards(pipe_specs(paths), image_size=4, shuffle=False)
    assert keys(stream(unshuffled, buffer=3), 12) == [f"u{u}r{i}" for u in (0, 1) for i in range(6)]


def test_more_partitions_than_units_split_records(tmp_path):
    paths = make_shards(tmp_path, units=2, per_unit=6)
    src = TarShards(pipe_specs(paths), image_size=4)
    parts = [keys(stream(src, part=p, parts=3, buffer=0), 4) for p in range(3)]
    assert [set(int(k.split("r")[1]) % 3 for k in ks) for ks in parts] == [{0}, {1}, {2}]
    assert not set(parts[0]) & set(parts[1])


# ---- the resume rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize("stop", [1, 5, 6, 13, 30])
def test_resumed_stream_continues_exactly(tmp_path, stop, resampled):
    paths = make_shards(tmp_path)
    log = tmp_path / "opened.log"
    src = TarShards(pipe_specs(paths, log), image_size=4)
    full = keys(stream(src, resampled=resampled), 50)
    s = stream(src, resampled=resampled)
    keys(s, stop)
    cursor = s.cursor
    assert isinstance(cursor, StreamCursor) and cursor.samples == stop
    log.write_text("")
    resumed = stream(src, StreamCursor(*list(cursor)), resampled=resampled)  # via JSON lists
    assert keys(resumed, 50 - stop) == full[stop:]
    # units before the cursor's were not opened again; the cursor's own is read once more
    assert int(log.read_text().split()[0]) == _unit_at(src, cursor.k, resampled)
    assert len(log.read_text().split()) <= 50 // PER_UNIT + 2
    # without a recorded cursor: the consumed records are read and dropped (same result)
    assert keys(stream(src, stop, resampled=resampled), 50 - stop) == full[stop:]


def _unit_at(src, k: int, resampled: bool) -> int:
    if resampled:
        return int(seeded_rng(0, "src", "resample", 0, k).integers(src.num_units()))
    epoch, i = divmod(k, src.num_units())
    return int(seeded_rng(0, "src", "units", epoch).permutation(src.num_units())[i])


def test_bad_records_keep_cursor_and_sample_positions_aligned(tmp_path):
    """A bad record is replaced by the next good one (as in exact mode): the cursor after each
    duplicate points past the bad record, so a resume inside the run of duplicates matches."""
    png = encode(random_rgb(4, 4))
    members = []
    for i in range(8):
        members.append((f"k{i}.png", png))
        if i not in (2, 3):  # k2, k3: no caption -> skipped
            members.append((f"k{i}.txt", f"c{i}".encode()))
    path = write_tar(tmp_path / "bad.tar", members)
    src = TarShards([f"pipe:cat {path}"], image_size=4, shuffle=False)
    s = stream(src)
    got, cursors = [], []
    for _ in range(8):
        got.append(next(s).key)
        cursors.append(s.cursor)
    assert got == ["k0", "k1", "k4", "k4", "k4", "k5", "k6", "k7"]
    assert [c.done for c in cursors] == list(range(1, 9))
    for j in range(8):
        assert keys(stream(src, cursors[j]), 8 - j - 1) == got[j + 1 :]


def _mixer(sources, seed=0, resampled=False, rank=0, world=1, buffer=4, batch=5):
    return BatchMixer(
        MixerConfig(batch, seed=seed, resampled=resampled, shuffle_buffer=buffer),
        [(s, 1.0) for s in sources],
        rank=rank,
        world_size=world,
    )


@pytest.mark.parametrize("num_workers", [1, 3])
@pytest.mark.parametrize("resampled", [False, True])
def test_mixer_resume_from_batch_positions(tmp_path, num_workers, resampled):
    """Two sources (one streamed, one local: streamed only if resampled), batches made by W
    virtual workers; a run resumed from the positions of the batches before step s gives the
    same batches as the uninterrupted run."""
    paths = make_shards(tmp_path)
    sources = [TarShards(pipe_specs(paths[:2]), image_size=4), TarShards(paths[2:], image_size=4)]

    def run(mixer, start, stop):
        its = [
            mixer.batches(start, stop_step=stop, worker=w, num_workers=num_workers)
            for w in range(num_workers)
        ]
        out, w = [], 0
        while len(out) < stop - start:
            out.append(next(its[w]))
            w = (w + 1) % num_workers
        return out

    full = run(_mixer(sources, resampled=resampled), 0, 16)
    stop = 7
    positions = {b.step % num_workers: b.positions for b in full[:stop]}  # the last per worker
    assert set(positions[0]) == (
        {"image_text/0:webdataset", "image_text/1:webdataset"}
        if resampled
        else {"image_text/0:webdataset"}
    )
    state = _mixer(sources, resampled=resampled).state_dict(stop, positions)
    resumed = _mixer(sources, resampled=resampled)
    resumed.load_state_dict(state)
    again = run(resumed, stop, 16)
    assert [b.keys for b in again] == [b.keys for b in full[stop:]]
    # a cursor that does not match the steps is refused
    label = "image_text/0:webdataset"
    state["positions"][str(stop % num_workers)][label][0] += 1
    broken = _mixer(sources, resampled=resampled)
    broken.load_state_dict(state)
    with pytest.raises(ValueError, match="recorded stream position"):
        next(broken.batches(stop, worker=0, num_workers=num_workers))


def test_old_checkpoint_without_new_config_keys_loads(tmp_path):
    paths = make_shards(tmp_path, units=2)
    m = _mixer([TarShards(paths, image_size=4)], buffer=1000)  # the defaults
    state = m.state_dict(3)
    for k in ("resampled", "shuffle_buffer"):
        del state["fingerprint"]["config"][k]
    m.load_state_dict(state)
    assert m.start_step == 3
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        _mixer([TarShards(paths, image_size=4)], resampled=True).load_state_dict(state)


# ---- resampling --------------------------------------------------------------------------------


def test_resampled_streams_are_endless_independent_and_seeded(tmp_path):
    paths = make_shards(tmp_path)
    for src in (TarShards(pipe_specs(paths), image_size=4), TarShards(paths, image_size=4)):
        n = 10 * UNITS * PER_UNIT
        a = keys(stream(src, resampled=True, part=0, parts=4), n)
        assert a == keys(stream(src, resampled=True, part=0, parts=4), n)  # seeded
        others = [keys(stream(src, resampled=True, part=p, parts=4), n) for p in (1, 2, 3)]
        assert all(o != a for o in others)  # every partition draws its own units
        assert a != keys(stream(src, resampled=True, part=0, parts=4, seed=1), n)
        # with replacement: unit counts over 10 epochs' worth are not all equal (exact mode: 10)
        units = Counter(k.split("r")[0] for k in a)
        assert set(units) == {f"u{u}" for u in range(UNITS)}
        assert sorted(units.values()) != [10 * PER_UNIT] * UNITS
        # every partition reads from all units (not a disjoint share of them)
        assert all({k.split("r")[0] for k in o} == set(units) for o in others)
        # draws: unit sequence matches the per-draw seeds
        # draw k is unit integers(n) of the seed (seed, source, partition, k), read whole
        firsts = [a[j * PER_UNIT].split("r")[0] for j in range(10)]
        assert firsts == [f"u{_unit_at_part(src, j, 0, 4)}" for j in range(10)]


def _unit_at_part(src, k: int, part: int, parts: int) -> int:
    return int(seeded_rng(0, "src", "resample", part, k).integers(src.num_units()))


def test_resampled_mixer_ranks_are_independent(tmp_path):
    paths = make_shards(tmp_path)
    src = TarShards(paths, image_size=4)
    r0 = [b.keys for b in _mixer([src], resampled=True, rank=0, world=2).batches(stop_step=12)]
    r1 = [b.keys for b in _mixer([src], resampled=True, rank=1, world=2).batches(stop_step=12)]
    assert r0 != r1
    again = [b.keys for b in _mixer([src], resampled=True, rank=0, world=2).batches(stop_step=12)]
    assert again == r0
    # the default (exact) order is unchanged by the new options: disjoint shards per rank
    e0 = {k for b in _mixer([src], rank=0, world=2).batches(stop_step=2) for k in b.keys}
    e1 = {k for b in _mixer([src], rank=1, world=2).batches(stop_step=2) for k in b.keys}
    assert not {k.split("r")[0] for k in e0} & {k.split("r")[0] for k in e1}


def test_local_shards_keep_exact_mode(tmp_path):
    """Without resampling, local shards do not use stream mode: batches carry no positions and
    their order is the exact whole-unit shuffle (record order permuted over the whole unit)."""
    paths = make_shards(tmp_path)
    m = _mixer([TarShards(paths, image_size=4)], buffer=2)
    batches = list(m.batches(stop_step=4))
    assert all(b.positions == {} for b in batches)
    ks = [k.split("/")[-1] for b in batches for k in b.keys][:PER_UNIT]
    unit = ks[0].split("r")[0]
    perm = seeded_rng(0, "image_text/0:webdataset", "records", 0, int(unit[1:])).permutation(6)
    assert ks == [f"{unit}r{int(i)}" for i in perm]


def test_unit_that_changed_length_is_a_data_error_naming_the_shard(tmp_path):
    """A shard rewritten under a running job (its length now differs from what resuming stepped
    over with) is bad input: a DataError naming the shard files, not a bare RuntimeError."""

    class Rewritten(TarShards):
        def unit_length(self, unit: int) -> int:  # what the shard held when it was indexed
            return super().unit_length(unit) + 1

    paths = make_shards(tmp_path)
    want = (
        rf"\(4 files in {re.escape(str(tmp_path))}\): unit \d has 6 records, but unit_length said 7"
    )
    with pytest.raises(DataError, match=want):
        next(stream(Rewritten(paths, image_size=4), start=1))
