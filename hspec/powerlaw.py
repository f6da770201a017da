"""Power-law fit of a spectrum and its Kolmogorov-Smirnov test (METHOD.md §3).

Closed-form, with exactly the conventions of the ``powerlaw`` package (Alstott et al. 2014) at a fixed
cutoff ``xmin = λ_K`` (no xmin search): ``powerlaw.Fit(eigs, xmin=eigs.min()).power_law`` gives the same
``alpha`` (our β̂), ``sigma`` and ``D`` (our d_KS) to rounding, orders of magnitude faster.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CRITICAL_COEFFICIENTS",
    "PowerLawFit",
    "PowerLawVerdict",
    "EnsembleFit",
    "critical_value",
    "fit_power_law",
    "power_law_verdict",
    "fit_power_law_ensemble",
    "ks_deviations",
    "eigengaps",
    "fit_eigengaps",
    "least_squares_slope",
]

# c(α) in d_c = c/√K, the asymptotic Kolmogorov-Smirnov critical values.
CRITICAL_COEFFICIENTS = {0.2: 1.07, 0.15: 1.14, 0.1: 1.22, 0.05: 1.36, 0.01: 1.63}


def critical_value(k: int, significance: float = 0.05) -> float:
    """KS critical value d_c = c(α)/√K for the tabulated significance levels."""
    for level, c in CRITICAL_COEFFICIENTS.items():
        if math.isclose(significance, level):
            return c / math.sqrt(k)
    raise ValueError(
        f"significance={significance} has no tabulated KS coefficient; use one of "
        f"{sorted(CRITICAL_COEFFICIENTS)}"
    )


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """Maximum-likelihood power-law fit of the top-K eigenvalues.

    Attributes:
      beta: β̂ = 1 + K / Σ ln(λ_i/λ_K), the density exponent of p(λ) ∝ λ^-β.
      sigma: standard error (β̂ − 1)/√K.
      s: ŝ = 1/(β̂ − 1), the slope magnitude of λ_k ≈ λ_1 k^-s (the reported exponent).
      d_ks: KS distance between the data and the fitted CDF.
      d_crit: critical value c(α)/√K.
      is_power_law: d_ks < d_crit.
      k: number of values fitted.
      xmin: the cutoff λ_K.
      significance: α.
      lsq_slope: least-squares slope magnitude of log λ_k on log k (a second view, never the exponent).
      num_dropped: non-positive values dropped before fitting (only with ``drop_nonpositive=True``).
    """

    beta: float
    sigma: float
    s: float
    d_ks: float
    d_crit: float
    is_power_law: bool
    k: int
    xmin: float
    significance: float
    lsq_slope: float
    num_dropped: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _as_top_k(eigenvalues, k: int | None, drop_nonpositive: bool) -> tuple[np.ndarray, int]:
    """Validated top-k values, descending, and how many non-positive values were dropped."""
    values = np.asarray(eigenvalues, dtype=np.float64).ravel()
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {values.size} eigenvalues are NaN or infinite: the spectrum is broken "
            "upstream (check the loss and the Lanczos residuals); nothing can be fitted"
        )
    values = np.sort(values)[::-1]
    k = values.size if k is None else int(k)
    if k < 2:
        raise ValueError(f"k={k}: a power-law fit needs at least 2 eigenvalues")
    if k > values.size:
        raise ValueError(f"k={k} is larger than the {values.size} eigenvalues given; compute more or lower k")
    top = values[:k]
    nonpositive = int(np.sum(top <= 0))
    if nonpositive and not drop_nonpositive:
        raise ValueError(
            f"{nonpositive} of the top {k} eigenvalues are <= 0 (the Hessian is indefinite there, common at "
            "initialisation): a power law is not defined. Use power_law_verdict() for the verdict, or "
            "drop_nonpositive=True to fit the positive ones only"
        )
    top = top[top > 0]
    if top.size < 2:
        raise ValueError(f"only {top.size} of the top {k} eigenvalues are positive: nothing to fit")
    return top, nonpositive


def least_squares_slope(eigenvalues, ranks: tuple[int, int] | None = None) -> float:
    """Slope magnitude of a least-squares line through (log k, log λ_k) over a rank range.

    Args:
      eigenvalues: positive values (sorted descending inside).
      ranks: inclusive 1-based rank range ``(lo, hi)``; all ranks by default.

    Returns:
      −slope of log λ_k against log k.
    """
    values = np.sort(np.asarray(eigenvalues, np.float64).ravel())[::-1]
    lo, hi = ranks or (1, values.size)
    ranks_ = np.arange(lo, hi + 1, dtype=np.float64)
    y = np.log(values[lo - 1 : hi])
    slope = np.polyfit(np.log(ranks_), y, 1)[0]
    return float(-slope)


def ks_deviations(top_desc: np.ndarray, beta: float) -> np.ndarray:
    """|F*(x_(j)) − (j−1)/K| at each of the top K values, F*(x) = 1 − (x/xmin)^(1−β), in the descending order of
    ``top_desc`` (entry i belongs to rank i + 1): d_KS is their maximum, and its argmax says where the spectrum
    departs most from the power law.

    With ties, (j−1)/K is taken at the first of the tied values (the fraction strictly below x), as the
    ``powerlaw`` package does.
    """
    x = np.asarray(top_desc, np.float64)[::-1]
    k = x.size
    fitted_cdf = 1.0 - (x / x[0]) ** (1.0 - beta)
    empirical = np.searchsorted(x, x, side="left").astype(np.float64) / k
    return np.abs(fitted_cdf - empirical)[::-1]


def _ks_distance(top_desc: np.ndarray, beta: float) -> float:
    """max_j |F*(x_(j)) − (j−1)/K| over the ascending data (:func:`ks_deviations`)."""
    return float(np.max(ks_deviations(top_desc, beta)))


def fit_power_law(
    eigenvalues, k: int | None = None, significance: float = 0.05, *, drop_nonpositive: bool = False
) -> PowerLawFit:
    """Fit p(λ) ∝ λ^-β to the top-k eigenvalues with the cutoff at λ_k, and test it (METHOD.md §3).

    Args:
      eigenvalues: any order; the k largest (algebraic) are used.
      k: number of top values; ``None`` means all values given.
      significance: α of the KS test (0.2, 0.15, 0.1, 0.05 or 0.01).
      drop_nonpositive: fit only the positive values among the top k (recorded in ``num_dropped``)
        instead of raising.

    Returns:
      :class:`PowerLawFit`. Equations: β̂ = 1 + K/Σ ln(λ_i/λ_K), σ = (β̂−1)/√K, ŝ = 1/(β̂−1),
      d_KS = max_j |F*(x_(j)) − (j−1)/K|, verdict d_KS < c(α)/√K.
    """
    top, dropped = _as_top_k(eigenvalues, k, drop_nonpositive)
    n = top.size
    log_sum = float(np.sum(np.log(top / top[-1])))
    if log_sum <= 0:
        raise ValueError(f"all top {n} eigenvalues are equal ({top[0]}): the exponent is undefined")
    beta = 1.0 + n / log_sum
    d_ks = _ks_distance(top, beta)
    d_crit = critical_value(n, significance)
    return PowerLawFit(
        beta=beta,
        sigma=(beta - 1.0) / math.sqrt(n),
        s=1.0 / (beta - 1.0),
        d_ks=d_ks,
        d_crit=d_crit,
        is_power_law=bool(d_ks < d_crit),
        k=n,
        xmin=float(top[-1]),
        significance=significance,
        lsq_slope=least_squares_slope(top),
        num_dropped=dropped,
    )


@dataclasses.dataclass(frozen=True)
class PowerLawVerdict:
    """Verdict for a spectrum that may hold non-positive values among its top K (METHOD.md §3).

    Attributes:
      verdict: human-readable verdict.
      is_power_law: the decision.
      k: K requested.
      num_positive: K', the positive values among the top K.
      fit: the fit over all top K, or ``None`` when some are non-positive.
      positive_fit: with non-positive values present, the fit over the K' positive ones (secondary figure).
    """

    verdict: str
    is_power_law: bool
    k: int
    num_positive: int
    fit: PowerLawFit | None
    positive_fit: PowerLawFit | None

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "is_power_law": self.is_power_law,
            "k": self.k,
            "num_positive": self.num_positive,
            "fit": None if self.fit is None else self.fit.to_dict(),
            "positive_fit": None if self.positive_fit is None else self.positive_fit.to_dict(),
        }


def power_law_verdict(eigenvalues, k: int | None = None, significance: float = 0.05) -> PowerLawVerdict:
    """Decide "power law or not" for the top k, never dropping values silently.

    With non-positive values among the top k the verdict is "no power law (non-positive eigenvalues
    among the top K)", and the fit over the positive ones is reported beside it as a secondary figure.
    """
    values = np.sort(np.asarray(eigenvalues, np.float64).ravel())[::-1]
    k = values.size if k is None else int(k)
    num_positive = int(np.sum(values[:k] > 0)) if 2 <= k <= values.size else 0
    if num_positive >= 2:
        _as_top_k(values, k, drop_nonpositive=True)  # validates k and finiteness
    else:  # the same checks, without requiring two positive values: the verdict is then defined anyway
        _as_top_k(np.abs(values) + 1.0, k, drop_nonpositive=False)
    if num_positive == k:
        fit = fit_power_law(values, k, significance)
        word = "power law" if fit.is_power_law else "no power law"
        verdict = f"{word} (d_KS={fit.d_ks:.4f} {'<' if fit.is_power_law else '>='} d_c={fit.d_crit:.4f}, s={fit.s:.3f})"
        return PowerLawVerdict(verdict, fit.is_power_law, k, k, fit, None)
    positive_fit = fit_power_law(values, k, significance, drop_nonpositive=True) if num_positive >= 2 else None
    verdict = f"no power law (non-positive eigenvalues among the top K: {k - num_positive} of {k})"
    return PowerLawVerdict(verdict, False, k, num_positive, None, positive_fit)


@dataclasses.dataclass(frozen=True)
class EnsembleFit:
    """Fits of several spectra of one network (starts, data resamples) with error bars.

    ``*_std`` are sample standard deviations (ddof=1) across the spectra; ``*_sem`` the standard errors.
    """

    s_mean: float
    s_std: float
    s_sem: float
    d_ks_mean: float
    d_ks_std: float
    d_ks_sem: float
    fraction_power_law: float
    fits: tuple

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "fits"}
        out["fits"] = [f.to_dict() for f in self.fits]
        return out


def fit_power_law_ensemble(spectra: Sequence, k: int | None = None, significance: float = 0.05) -> EnsembleFit:
    """Fit each spectrum and return ŝ and d_KS as mean ± spread across them.

    Args:
      spectra: a sequence of at least 2 eigenvalue arrays (or a ``[R, K]`` array).
      k, significance: as in :func:`fit_power_law`.

    Returns:
      :class:`EnsembleFit`.
    """
    spectra = list(spectra)
    if len(spectra) < 2:
        raise ValueError(f"an ensemble needs at least 2 spectra for error bars, got {len(spectra)}")
    fits = tuple(fit_power_law(s, k, significance) for s in spectra)
    s_vals = np.array([f.s for f in fits])
    d_vals = np.array([f.d_ks for f in fits])
    root = math.sqrt(len(fits))
    return EnsembleFit(
        s_mean=float(s_vals.mean()),
        s_std=float(s_vals.std(ddof=1)),
        s_sem=float(s_vals.std(ddof=1) / root),
        d_ks_mean=float(d_vals.mean()),
        d_ks_std=float(d_vals.std(ddof=1)),
        d_ks_sem=float(d_vals.std(ddof=1) / root),
        fraction_power_law=float(np.mean([f.is_power_law for f in fits])),
        fits=fits,
    )


def eigengaps(eigenvalues) -> np.ndarray:
    """δ_k = λ_k − λ_{k+1} of the values sorted descending (length K−1)."""
    values = np.sort(np.asarray(eigenvalues, np.float64).ravel())[::-1]
    return values[:-1] - values[1:]


def fit_eigengaps(eigenvalues, k: int | None = None, significance: float = 0.05) -> PowerLawFit:
    """Power-law fit of the eigengaps of the top k eigenvalues (re-sorted); ŝ should be near ŝ_λ + 1.

    Zero gaps (repeated Ritz values) are dropped and counted in ``num_dropped``.
    """
    values = np.sort(np.asarray(eigenvalues, np.float64).ravel())[::-1]
    k = values.size if k is None else int(k)
    if k < 3 or k > values.size:
        raise ValueError(f"k={k}: the eigengap fit needs 3 <= k <= {values.size} eigenvalues")
    return fit_power_law(eigengaps(values[:k]), None, significance, drop_nonpositive=True)
