"""The spectrum of a network: top-K Hessian eigenvalues, power-law fit, λ_max, Tr(H), eigengap fit.

The Hessian is that of the mean cross-entropy over a fixed Hessian sample of the training set, in
evaluation mode and without weight decay (METHOD.md §1), computed by hspec through the one adapter
:mod:`train.hessian`. Lanczos runs strict: a verdict never rests on unconverged Ritz values.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

import hspec
from train.hessian import hessian_batches, loss_fn_from_model

__all__ = ["spectrum_report", "plot_spectrum", "format_fit"]

# Relative residual tolerance of a converged Ritz value: |β_m y_{m,i}| <= TOL * λ_1.
TOL = 1e-4


def _fit_fields(verdict: hspec.PowerLawVerdict, k: int, significance: float) -> dict:
    """The results.json ``fit`` block: the full-K fit, or nulls with the verdict when it is undefined."""
    if verdict.fit is not None:
        return verdict.fit.to_dict()
    return {
        "beta": None, "sigma": None, "s": None, "d_ks": None,
        "d_crit": hspec.critical_value(k, significance), "is_power_law": False, "k": k,
        "num_positive": verdict.num_positive,
        "positive_fit": None if verdict.positive_fit is None else verdict.positive_fit.to_dict(),
    }


def _eigengap_fit(eigenvalues: np.ndarray) -> dict | None:
    positive = eigenvalues[eigenvalues > 0]
    if positive.size < 3:
        return None
    try:
        return hspec.fit_eigengaps(positive).to_dict()
    except ValueError as err:  # e.g. all gaps zero
        return {"error": str(err)}


def spectrum_report(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    k: int,
    lanczos_steps: int | None,
    seed: int,
    max_lanczos_steps: int | None = None,
    batch_size: int = 1000,
    trace_samples: int = 20,
    strict: bool = True,
    significance: float = 0.05,
    tol: float = TOL,
    progress: bool = True,
) -> dict:
    """Compute the Hessian spectrum of ``model`` on the sample (x, y) and everything derived from it.

    Args:
      model: NNX model returning logits (cloned and put in evaluation mode by the adapter).
      x, y: the fixed Hessian sample (inputs, integer labels).
      k: number of top eigenvalues fitted.
      lanczos_steps: Lanczos steps m; ``None`` uses hspec's rule max(3k, k+100) (at most n).
      seed: seeds the Lanczos start vector and the trace probes.
      max_lanczos_steps: keep stepping past ``lanczos_steps`` until the top k converge, up to this many
        steps (default 4x lanczos_steps). Randomly initialised networks have clustered top eigenvalues
        and need more steps than trained ones (the default run: 450 steps at initialisation against 300
        after training, benchmarks/RESULTS.md).
      batch_size: the sample is processed in batches of this size (sample-weighted; same Hessian).
      trace_samples: Hutchinson probes for Tr(H).
      strict: raise when fewer than k Ritz values converged (the pipeline's default).
      significance: α of the KS test.
      tol: relative residual tolerance of a converged Ritz value.
      progress: tqdm bar over the Lanczos steps.

    Returns:
      dict with "fit", "verdict", "spectrum", "sharpness", "eigengap_fit", "timing".
    """
    loss_fn, params = loss_fn_from_model(model)
    batches = hessian_batches(np.asarray(x), np.asarray(y), batch_size)
    key_lanczos, key_trace = jax.random.split(jax.random.key(seed))
    t0 = time.perf_counter()
    if max_lanczos_steps is None:
        max_lanczos_steps = 4 * (lanczos_steps or hspec.default_num_steps(k, 10**12))
    top = hspec.top_eigenvalues(
        loss_fn, params, k, key=key_lanczos, num_steps=lanczos_steps, batches=batches, tol=tol,
        strict=strict, progress=progress, max_steps=max_lanczos_steps,
    )
    t1 = time.perf_counter()
    trace = hspec.hutchinson_trace(loss_fn, params, key=key_trace, num_samples=trace_samples, batches=batches)
    t2 = time.perf_counter()
    verdict = hspec.power_law_verdict(top.eigenvalues, k, significance)
    spectrum = top.to_dict()
    spectrum.update(
        num_parameters=int(sum(math.prod(p.shape) for p in jax.tree.leaves(params))),
        hessian_samples=int(len(x)),
        num_positive=int(np.sum(top.eigenvalues > 0)),
        loss=float(sum(loss_fn(params, b) * len(b[0]) for b in batches) / len(x)),
    )
    return {
        "fit": _fit_fields(verdict, k, significance),
        "verdict": verdict.verdict,
        "spectrum": spectrum,
        "sharpness": {
            # The top Ritz value is λ_max (converged first, to far below the tolerance).
            "lambda_max": float(top.eigenvalues[0]),
            "trace": trace.trace,
            "trace_stderr": trace.stderr,
            "trace_samples": trace.num_samples,
        },
        "eigengap_fit": _eigengap_fit(top.eigenvalues),
        "timing": {"lanczos_s": t1 - t0, "trace_s": t2 - t1},
    }


def format_fit(report: dict) -> str:
    """One line: K, d_KS vs d_c, s and the verdict."""
    fit = report["fit"]
    if fit.get("d_ks") is None:
        return f"K={fit['k']}: {report['verdict']}"
    return f"K={fit['k']}: d_KS={fit['d_ks']:.4f} (d_c={fit['d_crit']:.4f}), s={fit['s']:.3f} -> {report['verdict']}"


def plot_spectrum(report: dict, path: str, title: str | None = None) -> None:
    """Write the rank-eigenvalue PNG (log-log) with the fitted power law and the verdict."""
    eigenvalues = np.asarray(report["spectrum"]["eigenvalues"])
    fit = report["fit"]
    fields = [f.name for f in dataclasses.fields(hspec.PowerLawFit)]
    fit_obj = hspec.PowerLawFit(**{name: fit[name] for name in fields}) if fit.get("d_ks") is not None else None
    hspec.plot.plot_rank_eigenvalue(eigenvalues, fit_obj, path=path, title=title or report["verdict"])
