"""Sharpness measures: λ_max by power iteration (METHOD.md §2, §4)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from hspec._checks import check_finite_vector, check_same_structure, resolve_finite_operator

__all__ = ["PowerIterationResult", "power_iteration"]


@dataclasses.dataclass(frozen=True)
class PowerIterationResult:
    """Dominant eigenpair by power iteration.

    Attributes:
      eigenvalue: Rayleigh quotient vᵀHv of the final unit vector (the largest-|λ| eigenvalue).
      vector: the final unit vector, as a pytree of the selected parameters (list of leaves).
      num_iters: iterations run. converged: relative change of the quotient fell below tol.
    """

    eigenvalue: float
    vector: list
    num_iters: int
    converged: bool


def power_iteration(
    loss_fn,
    params=None,
    *,
    key: jax.Array,
    num_iters: int = 100,
    tol: float = 1e-6,
    init=None,
    batches=None,
    wrt=None,
    method: str | None = None,
) -> PowerIterationResult:
    """λ_max (largest magnitude) of the Hessian by power iteration, as PyHessian computes it.

    Called as ``power_iteration(loss_fn, params, key=key, ...)`` or ``power_iteration(op, key=key, ...)``
    with a :class:`hspec.HessianOperator` built once and shared with other drivers.

    Args:
      loss_fn, params, batches, wrt, method: as in :func:`hspec.top_eigenvalues` (a
        :class:`hspec.HessianOperator` in place of ``loss_fn``, and none of the others, also works).
      key: PRNG key of the random start (ignored when ``init`` is given).
      num_iters: maximum iterations.
      tol: stop when |Δλ| <= tol·|λ|.
      init: optional start vector as a list of the selected leaves (checked against their shapes).

    Returns:
      :class:`PowerIterationResult`. For a trained network the dominant eigenvalue is the positive λ_max;
      use :func:`hspec.top_eigenvalues` for the largest algebraic one in general.
    """
    op = resolve_finite_operator(loss_fn, params, batches=batches, wrt=wrt, method=method,
                                 caller="power_iteration")
    if init is None:
        v = jax.random.normal(key, (op.dim,), op.dtype)
    else:
        selected = op.unravel(jnp.zeros((op.dim,), op.dtype))
        check_same_structure(selected, list(init) if isinstance(init, (list, tuple)) else init, "init")
        v = op.ravel(list(init))
    v = v / jnp.linalg.norm(v)
    eigenvalue, converged, it = 0.0, False, 0
    for it in range(1, num_iters + 1):
        w = op.matvec(v)
        new = float(jnp.vdot(v, w))
        check_finite_vector([new], f"the Hessian-vector product at power iteration {it}")
        norm = jnp.linalg.norm(w)
        if float(norm) == 0.0:
            eigenvalue, converged = 0.0, True
            break
        v = w / norm
        if abs(new - eigenvalue) <= tol * abs(new):
            eigenvalue, converged = new, True
            break
        eigenvalue = new
    return PowerIterationResult(float(eigenvalue), op.unravel(v), it, converged)
