"""The trainer's data pipeline (`clippo.train.data.TrainData`) on streamed shards: stream cursors
travel from the DataLoader workers with every batch, are saved in the data state (JSON) and a
resumed pipeline continues with exactly the batches of the uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from clippo.render import UnifontRenderer
from clippo.train.config import DataConfig, SourceConfig
from clippo.train.data import TrainData

from .test_streams import make_shards


@pytest.fixture(scope="module")
def renderer():
    return UnifontRenderer(image_size=16)


@dataclass(frozen=True)
class ResampledData(DataConfig):
    """DataConfig with the stream keys TrainData reads (until clippo.train.config has them)."""

    resampled: bool = True
    shuffle_buffer: int = 3


def _data(tmp_path, num_workers: int, resampled: bool = False) -> DataConfig:
    make_shards(tmp_path)
    if resampled:  # local, seekable shards: stream mode because of the resampling
        source = SourceConfig(kind="webdataset", path=f"{tmp_path}/s-{{0..3}}.tar")
        return ResampledData(image_text=(source,), num_workers=num_workers)
    spec = f"pipe:cat {tmp_path}/s-{{0..3}}.tar"
    return DataConfig(
        image_text=(SourceConfig(kind="webdataset", path=spec),), num_workers=num_workers
    )


def _keys(batches, n: int) -> list[list[str]]:
    out = []
    for _ in range(n):
        batch = next(batches)
        assert "stream_positions" not in batch  # the trainer sees PairCollate's dict only
        out.append(batch["keys"])
    return out


@pytest.mark.slow  # DataLoader worker processes
@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_saved_stream_positions(tmp_path, renderer, num_workers, resampled):
    data = _data(tmp_path, num_workers, resampled)
    full = _keys(TrainData(data, renderer, 5)(0), 12)
    first = TrainData(data, renderer, 5)
    batches = first(0)
    assert _keys(batches, 7) == full[:7]
    state = json.loads(json.dumps(first.state_dict(7)))  # as trainer_state.json holds it
    assert set(state["streams"]) == {"0"}  # rank -> virtual worker -> source -> cursor
    assert set(state["streams"]["0"]) == {str(w) for w in range(max(num_workers, 1))}
    resumed = TrainData(data, renderer, 5)
    resumed.load_state_dict(state)
    # the positions of workers that have not made a batch yet are carried to the next save
    assert resumed.state_dict(7)["streams"] == state["streams"]
    assert _keys(resumed(7), 5) == full[7:]
    assert resumed.mixer.config.resampled == resampled  # the data config reaches the mixer
    del state["streams"]  # a checkpoint without positions: read and drop (same batches)
    fallback = TrainData(data, renderer, 5)
    fallback.load_state_dict(state)
    assert _keys(fallback(7), 5) == full[7:]
