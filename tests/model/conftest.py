"""Shared fixtures for the model tests: the public big_vision fixture and a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PARAMS_NPZ = FIXTURES / "clippo_tiny_public.npz"
OUTPUTS_NPZ = FIXTURES / "clippo_tiny_public_outputs.npz"


@pytest.fixture(scope="session")
def params_npz() -> Path:
    return PARAMS_NPZ


@pytest.fixture(scope="session")
def reference_outputs() -> dict[str, np.ndarray]:
    with np.load(OUTPUTS_NPZ, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def bv_params() -> dict[str, np.ndarray]:
    """The fixture's parameters as stored (keys with the `params/` prefix)."""
    with np.load(PARAMS_NPZ, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture()
def fixture_model():
    import clippo

    return clippo.load(PARAMS_NPZ)


@pytest.fixture()
def noise_images() -> torch.Tensor:
    """4 images [4,3,64,64] in [-1, 1] for the 64 px fixture model."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
