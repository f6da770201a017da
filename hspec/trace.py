"""Hutchinson estimate of the Hessian trace, with its standard error (METHOD.md §2)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from hspec._checks import check_finite_vector, resolve_finite_operator

__all__ = ["TraceEstimate", "hutchinson_trace"]


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """Tr(H) ≈ mean of zᵀHz over random probes z with E[zzᵀ] = I.

    Attributes:
      trace: the estimate. stderr: sample std / √N. num_samples: N. samples: the N values zᵀHz.
    """

    trace: float
    stderr: float
    num_samples: int
    samples: np.ndarray

    def to_dict(self) -> dict:
        return {"trace": self.trace, "stderr": self.stderr, "num_samples": self.num_samples}


def _probes(key, count, dim, dtype, distribution):
    if distribution == "rademacher":
        return jax.random.rademacher(key, (count, dim), dtype=dtype)
    if distribution == "gaussian":
        return jax.random.normal(key, (count, dim), dtype=dtype)
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


def hutchinson_trace(
    loss_fn,
    params=None,
    *,
    key: jax.Array,
    num_samples: int = 100,
    chunk: int = 10,
    batches=None,
    wrt=None,
    method: str | None = None,
    distribution: str = "rademacher",
) -> TraceEstimate:
    """Estimate Tr(H) by Hutchinson's method: Tr(H) = E[zᵀHz] for Rademacher (or Gaussian) z.

    Called as ``hutchinson_trace(loss_fn, params, key=key, ...)`` or ``hutchinson_trace(op, key=key, ...)``
    with a :class:`hspec.HessianOperator` built once and shared with other drivers.

    Args:
      loss_fn, params, batches, wrt, method: as in :func:`hspec.top_eigenvalues` (a
        :class:`hspec.HessianOperator` in place of ``loss_fn``, and none of the others, also works).
      key: PRNG key of the probes (probe chunk c uses ``fold_in(key, c)``).
      num_samples: number of probes N (>= 2, for the standard error).
      chunk: probes applied together per vmapped product.
      distribution: "rademacher" (lowest variance for a fixed matrix) or "gaussian".

    Returns:
      :class:`TraceEstimate` with the mean and its standard error std/√N.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples}: at least 2 probes are needed for a standard error")
    op = resolve_finite_operator(loss_fn, params, batches=batches, wrt=wrt, method=method,
                                 caller="hutchinson_trace")
    values = []
    for c, start in enumerate(range(0, num_samples, chunk)):
        z = _probes(jax.random.fold_in(key, c), min(chunk, num_samples - start), op.dim, op.dtype, distribution)
        values.append(np.asarray(jnp.sum(z * op.matvec(z), axis=-1)))
    samples = np.concatenate(values).astype(np.float64)
    check_finite_vector(samples, "Hutchinson's z^T H z samples (the Hessian-vector product)")
    return TraceEstimate(
        trace=float(samples.mean()),
        stderr=float(samples.std(ddof=1) / math.sqrt(num_samples)),
        num_samples=num_samples,
        samples=samples,
    )
