"""The report's figures: rank-eigenvalue curves, s and sharpness against test error, power laws against K.

Every PNG depends only on its figure (fixed DPI, no "Software" tag) and is drawn on the Agg canvas, without pyplot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from train.report.claims import Row, exponent, kendall, measured, pearson, test_error
from train.report.tables import fmt_value

# The figures' folder beside the report, and the name the markdown links them by.
FIGURES = "reproduction"


def agg_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """Write a PNG that depends only on the figure: fixed DPI, no "Software" tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def rank_figure(curves: list[tuple[str, np.ndarray]], path: Path, title: str) -> None:
    """Rank-eigenvalue curves (positive values) of several networks on one log-log plot."""
    from matplotlib import colormaps

    fig = agg_figure(6.4, 4.6)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    for i, (label, values) in enumerate(curves):
        v = np.sort(np.asarray(values, np.float64))[::-1]
        v = v[v > 0]
        ax.loglog(np.arange(1, v.size + 1), v, lw=1.1, color=cmap(i / max(1, len(curves) - 1) * 0.9), label=label)
    ax.set_xlabel("rank k")
    ax.set_ylabel("eigenvalue λ_k")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 6 else 1)
    save_figure(fig, path)


def sharpness_figure(rows: list[Row], path: Path, title: str) -> None:
    """s, λ_max and Tr(H) against test error, one panel each, Pearson r and Kendall τ in the titles."""
    done = [r for r in measured(rows) if exponent(r.result) is not None and test_error(r.result) is not None]
    fig = agg_figure(12.0, 3.8)
    err = [100 * test_error(r.result) for r in done]
    for i, (name, ys) in enumerate((("s", [exponent(r.result) for r in done]),
                                    ("λ_max", [r.result.sharpness.get("lambda_max") for r in done]),
                                    ("Tr(H)", [r.result.sharpness.get("trace") for r in done]))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.plot(err, ys, "o", ms=4)
        for x, y, r in zip(err, ys, done):
            ax.annotate(r.run, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel("test error (%)")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: r = {fmt_value(pearson(err, ys), '+.2f')}, τ = {fmt_value(kendall(err, ys), '+.2f')}",
                     fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def counts_figure(counts: list[tuple[int, dict[str, bool], dict[str, bool]]], path: Path) -> None:
    """The share of trained networks and of controls that are power laws, against K."""
    fig = agg_figure(5.2, 3.6)
    ax = fig.add_subplot()
    ks = [k for k, _, _ in counts]
    for label, index, style in (("trained networks", 1, "o-"), ("random-initialisation controls", 2, "s--")):
        ax.plot(ks, [100 * sum(c[index].values()) / max(len(c[index]), 1) for c in counts], style, label=label)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (top-K prefix of the converged spectrum)")
    ax.set_ylabel("power laws (%)")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=8)
    save_figure(fig, path)
