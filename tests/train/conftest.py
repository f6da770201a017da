"""Shared fixtures of the training tests: the data directory and tiny configurations."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def find_data_dir() -> Path | None:
    """The data root: env HSPEC_DATA_DIR, else ../shared/data beside the repository; None if absent.

    Returns:
        The directory, or None.
    """
    env = os.environ.get("HSPEC_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data root holding MNIST; skips the test (saying why) when it is absent."""
    path = find_data_dir()
    if path is None or not (path / "mnist").is_dir():
        pytest.skip("MNIST not found: set HSPEC_DATA_DIR to a data root with mnist/ (see shared/data/SOURCES.md)")
    return path


@pytest.fixture
def tiny_cfg(data_dir):
    """The tiny FCN preset (512 MNIST examples, K=10) reading the test data directory."""
    from train import presets

    return dataclasses.replace(presets.get("tiny-fcn-mnist"), data_dir=str(data_dir))
