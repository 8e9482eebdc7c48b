"""Two CPU processes (gloo) through `torchrun -m clippo train`, on shards streamed by `pipe:`
commands (resampled, with patch dropout on photos) and on local seekable shards (the exact
order): SIGKILL mid-run, then `--resume auto`; the run finishes, its checkpoints load, and it
logs the same losses as an uninterrupted run (the stream positions of both ranks and their
DataLoader workers are restored from the checkpoint)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clippo
from clippo.train.log import read_metrics
from clippo.train.state import STATE_FILE, list_checkpoints

STEPS = 16

CONFIG = """
[model]
variant = "tiny-test"
image_size = 32
out_dim = 32
patch_dropout = {patch_dropout}

[[data.image_text]]
kind = "webdataset"
path = "{path}"

[data]
num_workers = 1
resampled = {resampled}

[optim]
name = "adamw"
lr = 1e-3

[schedule]
kind = "constant"

[loop]
steps = {steps}
batch_size = 8
precision = "fp32"
device = "cpu"
parallel = "ddp"

[checkpoint]
every_steps = 2
keep_last = 20

[logging]
every_steps = 1
progress = false
tensorboard = false
loss_png = false
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def write_shards(folder: Path, units: int = 6, per_unit: int = 8) -> None:
    rng = np.random.default_rng(0)
    words = ["red", "blue", "cat", "dog", "tree", "sky", "sun", "car"]
    for u in range(units):
        with tarfile.open(folder / f"s-{u}.tar", "w") as tf:
            for i in range(per_unit):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
                caption = " ".join(rng.choice(words, 3)).encode()
                for ext, data in (("png", buf.getvalue()), ("txt", caption)):
                    info = tarfile.TarInfo(f"u{u}r{i}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))


def torchrun_train(toml: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "clippo",
        "train",
        str(toml),
        "--set",
        f"logging.run_dir={json.dumps(str(run_dir))}",
        *extra,
    ]


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize(
    "streamed",
    [True, False],
    ids=["pipe-resampled-patch-dropout", "local-seekable-exact-order"],
)
def test_torchrun_sigkill_then_resume_auto(tmp_path, streamed):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(shards)
    toml = tmp_path / "run.toml"
    local = f"{shards}/s-{{0..5}}.tar"
    toml.write_text(
        CONFIG.format(
            path=f"pipe:sleep 0.2 && cat {local}" if streamed else local,
            resampled=str(streamed).lower(),
            patch_dropout=0.5 if streamed else 0.0,
            steps=STEPS,
        ),
        encoding="utf-8",
    )
    ref = tmp_path / "reference"
    run(torchrun_train(toml, ref))

    killed = tmp_path / "killed"
    # a session of its own: SIGKILL reaches torchrun's agent, both ranks and their workers
    proc = subprocess.Popen(
        torchrun_train(toml, killed),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not list_checkpoints(killed):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done_before = [s for s, _ in list_checkpoints(killed)]
    assert done_before and done_before[-1] < STEPS  # really killed mid-way

    run(torchrun_train(toml, killed, "--resume", "auto"))
    ckpts = list_checkpoints(killed)
    assert ckpts[-1][0] == STEPS
    state = json.loads((ckpts[-1][1] / STATE_FILE).read_text())
    if (
        streamed
    ):  # both ranks' stream cursors (rank -> virtual worker -> source -> [samples, k, done])
        assert set(state["data"]["streams"]) == {"0", "1"}
    assert state["data"]["fingerprint"]["config"]["resampled"] is streamed
    for _, path in ckpts:  # every checkpoint loads as a model
        assert clippo.load(path) is not None
    # the resumed run saw the data of the uninterrupted one: the same loss at every step
    got, want = losses(killed), losses(ref)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, STEPS + 1))
    for (s, a), (_, b) in zip(got, want):
        assert abs(a - b) <= 1e-5, (s, a, b)
