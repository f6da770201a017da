"""Ritz values, residual bounds and quadrature weights of Lanczos coefficients: the tridiagonal eigenproblem.

Solved on the host in float64 with ``scipy.linalg.eigh_tridiagonal``; shared by the driver
(:func:`hspec.lanczos`) and the listings of saved Krylov states (:func:`hspec.krylov_store.saved_progress`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["ritz_decomposition", "tridiagonal_eigh"]


def tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric tridiagonal T (``eigh``, never a general ``eig``).

    Args:
      alphas: ``[m]`` diagonal. betas: ``[m-1]`` off-diagonal.

    Returns:
      ``(values, vectors)`` in float64, values descending, vectors as columns.
    """
    d = np.asarray(alphas, np.float64)
    e = np.asarray(betas, np.float64)
    if d.shape[0] == 1:
        return d.copy(), np.ones((1, 1))
    values, vectors = scipy.linalg.eigh_tridiagonal(d, e)
    return values[::-1].copy(), vectors[:, ::-1].copy()


def ritz_decomposition(alphas, betas, V=None, return_vectors=False):
    """Ritz values, residual bounds |β_m y_{m,i}|, quadrature weights (and vectors) of each start's T.

    Args:
      alphas, betas: ``[S, m]`` Lanczos coefficients (``betas[:, -1]`` is the residual coupling).
      V: ``[S, m, n]`` basis, needed only with ``return_vectors``.
      return_vectors: also return the Ritz vectors ``[S, m, n]``.

    Returns:
      ``(values, residuals, weights, vectors or None)``, values descending per start.
    """
    S, m = alphas.shape
    values, residuals, weights, vecs = [], [], [], []
    for s in range(S):
        theta, Y = tridiagonal_eigh(alphas[s], betas[s, :-1])
        values.append(theta)
        residuals.append(np.abs(float(betas[s, -1]) * Y[-1]))
        weights.append(Y[0] ** 2)
        if return_vectors:
            vecs.append(Y.T @ np.asarray(V[s], np.float64))
    return (
        np.stack(values),
        np.stack(residuals),
        np.stack(weights),
        np.stack(vecs) if return_vectors else None,
    )
