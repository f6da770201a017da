"""A cheaper operator with a certificate: how far dropping part of a sum can move any eigenvalue (Weyl).

A Hessian that is a mean over examples splits as H = A + E, with A the (N-scaled) sum over the examples kept
and E that over the examples dropped. Weyl's inequality bounds every eigenvalue's move by the dropped part's
spectral norm: |λ_i(H) − λ_i(A)| <= ||E||_2 for every i. So the top K of the cheaper A are the top K of H to
within ||E||_2, and a result may be accepted where that bound is small against the K-th eigenvalue.

||E||_2 = max(|λ_max(E)|, |λ_min(E)|) comes from a short Lanczos run on E alone: its extreme Ritz values
converge first. A Ritz value θ with residual r has an eigenvalue within r of it, so |θ| + r is the estimate
used here, from both ends of the spectrum; Lanczos approaches the extreme eigenvalues from inside, so the
estimate assumes that the run found the extremes (report its steps and residuals with the bound).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from hspec.krylov import lanczos
from hspec.operators import as_operator

__all__ = ["NormEstimate", "spectral_norm", "weyl_certificate"]


@dataclasses.dataclass(frozen=True)
class NormEstimate:
    """The spectral norm of a symmetric operator from the extreme Ritz values of one Lanczos run.

    Attributes:
      norm: max(|θ_max| + r_max, |θ_min| + r_min), scaled.
      lambda_max, lambda_min: the extreme Ritz values (scaled).
      residual_max, residual_min: their residual bounds |β_m y_m| (scaled).
      num_steps: Lanczos steps taken. scale: the factor applied to the operator's values.
    """

    norm: float
    lambda_max: float
    lambda_min: float
    residual_max: float
    residual_min: float
    num_steps: int
    scale: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def spectral_norm(operator, *, key: jax.Array, num_steps: int = 80, scale: float = 1.0,
                  dim: int | None = None, dtype=None) -> NormEstimate:
    """||scale · E||_2 of a symmetric operator E from one Lanczos run of ``num_steps`` steps.

    Args:
      operator: a :class:`hspec.SymmetricOperator` (e.g. a :class:`hspec.HessianOperator`) or a plain
        ``[S, n] -> [S, n]`` callable (then give ``dim`` and ``dtype``).
      key: PRNG key of the start vector.
      num_steps: Lanczos steps (clamped to the dimension); the extremes need far fewer than a top-K run.
      scale: multiply the values by this (e.g. n_dropped / N for a mean over the dropped examples).

    Returns:
      :class:`NormEstimate`.
    """
    op = as_operator(operator, dim=dim, dtype=dtype)
    res = lanczos(op, min(int(num_steps), op.dim), key=key)
    theta, r = np.asarray(res.ritz_values[0], np.float64), np.asarray(res.residuals[0], np.float64)
    s = abs(float(scale))
    top, bottom = float(theta[0]) * scale, float(theta[-1]) * scale
    hi, lo = (top, bottom) if scale >= 0 else (bottom, top)
    r_hi, r_lo = (float(r[0]) * s, float(r[-1]) * s) if scale >= 0 else (float(r[-1]) * s, float(r[0]) * s)
    norm = max(abs(hi) + r_hi, abs(lo) + r_lo)
    return NormEstimate(norm, hi, lo, r_hi, r_lo, int(res.num_steps), float(scale))


def weyl_certificate(dropped: NormEstimate, kept_eigenvalues, k: int, tolerance: float = 1e-3) -> dict[str, Any]:
    """Whether the top k of the kept operator stand for those of the whole: ||E||_2 <= tolerance · λ_k.

    Args:
      dropped: the dropped part's norm (:func:`spectral_norm`, already scaled to the whole's normalisation).
      kept_eigenvalues: the kept operator's top eigenvalues (same normalisation), descending.
      k: K. tolerance: the accepted bound relative to the K-th eigenvalue.

    Returns:
      ``{"bound", "lambda_k", "relative_bound", "tolerance", "accepted", "dropped": {...}}``: every one of the
      top k eigenvalues of the whole lies within ``bound`` of the kept operator's.
    """
    values = np.asarray(kept_eigenvalues, np.float64)
    if values.size < k:
        raise ValueError(f"weyl_certificate: {values.size} eigenvalues given for k = {k}")
    lam_k = float(values[k - 1])
    rel = dropped.norm / abs(lam_k) if lam_k != 0 else float("inf")
    return {"bound": dropped.norm, "lambda_k": lam_k, "relative_bound": rel, "tolerance": tolerance,
            "accepted": bool(lam_k > 0 and rel <= tolerance), "dropped": dropped.to_dict()}
