"""`clippo render` under hostile or broken conditions (issue 8): planted symlinks, SIGKILL, two runs
at once, damaged shards and manifests, bad input files, wrong config types. Each test reproduces
a failure of the code before the fix."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clippo.cli import main
from clippo.render import RenderConfig
from clippo.render.corpus import (
    LOCK_NAME,
    CorpusSource,
    OutputBusyError,
    ShardOptions,
    render_corpus,
)
from clippo.render.corpus_io import CorpusError, CorpusWarning, open_reader
from clippo.render.unifont import load_glyphs

CFG = RenderConfig(image_size=32)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def corpus(path: Path, n: int) -> Path:
    path.write_text("".join(f"caption number {i}: a photo of thing {i % 97}\n" for i in range(n)))
    return path


def run(source: Path, out: Path, cfg: RenderConfig = CFG, **options: object):
    options.setdefault("rows_per_shard", 3)
    return render_corpus(
        CorpusSource(str(source)), cfg, ShardOptions(str(out), **options), progress=False
    )


def shard_bytes(out: Path, suffix: str = ".tar") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob(f"shard-0*{suffix}"))}


# ---------------------------------------------------------------------------------------------
# 1. no write through a planted symlink


def test_planted_symlinks_never_receive_data(tmp_path, capsys):
    src = corpus(tmp_path / "c.txt", 7)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    names = [  # the fixed temp names of the old code, and clippo.atomic-style temp names
        "shard-000000.tar.tmp",
        "shard-000001.tar.tmp",
        "shard-000002.tar.tmp",
        "shard-manifest.json.tmp",
        "shard-summary.json.tmp",
        ".shard-000000.tar.abcd1234.tmp",
        ".shard-manifest.json.abcd1234.tmp",
        ".shard-summary.json.abcd1234.tmp",
    ]
    for name in names:
        (out / name).symlink_to(outside)
    for name in ("prev.png.tmp", ".prev.png.abcd1234.tmp"):
        (tmp_path / name).symlink_to(outside)
    argv = ["render", str(src), str(out), "--rows-per-shard", "3", "--image-size", "32"]
    argv += ["--preview", "4", str(tmp_path / "prev.png"), "--no-progress"]
    assert main(argv) == 0
    assert outside.read_text() == "precious"
    written = [*out.glob("shard-0*.tar"), out / "shard-manifest.json", out / "shard-summary.json"]
    written.append(tmp_path / "prev.png")
    assert len(written) == 6
    for p in written:
        assert p.is_file() and not p.is_symlink(), p
    assert (tmp_path / "prev.png").read_bytes().startswith(b"\x89PNG")
    # the leftovers of "killed runs" were removed (the links, never their target)
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []

    # a rerun where the finished names were swapped for links: replaced, never written through
    before = shard_bytes(out)
    for name in ("shard-000001.tar", "shard-summary.json"):
        (out / name).unlink()
        (out / name).symlink_to(outside)
    assert main(argv[:-4] + ["--no-progress"]) == 0
    assert "shard-000001.tar: a symbolic link" in capsys.readouterr().err
    assert outside.read_text() == "precious"
    assert shard_bytes(out) == before
    assert not (out / "shard-000001.tar").is_symlink()
    assert not (out / "shard-summary.json").is_symlink()


def test_planted_lock_symlink_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).symlink_to(outside)
    with pytest.raises(OSError, match=LOCK_NAME):
        run(corpus(tmp_path / "c.txt", 2), tmp_path / "out")
    assert outside.read_text() == "precious"


# ---------------------------------------------------------------------------------------------
# 2. workers die with their parent (and a SIGKILLed run resumes byte-identically)


def _proc_stat(pid: str) -> tuple[int, int, str] | None:
    """(ppid, session, state) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, _pgrp, session = text.rsplit(")", 1)[1].split()[:4]
    return int(ppid), int(session), state


def _live(pred) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (st := _proc_stat(pid)) is not None and st[2] != "Z" and pred(st):
            found.append(int(pid))
    return found


@pytest.mark.slow  # a subprocess with two spawned workers, then two renders of 30k rows
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_of_the_parent_ends_its_workers_and_the_rerun_is_identical(tmp_path):
    src = corpus(tmp_path / "c.txt", 30_000)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clippo", "render", str(src), str(out), "--num-workers", "2"]
    cmd += ["--rows-per-shard", "500", "--image-size", "32", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _live(lambda st: st[0] == proc.pid)
            if len(workers) >= 2 and (out / "shard-000000.tar").exists():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the render finished before it could be killed"
        assert len(workers) >= 2
        for w in workers:  # spawned workers do not hold the output folder's lock
            links = []
            for fd in os.listdir(f"/proc/{w}/fd"):
                with contextlib.suppress(OSError):
                    links.append(os.readlink(f"/proc/{w}/fd/{fd}"))
            assert not any(link.endswith(LOCK_NAME) for link in links)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while (left := _live(lambda st: st[1] == proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"processes of the killed run still alive: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):  # after a failure: leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
    killed = shard_bytes(out)
    assert 0 < len(killed) < 60
    rerun = run(src, out, rows_per_shard=500)
    assert rerun.shards_skipped >= 1 and rerun.shards_written + rerun.shards_skipped == 60
    run(src, tmp_path / "reference", rows_per_shard=500)
    assert shard_bytes(out) == shard_bytes(tmp_path / "reference")


# ---------------------------------------------------------------------------------------------
# 3. one run per output folder


def _hold(path: Path, mode: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd


def test_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    src = corpus(tmp_path / "c.txt", 5)
    out = tmp_path / "out"
    out.mkdir()
    fd = _hold(out / LOCK_NAME, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputBusyError, match=rf"{out}: another clippo render \(pid 4242\)"):
            run(src, out)
        assert main(["render", str(src), str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("clippo render: error: ") and len(err.splitlines()) == 1, err
        assert str(out) in err and "pid 4242" in err
        assert not list(out.glob("shard-0*"))
    finally:
        os.close(fd)
    assert run(src, out).shards_written == 2  # released (as by the holder's death): runs again


def test_jobs_of_a_job_array_share_the_folder(tmp_path):
    src = corpus(tmp_path / "c.txt", 12)
    out = tmp_path / "out"
    out.mkdir()
    # job 1 of 2 is running: it holds the folder shared and its own job lock
    folder = _hold(out / LOCK_NAME, fcntl.LOCK_SH)
    job = _hold(out / ".clippo-render-job000001-of-000002.lock", fcntl.LOCK_EX)
    try:
        assert run(src, out, job_index=0, num_jobs=2).shards_written == 2
        with pytest.raises(OutputBusyError, match="pid 4242"):
            run(src, out, job_index=1, num_jobs=2)
        with pytest.raises(OutputBusyError):  # a single-job run would write every shard
            run(src, out)
    finally:
        os.close(job)
        os.close(folder)
    assert run(src, out, job_index=1, num_jobs=2).shards_written == 2
    assert shard_bytes(out) == (run(src, tmp_path / "ref"), shard_bytes(tmp_path / "ref"))[1]


# ---------------------------------------------------------------------------------------------
# 4. finished shards are verified before they are skipped


@pytest.mark.parametrize("fmt", ["tar", "parquet"])
def test_truncated_shard_is_rendered_again(tmp_path, capsys, fmt):
    src = corpus(tmp_path / "c.txt", 8)
    out = tmp_path / "out"
    suffix = "." + fmt
    run(src, out, output_format=fmt)
    original = shard_bytes(out, suffix)
    manifest = json.loads((out / "shard-manifest.json").read_text())
    assert manifest["shards"][f"shard-000001{suffix}"] == {
        "rows": 3,
        "bytes": len(original[f"shard-000001{suffix}"]),
    }
    damaged = out / f"shard-000001{suffix}"
    damaged.write_bytes(original[damaged.name][: len(original[damaged.name]) // 2])
    summary = run(src, out, output_format=fmt)
    assert summary.shards_written == 1 and summary.shards_skipped == 2
    assert f"shard-000001{suffix}: " in capsys.readouterr().err
    assert shard_bytes(out, suffix) == original


def test_same_size_damage_is_found_by_the_member_count(tmp_path, capsys):
    src = corpus(tmp_path / "c.txt", 8)
    out = tmp_path / "out"
    run(src, out)
    original = shard_bytes(out)
    (out / "shard-000002.tar").write_bytes(bytes(len(original["shard-000002.tar"])))
    assert run(src, out).shards_written == 1
    assert "shard-000002.tar: 0 members where 6 were written" in capsys.readouterr().err
    assert shard_bytes(out) == original


def test_shards_without_manifest_are_not_mixed(tmp_path):
    src = corpus(tmp_path / "c.txt", 8)
    out = tmp_path / "out"
    run(src, out)
    (out / "shard-manifest.json").unlink()
    with pytest.raises(ValueError, match=rf"{out} has 3 shards but no shard-manifest\.json"):
        run(src, out, RenderConfig(image_size=48))


def test_corrupt_manifest_names_the_file(tmp_path, capsys):
    src = corpus(tmp_path / "c.txt", 4)
    out = tmp_path / "out"
    run(src, out)
    for bad in ('{"kind": "rendered-te', "[1, 2]", '{"shards": {"x": {"rows": "3"}}}', "\xff"):
        (out / "shard-manifest.json").write_bytes(bad.encode("latin-1"))
        with pytest.raises(ValueError, match=r"shard-manifest\.json: corrupt shard manifest"):
            run(src, out)
    assert main(["render", str(src), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("clippo render: error: ") and len(err.splitlines()) == 1, err
    assert "shard-manifest.json: corrupt" in err


# ---------------------------------------------------------------------------------------------
# 5. bad input files get a sentence naming the file


def test_truncated_gzip_corpus_names_the_file(tmp_path):
    p = tmp_path / "c.txt.gz"
    p.write_bytes(gzip.compress(("some text\n" * 5000).encode())[:-40])
    with pytest.raises(CorpusError, match=r"c\.txt\.gz: truncated or corrupt gzip"):
        run(p, tmp_path / "out", rows_per_shard=100_000)
    q = tmp_path / "d.csv.gz"
    q.write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match=r"d\.csv\.gz: truncated or corrupt gzip"):
        open_reader(CorpusSource(str(q)))


def test_empty_and_corrupt_parquet_name_the_file(tmp_path):
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1" + os.urandom(100) + b"PAR1")
    for name in ("empty.parquet", "junk.parquet"):
        with pytest.raises(CorpusError, match=rf"{name}: not a readable parquet file"):
            open_reader(CorpusSource(str(tmp_path / name)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CorpusError, match="without .parquet files"):
        open_reader(CorpusSource(str(tmp_path / "nothing"), input_format="parquet"))


def test_non_utf8_where_text_is_required_names_the_file(tmp_path):
    p = tmp_path / "c.csv"
    p.write_bytes(b"id,t\xffext\n1,a\n")
    with pytest.raises(CorpusError, match=r"c\.csv: line 1 \(the header\) is not UTF-8"):
        open_reader(CorpusSource(str(p)))
    plane0, upper = tmp_path / "p0.hex", tmp_path / "up.hex"
    plane0.write_bytes(b"0041:" + b"0" * 32 + b"\n0042:\xff\xfe\n")
    upper.write_bytes(b"")
    with pytest.raises(ValueError, match=r"p0\.hex:2: not a Unifont \.hex file"):
        load_glyphs(str(plane0), str(upper))


def test_csv_record_over_several_lines_warns_with_the_lines(tmp_path):
    p = tmp_path / "c.csv"
    with open(p, "w", newline="") as f:
        csv.writer(f).writerows([["id", "text"], ["0", "fine"], ["1", "two\nlines"]])
    with pytest.warns(CorpusWarning, match=r"c\.csv: lines 3-4 are one record"):
        rows = list(open_reader(CorpusSource(str(p))).rows())
    assert rows == [(0, "fine"), (1, "two\nlines")]
    # an unclosed quote swallows every following line into one text
    p.write_bytes(b'id,text\n0,"unclosed\n1,b\n2,c\n3,d\n')
    with pytest.warns(CorpusWarning, match=r"c\.csv: lines 2-5 are one record"):
        assert len(list(open_reader(CorpusSource(str(p))).rows())) == 1


# ---------------------------------------------------------------------------------------------
# 6. RenderConfig types and ranges; integer CLI options


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("lower", "false", "RenderConfig.lower must be true or false, got 'false'"),
        ("monospace", 1, "RenderConfig.monospace must be true or false, got 1"),
        ("background_brightness", 127.5, "RenderConfig.background_brightness must be an integer"),
        ("text_brightness", True, "RenderConfig.text_brightness must be an integer, got True"),
        ("max_chars", "768", "RenderConfig.max_chars must be an integer, got '768'"),
        ("image_size", 224.0, "RenderConfig.image_size must be an integer"),
        ("image_size", 0, "RenderConfig.image_size=0 must be a positive multiple of 16"),
        ("spacing", -1, "RenderConfig.spacing=-1 must be >= 0"),
        ("min_width", None, "RenderConfig.min_width must be an integer, got None"),
    ],
)
def test_render_config_checks_types_naming_the_key(key, value, message):
    with pytest.raises(ValueError) as e:
        RenderConfig(**{key: value})
    assert message in str(e.value)


def test_model_config_json_render_section_is_checked():
    from clippo.model.config import ModelConfig
    from clippo.typed_config import ConfigError

    good = ModelConfig.from_variant("tiny-test", image_size=32).to_dict()
    for render, key in (({"lower": "false"}, "lower"), ({"colour": 3}, "colour")):
        with pytest.raises(ConfigError, match=key):
            ModelConfig.from_dict({**good, "render": {**good["render"], **render}})


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--rows-per-shard", "0"),
        ("--num-workers", "0"),
        ("--batch-size", "-3"),
        ("--shard-index", "-1"),
        ("--image-size", "0"),
        ("--max-chars", "-1"),
        ("--num-shards", "1.5"),
    ],
)
def test_cli_integer_options_are_checked_by_argparse(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:  # an argparse usage error
        main(["render", "in.txt", str(tmp_path / "o"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
