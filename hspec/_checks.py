"""Input validation shared by the drivers (top_eigenvalues, lanczos, density, trace, power iteration).

``hspec.hvp`` itself stays check-free so that it can run inside a user's ``jax.jit``.
"""

from __future__ import annotations

import jax
import numpy as np

from hspec.hvp import HessianOperator, hessian_operator
from hspec.lanczos import NonFiniteError

__all__ = ["NonFiniteError", "checked_operator", "check_same_structure", "check_finite_vector"]


def check_same_structure(expected, given, what: str) -> None:
    """Raise a ValueError naming the difference when ``given`` is not shaped like ``expected``."""
    t_exp, t_giv = jax.tree.structure(expected), jax.tree.structure(given)
    if t_exp != t_giv:
        raise ValueError(f"{what} does not have the pytree structure of params:\n  expected {t_exp}\n  got      {t_giv}")
    for i, (a, b) in enumerate(zip(jax.tree.leaves(expected), jax.tree.leaves(given))):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{what}: leaf {i} has shape {np.shape(b)}, params has {np.shape(a)}")


def checked_operator(loss_fn, params, *, batches=None, wrt=None, method="linearize") -> HessianOperator:
    """Build the Hessian operator and fail early, with a clear message, on a non-finite loss."""
    if not jax.tree.leaves(params):
        raise ValueError("params has no arrays: give the parameter pytree the loss is a function of")
    op = hessian_operator(loss_fn, params, batches=batches, wrt=wrt, method=method)
    loss = float(op.loss())
    if not np.isfinite(loss):
        raise NonFiniteError(
            f"the loss is {loss} at these parameters, so its Hessian is undefined. Check the parameters "
            "(a diverged run?) and the loss (log of 0, division by 0) before computing a spectrum."
        )
    return op


def check_finite_vector(values, what: str) -> None:
    """Raise NonFiniteError naming ``what`` when any entry is NaN or infinite."""
    arr = np.asarray(values)
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{what} contains {int(np.sum(~np.isfinite(arr)))} non-finite values")
