"""Exceptions raised by hspec, in one small module that every raiser imports."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A loss, Hessian-vector product or eigenvalue is NaN or infinite."""
