"""Shared pytest fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded NumPy generator, so a failing test fails the same way again."""
    return np.random.default_rng(20261121)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
