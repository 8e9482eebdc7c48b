"""Bad input gets a sentence: every command prints `clippo <command>: error: <message>` on one line
(exit 1), `--debug` anywhere gives the traceback, Ctrl-C exits 130. Each case runs the real
command through `clippo.cli.main` (or `python -m clippo`)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clippo.cli import main, one_line, split_debug

FIXTURE_NPZ = Path(__file__).resolve().parent / "fixtures" / "clippo_tiny_public.npz"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The one line a failed command printed to stderr (and nothing else there)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"clippo {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- the catch and --debug -----------------------------------------------------------------------


def test_an_error_is_one_line_with_a_hint_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "missing.npz"
    assert main(["convert", str(missing), str(tmp_path / "out")]) == 1
    line = error_line(capsys, "convert")
    assert (
        line
        == f"clippo convert: error: checkpoint not found: {missing} (--debug for the traceback)"
    )


@pytest.mark.parametrize("where", ["first", "after the command", "last"])
def test_debug_anywhere_reraises_with_the_traceback(tmp_path, where):
    argv = ["convert", str(tmp_path / "missing.npz"), str(tmp_path / "out")]
    at = {"first": 0, "after the command": 1, "last": len(argv)}[where]
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main([*argv[:at], "--debug", *argv[at:]])


def test_split_debug_leaves_arguments_after_double_dash():
    assert split_debug(["--debug", "train", "x.toml"]) == (["train", "x.toml"], True)
    assert split_debug(["train", "x.toml"]) == (["train", "x.toml"], False)
    assert split_debug(["embed", "--", "--debug"]) == (["embed", "--", "--debug"], False)


def test_usage_errors_keep_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert"])
    assert info.value.code == 2


def test_a_long_message_goes_without_the_hint(tmp_path, capsys):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6) / "missing.npz"
    assert main(["convert", str(deep), str(tmp_path / "out")]) == 1
    line = error_line(capsys, "convert")
    assert str(deep) in line and "--debug" not in line


def test_a_dataloader_workers_error_is_its_original_message():
    # what torch's DataLoader re-raises for an exception in a worker: the worker's traceback
    wrapped = ValueError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 3, in f\n    raise DataError(msg)\n'
        "clippo.errors.DataError: shards/a.tar: no records\n- method tar: invalid header"
    )
    assert one_line(wrapped) == "shards/a.tar: no records - method tar: invalid header"
    assert one_line(OSError(errno.ENOSPC, "No space left on device", "x.bin")) == (
        "[Errno 28] No space left on device: 'x.bin'"
    )


@pytest.mark.slow  # a fresh interpreter imports torch and loads a model: ~10-20 s here
def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """SIGINT while `clippo embed` waits on its input (a FIFO): no traceback, exit 130."""
    fifo = tmp_path / "texts.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "e.npy"
    argv = ["embed", "--model", str(FIXTURE_NPZ), "--texts", str(fifo), "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "clippo", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        # a pytest-xdist worker ignores SIGINT and a child inherits that (Python then installs
        # no KeyboardInterrupt handler): give the command the default, as a shell would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # a FIFO opens for writing only once the command opened it for reading
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.ENXIO or proc.poll() is not None:
                    raise
                assert time.monotonic() < deadline, "clippo embed never opened its input"
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        os.close(fd)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "clippo embed: interrupted"
    assert not out.exists()


# ---- the traceback cases of issue 8, now one line each --------------------------------------------


def test_a_non_utf8_toml_names_the_file_and_line(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_bytes(b"[loop]\nsteps = 10\n# caf\xe9\n")
    assert main(["train", str(toml)]) == 1
    assert f"{toml}:3: not valid UTF-8" in error_line(capsys, "train")


def _corrupt_shards_config(tmp_path: Path, num_workers: int) -> Path:
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):  # not tar files at all
        (shards / f"shard-{i}.tar").write_bytes(os.urandom(3000))
    toml = tmp_path / "run.toml"
    toml.write_text(
        f"""
[data]
image_text = [{{kind = "webdataset", path = "{shards}/*.tar"}}]
num_workers = {num_workers}
[model]
variant = "tiny-test"
image_size = 32
[loop]
steps = 2
batch_size = 4
precision = "fp32"
device = "cpu"
[checkpoint]
every_steps = 0
[logging]
run_dir = "{tmp_path / "run"}"
tensorboard = false
progress = false
loss_png = false
"""
    )
    return toml


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_folder_of_corrupt_shards_is_one_line_naming_the_folder(tmp_path, capsys, num_workers):
    # with a worker the error crosses torch's DataLoader, which wraps it in the worker's traceback
    toml = _corrupt_shards_config(tmp_path, num_workers)
    assert main(["train", str(toml)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the lines before are the skipped-shard warnings
    assert last.startswith("clippo train: error: source 'image_text/0:webdataset' ")
    assert f"(3 files in {tmp_path / 'shards'})" in last and "has no records" in last
    assert "bad_shard 3" in last and "Traceback" not in err


def test_convert_into_an_existing_file_says_it_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert main(["convert", str(FIXTURE_NPZ), str(target)]) == 1
    line = error_line(capsys, "convert")
    assert f"{target} exists and is a file" in line
    assert target.read_text() == "keep me"


def test_convert_from_a_folder_says_it_is_a_folder(tmp_path, capsys):
    saved = tmp_path / "saved"
    assert main(["convert", str(FIXTURE_NPZ), str(saved)]) == 0  # converting into a folder works
    capsys.readouterr()
    assert main(["convert", str(saved), str(tmp_path / "again")]) == 1
    line = error_line(capsys, "convert")
    assert f"{saved} is a folder, not a big_vision .npz file" in line
    assert "holds a saved CLIPPO model" in line and "not found" not in line


@NO_CUDA
@pytest.mark.parametrize("command", ["eval", "embed"])
def test_device_cuda_without_a_gpu_is_checked_at_the_start(tmp_path, capsys, command):
    texts = tmp_path / "t.txt"
    texts.write_text("a\n")
    out = tmp_path / "out"
    if command == "eval":
        argv = ["eval", "--model", str(FIXTURE_NPZ), "--out", str(out), "--device", "cuda"]
        argv += ["retrieval", "--pairs", str(tmp_path / "pairs.csv")]
    else:
        argv = ["embed", "--model", str(FIXTURE_NPZ), "--texts", str(texts)]
        argv += ["--out", str(out / "e.npy"), "--device", "cuda"]
    assert main(argv) == 1
    line = error_line(capsys, command)
    assert line.startswith(
        f"clippo {command}: error: --device cuda: CUDA is not available on this machine"
    )
    assert not out.exists()


def test_a_device_torch_does_not_know_is_named(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("a\n")
    argv = ["embed", "--model", str(FIXTURE_NPZ), "--texts", str(texts)]
    assert main([*argv, "--out", str(tmp_path / "e.npy"), "--device", "gpu0"]) == 1
    assert "error: --device gpu0: not a torch device" in error_line(capsys, "embed")


# ---- values accepted but wrong -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, option, value, message",
    [
        ("embed", "--batch-size", "-1", "must be a positive integer, got -1"),
        ("embed", "--batch-size", "0", "must be a positive integer, got 0"),
        ("embed", "--num-workers", "-2", "must be >= 0, got -2"),
        ("eval", "--batch-size", "0", "must be a positive integer, got 0"),
        ("eval", "--max-examples", "-1", "must be >= 0, got -1"),
        ("eval", "--num-workers", "x", "expected an integer, got 'x'"),
        ("demo", "--steps", "0", "must be a positive integer, got 0"),
        ("demo", "--threads", "-1", "must be a positive integer, got -1"),
    ],
)
def test_integer_options_are_checked_as_usage_errors(
    tmp_path, capsys, command, option, value, message
):
    out = tmp_path / "e.npy"
    argv = {
        "embed": ["embed", "--model", "m", "--texts", "t.txt", "--out", str(out)],
        "eval": ["eval", "--model", "m", "--out", str(tmp_path), "retrieval", "--pairs", "p"],
        "demo": ["demo", "--out", str(tmp_path / "demo")],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {message}" in err
    assert not out.exists() and not (tmp_path / "demo").exists()


def test_embed_library_refuses_a_batch_size_below_one(tmp_path):
    import clippo
    from clippo.embed import embed_images, embed_texts

    model = clippo.load(FIXTURE_NPZ)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad}"):
            embed_texts(model, ["a", "b", "c"], batch_size=bad, progress=False)
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            embed_images(model, [tmp_path / "x.png"], batch_size=bad, progress=False)


# ---- commands that used to print their own errors (exit 2) ---------------------------------------

# the demo preset, shrunk to a few seconds on a CPU
TINY_TRAIN = [
    "loop.steps=3",
    "loop.batch_size=4",
    "loop.precision=fp32",
    "model.image_size=32",
    "schedule.kind=constant",
    "schedule.warmup_steps=0",
    "schedule.cooldown_steps=0",
    "data.num_workers=0",
    "checkpoint.every_steps=0",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.loss_png=false",
]


def test_a_diverged_training_run_is_one_line(tmp_path, capsys):
    from clippo.train import NonFiniteLossError

    sets = [*TINY_TRAIN, f'logging.run_dir="{tmp_path / "run"}"', "optim.lr=1e30"]
    argv = ["train", "demo", *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 1
    line = error_line(capsys, "train")
    assert line.startswith("clippo train: error: non-finite loss (nan) at step "), line
    assert line.endswith("the last good checkpoint is kept (--debug for the traceback)"), line
    with pytest.raises(ValueError, match="non-finite loss") as info:  # the library's own error,
        main([*argv, "--debug"])  # chained for --debug
    assert isinstance(info.value.__cause__, NonFiniteLossError)


def test_a_bad_train_override_is_one_line_naming_the_key(capsys):
    assert main(["train", "demo", "--print-config", "--set", "optim.lr=inf"]) == 1
    line = error_line(capsys, "train")
    assert line.startswith("clippo train: error: optim.lr must be finite and > 0, got inf"), line


def test_render_preview_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["render", str(empty), "--preview", "3", str(tmp_path / "p.png")]) == 1
    assert f"{empty}: no renderable texts" in error_line(capsys, "render")
    assert not (tmp_path / "p.png").exists()
    for argv in (["render", str(empty), "--preview", "x", "p.png"], ["render", str(empty)]):
        with pytest.raises(SystemExit) as info:  # usage errors: argparse's format and exit 2
            main(argv)
        assert info.value.code == 2
        assert "clippo render: error: " in capsys.readouterr().err


def test_a_bad_corpus_is_a_data_error_and_one_line(tmp_path, capsys):
    import gzip

    from clippo.errors import DataError
    from clippo.render.corpus_io import CorpusSource, open_reader

    corpus = tmp_path / "c.txt.gz"
    corpus.write_bytes(gzip.compress(b"some text\n" * 5000)[:-40])
    with pytest.raises(DataError, match=r"c\.txt\.gz: truncated or corrupt gzip"):
        list(open_reader(CorpusSource(str(corpus))).rows())
    assert main(["render", str(corpus), str(tmp_path / "out"), "--no-progress"]) == 1
    assert "c.txt.gz: truncated or corrupt gzip" in error_line(capsys, "render")
