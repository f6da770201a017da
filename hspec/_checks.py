"""Input validation shared by the operator and the drivers (top_eigenvalues, lanczos, density, trace,
power iteration): Python-level checks on static shapes and dtypes, each naming what was expected and
what was given.

``hspec.hvp`` itself stays check-free so that it can run inside a user's ``jax.jit``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hspec.errors import NonFiniteError

__all__ = [
    "resolve_finite_operator",
    "check_finite_loss",
    "check_finite_vector",
    "check_flat_vectors",
    "check_floating_parameters",
    "check_same_structure",
    "check_scalar_loss",
]


def check_same_structure(expected, given, what: str) -> None:
    """Raise a ValueError naming the difference when ``given`` is not shaped like ``expected``."""
    t_exp, t_giv = jax.tree.structure(expected), jax.tree.structure(given)
    if t_exp != t_giv:
        raise ValueError(f"{what} does not have the pytree structure of params:\n  expected {t_exp}\n  got      {t_giv}")
    for i, (a, b) in enumerate(zip(jax.tree.leaves(expected), jax.tree.leaves(given))):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{what}: leaf {i} has shape {np.shape(b)}, params has {np.shape(a)}")


def check_flat_vectors(v, dim: int, what: str) -> None:
    """Raise unless ``v`` is an array of shape ``[dim]`` or ``[S, dim]``, saying both sizes.

    Args:
      v: what the caller gave. dim: n, the number of (selected) parameters. what: the entry point's name.
    """
    shape = getattr(v, "shape", None)
    if shape is None or not hasattr(v, "dtype"):
        raise TypeError(
            f"{what} takes a flat array of shape [n] or [S, n] with n = {dim} parameters; got a "
            f"{type(v).__name__}. Flatten a list of the selected parameter leaves with op.ravel(leaves)."
        )
    if len(shape) not in (1, 2) or shape[-1] != dim:
        raise ValueError(
            f"{what} takes a flat array of shape [{dim}] or [S, {dim}] ({dim} = the number of parameters); "
            f"got shape {tuple(shape)}"
        )


def check_scalar_loss(out) -> None:
    """Raise unless the loss's output (a ShapeDtypeStruct pytree) is one floating-point value.

    Shape ``()`` or any shape holding one element, such as ``(1,)``, is accepted: it is the same scalar.
    """
    leaves = jax.tree.leaves(out)
    if len(leaves) != 1 or jax.tree.structure(out).num_nodes != 1:
        shapes = [tuple(x.shape) for x in leaves]
        raise TypeError(
            f"the loss must return a scalar; it returned a {type(out).__name__} of {len(leaves)} arrays of "
            f"shapes {shapes}. A loss that also returns auxiliary outputs: pass lambda p: loss(p)[0]."
        )
    shape, dtype = tuple(leaves[0].shape), leaves[0].dtype
    if math.prod(shape) != 1:
        raise ValueError(
            f"the loss must return a scalar; it returned an array of shape {shape}. Reduce it to one "
            "number (e.g. jnp.mean over the samples)."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"the loss must return a floating-point scalar; it returned dtype {dtype}")


def check_floating_parameters(named_leaves) -> None:
    """Raise a TypeError naming the first parameter leaf that is not floating point.

    Args:
      named_leaves: ``(path, leaf)`` pairs of the parameters the Hessian is taken over.
    """
    for path, leaf in named_leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"parameters must be floating point to take a Hessian: leaf {path!r} has dtype {dtype}. "
                "Cast it (e.g. to float32), or hold it fixed with wrt=... so that it is not differentiated."
            )


def check_finite_loss(loss: float) -> None:
    """Raise NonFiniteError when the loss at θ is NaN or infinite (its Hessian is then undefined)."""
    if not np.isfinite(loss):
        raise NonFiniteError(
            f"the loss is {loss} at these parameters, so its Hessian is undefined. Check the parameters "
            "(a diverged run?) and the loss (log of 0, division by 0) before computing a spectrum."
        )


def check_finite_vector(values, what: str) -> None:
    """Raise NonFiniteError naming ``what`` when any entry is NaN or infinite."""
    arr = np.asarray(values)
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{what} contains {int(np.sum(~np.isfinite(arr)))} non-finite values")


def _batch_losses(loss_fn_or_op, params, batches) -> list[float] | None:
    """The loss of each batch at θ (None when there is only one batch, or they cannot be told apart)."""
    from hspec.hvp import HessianOperator  # hspec.hvp imports this module

    if isinstance(loss_fn_or_op, HessianOperator):
        op = loss_fn_or_op
        parts = op._parts  # one (programs, constants, batch) per batch: the operator's own per-batch losses
        if len(parts) < 2:
            return None
        return [float(np.asarray(p.loss(c, op._selected, op._fixed, b)).reshape(())) for p, c, b in parts]
    if batches is None or not hasattr(batches, "__len__") or len(batches) < 2:
        return None
    return [float(np.asarray(loss_fn_or_op(params, b)).reshape(())) for b in batches]


def resolve_finite_operator(loss_fn_or_op, params=None, *, batches=None, wrt=None, method=None, caller: str):
    """:func:`hspec.hvp.resolve_operator`, whose loss-finiteness error also names the batches, of several, on
    which the loss is not finite (a NaN in one batch's data), so that the user knows which data to look at.

    Args and Returns: as :func:`hspec.hvp.resolve_operator`.

    Raises:
      NonFiniteError: the loss at θ is NaN or infinite (with the batches it is so on, when there are several).
    """
    from hspec.hvp import resolve_operator

    try:
        return resolve_operator(loss_fn_or_op, params, batches=batches, wrt=wrt, method=method, caller=caller)
    except NonFiniteError as err:
        losses = _batch_losses(loss_fn_or_op, params, batches)
        bad = [i for i, loss in enumerate(losses or ()) if not np.isfinite(loss)]
        if not bad:
            raise
        which = ", ".join(f"batches[{i}] (loss {losses[i]})" for i in bad)
        raise NonFiniteError(
            f"{str(err).rstrip('.')} It is not finite on {which}, of {len(losses)} batches, and finite on the others: "
            f"check {'that batch' if len(bad) == 1 else 'those batches'} for NaN or infinite values."
        ) from None
