"""The Lanczos step kernels: one step with full reorthogonalisation, on the device or with the basis on the host.

The Krylov basis of S independent starts is a ``[S, m, n]`` buffer. Each step applies the operator to
the S current vectors at once (vmapped), subtracts the three-term recurrence (α_j v_j + β_{j-1} v_{j-1}),
then orthogonalises against the whole basis: one classical Gram-Schmidt pass, and a second one only where
the first removed more than 1 − 1/√2 of the vector's norm (the Daniel-Gragg-Kaufman-Stewart test; "twice is
enough"). Without full reorthogonalisation ghost copies of the top eigenvalues appear. After the three-term
subtraction the first pass removes only rounding-level components, so a second pass is rare, and each step
reads the basis twice instead of four times. On CPU these reads rival the Hessian-vector product: halving
them took the top 1000 of LeNet-5 (3000 steps) to 0.68 of its time (benchmarks/RESULTS.md).

Breakdown (an invariant Krylov subspace, e.g. an operator of rank r < m) restarts from a random
vector orthogonal to the basis and records β = 0, which decouples the tridiagonal matrix exactly. The
rule is written once (:func:`_next_vector`) and used by the device step and the host step alike.

The driver (:func:`hspec.lanczos`, in :mod:`hspec.krylov`) picks the kernel and runs the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BREAKDOWN_TOLERANCE", "REORTHOGONALIZE_BELOW"]

_HIGHEST = jax.lax.Precision.HIGHEST

# Breakdown: β_j <= BREAKDOWN_TOLERANCE · eps · scale, scale = max|α| + max|β| so far (a lower bound
# on ||H||): what is left of w after orthogonalisation is then rounding noise, not a new direction.
BREAKDOWN_TOLERANCE = 100.0


# A Gram-Schmidt pass that keeps at least this fraction of the vector's norm leaves it orthogonal to the
# basis at working precision; one that removes more lost digits to cancellation and is repeated once
# (Daniel, Gragg, Kaufman and Stewart 1976; Giraud, Langou and Rozloznik 2005: twice is enough).
REORTHOGONALIZE_BELOW = 1 / np.sqrt(2)


def _orthogonalize(basis: jax.Array, w: jax.Array) -> jax.Array:
    """w minus its projection on the rows of basis ``[S, r, n]``: one Gram-Schmidt pass, a second where needed."""

    def one_pass(w):
        coeffs = jnp.einsum("srn,sn->sr", basis, w, precision=_HIGHEST)
        return w - jnp.einsum("srn,sr->sn", basis, coeffs, precision=_HIGHEST)

    return _twice_if_needed(one_pass, w)


def _twice_if_needed(one_pass: Callable, w: jax.Array) -> jax.Array:
    """``one_pass(w)``, and a second pass for the starts where the first removed too much (the DGKS test)."""
    w1 = one_pass(w)
    again = jnp.linalg.norm(w1, axis=-1) < REORTHOGONALIZE_BELOW * jnp.linalg.norm(w, axis=-1)
    return jax.lax.cond(jnp.any(again), lambda: jnp.where(again[:, None], one_pass(w1), w1), lambda: w1)


def _block_rows(m: int) -> int:
    """Rows per block of the device orthogonalisation of an m-row basis: a 32nd of m, at least 16."""
    return min(m, max(16, -(-m // 32)))


def _orthogonalize_filled(V: jax.Array, w: jax.Array, filled) -> jax.Array:
    """:func:`_orthogonalize` against the first ``filled`` rows of the basis buffer ``V [S, m, n]`` only.

    ``filled`` may be traced: the rows are read in blocks of :func:`_block_rows` (a static size) in a loop
    of ceil(filled / block) iterations, so that step j reads about j rows of the basis, not all m
    (12,000 rows sized for a growing run that stops at 3,000: a quarter of the reads); the rows at and
    beyond ``filled`` in the last block read are masked out, whatever they hold. Every block's
    coefficients are taken against the same w, so a pass is the classical Gram-Schmidt pass of
    :func:`_orthogonalize`, summed block by block. A block is a dynamic slice that XLA:CPU copies: one
    block (m/32 rows) is live at a time, never a copy of the whole prefix, which a static prefix
    ``V[:, :rows]`` costs (7/8 of the basis as temporary memory, measured on CPU).
    """
    m = V.shape[1]
    block = _block_rows(m)

    def one_pass(w):
        def add_block(i, acc):
            start = jnp.minimum(i * block, m - block)  # the last block ends at row m ...
            rows = jax.lax.dynamic_slice_in_dim(V, start, block, axis=1)
            coeffs = jnp.einsum("sbn,sn->sb", rows, w, precision=_HIGHEST)
            row = start + jnp.arange(block)  # ... and counts its new rows only, and only those filled
            coeffs = jnp.where((row >= i * block) & (row < filled), coeffs, 0)
            return acc - jnp.einsum("sbn,sb->sn", rows, coeffs, precision=_HIGHEST)

        return jax.lax.fori_loop(0, (filled + block - 1) // block, add_block, w)

    return _twice_if_needed(one_pass, w)


def _host_orthogonalize(basis: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Host version of :func:`_orthogonalize`, start by start, matrix-vector products through BLAS."""
    w = w.copy()
    for s in range(w.shape[0]):
        for _ in range(2):
            before = np.linalg.norm(w[s])
            w[s] -= (basis[s] @ w[s]) @ basis[s]
            if np.linalg.norm(w[s]) >= REORTHOGONALIZE_BELOW * before:
                break
    return w


@dataclasses.dataclass(frozen=True)
class _ArrayOps:
    """The array operations a Lanczos step needs, on the device (jax.numpy) or the host (numpy)."""

    xp: Any  # jax.numpy or numpy
    orthogonalize: Callable  # (basis [S, r, n], w [S, n]) -> w minus its projection (DGKS)
    if_any: Callable  # (mask, fn, otherwise) -> fn() if any(mask) else otherwise


# On the device the restart is a lax.cond (traced once, run only on breakdown); on the host a plain if.
_DEVICE = _ArrayOps(jnp, _orthogonalize, lambda mask, fn, other: jax.lax.cond(jnp.any(mask), fn, lambda: other))
_HOST = _ArrayOps(np, _host_orthogonalize, lambda mask, fn, other: fn() if mask.any() else other)


def _next_vector(ops: _ArrayOps, basis, w, scale, key, j):
    """β_j and the next unit vector; on breakdown a random vector orthogonal to the basis and β = 0.

    The one definition of the breakdown rule, for both the device step and the host step. Breakdown
    of start s: β_j <= BREAKDOWN_TOLERANCE · eps · scale_s. Its restart vector is
    ``normal(fold_in(key, j))`` orthogonalised against the basis, so both paths restart identically.

    Args:
      ops: device or host array operations.
      basis: ``[S, r, n]`` the basis so far (on the device, the whole buffer: ``ops.orthogonalize`` reads
        the rows filled). w: ``[S, n]`` orthogonalised residual vectors.
      scale: ``[S]`` max|α| + max|β| so far. key: restart key. j: step index.

    Returns:
      ``(beta [S], v_next [S, n])``, β = 0 where a start broke down.
    """
    xp = ops.xp
    beta = xp.linalg.norm(w, axis=-1)
    tiny = xp.finfo(w.dtype).tiny
    broke = beta <= BREAKDOWN_TOLERANCE * xp.finfo(w.dtype).eps * xp.maximum(scale, tiny)

    def restart():
        fresh = xp.asarray(jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype))
        fresh = ops.orthogonalize(basis, fresh)
        return fresh / xp.maximum(xp.linalg.norm(fresh, axis=-1, keepdims=True), tiny)

    # The restart vector costs two more passes over the basis: compute it only when some start broke down
    # (otherwise w stands in, and the where below never selects it).
    fresh = ops.if_any(broke, restart, w)
    safe_beta = xp.where(broke, 1.0, beta)
    return xp.where(broke, 0.0, beta), xp.where(broke[:, None], fresh, w / safe_beta[:, None])


def _scale(alphas, betas, xp):
    """max|α| + max|β| of each start's coefficients so far: the scale the breakdown test is relative to."""
    return xp.max(xp.abs(alphas), axis=-1) + xp.max(xp.abs(betas), axis=-1)


def _three_term(V, alphas, betas, v, w, j):
    """Store v_j in the basis, record α_j and subtract α_j v_j + β_{j-1} v_{j-1} from w = H v_j."""
    alpha = jnp.sum(v * w, axis=-1)
    V = jax.lax.dynamic_update_slice_in_dim(V, v[:, None, :], j, axis=1)
    alphas = jax.lax.dynamic_update_slice_in_dim(alphas, alpha[:, None], j, axis=1)
    previous = jnp.maximum(j - 1, 0)  # at j = 0 there is no v_{j-1}: its β is taken as 0
    beta_prev = jnp.where(j > 0, jax.lax.dynamic_index_in_dim(betas, previous, axis=1, keepdims=False), 0)
    v_prev = jax.lax.dynamic_index_in_dim(V, previous, axis=1, keepdims=False)
    return V, alphas, w - alpha[:, None] * v - beta_prev[:, None] * v_prev


def _step_update(V, alphas, betas, v, w, j, key):
    """Store v_j, record α_j, orthogonalise w against the j+1 basis vectors so far, emit v_{j+1}.

    j may be traced (the ``fori`` loop, and the python loop's one compiled step): the orthogonalisation
    reads the rows filled so far, block by block (:func:`_orthogonalize_filled`), and so does the restart
    after a breakdown. Rows beyond j are still zero, so the arithmetic is that of the whole buffer.
    """
    V, alphas, w = _three_term(V, alphas, betas, v, w, j)
    ops = dataclasses.replace(_DEVICE, orthogonalize=partial(_orthogonalize_filled, filled=j + 1))
    beta, v_next = _next_vector(ops, V, _orthogonalize_filled(V, w, j + 1), _scale(alphas, betas, jnp), key, j)
    betas = jax.lax.dynamic_update_slice_in_dim(betas, beta[:, None], j, axis=1)
    return V, alphas, betas, v_next


# One compiled step per shape (j is traced); the buffers are donated so they stay in place.
_jitted_step = jax.jit(_step_update, donate_argnums=(0, 1, 2))


def _host_step(V, alphas, betas, v, w, j, key):
    """The same step with the basis in host memory: the device holds only the current vectors.

    Only the operator application runs on the device; the basis never goes back to it. v_j is read
    from the basis (stored there by the previous step), so only w crosses from the device each step.
    """
    del v  # its host copy is V[:, j]
    v_h, w_h = V[:, j], np.asarray(w)
    alphas[:, j] = np.sum(v_h * w_h, axis=-1)
    w_h = w_h - alphas[:, j, None] * v_h
    if j > 0:
        w_h -= betas[:, j - 1, None] * V[:, j - 1]
    basis = V[:, : j + 1]
    w_h = _host_orthogonalize(basis, w_h)
    betas[:, j], w_h = _next_vector(_HOST, basis, w_h, _scale(alphas, betas, np), key, j)
    if j + 1 < V.shape[1]:
        V[:, j + 1] = w_h
    return jnp.asarray(w_h)



@partial(jax.jit, static_argnames=("pure_matvec",), donate_argnums=(2, 3, 4))
def _run_steps(pure_matvec, args, V, alphas, betas, v, key, j0, j1):
    """Steps j0..j1-1 in one compiled ``fori_loop`` (dynamic bounds: one program for every chunk).

    Each step orthogonalises against the rows filled so far, block by block (:func:`_step_update`), not
    against the whole buffer.
    """

    def body(j, state):
        V, alphas, betas, v = state
        return _step_update(V, alphas, betas, v, pure_matvec(args, v), j, key)

    return jax.lax.fori_loop(j0, j1, body, (V, alphas, betas, v))
