"""Tracking the spectrum through training: one row per checkpoint, correlations with the test loss, a plot.

`tracking.json` (the LLM claim of METHOD.md section 5: d_KS falls during training and tracks the test
loss, Pearson r above 0.9, while lambda_max and Tr(H) do not; no power law at initialisation):

    {"setting": {...},
     "checkpoints": [{"step", "test_loss", "train_loss", "d_ks", "s", "lambda_max", "trace", "is_power_law",
                      "d_crit", "k", "num_positive", "num_converged", "d_ks_positive_only", "verdict", ...}],
     "correlations": {"d_ks": {"pearson", "pearson_p", "kendall", "kendall_p", "n"}, "s": ..., ...},
     "claims": {"d_ks_falls": ..., "no_power_law_at_init": ..., "power_law_at_end": ...,
                "d_ks_tracks_test_loss": ..., ...},
     "correlations_after_init": {...}}   (a second view: the same without step 0)

Every checkpoint has a numeric d_KS: when non-positive eigenvalues lie among the top K the fit over all K
is undefined (METHOD.md section 3), and the row takes the fit over the K' positive values instead
(`fit.positive_fit` of the record), with `d_ks_positive_only` true; it is never a power law then. With
fewer than 2 positive values there is no fit at all: d_KS is then 1, its largest possible value, flagged
`d_ks_undefined`. The correlations use every checkpoint, step 0 included.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from train import record

__all__ = ["MEASURES", "checkpoint_row", "correlations", "claims", "tracking_record", "write", "table",
           "plot_tracking", "PEARSON_THRESHOLD"]

MEASURES = ("d_ks", "s", "lambda_max", "trace")
# The paper's "tracks the test loss": Pearson r above 0.9.
PEARSON_THRESHOLD = 0.9
LABELS = {"d_ks": "d_KS", "s": "s", "lambda_max": "lambda_max", "trace": "Tr(H)"}


def _fit_value(fit: dict, name: str) -> tuple[float | None, bool]:
    """A fit field, from the full fit or else the positive-values fit: (value, taken from the positive fit)."""
    if fit.get(name) is not None:
        return float(fit[name]), False
    positive = fit.get("positive_fit") or {}
    if positive.get(name) is not None:
        return float(positive[name]), True
    return None, True


def checkpoint_row(result: record.SpectrumResult) -> dict[str, Any]:
    """One checkpoint's row of the tracking record, from its results.json record.

    Args:
        result: the record of the spectrum at that step.

    Returns:
        {step, test_loss, train_loss, d_ks, s, lambda_max, trace, is_power_law, d_crit, k, num_positive,
        num_converged, d_ks_positive_only, d_ks_undefined, verdict, lanczos_steps, num_starts, combine,
        num_distinct, measure_s}.
    """
    fit, sh, spec = result.fit, result.sharpness, result.spectrum
    d_ks, positive_only = _fit_value(fit, "d_ks")
    s, _ = _fit_value(fit, "s")
    undefined = d_ks is None
    return {
        "step": int(result.setting["step"]), "test_loss": result.metrics.get("test_loss"),
        "train_loss": result.metrics.get("train_loss"), "d_ks": 1.0 if undefined else d_ks, "s": s,
        "lambda_max": sh.get("lambda_max"), "trace": sh.get("trace"), "trace_stderr": sh.get("trace_stderr"),
        "is_power_law": bool(fit["is_power_law"]), "d_crit": fit.get("d_crit"), "k": fit.get("k"),
        "num_positive": fit.get("num_positive"), "num_converged": spec.get("num_converged"),
        "d_ks_positive_only": bool(positive_only and not undefined), "d_ks_undefined": undefined,
        "verdict": result.verdict, "lanczos_steps": spec.get("lanczos_steps"),
        "num_starts": spec.get("num_starts"), "combine": spec.get("combine"), "num_distinct": spec.get("num_distinct"),
        "measure_s": result.timing.get("measure_s"),
    }


def _finite_pairs(xs: Iterable, ys: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """The pairs where both values are finite numbers."""
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
    a = np.array([p[0] for p in pairs], np.float64)
    return a, np.array([p[1] for p in pairs], np.float64)


def correlation(xs: Iterable, ys: Iterable) -> dict[str, Any]:
    """Pearson r and Kendall tau (with p-values) of two series; None where undefined (n < 3 or constant)."""
    from scipy import stats

    x, y = _finite_pairs(xs, ys)
    out: dict[str, Any] = {"pearson": None, "pearson_p": None, "kendall": None, "kendall_p": None, "n": int(x.size)}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    r = stats.pearsonr(x, y)
    tau = stats.kendalltau(x, y)
    out.update(pearson=float(r.statistic), pearson_p=float(r.pvalue), kendall=float(tau.statistic),
               kendall_p=float(tau.pvalue))
    return out


def correlations(rows: list[dict[str, Any]], measures: tuple[str, ...] = MEASURES) -> dict[str, dict]:
    """Each measure's correlation with the test loss across every checkpoint (step 0 included)."""
    losses = [r["test_loss"] for r in rows]
    return {m: correlation([r[m] for r in rows], losses) for m in measures}


def claims(rows: list[dict[str, Any]], corr: dict[str, dict]) -> dict[str, Any]:
    """The paper's LLM claims, decided on this run's numbers.

    Returns:
        {d_ks_falls (last < first), no_power_law_at_init, power_law_at_end, d_ks_tracks_test_loss
        (Pearson > 0.9), lambda_max_tracks_test_loss, trace_tracks_test_loss, d_ks_first, d_ks_last}.
    """
    if not rows:
        return {}
    first, last = rows[0], rows[-1]
    tracks = lambda m: None if corr[m]["pearson"] is None else corr[m]["pearson"] > PEARSON_THRESHOLD  # noqa: E731
    return {
        "d_ks_first": first["d_ks"], "d_ks_last": last["d_ks"], "d_ks_falls": last["d_ks"] < first["d_ks"],
        "no_power_law_at_init": first["step"] == 0 and not first["is_power_law"],
        "power_law_at_end": bool(last["is_power_law"]),
        "d_ks_tracks_test_loss": tracks("d_ks"), "s_tracks_test_loss": tracks("s"),
        "lambda_max_tracks_test_loss": tracks("lambda_max"), "trace_tracks_test_loss": tracks("trace"),
        "pearson_threshold": PEARSON_THRESHOLD,
    }


def tracking_record(setting: dict[str, Any], results: list[record.SpectrumResult]) -> dict[str, Any]:
    """The tracking record of a run from its per-checkpoint records (sorted by step).

    Args:
        setting: the run's setting (without the per-step fields).
        results: one record per measured checkpoint.

    Returns:
        {"setting", "checkpoints", "correlations", "claims"}.
    """
    rows = sorted((checkpoint_row(r) for r in results), key=lambda r: r["step"])
    corr = correlations(rows)
    # A second view beside the claim's: the trained checkpoints only (the initialisation is often an outlier).
    after_init = correlations([r for r in rows if r["step"] > 0])
    return {"setting": setting, "checkpoints": rows, "correlations": corr, "claims": claims(rows, corr),
            "correlations_after_init": after_init}


def write(tracking: dict[str, Any], out_dir: str | os.PathLike, plot: bool = True) -> Path:
    """Write tracking.json (atomically, full precision) and, when asked, tracking.png; return the json path."""
    out = Path(out_dir)
    record.write_json(out / "tracking.json", tracking)
    if plot and tracking["checkpoints"]:
        plot_tracking(tracking, out / "tracking.png")
    return out / "tracking.json"


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(tracking: dict[str, Any]) -> str:
    """Step / test loss / d_KS / s / lambda_max / Tr(H) / verdict, then each measure's r with the test loss."""
    head = f"{'step':>6} {'test loss':>9} {'d_KS':>8} {'s':>7} {'lambda_max':>11} {'Tr(H)':>11}  verdict"
    lines = [head, "-" * len(head)]
    for r in tracking["checkpoints"]:
        mark = "*" if r["d_ks_positive_only"] else " "
        lines.append(f"{r['step']:>6} {_fmt(r['test_loss'], '.4f'):>9} {_fmt(r['d_ks'], '.4f'):>7}{mark} "
                     f"{_fmt(r['s'], '.3f'):>7} {_fmt(r['lambda_max'], '.4g'):>11} {_fmt(r['trace'], '.4g'):>11}  "
                     f"{r['verdict']}")
    if any(r["d_ks_positive_only"] for r in tracking["checkpoints"]):
        lines.append("* fit over the positive eigenvalues only (non-positive values among the top K)")
    for title, key in (("correlation with the test loss: ", "correlations"),
                       ("without step 0:                 ", "correlations_after_init")):
        if tracking.get(key):
            lines.append(title + ", ".join(f"{LABELS[m]} r={_fmt(c['pearson'], '.3f')} tau={_fmt(c['kendall'], '.3f')}"
                                           for m, c in tracking[key].items()))
    return "\n".join(lines)


def plot_tracking(tracking: dict[str, Any], path: str | os.PathLike) -> None:
    """A PNG: each measure against the step (top row, with the test loss), and against the test loss (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tracking["checkpoints"]
    steps = [r["step"] for r in rows]
    loss = [np.nan if r["test_loss"] is None else r["test_loss"] for r in rows]
    fig, axes = plt.subplots(2, len(MEASURES), figsize=(4 * len(MEASURES), 7), squeeze=False)
    for j, m in enumerate(MEASURES):
        values = [np.nan if r[m] is None else r[m] for r in rows]
        top, bottom = axes[0, j], axes[1, j]
        top.plot(steps, values, "o-", color="C0")
        top.set_title(LABELS[m]), top.set_xlabel("step"), top.set_ylabel(LABELS[m], color="C0")
        twin = top.twinx()
        twin.plot(steps, loss, "s--", color="C3", alpha=0.6)
        twin.set_ylabel("test loss", color="C3")
        bottom.scatter(loss, values, c=steps, cmap="viridis")
        for x, y, s in zip(loss, values, steps):
            bottom.annotate(str(s), (x, y), fontsize=7)
        c = tracking["correlations"][m]
        after = (tracking.get("correlations_after_init") or {}).get(m, {}).get("pearson")
        bottom.set_title(f"r={_fmt(c['pearson'], '.3f')}, tau={_fmt(c['kendall'], '.3f')} "
                         f"(without step 0: r={_fmt(after, '.3f')})", fontsize=9)
        bottom.set_xlabel("test loss"), bottom.set_ylabel(LABELS[m])
    if "d_crit" in rows[0] and rows[0]["d_crit"] is not None:
        axes[0, 0].axhline(rows[0]["d_crit"], color="k", lw=0.8, ls=":", label="d_c")
        axes[0, 0].legend(loc="upper right", fontsize=8)
    name = tracking["setting"].get("preset", "")
    fig.suptitle(f"{name}: Hessian spectrum through training (points labelled by step)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
