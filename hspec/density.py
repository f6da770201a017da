"""Spectral density by stochastic Lanczos quadrature (SLQ), Gaussian-broadened (METHOD.md §2).

For a unit probe z, m Lanczos steps give Ritz values θ_i and weights τ_i (squared first components of
T's eigenvectors) with Σ_i τ_i f(θ_i) ≈ zᵀ f(H) z, exact for polynomials of degree < 2m. Averaged over
probes this estimates (1/n) Tr f(H); with f a narrow Gaussian it is the eigenvalue density.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from hspec._checks import resolve_finite_operator
from hspec.krylov import LanczosResult, lanczos

__all__ = ["SpectralDensity", "spectral_density", "density_from_lanczos"]


@dataclasses.dataclass(frozen=True)
class SpectralDensity:
    """A broadened eigenvalue density.

    Attributes:
      grid: evaluation points: eigenvalues (linear grid) or eigenvalues spaced logarithmically (log grid).
      density: for ``scale="linear"`` the density in λ (integrates to 1 over the line); for
        ``scale="log"`` the density in log10 λ of the positive part (integrates to the positive mass).
      nodes: ``[S, m]`` quadrature nodes (Ritz values). weights: ``[S, m]`` quadrature weights.
      sigma: the Gaussian width (in λ, or in decades for the log grid). scale: "linear" or "log".
      positive_mass: the fraction of spectral weight on positive nodes.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    scale: str
    positive_mass: float


def _gaussian_mixture(points, nodes, weights, sigma):
    """Mean over probes of Σ_i τ_i N(points; θ_i, σ²)."""
    diff = points[None, None, :] - nodes[:, :, None]
    kernel = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * np.sqrt(2.0 * np.pi))
    return np.einsum("sm,smp->p", weights, kernel) / nodes.shape[0]


def density_from_lanczos(
    result: LanczosResult, *, scale: str = "linear", num_points: int = 1000, sigma: float | None = None
) -> SpectralDensity:
    """Broaden the quadrature of a :class:`LanczosResult` into a density on a grid.

    Args:
      result: Lanczos output of unit probes (its ``weights`` sum to 1 per probe).
      scale: "linear" (grid in λ) or "log" (grid log-spaced over the positive nodes, density in log10 λ).
      num_points: grid size.
      sigma: Gaussian width; default 1% of the node range (linear) or 0.05 decades (log).

    Returns:
      :class:`SpectralDensity`.
    """
    nodes, weights = np.asarray(result.ritz_values, np.float64), np.asarray(result.weights, np.float64)
    positive_mass = float(np.sum(weights * (nodes > 0)) / nodes.shape[0])
    if scale == "linear":
        lo, hi = float(nodes.min()), float(nodes.max())
        sigma = sigma if sigma is not None else max(0.01 * (hi - lo), np.finfo(np.float64).tiny)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
        return SpectralDensity(grid, _gaussian_mixture(grid, nodes, weights, sigma), nodes, weights, sigma, scale, positive_mass)
    if scale == "log":
        if not np.any(nodes > 0):
            raise ValueError("scale='log' needs positive Ritz values; this spectrum has none")
        sigma = sigma if sigma is not None else 0.05
        log_nodes = np.log10(np.where(nodes > 0, nodes, 1.0))
        log_weights = np.where(nodes > 0, weights, 0.0)
        lo, hi = float(log_nodes[nodes > 0].min()), float(log_nodes[nodes > 0].max())
        log_grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
        density = _gaussian_mixture(log_grid, log_nodes, log_weights, sigma)
        return SpectralDensity(10.0**log_grid, density, nodes, weights, sigma, scale, positive_mass)
    raise ValueError(f"scale must be 'linear' or 'log', got {scale!r}")


def spectral_density(
    loss_fn,
    params=None,
    *,
    key: jax.Array,
    num_steps: int = 100,
    num_probes: int = 10,
    scale: str = "linear",
    num_points: int = 1000,
    sigma: float | None = None,
    batches=None,
    wrt=None,
    method: str | None = None,
    loop: str = "auto",
) -> SpectralDensity:
    """Eigenvalue density of the Hessian by SLQ with ``num_probes`` Rademacher probes of ``num_steps`` steps.

    Called as ``spectral_density(loss_fn, params, key=key, ...)`` or ``spectral_density(op, key=key, ...)``
    with a :class:`hspec.HessianOperator` built once and shared with other drivers.

    Args:
      loss_fn, params, batches, wrt, method, loop: as in :func:`hspec.top_eigenvalues` (a
        :class:`hspec.HessianOperator` in place of ``loss_fn``, and none of the first four, also works).
      key: PRNG key of the probes.
      num_steps: Lanczos steps per probe (quadrature nodes).
      num_probes: independent probes, run together.
      scale, num_points, sigma: see :func:`density_from_lanczos`.

    Returns:
      :class:`SpectralDensity`.
    """
    op = resolve_finite_operator(loss_fn, params, batches=batches, wrt=wrt, method=method,
                                 caller="spectral_density")
    result = lanczos(op, num_steps, key=key, num_starts=num_probes, loop=loop)
    return density_from_lanczos(result, scale=scale, num_points=num_points, sigma=sigma)
