"""Exceptions raised by hspec, in one small module that every raiser imports."""

from __future__ import annotations

__all__ = ["KrylovStateError", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A loss, Hessian-vector product or eigenvalue is NaN or infinite."""


class KrylovStateError(RuntimeError):
    """A saved Krylov state (``checkpoint_dir``) that does not verify or belongs to another computation.

    Never resumed from: the message names the folder, what is wrong and the cure (delete the folder).
    """
