"""Fixtures shared by several test files.

Tests marked ``slow`` (registered in ``pyproject.toml``) start notebook kernels, subprocesses or a
browser, or are the slowest unit tests; ``pytest -m "not slow"`` leaves them out for a quick edit
loop, and ``make test`` runs everything.
"""

import pytest
import torch
from torch import nn

from unroll_utils import data

TOY_N = 70  # toy_data's default size: 4 batches of 16 and a last batch of 6


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits, 300 training points (seed 0), standardised (see
    :func:`unroll_utils.data.load_digits_data`); shared read-only by every test that uses it."""
    return data.load_digits_data(n_train=300, seed=0)


def _tiny_net(dtype=torch.float32) -> nn.Module:
    """A 3-class conv net with BatchNorm (67 parameters + BN) on (N, 1, 6, 6) inputs, seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).to(dtype)


def _toy_data(n: int = TOY_N, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 6, 6) standard-normal inputs and (n,) labels in {0, 1, 2}, from generator seed 0."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture
def tiny_net():
    """Factory ``tiny_net(dtype=torch.float32)``: a fresh seeded tiny BatchNorm conv net."""
    return _tiny_net


@pytest.fixture
def toy_data():
    """Factory ``toy_data(n=70, dtype=torch.float32)``: seeded toy inputs and labels."""
    return _toy_data
