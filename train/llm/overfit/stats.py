"""The overfitting queue's statistics: partial correlations on the step, the correlation views, the key steps.

Pure functions of numbers (numpy and scipy), tested against hand computations.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from train.llm.overfit.plan import MEASURES, TARGETS

__all__ = ["partial_pearson", "partial_kendall", "correlation_views", "key_steps", "mean_sd"]


def _clean(xs: Iterable, ys: Iterable, zs: Iterable | None = None) -> tuple[np.ndarray, ...]:
    """Rows where every value is a finite number."""
    cols = [list(xs), list(ys)] + ([list(zs)] if zs is not None else [])
    keep = [i for i in range(len(cols[0]))
            if all(c[i] is not None and math.isfinite(float(c[i])) for c in cols)]
    return tuple(np.array([float(c[i]) for i in keep], np.float64) for c in cols)


def _residuals(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """y less its least-squares line on z (with an intercept)."""
    design = np.stack([np.ones_like(z), z], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ coef


def partial_pearson(x: Iterable, y: Iterable, z: Iterable) -> dict[str, Any]:
    """Pearson's partial correlation of x and y given z: the correlation of their residuals on z (a line).

    The p-value is the t-test with n - 3 degrees of freedom. None where undefined (n < 4 or a constant residual).
    """
    from scipy import stats

    x, y, z = _clean(x, y, z)
    out = {"r": None, "p": None, "n": int(x.size)}
    if x.size < 4:
        return out
    rx, ry = _residuals(x, z), _residuals(y, z)
    if np.allclose(rx, 0) or np.allclose(ry, 0):
        return out
    r = float(np.corrcoef(rx, ry)[0, 1])
    dof = x.size - 3
    t = r * math.sqrt(dof / max(1e-300, 1 - r * r))
    return dict(out, r=r, p=float(2 * stats.t.sf(abs(t), dof)))


def partial_kendall(x: Iterable, y: Iterable, z: Iterable) -> dict[str, Any]:
    """Kendall's partial tau of x and y given z: (τxy − τxz τyz) / sqrt((1 − τxz²)(1 − τyz²)) (Kendall).

    No p-value (its distribution has no closed form). None where undefined.
    """
    from scipy import stats

    x, y, z = _clean(x, y, z)
    out = {"tau": None, "n": int(x.size)}
    if x.size < 4 or min(np.ptp(x), np.ptp(y), np.ptp(z)) == 0:
        return out
    txy, txz, tyz = (float(stats.kendalltau(a, b).statistic) for a, b in ((x, y), (x, z), (y, z)))
    denom = math.sqrt(max(0.0, (1 - txz ** 2) * (1 - tyz ** 2)))
    return out if denom == 0 else dict(out, tau=(txy - txz * tyz) / denom)


def correlation_views(rows: list[dict[str, Any]], measures: Sequence[str] = MEASURES,
                      targets: Sequence[str] = TARGETS) -> dict[str, Any]:
    """Each measure against each target: over all checkpoints, without step 0, partial on the step; and the
    measure's and the target's own correlation with the step (the time confound).

    Returns:
        {target: {measure: {"all": {pearson, pearson_p, kendall, kendall_p, n}, "after_init": {...},
        "partial_step": {"pearson", "pearson_p", "kendall", "n"}}}, "with_step": {name: {...}}}.
    """
    from train.llm.track import correlation

    later = [r for r in rows if r["step"] > 0]
    out: dict[str, Any] = {}
    for target in targets:
        out[target] = {}
        for m in measures:
            pp = partial_pearson([r[m] for r in rows], [r[target] for r in rows], [r["step"] for r in rows])
            pk = partial_kendall([r[m] for r in rows], [r[target] for r in rows], [r["step"] for r in rows])
            out[target][m] = {
                "all": correlation([r[m] for r in rows], [r[target] for r in rows]),
                "after_init": correlation([r[m] for r in later], [r[target] for r in later]),
                "partial_step": {"pearson": pp["r"], "pearson_p": pp["p"], "kendall": pk["tau"], "n": pp["n"]}}
    out["with_step"] = {name: correlation([r[name] for r in rows], [r["step"] for r in rows])
                        for name in (*measures, *targets)}
    return out


def key_steps(losses: dict[int, float]) -> dict[str, int]:
    """The checkpoints before, at and after the test-loss minimum, from the test loss at each checkpoint step.

    at: the lowest test loss; before: halfway by index between the first step after 0 and it; after: the last.
    """
    steps = sorted(losses)
    i = min(range(len(steps)), key=lambda j: losses[steps[j]])
    before = steps[max(1, i // 2)] if i > 1 else steps[max(0, i - 1)]
    return {"before": before, "at": steps[i], "after": steps[-1]}


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None with fewer than 2 values)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)

