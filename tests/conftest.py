"""Shared fixtures: quiet progress bars, a private cache, small real Fashion-MNIST subsets."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MULTISIZE_QUIET", "1")


def pytest_configure(config):
    """One intra-op thread: the tiny test models gain nothing from more, and a busy machine loses a lot."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache dir, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("MULTISIZE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def fmnist_train():
    from condenser.data import load_dataset

    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="session")
def fmnist_test():
    from condenser.data import load_dataset

    return load_dataset("fashion-mnist", "test")


@pytest.fixture
def bounded_memory(request):
    """Resident memory grows by less than the module's MEMORY_BOUND (bytes) during the test (sampled, generous).

    The hostile-input modules use it on every test: a bad input must fail without a blow-up, not only fail.
    """
    from formats.testing import PeakRSS

    bound = getattr(request.module, "MEMORY_BOUND", 256 << 20)
    with PeakRSS() as rss:
        yield
    assert rss.growth < bound, f"resident memory grew by {rss.growth >> 20} MiB (bound {bound >> 20} MiB)"
