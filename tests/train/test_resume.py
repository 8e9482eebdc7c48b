"""Checkpoints and resuming: a run killed mid-way (SIGKILL or SIGTERM) and resumed with
`--resume auto` ends with the same parameters as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from clippo.train import Trainer, train
from clippo.train.ckpt_files import MANIFEST_FILE, DamagedCheckpointError, load_state
from clippo.train.config import (
    CheckpointConfig,
    ConfigError,
    LoggingConfig,
    LoopConfig,
    TrainConfig,
)
from clippo.train.log import MetricsLogger, read_metrics
from clippo.train.loss import SIGLIP_BIAS_INIT
from clippo.train.state import (
    LOSS_FILE,
    STATE_FILE,
    TrainerState,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
)

STEPS = 12
CONFIG = textwrap.dedent(
    f"""
    [model]
    variant = "tiny-test"
    image_size = 32
    out_dim = 32

    [[data.image_text]]
    kind = "synthetic"
    options = {{ textured = false }}

    [[data.text_pairs]]
    kind = "synthetic_paraphrase"

    [data]
    text_pair_fraction = 0.25
    num_workers = 1

    [optim]
    name = "adafactor"
    lr = 1e-3

    [schedule]
    kind = "rsqrt"
    warmup_steps = 2
    timescale = 4

    [loop]
    steps = {STEPS}
    batch_size = 8
    precision = "fp32"
    device = "cpu"

    [checkpoint]
    every_steps = 3
    keep_last = 2

    [logging]
    every_steps = 1
    eval_every_steps = 1
    progress = false
    tensorboard = false
    loss_png = false
    """
)

# The interrupted run: the real pipeline from the config, plus a hook that sleeps so the run is
# still going when the test kills it. Hooks run under no_grad in eval mode and touch no state.
SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from clippo.train import train
    from clippo.train.config import load_train_config

    def slow(model, step):
        time.sleep(0.4)
        return {}

    result = train(load_train_config(sys.argv[1], sys.argv[2:]), hooks=[slow])
    sys.exit(143 if result.preempted else 0)
    """
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def clippo_train(toml: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "clippo",
        "train",
        str(toml),
        "--set",
        f"logging.run_dir={json.dumps(str(run_dir))}",
    ]
    return subprocess.run([*cmd, *extra], env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    toml = root / "run.toml"
    toml.write_text(CONFIG, encoding="utf-8")
    script = root / "slow_run.py"
    script.write_text(SLOW_RUN, encoding="utf-8")
    ref = root / "reference"
    done = clippo_train(toml, ref)
    assert done.returncode == 0, done.stderr
    return toml, script, ref


def start_and_interrupt(toml: Path, script: Path, run_dir: Path, sig: int) -> subprocess.Popen:
    """Start the slow run, wait until its first checkpoint exists, then send `sig`."""
    override = f"logging.run_dir={json.dumps(str(run_dir))}"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(toml), override],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list_checkpoints(run_dir):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc


def assert_same_run(run_dir: Path, ref: Path) -> None:
    (step, final), (ref_step, ref_final) = list_checkpoints(run_dir)[-1], list_checkpoints(ref)[-1]
    assert step == ref_step == STEPS
    got = load_file(str(final / "model.safetensors"))
    want = load_file(str(ref_final / "model.safetensors"))
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst <= 1e-6, worst
    # same data order and same optimiser trajectory: the logged losses agree step by step,
    # and the resumed run's metrics file holds every step exactly once
    losses = [
        (r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r
    ]
    ref_losses = [
        (r["step"], r["loss"]) for r in read_metrics(ref / "metrics.jsonl") if "loss" in r
    ]
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    for (s, a), (_, b) in zip(losses, ref_losses):
        assert abs(a - b) <= 1e-6, (s, a, b)
    state = json.loads((final / STATE_FILE).read_text())
    assert state["pairs_seen"] == STEPS * 8


@pytest.mark.slow
def test_sigkill_then_resume_auto_matches_uninterrupted_run(setup, tmp_path):
    toml, script, ref = setup
    run_dir = tmp_path / "killed"
    proc = start_and_interrupt(toml, script, run_dir, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    steps = [s for s, _ in list_checkpoints(run_dir)]
    assert steps and steps[-1] < STEPS  # really killed mid-way
    resumed = clippo_train(toml, run_dir, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, ref)
    assert [s for s, _ in list_checkpoints(run_dir)] == [9, 12]  # keep_last = 2


@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_matches(setup, tmp_path):
    toml, script, ref = setup
    run_dir = tmp_path / "terminated"
    proc = start_and_interrupt(toml, script, run_dir, signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr.read()
    stopped = json.loads((latest_checkpoint(run_dir) / STATE_FILE).read_text())["step"]
    assert 3 <= stopped < STEPS
    last_logged = max(r["step"] for r in read_metrics(run_dir / "metrics.jsonl"))
    assert last_logged == stopped  # the checkpoint was taken at the step the run stopped
    resumed = clippo_train(toml, run_dir, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, ref)


# ---- checkpoint directory bookkeeping -----------------------------------------------------------


def fake_save(run_dir: Path, step: int, keep_last: int = 10) -> Path:
    def save_model(d: Path) -> None:
        (d / "config.json").write_text("{}")

    return save_checkpoint(
        run_dir,
        TrainerState(step=step, pairs_seen=step * 2, data={"step": step}),
        save_model=save_model,
        optim_state={"x": torch.tensor([step])},
        train_config={"loop": {"steps": 9}},
        keep_last=keep_last,
    )


def test_latest_checkpoint_skips_incomplete_and_temp_dirs(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # fresh start
    assert resolve_resume("", tmp_path) is None
    fake_save(tmp_path, 2)
    fake_save(tmp_path, 4)
    # a writer killed mid-checkpoint leaves a temp dir; a step dir without a manifest is not
    # complete (written by something else): neither may be picked
    (tmp_path / "checkpoints" / ".tmp-step_000000006-abc").mkdir()
    checkpoint_dir(tmp_path, 8).mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 4)
    assert resolve_resume("auto", tmp_path) == checkpoint_dir(tmp_path, 4)
    with pytest.raises(DamagedCheckpointError, match=f"step_000000008: {MANIFEST_FILE} is missing"):
        resolve_resume(str(checkpoint_dir(tmp_path, 8)), tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    # the next save cleans up the stale temp dir
    fake_save(tmp_path, 10)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_k_and_saving_a_step_twice(tmp_path):
    for step in (1, 2, 3, 4, 5):
        fake_save(tmp_path, step, keep_last=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    again = fake_save(tmp_path, 5, keep_last=3)  # e.g. SIGTERM right after a periodic save
    assert again == checkpoint_dir(tmp_path, 5)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4, 5]
    prune_checkpoints(tmp_path, 1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    state = json.loads((again / STATE_FILE).read_text())
    assert TrainerState.from_dict(state) == TrainerState(step=5, pairs_seen=10, data={"step": 5})


def test_failed_save_leaves_previous_checkpoints_intact(tmp_path):
    fake_save(tmp_path, 1)

    def broken(d: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(
            tmp_path,
            TrainerState(step=2),
            save_model=broken,
            optim_state={},
            train_config={},
            keep_last=1,
        )
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_metrics_log_drops_records_after_the_resume_step(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-line
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=3) as log:
        log.log(4, {"loss": 40.0})
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in recs] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    with MetricsLogger(tmp_path, tensorboard=False) as log:  # a fresh run owns the file
        log.log(1, {"loss": float("nan")})
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": "nan"}]


@pytest.fixture
def sigmoid_run(
    tmp_path: Path, tiny_config: Any, random_pair_data: Any
) -> tuple[TrainConfig, Path]:
    """A 4-step sigmoid-loss run in tmp_path / "full", checkpointed at steps 2 and 4 -> (its
    config, step 2's dir)."""
    loop = LoopConfig(steps=4, batch_size=8, precision="fp32", device="cpu", loss="sigmoid")
    full = tiny_config(tmp_path / "full", loop=loop)
    full = full.replace(checkpoint=CheckpointConfig(every_steps=2))
    train(full, data=random_pair_data)
    return full, checkpoint_dir(tmp_path / "full", 2)


def _resume_into(cfg: TrainConfig, checkpoint: Path, run_dir: Path) -> TrainConfig:
    return cfg.replace(
        checkpoint=CheckpointConfig(every_steps=2, resume=str(checkpoint)),
        logging=LoggingConfig(run_dir=str(run_dir), progress=False),
    )


def assert_same_weights(a: Path, b: Path) -> None:
    """The model and loss files of two checkpoints hold bitwise equal tensors."""
    for name in ("model.safetensors", LOSS_FILE):
        got, want = load_file(str(a / name)), load_file(str(b / name))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_in_process_resume_with_sigmoid_loss_restores_the_bias(
    tmp_path, sigmoid_run, random_pair_data
):
    """Resume from an explicit checkpoint path (into a new run directory): the sigmoid loss's
    learned bias and the AdamW state come back, so the last steps repeat exactly."""
    full, middle = sigmoid_run
    result = train(_resume_into(full, middle, tmp_path / "again"), data=random_pair_data)
    assert result.step == 4
    a = load_file(str(checkpoint_dir(tmp_path / "full", 4) / LOSS_FILE))
    b = load_file(str(checkpoint_dir(tmp_path / "again", 4) / LOSS_FILE))
    first = load_file(str(middle / LOSS_FILE))
    assert not torch.equal(a["logit_bias"], first["logit_bias"])  # the bias is trained
    assert torch.equal(a["logit_bias"], b["logit_bias"])
    assert_same_weights(checkpoint_dir(tmp_path / "again", 4), checkpoint_dir(tmp_path / "full", 4))


def test_the_bias_is_saved_beside_the_model_and_restored_from_there(
    tmp_path, sigmoid_run, random_pair_data
):
    full, middle = sigmoid_run
    saved = load_file(str(middle / LOSS_FILE))
    assert list(saved) == ["logit_bias"] and saved["logit_bias"].item() != SIGLIP_BIAS_INIT
    assert "logit_bias" not in load_state(middle, "optimizer")
    # the bias is the loss module's only; the optimiser has it in its own group, without decay
    trainer = Trainer(_resume_into(full, middle, tmp_path / "again"), random_pair_data, [], None)
    own = [n for n, _ in trainer.core.named_parameters() if not n.startswith("model.")]
    assert own == ["loss.logit_bias"]
    assert torch.equal(trainer.core.loss.logit_bias.detach(), saved["logit_bias"])
    group = trainer.optimizer.param_groups[-1]
    assert group["name"] == "loss_bias" and group["weight_decay"] == 0.0
    assert group["params"] == [trainer.core.loss.logit_bias]


def test_a_checkpoint_with_the_bias_in_optimizer_pt_still_resumes(
    tmp_path, sigmoid_run, random_pair_data, to_legacy_layout
):
    """Checkpoints written before loss.safetensors kept the bias in optimizer.pt as
    "logit_bias": rewritten into that form, the middle checkpoint resumes to the same end (with
    the legacy opt-in: optimizer.pt is a pickle)."""
    full, middle = sigmoid_run
    old = tmp_path / "old" / "checkpoints" / middle.name
    shutil.copytree(middle, old)
    optim = to_legacy_layout(old)
    optim["logit_bias"] = load_file(str(old / LOSS_FILE))["logit_bias"]
    torch.save(optim, old / "optimizer.pt")
    (old / LOSS_FILE).unlink()

    restored = load_checkpoint(old, allow_legacy_pickle=True)
    assert torch.equal(restored.loss["logit_bias"], optim["logit_bias"])
    assert "logit_bias" not in restored.optim
    cfg = _resume_into(full, old, tmp_path / "again")
    train(cfg, data=random_pair_data, allow_legacy_pickle=True)
    assert_same_weights(checkpoint_dir(tmp_path / "again", 4), checkpoint_dir(tmp_path / "full", 4))


def test_an_old_sharded_optimizer_state_names_the_bias_as_the_loss_does(tmp_path, to_legacy_layout):
    """FSDP saves optimiser states keyed by parameter name; the bias was the step's own
    "logit_bias" and is now the loss module's "loss.logit_bias"."""
    ckpt = fake_save(tmp_path, 1)
    osd = {
        "state": {"model.t": {"step": 1}, "logit_bias": {"step": 1}},
        "param_groups": [
            {"name": "no_decay", "params": ["model.t"]},
            {"name": "loss_bias", "params": ["logit_bias"]},
        ],
    }
    to_legacy_layout(ckpt)
    torch.save(
        {"optimizer": osd, "rng": {}, "logit_bias": torch.tensor([-7.0])}, ckpt / "optimizer.pt"
    )
    restored = load_checkpoint(ckpt, allow_legacy_pickle=True)
    assert list(restored.loss) == ["logit_bias"]
    assert torch.equal(restored.loss["logit_bias"], torch.tensor([-7.0]))
    assert list(restored.optim["optimizer"]["state"]) == ["model.t", "loss.logit_bias"]
    assert [g["params"] for g in restored.optim["optimizer"]["param_groups"]] == [
        ["model.t"],
        ["loss.logit_bias"],
    ]


def test_fresh_run_refuses_a_run_dir_with_checkpoints(tmp_path, tiny_config, random_pair_data):
    fake_save(tmp_path, 100)  # an earlier, longer run
    with pytest.raises(ConfigError, match="--resume auto"):
        train(tiny_config(tmp_path), data=random_pair_data)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [100]


def test_checkpoints_are_shared_readable_like_every_written_file(tmp_path):
    from clippo.model import CLIPPO

    model = CLIPPO.from_variant("tiny-test", image_size=32)
    path = save_checkpoint(
        tmp_path,
        TrainerState(step=1),
        save_model=model.save,
        optim_state={},
        train_config={},
        keep_last=1,
    )
    assert path.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    for name in ("model.safetensors", "config.json", STATE_FILE, "optimizer.safetensors"):
        assert (path / name).stat().st_mode & 0o777 == 0o644, name


def test_metrics_are_not_written_through_a_planted_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(outside)  # dangling: would create a file outside the run
    with pytest.raises(OSError, match="symbolic link"):
        MetricsLogger(run, tensorboard=False)
    assert not outside.exists()
    outside.write_text("keep\n")  # a link to an existing file: replaced, the file untouched
    with MetricsLogger(run, tensorboard=False, resume_step=0) as log:
        log.log(1, {"loss": 1.0})
    assert outside.read_text() == "keep\n"
    assert not (run / "metrics.jsonl").is_symlink()
