"""Fixtures for every test folder: a tiny saved model and folders of random PNGs, written once
per session under pytest's temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.model.one_tower import CLIPPO


class SavedModel(NamedTuple):
    """A model and the folder it is saved in (what `clippo.load` and `--model` read)."""

    model: CLIPPO
    path: Path


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    """The tiny-test tower at 32 px with random weights (torch seed 0), in eval mode, saved to
    disk. One instance for the whole session: tests may encode with it, never train, move or
    convert it."""
    # a private RNG, so that building it leaves the global torch RNG as it was (the fixture's
    # first use moves with test selection and order)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPPO.from_variant("tiny-test", image_size=32).eval()
    path = tmp_path_factory.mktemp("tiny_saved_model") / "model"
    model.save(path)
    return SavedModel(model, path)


RandomPngs = Callable[..., Path]


@pytest.fixture(scope="session")
def random_pngs(tmp_path_factory: pytest.TempPathFactory) -> RandomPngs:
    """`random_pngs(names, size, seed)`: a new folder holding a uniform-noise RGB PNG of
    `size` x `size` pixels at each relative path in `names` (sub-folders made as needed), drawn
    in the order of `names` from one `np.random.default_rng(seed)`; returns the folder."""

    def write(names: Sequence[str], size: int, seed: int) -> Path:
        folder = tmp_path_factory.mktemp("pngs")
        rng = np.random.default_rng(seed)
        for name in names:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        return folder

    return write
