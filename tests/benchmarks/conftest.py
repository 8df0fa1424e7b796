"""Fixtures for the benchmark scripts' smoke tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def torch_threads_restored():
    """The benchmark sets torch's thread count for the whole process; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
