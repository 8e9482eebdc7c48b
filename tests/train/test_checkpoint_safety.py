"""Checkpoints that cannot run code, say what is damaged, survive a full disk, and resume only
what they hold: pickle refusal, the manifest and the fallback of `--resume auto`, ENOSPC,
writability at start, and a model section that must match the checkpoint's."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load, load_file

import clippo.atomic
from clippo.model.bigvision import CheckpointError
from clippo.train import train
from clippo.train.ckpt_files import (
    MANIFEST_FILE,
    DamagedCheckpointError,
    PickleCheckpointError,
    load_state,
    save_state,
)
from clippo.train.config import CheckpointConfig, ConfigError, LoopConfig, TrainConfig
from clippo.train.state import (
    STATE_FILE,
    TrainerState,
    check_checkpoint,
    checkpoint_dir,
    is_complete,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
    step_dirs,
)


@pytest.fixture(scope="session")
def tiny(tiny_config: Any) -> Callable[..., TrainConfig]:
    """`tiny(run_dir, resume="", **sections)`: a 6-step tiny-test run (train it on
    `random_pair_data`), checkpointed at steps 3 and 6."""

    def make(run_dir: Path, resume: str = "", **sections: Any) -> TrainConfig:
        cfg = tiny_config(run_dir, **sections)
        return cfg.replace(checkpoint=CheckpointConfig(every_steps=3, keep_last=5, resume=resume))

    return make


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, tiny: Any, random_pair_data: Any
) -> Path:
    """A finished 6-step run (checkpoints at 3 and 6); copy it before changing anything."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(run), data=random_pair_data)
    assert [s for s, _ in list_checkpoints(run)] == [3, 6]
    return run


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


class _Trap:
    """Unpickling this would create `marker`: proves the checkpoint is never unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


# ---- pickles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["optimizer.pt", "extra.pkl", "pytorch_model.bin"])
def test_a_planted_pickle_is_refused_and_never_unpickled(
    finished_run, tmp_path, name, tiny, random_pair_data
):
    run = copy_run(finished_run, tmp_path)
    marker = tmp_path / "code-ran"
    with open(checkpoint_dir(run, 6) / name, "wb") as f:
        pickle.dump(_Trap(marker), f)
    with pytest.raises(PickleCheckpointError, match=rf"{name}: a pickle.*--allow-legacy-pickle"):
        train(tiny(run, resume="auto"), data=random_pair_data)
    with pytest.raises(PickleCheckpointError, match=name):  # no fallback to step 3 either
        load_checkpoint(checkpoint_dir(run, 6))
    assert not marker.exists()


def test_no_checkpoint_file_is_a_pickle(finished_run):
    """Every file is JSON or safetensors: none starts with a pickle's or a zip's magic."""
    for path in checkpoint_dir(finished_run, 6).iterdir():
        head = path.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"\x80\x05", b"PK"), path.name
        assert path.suffix in (".json", ".safetensors"), path.name


def test_a_legacy_checkpoint_resumes_only_with_the_opt_in(
    finished_run, tmp_path, tiny, random_pair_data, to_legacy_layout
):
    run = copy_run(finished_run, tmp_path)
    want = load_file(str(checkpoint_dir(run, 6) / "model.safetensors"))
    shutil.rmtree(checkpoint_dir(run, 6))
    to_legacy_layout(checkpoint_dir(run, 3))  # the old optimizer.pt form
    with pytest.raises(PickleCheckpointError, match="optimizer.pt"):
        train(tiny(run, resume="auto"), data=random_pair_data)
    result = train(tiny(run, resume="auto"), data=random_pair_data, allow_legacy_pickle=True)
    assert result.step == 6
    got = load_file(str(checkpoint_dir(run, 6) / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)  # bit-identical to the original run
    assert is_complete(checkpoint_dir(run, 6))  # what it writes now is the new format


def test_the_clippo_train_flag_reaches_the_trainer():
    from clippo.cli import build_parser

    args = build_parser("train").parse_args(["train", "demo", "--allow-legacy-pickle"])
    assert args.allow_legacy_pickle is True
    assert build_parser("train").parse_args(["train", "demo"]).allow_legacy_pickle is False


# ---- the state files ---------------------------------------------------------------------------


def test_rng_and_optimiser_state_round_trip_exactly(tmp_path):
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    random.random(), np.random.normal(), torch.rand(3)  # numpy now holds a cached gaussian
    m = torch.randn(4).to(torch.bfloat16)
    state = {
        "rng": rng_state(),
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "m": m}},
            "param_groups": [
                {"params": [0], "betas": (0.9, 0.95), "momentum_dtype": torch.float32}
            ],
        },
        "odd": {"__tuple__": 1, "big": 2**70, "nan": float("nan"), "np": np.float32(0.1)},
    }
    save_state(tmp_path, "s", state)
    back = load_state(tmp_path, "s")
    opt = back["optimizer"]
    assert opt["state"][0]["m"].dtype == torch.bfloat16
    assert torch.equal(opt["state"][0]["m"], state["optimizer"]["state"][0]["m"])
    assert opt["param_groups"] == state["optimizer"]["param_groups"]  # tuple, dtype, int keys
    assert back["odd"]["__tuple__"] == 1 and back["odd"]["big"] == 2**70
    assert back["odd"]["np"] == np.float32(0.1) and isinstance(back["odd"]["np"], np.float32)
    draws = random.random(), np.random.normal(), np.random.normal(), torch.rand(3)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(back["rng"])
    again = random.random(), np.random.normal(), np.random.normal(), torch.rand(3)
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])


@pytest.mark.parametrize(
    "damage,file,message",
    [
        ("truncate", "optimizer.safetensors", "not a readable safetensors file"),
        ("garble", STATE_FILE, "not a readable trainer state"),
        ("garble", "optimizer.json", "not a readable state file"),
    ],
)
def test_unreadable_state_files_are_named(finished_run, tmp_path, damage, file, message):
    run = copy_run(finished_run, tmp_path)
    path = checkpoint_dir(run, 6) / file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b'{"step": 6, "pa')
    with pytest.raises(CheckpointError, match=f"{file}: {message}"):
        load_checkpoint(path.parent)


def test_a_truncated_legacy_optimizer_pt_is_named(finished_run, tmp_path, to_legacy_layout):
    run = copy_run(finished_run, tmp_path)
    ckpt = checkpoint_dir(run, 6)
    to_legacy_layout(ckpt)
    data = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="optimizer.pt: not a readable optimiser state"):
        load_checkpoint(ckpt, allow_legacy_pickle=True)


# ---- damaged checkpoints -----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


DAMAGE = {
    "weights deleted": ("model.safetensors", lambda p: p.unlink()),
    "weights truncated": ("model.safetensors", _truncate),
    "weights changed": ("model.safetensors", _flip_last_byte),
    "optimizer state truncated": ("optimizer.safetensors", _truncate),
    "trainer_state.json corrupt": (STATE_FILE, lambda p: p.write_text('{"step": 6, "pairs_')),
    "manifest corrupt": (MANIFEST_FILE, _truncate),
    "manifest missing": (MANIFEST_FILE, lambda p: p.unlink()),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_auto_falls_back_from_a_damaged_checkpoint(
    finished_run, tmp_path, caplog, case, tiny, random_pair_data
):
    run = copy_run(finished_run, tmp_path)
    newest = checkpoint_dir(run, 6)
    want = load(newest.joinpath("model.safetensors").read_bytes())  # a copy: not mapped
    file, damage = DAMAGE[case]
    damage(newest / file)
    with caplog.at_level(logging.WARNING, logger="clippo.train.state"):
        result = train(tiny(run, resume="auto"), data=random_pair_data)
    lines = [r.getMessage() for r in caplog.records if r.name == "clippo.train.state"]
    assert len(lines) == 1
    assert f"damaged checkpoint {newest}: {file}" in lines[0]
    assert f"resuming from {checkpoint_dir(run, 3)}" in lines[0]
    # resumed from step 3, the run ends where the undamaged one did, bit for bit
    assert result.step == 6 and is_complete(newest)
    got = load_file(str(newest / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_an_explicit_damaged_checkpoint_is_an_error_naming_the_file(
    finished_run, tmp_path, case, tiny, random_pair_data
):
    run = copy_run(finished_run, tmp_path)
    file, damage = DAMAGE[case]
    damage(checkpoint_dir(run, 6) / file)
    with pytest.raises(DamagedCheckpointError, match=f"step_000000006: {file}"):
        resolve_resume(str(checkpoint_dir(run, 6)), run)
    cfg = tiny(tmp_path / "other", resume=str(checkpoint_dir(run, 6)))
    with pytest.raises(DamagedCheckpointError, match=f"step_000000006: {file}"):
        train(cfg, data=random_pair_data)


def test_with_no_complete_checkpoint_resume_auto_starts_fresh_and_says_so(
    finished_run, tmp_path, caplog
):
    run = copy_run(finished_run, tmp_path)
    for step in (3, 6):
        (checkpoint_dir(run, step) / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="clippo.train.state"):
        assert resolve_resume("auto", run) is None
    assert len(caplog.records) == 2
    assert all("starting fresh" in r.getMessage() for r in caplog.records)


def fake_save(run_dir: Path, step: int, keep_last: int = 10) -> Path:
    return save_checkpoint(
        run_dir,
        TrainerState(step=step),
        save_model=lambda d: (d / "config.json").write_text("{}"),
        optim_state={"optimizer": {}, "rng": {}},
        train_config={},
        keep_last=keep_last,
    )


def test_pruning_counts_complete_checkpoints_only(tmp_path):
    for step in (1, 2, 3):
        fake_save(tmp_path, step)
    for step in (2, 3):  # newer ones damaged: they must not push out the last complete one
        (checkpoint_dir(tmp_path, step) / STATE_FILE).write_text("{}")
    prune_checkpoints(tmp_path, 1)
    assert [s for s, _ in step_dirs(tmp_path)] == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    fake_save(tmp_path, 4, keep_last=2)  # complete: 4 and 1 kept, the damaged between them too
    assert [s for s, _ in step_dirs(tmp_path)] == [1, 2, 3, 4]
    fake_save(tmp_path, 5, keep_last=2)
    assert [s for s, _ in step_dirs(tmp_path)] == [4, 5]


# ---- a full disk -------------------------------------------------------------------------------


class _FullDisk:
    """A file whose writes fail as on a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("full_at", ["model.safetensors", "optimizer.safetensors", MANIFEST_FILE])
def test_a_full_disk_says_so_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch, full_at):
    from clippo.model import CLIPPO

    model = CLIPPO.from_variant("tiny-test", image_size=32)

    def save(step: int) -> Path:
        return save_checkpoint(
            tmp_path,
            TrainerState(step=step),
            save_model=model.save,
            optim_state={"optimizer": {}, "rng": rng_state()},
            train_config={},
            keep_last=1,
        )

    first = save(1)

    real = clippo.atomic.atomic_file

    @contextlib.contextmanager
    def full_disk(target: Path) -> Iterator[Any]:
        with real(target) as f:  # the real temp file, removed by the real writer on the error
            yield _FullDisk() if Path(target).name == full_at else f

    monkeypatch.setattr(clippo.atomic, "atomic_file", full_disk)  # under the one file writer
    with pytest.raises(OSError, match="no space left on device") as info:
        save(2)
    assert info.value.errno == errno.ENOSPC
    assert str(checkpoint_dir(tmp_path, 2)) in str(info.value)
    assert [s for s, _ in step_dirs(tmp_path)] == [1]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    check_checkpoint(first)  # intact


# ---- writable output folders -------------------------------------------------------------------


def counting_pairs(make: Any, calls: list[int]) -> Any:
    """`make` (a data factory) that records in `calls` every start step it is asked for."""

    def data(start: int) -> Any:
        calls.append(start)
        return make(start)

    return data


def test_a_checkpoints_folder_that_cannot_be_made_is_found_before_training(
    tmp_path, tiny, random_pair_data
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("in the way")
    calls: list[int] = []
    with pytest.raises(OSError, match=f"output folder {run / 'checkpoints'} is not writable"):
        train(tiny(run), data=counting_pairs(random_pair_data, calls))
    assert calls == []  # not a single batch drawn


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_checkpoints_folder_is_found_before_training(tmp_path, tiny, random_pair_data):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.chmod(run / "checkpoints", 0o500)
    calls: list[int] = []
    try:
        with pytest.raises(PermissionError, match=f"output folder {run / 'checkpoints'}"):
            train(tiny(run), data=counting_pairs(random_pair_data, calls))
    finally:
        os.chmod(run / "checkpoints", 0o700)
    assert calls == []


# ---- what a resumed run may change -------------------------------------------------------------


@pytest.mark.parametrize(
    "section,change,message",
    [
        (
            "model",
            {"depth": 2},
            r"model\.depth: 2 in this run's config, unset in .*step_000000006/train_config\.json",
        ),
        ("optim", {"lr": 3e-4}, r"optim\.lr: 0\.0003 in this run's config, 0\.001 in "),
        ("loop", {"loss": "sigmoid"}, r'loop\.loss: "sigmoid" in this run\'s config, "softmax"'),
    ],
)
def test_resume_refuses_a_changed_model_naming_the_key(
    finished_run, tmp_path, section, change, message, tiny, random_pair_data
):
    run = copy_run(finished_run, tmp_path)
    cfg = tiny(run, resume="auto")
    cfg = cfg.replace(**{section: dataclasses.replace(getattr(cfg, section), **change)})
    before = (checkpoint_dir(run, 6) / "train_config.json").read_text()
    with pytest.raises(ConfigError, match=message) as info:
        train(cfg, data=random_pair_data)
    assert "start a new run folder or revert the change" in str(info.value)
    assert (checkpoint_dir(run, 6) / "train_config.json").read_text() == before


def test_resume_may_change_how_the_model_runs_and_records_it(
    finished_run, tmp_path, tiny, random_pair_data
):
    run = copy_run(finished_run, tmp_path)
    cfg = tiny(
        run, resume="auto", loop=LoopConfig(steps=7, batch_size=8, precision="fp32", device="cpu")
    )
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, grad_checkpointing=True))
    assert train(cfg, data=random_pair_data).step == 7
    recorded = json.loads((list_checkpoints(run)[-1][1] / "train_config.json").read_text())
    assert recorded == cfg.to_dict()
