"""Fixtures shared by every test package: where the real data lies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_data_dir() -> Path | None:
    """The data root: env HSPEC_DATA_DIR, else ../shared/data beside the repository; None if absent.

    Absolute: a relative HSPEC_DATA_DIR (the README's `../shared/data`) is taken from the directory pytest runs in,
    not from where a test's subprocess runs (a notebook's kernel runs in notebooks/).
    """
    env = os.environ.get("HSPEC_DATA_DIR")
    path = Path(os.path.abspath(env)) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data root holding MNIST; skips the test (saying why) when it is absent."""
    path = find_data_dir()
    if path is None or not (path / "mnist").is_dir():
        pytest.skip("MNIST not found: set HSPEC_DATA_DIR to a data root with mnist/ (see shared/data/SOURCES.md)")
    return path


@pytest.fixture
def compile_events():
    """The XLA compilations that happen while the test runs (jax.monitoring, a public API)."""
    import jax

    events: list = []

    def listener(name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)
