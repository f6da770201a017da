"""Shared fixtures of the training tests: the data directory and tiny configurations."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import REPO, find_data_dir  # noqa: F401  (re-exported for the train tests)


@pytest.fixture
def tiny_cfg(data_dir):
    """The tiny FCN preset (512 MNIST examples, K=10) reading the test data directory."""
    from train import presets

    return dataclasses.replace(presets.get("tiny-fcn-mnist"), data_dir=str(data_dir))
