"""Shared fixtures: where the real data and the committed default model live."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """Debian's dataset-fashion-mnist, which `make test` installs; its absence is a failure."""
    from vae_serve.training.data import DEFAULT_DATA_DIR

    if not DEFAULT_DATA_DIR.is_dir():
        pytest.fail(f"{DEFAULT_DATA_DIR} missing: apt-get install dataset-fashion-mnist (make test does)")
    return DEFAULT_DATA_DIR
