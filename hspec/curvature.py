"""Who carries the curvature: per-example Gauss-Newton traces and their participation ratio.

For a loss that is a mean of per-example losses ℓ(f(θ, x_i), y_i) of a network's outputs f, the Hessian is

    H = (1/N) Σ_i J_iᵀ A_i J_i  +  (1/N) Σ_i Σ_c ∂ℓ/∂f_c ∇²f_c,      A_i = ∇²_f ℓ(f(θ, x_i), y_i),

its Gauss-Newton part plus a residual part. Example i adds t_i = tr(J_iᵀ A_i J_i) to the Gauss-Newton trace.
The participation ratio N_eff = (Σ t_i)² / Σ t_i² counts the examples that carry it: N when every example
carries the same share, 1 when one example carries all of it. For the softmax cross-entropy,
A_i = diag(p_i) − p_i p_iᵀ, so an example the network fits with confidence p → 1 carries almost nothing. The
rank of the Gauss-Newton part of a sample's Hessian is at most (C − 1)·N for C outputs, and its effective rank
about (C − 1)·N_eff: a Hessian sample with few carriers cannot hold K large eigenvalues of the whole data's
curvature.

The per-example traces cost one pass over the data: the C × C Gram matrix J_i J_iᵀ of each example comes from C
backward passes (``jax.vmap`` of ``jax.jacrev`` over the examples), and t_i = Σ_ab (A_i)_ab (J_i J_iᵀ)_ab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CurvatureCarriers", "gauss_newton_traces", "curvature_carriers", "participation_ratio",
           "carriers_of_share"]


def _traces_of_batch(output_fn, output_loss, params, x, y):
    """t_i for every example of one batch (a pure function, jitted by the caller)."""

    def one(xi, yi):
        jac = jax.jacrev(lambda p: output_fn(p, xi[None])[0])(params)  # pytree of [C, ...]
        leaves = [j.reshape(j.shape[0], -1) for j in jax.tree.leaves(jac)]
        gram = sum(j @ j.T for j in leaves)  # J Jᵀ, [C, C]
        out = output_fn(params, xi[None])[0]
        a = jax.hessian(lambda f: output_loss(f, yi))(out)  # A_i, [C, C]
        return jnp.sum(a * gram)

    with jax.default_matmul_precision("highest"):
        return jax.vmap(one)(x, y)


# Per-example Jacobians held at once: batch × C × n floats, kept near 512 MB.
JACOBIAN_FLOATS = 2**27


def gauss_newton_traces(output_fn: Callable, output_loss: Callable, params: Any, data: tuple, *,
                        batch_size: int | None = None) -> np.ndarray:
    """Per-example Gauss-Newton traces t_i = tr(J_iᵀ A_i J_i) over a dataset.

    Args:
      output_fn: ``output_fn(params, x) -> [B, C]``, the network's outputs (logits) for a batch of inputs.
      output_loss: ``output_loss(f, y) -> scalar``, one example's loss as a function of its output vector
        ``f`` ``[C]`` and its target ``y`` (e.g. the softmax cross-entropy of logits and a label).
      params: the parameter pytree θ (every leaf counts: the traces are over all parameters).
      data: ``(x, y)`` with a leading sample axis N.
      batch_size: examples per compiled call (memory grows with batch_size × C × number of parameters); None:
        as many as keep that product near 2^27 floats (512 MB), at most 250.

    Returns:
      float64 ``[N]``: t_i >= 0 when the loss is convex in the outputs (as the cross-entropy is).
    """
    x, y = data
    n = int(np.shape(x)[0])
    if n < 1:
        raise ValueError("gauss_newton_traces needs at least one example")
    if batch_size is None:
        num_outputs = int(jax.eval_shape(output_fn, params, jnp.asarray(x[:1])).shape[-1])
        num_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
        batch_size = int(np.clip(JACOBIAN_FLOATS // max(1, num_outputs * num_params), 1, 250))
    fn = jax.jit(lambda p, xb, yb: _traces_of_batch(output_fn, output_loss, p, xb, yb))
    out = []
    for lo in range(0, n, batch_size):
        out.append(np.asarray(fn(params, jnp.asarray(x[lo : lo + batch_size]), jnp.asarray(y[lo : lo + batch_size])),
                              np.float64))
    t = np.concatenate(out)
    if not np.all(np.isfinite(t)):
        raise FloatingPointError(f"{int(np.sum(~np.isfinite(t)))} of {n} per-example Gauss-Newton traces are not "
                                 "finite: the network's outputs or their derivatives overflow at these parameters")
    return t


def participation_ratio(t: np.ndarray) -> float:
    """N_eff = (Σ t)² / Σ t²: how many examples carry the total (N for equal shares, 1 for one carrier)."""
    t = np.asarray(t, np.float64)
    sq = float(np.sum(t * t))
    return float(np.sum(t)) ** 2 / sq if sq > 0 else 0.0


def carriers_of_share(t: np.ndarray, share: float = 0.9) -> int:
    """The fewest examples whose traces sum to at least ``share`` of the total."""
    t = np.sort(np.asarray(t, np.float64))[::-1]
    total = float(np.sum(t))
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(t), share * total) + 1)


@dataclasses.dataclass(frozen=True)
class CurvatureCarriers:
    """The curvature diagnostic of one network on one set of examples.

    Attributes:
      num_examples: N.
      participation_ratio: N_eff = (Σ t_i)² / Σ t_i².
      carriers_90: the fewest examples that carry 90% of Σ t_i.
      gauss_newton_trace: (1/N) Σ t_i, the trace of the Gauss-Newton part of the mean-loss Hessian.
      max_trace: the largest t_i.
    """

    num_examples: int
    participation_ratio: float
    carriers_90: int
    gauss_newton_trace: float
    max_trace: float

    @classmethod
    def of(cls, t: np.ndarray) -> "CurvatureCarriers":
        """The diagnostic of per-example traces ``t``."""
        t = np.asarray(t, np.float64)
        return cls(int(t.size), participation_ratio(t), carriers_of_share(t, 0.9), float(np.mean(t)),
                   float(np.max(t)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def curvature_carriers(output_fn: Callable, output_loss: Callable, params: Any, data: tuple, *,
                       batch_size: int | None = None) -> CurvatureCarriers:
    """:class:`CurvatureCarriers` of a network on ``data`` (see :func:`gauss_newton_traces` for the arguments)."""
    return CurvatureCarriers.of(gauss_newton_traces(output_fn, output_loss, params, data, batch_size=batch_size))
