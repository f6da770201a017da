"""hspec.plot: the figures say how many eigenvalues they show."""

from __future__ import annotations

import numpy as np
import pytest

import hspec

pytest.importorskip("matplotlib")


def test_rank_eigenvalue_title_carries_k():
    values = 1.0 / np.arange(1, 41) ** 1.5
    fit = hspec.fit_power_law(values)
    fig = hspec.plot.plot_rank_eigenvalue(values, fit, title="lenet: final")
    assert fig.axes[0].get_title() == "lenet: final (K = 40)"
    assert hspec.plot.plot_rank_eigenvalue(values[:7]).axes[0].get_title() == "top K = 7"
