"""Plots of spectra (matplotlib, imported only when a plot is made).

matplotlib is an optional dependency of hspec: ``pip install 'hspec[plot]'``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_rank_eigenvalue", "plot_density"]


def _pyplot():
    """matplotlib.pyplot, or an ImportError that says how to install it (the core install has none)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("hspec.plot needs matplotlib, an optional dependency: pip install 'hspec[plot]'") from err
    return plt


def _axes(ax):
    if ax is not None:
        return ax.figure, ax
    fig, ax = _pyplot().subplots(figsize=(5.5, 4.2))
    return fig, ax


def _finish(fig, path):
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        _pyplot().close(fig)


def plot_rank_eigenvalue(eigenvalues, fit=None, *, path=None, ax=None, title=None, label="eigenvalues"):
    """Rank-eigenvalue plot on log-log axes, with the fitted power law and its verdict.

    Args:
      eigenvalues: values (sorted descending inside); non-positive ones cannot be drawn on log axes and
        are counted in the legend.
      fit: optional :class:`hspec.PowerLawFit`; draws the rank curve the fitted density implies,
        λ_k = λ_K (K/k)^ŝ (rank k ≈ K·P(λ' ≥ λ) with P from the fit, anchored at the cutoff λ_K), and
        the verdict.
      path: write a PNG there (and close the figure); otherwise return the figure.
      ax: draw into existing axes. title: axes title, to which K (the number of eigenvalues) is added: a
        spectrum's shape depends on how many of its top eigenvalues were taken. label: legend label of the data.

    Returns:
      The matplotlib figure.
    """
    values = np.sort(np.asarray(eigenvalues, np.float64).ravel())[::-1]
    positive = values[values > 0]
    fig, ax = _axes(ax)
    ranks = np.arange(1, positive.size + 1)
    dropped = values.size - positive.size
    ax.loglog(ranks, positive, ".", ms=3, label=label + (f" ({dropped} non-positive not shown)" if dropped else ""))
    if fit is not None:
        k = np.arange(1, fit.k + 1)
        ax.loglog(k, fit.xmin * (fit.k / k) ** fit.s, "-", lw=1.2,
                  label=f"power law s={fit.s:.3f}, d_KS={fit.d_ks:.4f} (d_c={fit.d_crit:.4f})")
        ax.text(0.03, 0.04, "power law" if fit.is_power_law else "no power law", transform=ax.transAxes,
                fontsize=10, color="tab:green" if fit.is_power_law else "tab:red")
    ax.set_xlabel("rank k")
    ax.set_ylabel("eigenvalue λ_k")
    ax.set_title(f"{title} (K = {values.size})" if title else f"top K = {values.size}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    _finish(fig, path)
    return fig


def plot_density(density, *, path=None, ax=None, title=None):
    """Plot a :class:`hspec.SpectralDensity` (log-scaled density axis; log λ axis for the log grid)."""
    fig, ax = _axes(ax)
    ax.plot(density.grid, np.maximum(density.density, 1e-300))
    ax.set_yscale("log")
    if density.scale == "log":
        ax.set_xscale("log")
        ax.set_ylabel("density in log10 λ")
    else:
        ax.set_ylabel("density")
    ax.set_xlabel("eigenvalue λ")
    if title:
        ax.set_title(title, fontsize=10)
    _finish(fig, path)
    return fig
