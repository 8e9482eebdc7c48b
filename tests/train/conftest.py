"""Fixtures for the trainer tests: the tiny run every trainer test starts from, random learnable
pairs to feed it, the legacy checkpoint layout, and runs in several processes under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from clippo.train.ckpt_files import MANIFEST_FILE, load_state
from clippo.train.config import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    LoopConfig,
    ModelSection,
    OptimConfig,
    ScheduleConfig,
    SourceConfig,
    TrainConfig,
)

TinyConfig = Callable[..., TrainConfig]


def _tiny_config(run_dir: Path, **sections: Any) -> TrainConfig:
    base = TrainConfig(
        # photos and text/text pairs in every batch (8 rows: 6 photos, then 2 text pairs)
        data=DataConfig(
            image_text=(SourceConfig(kind="synthetic", options={"textured": False}),),
            text_pairs=(SourceConfig(kind="synthetic_paraphrase"),),
            text_pair_fraction=0.25,
            num_workers=0,
        ),
        model=ModelSection(variant="tiny-test", image_size=32, out_dim=32),
        optim=OptimConfig(name="adamw", lr=1e-3, wd=1e-4),
        schedule=ScheduleConfig(kind="constant"),
        loop=LoopConfig(steps=6, batch_size=8, precision="fp32", device="cpu"),
        checkpoint=CheckpointConfig(every_steps=3, keep_last=5),
        logging=LoggingConfig(run_dir=str(run_dir), every_steps=1, progress=False),
    )
    return base.replace(**sections)


@pytest.fixture(scope="session")
def tiny_config() -> TinyConfig:
    """`tiny_config(run_dir, **sections)`: a tiny-test CLIPPO at 32 px (4 tokens, out_dim 32)
    on the synthetic sources (a quarter of each batch text pairs, no DataLoader workers), AdamW
    (lr 1e-3, wd 1e-4) on a constant schedule, fp32 on CPU, 6 steps of batch 8, checkpoints
    every 3 (the last 5 kept), metrics every step, no progress bar, run in `run_dir`; each
    keyword replaces that whole section."""
    return _tiny_config


# ---- data: random learnable pairs ---------------------------------------------------------------

Pairs = tuple[torch.Tensor, torch.Tensor]
RandomPairs = Callable[..., Pairs]
DataFactory = Callable[[int], Iterator[Any]]
Factory = Callable[[Callable[[int], Any]], DataFactory]


def _random_pairs(step: int, batch: int = 8, size: int = 32) -> Pairs:
    g = torch.Generator().manual_seed(1000 + step)
    left = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    right = (left + 0.3 * torch.randn(left.shape, generator=g)).clamp(-1, 1)
    return left, right


def _factory(make: Callable[[int], Any]) -> DataFactory:
    def data(start_step: int) -> Iterator[Any]:
        step = start_step
        while True:
            yield make(step)
            step += 1

    return data


@pytest.fixture(scope="session")
def random_pairs() -> RandomPairs:
    """`random_pairs(step, batch=8, size=32)`: a (left, right) pair of (batch, 3, size, size)
    pixel tensors in [-1, 1], seeded by `step`; the right side is a noisy copy of the left, so
    the pairs are learnable."""
    return _random_pairs


@pytest.fixture(scope="session")
def factory() -> Factory:
    """`factory(make)`: the trainer's data argument, `start_step -> iterator` yielding
    `make(start_step)`, `make(start_step + 1)`, ..."""
    return _factory


@pytest.fixture(scope="session")
def random_pair_data() -> DataFactory:
    """`factory(random_pairs)`: random learnable batches of 8 pairs at 32 px from any step."""
    return _factory(_random_pairs)


# ---- checkpoints in the layout written before the manifest --------------------------------------


def _to_legacy_layout(ckpt: Path) -> dict[str, Any]:
    optim = load_state(ckpt, "optimizer")
    torch.save(optim, ckpt / "optimizer.pt")
    for name in ("optimizer.safetensors", "optimizer.json", MANIFEST_FILE):
        (ckpt / name).unlink()
    return optim


@pytest.fixture(scope="session")
def to_legacy_layout() -> Callable[[Path], dict[str, Any]]:
    """`to_legacy_layout(ckpt)`: rewrite a checkpoint in the layout written before the manifest:
    its optimiser and RNG state pickled in optimizer.pt by torch.save, no
    optimizer.{safetensors,json}, no manifest. Returns what was pickled."""
    return _to_legacy_layout


# ---- two or more CPU processes (torchrun, gloo) --------------------------------------------------

# trains `argv[1]` (a TOML config) on the random pairs above, each rank taking its slice of every
# batch, with a hook that logs a probe's embedding sum
_DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from clippo.train import train
    from clippo.train.config import load_train_config
    import clippo.train.distributed as cdist

    cfg = load_train_config(sys.argv[1])
    info = cdist.init_distributed(device="cpu")
    def data(start):
        step = start
        while True:
            g = torch.Generator().manual_seed(1000 + step)
            left = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
            right = (left + 0.3 * torch.randn(left.shape, generator=g)).clamp(-1, 1)
            b = 8 // info.world_size
            yield left[info.rank * b:(info.rank + 1) * b], right[info.rank * b:(info.rank + 1) * b]
            step += 1
    probe = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
    def hook(model, step):  # runs on rank 0 (DDP) or on every rank (FSDP: sharded weights)
        return {"eval/probe": float(model.encode(probe).sum())}
    train(cfg, data=data, hooks=[hook])
    cdist.cleanup()
    """
)


_DIST_CONFIG = """
[model]
variant = "tiny-test"
image_size = 32
out_dim = 32
[optim]
name = "adamw"
lr = 1e-3
[schedule]
kind = "constant"
[loop]
steps = 4
batch_size = 8
accum_steps = {accum}
precision = "{precision}"
device = "cpu"
parallel = "{parallel}"
loss = "{loss}"
[checkpoint]
every_steps = 2
resume = "{resume}"
[logging]
run_dir = "{run_dir}"
progress = false
tensorboard = false
"""

Torchrun = Callable[..., Path]


def _torchrun(tmp_path: Path, name: str, nproc: int, extra_toml: str = "", **fields: Any) -> Path:
    script = tmp_path / "dist_train.py"
    script.write_text(_DDP_SCRIPT, encoding="utf-8")
    run_dir = tmp_path / name
    toml = tmp_path / f"{name}.toml"
    fields = {"loss": "softmax", "precision": "fp32", **fields}
    toml.write_text(_DIST_CONFIG.format(run_dir=run_dir, **fields) + extra_toml, encoding="utf-8")
    _launch(nproc, script, toml)
    return run_dir


Launch = Callable[..., None]


def _launch(nproc: int, script: Path, *args: str | Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*cmd, f"--nproc_per_node={nproc}", str(script), *map(str, args)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="session")
def launch() -> Launch:
    """`launch(nproc, script, *args)`: run `script args...` in `nproc` CPU processes under
    torchrun (one math thread each); fails the test, with the end of stderr, on a non-zero
    exit."""
    return _launch


@pytest.fixture(scope="session")
def torchrun() -> Torchrun:
    """`torchrun(tmp_path, name, nproc, extra_toml="", accum=, parallel=, resume=, loss="softmax",
    precision="fp32")`: train a 4-step tiny-test run (batch 8 at 32 px, AdamW lr 1e-3, checkpoints
    every 2 steps) in `nproc` CPU processes (gloo) on `random_pairs`, into `tmp_path / name`, with
    `extra_toml` appended to its config; every rank logs `eval/probe` (a fixed batch's embedding
    sum) at the end. Fails the test on a non-zero exit; returns the run directory."""
    return _torchrun
