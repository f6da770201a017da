"""What Lanczos needs of a symmetric linear map (:class:`SymmetricOperator`), and the adapter for a plain callable.

:class:`hspec.HessianOperator` satisfies the protocol; :class:`MatvecOperator` wraps a callable ``[S, n] -> [S, n]``,
and :func:`as_operator` takes either. Both are re-exported by :mod:`hspec.krylov`, where they used to live.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from hspec._checks import check_flat_vectors

__all__ = ["MatvecOperator", "SymmetricOperator", "as_operator"]


@runtime_checkable
class SymmetricOperator(Protocol):
    """What :func:`lanczos` needs of a symmetric linear map on flat vectors of size ``dim``.

    :class:`hspec.HessianOperator` is one; :class:`MatvecOperator` makes one of a plain callable.

    Attributes:
      dim: n, the size of the vectors.
      dtype: their dtype.
      matvec: ``matvec(V)`` applies the map to each row of a ``[S, n]`` stack (the python loop).
      pure_matvec: ``pure_matvec(args, V)``, the same product as a hashable function of explicit
        arrays. The compiled ``fori`` loop passes ``args`` as arguments so that nothing is closed over:
        XLA constant-folds closed-over arrays (FINDINGS.md, trap 2).
      args: the arrays ``pure_matvec`` needs.
    """

    @property
    def dim(self) -> int: ...

    @property
    def dtype(self) -> Any: ...

    def matvec(self, v: jax.Array) -> jax.Array: ...

    @property
    def pure_matvec(self) -> Callable[[Any, jax.Array], jax.Array]: ...

    @property
    def args(self) -> Any: ...


@dataclasses.dataclass(frozen=True)
class _ClosedMatvec:
    """``fn(v)`` in the ``pure_matvec(args, v)`` form (hashable for jit); checks the shape it returns."""

    fn: Callable

    def __call__(self, args, v):
        try:
            out = self.fn(v)
        except (TypeError, ValueError) as err:  # typically a matmul of the wrong size: say which sizes met
            raise ValueError(
                f"the operator failed on a stack of vectors of shape {tuple(v.shape)} (n = dim = {v.shape[-1]}): "
                f"is dim the size of the operator's vectors? {type(err).__name__}: {err}"
            ) from err
        if getattr(out, "shape", None) != v.shape:
            raise ValueError(
                f"the operator returned {_describe(out)} for vectors of shape {tuple(v.shape)}: it must map "
                f"a [S, n] stack to a [S, n] stack, n = dim = {v.shape[-1]}"
            )
        return out


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else f"a {type(x).__name__}"


@dataclasses.dataclass(frozen=True)
class MatvecOperator:
    """A plain callable ``[S, n] -> [S, n]`` (a symmetric matrix applied to each row) as an operator.

    Attributes:
      fn: the callable; it closes over its own arrays (fine in the python loop; in the ``fori`` loop
        they become compile-time constants).
      dim: n. dtype: dtype of the vectors.
    """

    fn: Callable
    dim: int
    dtype: Any = jnp.float32

    def matvec(self, v: jax.Array) -> jax.Array:
        """The map applied to a ``[n]`` vector or each row of a ``[S, n]`` stack."""
        check_flat_vectors(v, self.dim, "MatvecOperator.matvec")
        single = v.ndim == 1
        out = self.pure_matvec(self.args, v[None] if single else v)
        return out[0] if single else out

    @property
    def pure_matvec(self) -> _ClosedMatvec:
        return _ClosedMatvec(self.fn)

    @property
    def args(self) -> tuple:
        return ()


def as_operator(operator, *, dim: int | None = None, dtype=None) -> SymmetricOperator:
    """``operator`` itself when it is a :class:`SymmetricOperator`, else a plain callable wrapped.

    Args:
      operator: a :class:`SymmetricOperator` (e.g. :class:`hspec.HessianOperator`) or a callable
        ``[S, n] -> [S, n]``.
      dim, dtype: n and the dtype (default float32) of the vectors, for a plain callable; for an
        operator they may be given only when they agree with its own.

    Returns:
      A :class:`SymmetricOperator`.
    """
    if isinstance(operator, SymmetricOperator):
        if dim is not None and int(dim) != operator.dim:
            raise ValueError(f"dim={dim} disagrees with the operator's dimension {operator.dim}; leave dim out")
        if dtype is not None and jnp.dtype(dtype) != jnp.dtype(operator.dtype):
            raise ValueError(f"dtype={dtype} disagrees with the operator's {operator.dtype}; leave dtype out")
        return operator
    if not callable(operator):
        raise TypeError(
            f"operator must be a hspec.HessianOperator (or another SymmetricOperator) or a callable "
            f"[S, n] -> [S, n]; got a {type(operator).__name__}"
        )
    if dim is None or int(dim) < 1:
        raise ValueError("give dim=n (the size of the vectors) when operator is a plain callable")
    return MatvecOperator(operator, int(dim), jnp.dtype(dtype if dtype is not None else jnp.float32))
