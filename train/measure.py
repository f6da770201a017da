"""Measuring a network: top-K Hessian eigenvalues, power-law fit, λ_max, Tr(H) and (when asked) the density.

One Hessian operator is built per measurement (one linearisation of the gradient at the measured
parameters) and serves every quantity: the top K by Lanczos, the Hutchinson trace, the density and the
loss, all inside hspec's compiled programs. A run keeps one hspec.HessianFactory for all its measurements, so
that those programs are compiled once, at its first checkpoint. The Hessian is that of the mean loss over a fixed
Hessian sample, in evaluation mode and without weight decay (METHOD.md §1). Lanczos runs strict: a verdict never
rests on unconverged Ritz values.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np

import hspec
from train import record

__all__ = ["SpectrumSpec", "Measurement", "measure", "top_k", "TOL", "SETTLE"]

# Relative residual tolerance of a converged Ritz value: |β_m y_{m,i}| <= TOL * λ_1.
TOL = 1e-4
# A top K grown from fewer than 3K steps must also have settled: no rank moved by more than this (relative) over
# the last tenth of the steps. Grown from 1100 or 1500 steps, the residual rule alone stopped LeNet-5's top 1000
# (N = 1000 and 4000 examples) at 1800-2310 steps with d_KS 0.13-0.39 instead of 0.049 / 0.042; this rule stopped
# every start tried (1100, 1500, 3000) within 3300 steps at the right values (results/hessian-sample/*/krylov-steps/,
# train/krylov_steps.py).
SETTLE = 3e-3
# The largest Hessian sample whose gradient is linearised once (memory: every micro-batch's residuals, about 215 kB
# per LeNet-5 example by the process's peak RSS at 8,000 examples, so ~3.4 GB expected at 16,000);
# $HSPEC_LINEARIZE_MAX_EXAMPLES overrides it.
LINEARIZE_MAX_EXAMPLES = 16000
ENV_LINEARIZE_MAX = "HSPEC_LINEARIZE_MAX_EXAMPLES"


@dataclasses.dataclass(frozen=True)
class SpectrumSpec:
    """What to measure and how (hspec keyword arguments, gathered once from a config).

    Attributes:
        k: top eigenvalues fitted (K).
        lanczos_steps: Lanczos steps m to start with; None: hspec's rule max(3K, K + 100).
        max_lanczos_steps: grow the Krylov space up to this until the top K converge; None: hspec's rule.
        trace_samples: Hutchinson probes for Tr(H).
        num_starts: Lanczos starts run together; combine: "pool", "distinct" or "mean" (METHOD.md §1,
            hspec.top_eigenvalues).
        significance: α of the KS test. tol: relative residual tolerance of a converged Ritz value.
        density_points: grid points of the spectral density (0: no density).
        settle: also require that no rank of the top K moved by more than this (relative) over the last tenth of
            the steps (hspec.top_eigenvalues); None: the residual rule alone, as every published CNN run.
    """

    k: int
    lanczos_steps: int | None = None
    max_lanczos_steps: int | None = None
    trace_samples: int = 20
    num_starts: int = 1
    combine: str = "pool"
    significance: float = 0.05
    tol: float = TOL
    density_points: int = 0
    settle: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> SpectrumSpec:
        """The spectrum fields of a train.config.Config."""
        return cls(k=cfg.k, lanczos_steps=cfg.lanczos_steps, max_lanczos_steps=cfg.max_lanczos_steps,
                   trace_samples=cfg.trace_samples)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """The measured quantities of one network (the parts of a record that measuring produces)."""

    fit: dict[str, Any]
    verdict: str
    spectrum: dict[str, Any]
    sharpness: dict[str, Any]
    eigengap_fit: dict[str, Any] | None
    density: dict[str, Any] | None
    timing: dict[str, Any]


def timing_since(m: Measurement, t0: float) -> dict[str, Any]:
    """The measurement's timing and `spectrum_total_s`, the seconds since `t0` (where the caller began preparing
    it) plus those an earlier, killed process spent on the Lanczos steps this one resumed."""
    return dict(m.timing, spectrum_total_s=m.timing.get("lanczos_resumed_s", 0.0) + time.perf_counter() - t0)


def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor"), from /proc/cpuinfo, else the platform's processor."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description() -> str:
    """What measured: "cpu (2 cores, Intel(R) Xeon(R) Processor)" or "gpu: NVIDIA H200 x1". No host name (results
    are committed). The CPU model is kept because a verdict near d_c is also a draw of the hardware: the same run
    retrained on another CPU model of this kind differs from its first epoch on (FINDINGS.md)."""
    devices = jax.devices()
    if devices[0].platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {cpu_model()})"
    return f"{devices[0].platform}: {devices[0].device_kind} x{len(devices)}"


def _eigengap_fit(eigenvalues: np.ndarray) -> dict | None:
    """The power-law fit of the positive eigenvalues' gaps (its exponent should be near ŝ + 1)."""
    positive = eigenvalues[eigenvalues > 0]
    if positive.size < 3:
        return None
    try:
        return hspec.fit_eigengaps(positive).to_dict()
    except ValueError as err:  # e.g. all gaps zero
        return {"error": str(err)}


def top_k(op: hspec.HessianOperator, spec: SpectrumSpec, key: jax.Array, progress: bool, state_dir=None,
          identity: dict | None = None):
    """The strict top-K eigenvalues of the operator, the Krylov space grown until they converge; and the
    step budget used (the rule's value when the spec leaves it open). With ``state_dir`` (on a CPU) a killed
    Lanczos run resumes from its last save, refused if it was saved under another ``identity``.

    The one measurement rule: every run's spectrum (`measure`), every spectrum of the sensitivity study
    (train.study.sensitivity) and of the Hessian-sample study (train.sample_size) comes from here."""
    steps = spec.lanczos_steps or hspec.default_num_steps(spec.k, op.dim)
    max_steps = spec.max_lanczos_steps or hspec.default_max_steps(steps, op.dim)
    # The Krylov state is saved from a host basis, hspec's default on a CPU; on an accelerator the basis stays in
    # device memory (the fast form there) and a killed measurement starts again.
    keep = state_dir if jax.default_backend() == "cpu" else None
    top = hspec.top_eigenvalues(op, k=spec.k, key=key, num_steps=steps, max_steps=max_steps, tol=spec.tol,
                                strict=True, num_starts=spec.num_starts, combine=spec.combine, progress=progress,
                                checkpoint_dir=keep, checkpoint_identity=identity, settle=spec.settle)
    return top, max_steps


def _density(op: hspec.HessianOperator, spec: SpectrumSpec, key: jax.Array) -> dict | None:
    """The SLQ spectral density on a linear grid, when asked for."""
    if not spec.density_points:
        return None
    d = hspec.spectral_density(op, key=key, num_points=spec.density_points)
    return {"grid": np.asarray(d.grid), "density": np.asarray(d.density)}


def linearize_max_examples() -> int:
    """LINEARIZE_MAX_EXAMPLES, or $HSPEC_LINEARIZE_MAX_EXAMPLES where set (a machine with more or less memory)."""
    return int(os.environ.get(ENV_LINEARIZE_MAX) or LINEARIZE_MAX_EXAMPLES)


def sample_operator(loss_fn: Callable, params: Any, data: tuple, micro_batch: int, wrt: Any = None,
                    factory: hspec.HessianFactory | None = None) -> hspec.HessianOperator:
    """The Hessian operator of a sample (x, y), its mean loss accumulated over micro-batches in one compiled scan.

    Up to LINEARIZE_MAX_EXAMPLES examples the gradient is linearised once (1.2-1.6 gradients per product, but
    every micro-batch's residuals are kept: ~215 kB per LeNet-5 example); above, each product is
    forward-over-reverse inside the scan (one micro-batch's activations in memory), so that the whole training
    set fits (benchmarks/whole_set_hvp_cpu.py). `factory`: the caller's, kept across its measurements (its programs
    compiled once); None: a new one."""
    n = len(data[1])
    method = "linearize" if n <= linearize_max_examples() else "jvp"
    factory = factory or hspec.HessianFactory()
    return factory(loss_fn, params, data=data, micro_batch=min(micro_batch, n), wrt=wrt, method=method)


def measure(loss_fn: Callable, params: Any, batches: list | None, spec: SpectrumSpec, *, lanczos_key: jax.Array,
            trace_key: jax.Array, density_key: jax.Array | None = None, wrt: Any = None,
            progress: bool = True, lanczos_state: Any = None, data: tuple | None = None,
            micro_batch: int | None = None, factory: hspec.HessianFactory | None = None) -> Measurement:
    """Measure the Hessian of `loss_fn` at `params` over `batches`: spectrum, fit, sharpness, density.

    Args:
        loss_fn: `loss_fn(params, batch) -> scalar` (train.hessian builds it from a model).
        params: the parameter pytree measured at.
        batches: the Hessian sample in batches (hspec weights them by size: one Hessian of the union); or None
            with `data`.
        data, micro_batch: instead of batches, the Hessian sample as one (x, y) accumulated over micro-batches of
            `micro_batch` examples in one compiled scan (`sample_operator`; any size, the whole training set too).
        spec: what to measure.
        lanczos_key: the run's Lanczos start stream. trace_key: its trace-probe stream.
        density_key: its density-probe stream (needed when spec.density_points > 0).
        wrt: a parameter subset (regex on leaf paths, callable or bool pytree); None: all parameters.
        progress: tqdm bar over the Lanczos steps.
        lanczos_state: a directory for the Lanczos state, so that a killed measurement resumes its Krylov space
            (CPU, where the basis is on the host; ignored elsewhere). None: not kept.
        factory: the hspec.HessianFactory the run keeps across its checkpoints, so that the Hessian programs are
            compiled once; None: a new one (compiled here).

    Returns:
        The Measurement.

    Raises:
        hspec.NotConvergedError: fewer than K Ritz values converged within the step budget.
        hspec.NonFiniteError: the loss or a Hessian-vector product is not finite.
    """
    t0 = time.perf_counter()
    factory = factory or hspec.HessianFactory()
    if data is not None:
        op = sample_operator(loss_fn, params, data, micro_batch or len(data[1]), wrt, factory)
        num_samples = len(data[1])
    else:
        op = factory(loss_fn, params, batches=batches, wrt=wrt)
        num_samples = int(sum(len(b[0]) for b in batches))
    top, max_steps = top_k(op, spec, lanczos_key, progress, lanczos_state)
    t1 = time.perf_counter()
    trace = hspec.hutchinson_trace(op, key=trace_key, num_samples=spec.trace_samples)
    t2 = time.perf_counter()
    density = _density(op, spec, density_key)
    verdict = hspec.power_law_verdict(top.eigenvalues, spec.k, spec.significance)
    spectrum = dict(top.to_dict(), num_parameters=int(op.dim), hessian_samples=num_samples,
                    num_positive=int(np.sum(top.eigenvalues > 0)), loss=float(op.loss()),
                    max_lanczos_steps=max_steps)
    sharpness = {"lambda_max": float(top.eigenvalues[0]),  # the top Ritz value converges first
                 "trace": trace.trace, "trace_stderr": trace.stderr, "trace_samples": trace.num_samples}
    # A measurement resumed from its saved Krylov state counts the seconds the earlier processes spent on it.
    resumed_s = top.lanczos.resumed_s
    timing = {"lanczos_s": resumed_s + t1 - t0, "trace_s": t2 - t1, "measure_s": resumed_s + time.perf_counter() - t0,
              "device": device_description()}
    if top.lanczos.resumed_steps:
        timing.update(lanczos_resumed_steps=top.lanczos.resumed_steps, lanczos_resumed_s=resumed_s)
    return Measurement(record.fit_block(verdict, spec.significance), verdict.verdict, spectrum, sharpness,
                       _eigengap_fit(top.eigenvalues), density, timing)


def format_fit(result: record.SpectrumResult) -> str:
    """One line: K, d_KS vs d_c, s and the verdict."""
    fit = result.fit
    if fit["d_ks"] is None:
        return f"K={fit['k']}: {result.verdict}"
    return f"K={fit['k']}: d_KS={fit['d_ks']:.4f} (d_c={fit['d_crit']:.4f}), s={fit['s']:.3f} -> {result.verdict}"
