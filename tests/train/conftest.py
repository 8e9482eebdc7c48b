"""Fixtures for the trainer tests: the tiny run every trainer test starts from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
