"""clippo.eval.finetune's pieces: the data factory's contract and the config's checks (the
suites' fine-tuning runs are tested in test_glue_suite.py and test_vqa_suite.py)."""

from __future__ import annotations

import numpy as np
import pytest

from clippo.eval.finetune import FinetuneConfig, RowBatches


def _batches(n: int = 10, bs: int = 4, seed: int = 0) -> RowBatches:
    def to_images(items: list[int]) -> np.ndarray:
        return np.array(items, np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)

    return RowBatches(list(range(n)), lambda rows: rows * 10, to_images, bs, seed, "key")


def test_batch_k_depends_only_on_seed_and_k_and_epochs_cover_every_row() -> None:
    data = _batches()
    it = data(0)
    first = [next(it) for _ in range(6)]
    resumed = data(3)
    for k in range(3, 6):
        images, targets = next(resumed)
        assert np.array_equal(images, first[k][0]) and np.array_equal(targets, first[k][1])
    rows = np.concatenate([t // 10 for _, t in first])  # 24 rows = 2 epochs of 10, then 4
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert not np.array_equal(rows[:10], rows[10:20])  # reshuffled per epoch
    assert not np.array_equal(_batches(seed=1).rows(0), data.rows(0))
    assert first[0][0][:, 0, 0, 0].tolist() == (first[0][1] // 10).tolist()  # images match rows


def test_a_checkpoint_of_another_setup_is_refused() -> None:
    data = _batches()
    data.load_state_dict(data.state_dict(5))
    with pytest.raises(ValueError, match="other rows"):
        data.load_state_dict({"finetune": "another", "step": 5})


def test_steps_and_checks() -> None:
    assert FinetuneConfig(epochs=2, batch_size=4).steps(10) == 6
    assert FinetuneConfig(batch_size=64).steps(10) == 3  # a batch of all 10 rows, 3 epochs
    assert FinetuneConfig(max_steps=7).steps(10) == 7
    for bad in ({"learning_rates": ()}, {"learning_rates": (0.0,)}, {"epochs": 0}):
        with pytest.raises(ValueError):
            FinetuneConfig(**bad)  # type: ignore[arg-type]
