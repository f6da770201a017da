"""Lanczos tridiagonalisation with full reorthogonalisation, several starts at once (METHOD.md §2).

The Krylov basis of S independent starts is a ``[S, m, n]`` buffer. Each step applies the operator to
the S current vectors at once (vmapped), then orthogonalises against the whole basis twice (classical
Gram-Schmidt twice: without it, ghost copies of the top eigenvalues appear). Ritz values come from the
symmetric tridiagonal eigenproblem, solved on the host in float64.

Two loop forms, picked per backend (``loop="auto"``):

* ``"python"``: one jitted orthogonalisation step driven from Python, the Krylov buffers donated and
  kept on the device. On XLA:CPU, convolution gradients inside ``lax.fori_loop`` ran 6-10x slower than
  at the top level of a jit (FINDINGS.md, trap 1), so this is the CPU default.
* ``"fori"``: the whole loop compiled as one ``lax.fori_loop`` (no per-step dispatch); default on GPU/TPU.

A memory-bounded form, ``basis="host"``, keeps the basis in host memory and orthogonalises there, so
that device memory does not grow with m (python loop only).

Breakdown (an invariant Krylov subspace, e.g. an operator of rank r < m) restarts from a random
vector orthogonal to the basis and records β = 0, which decouples the tridiagonal matrix exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

__all__ = ["LanczosResult", "lanczos", "tridiagonal_eigh", "start_vectors"]

_HIGHEST = jax.lax.Precision.HIGHEST


class NonFiniteError(FloatingPointError):
    """A loss, Hessian-vector product or eigenvalue is NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class LanczosResult:
    """Output of :func:`lanczos`; arrays are numpy, one row per start vector.

    Attributes:
      alphas: ``[S, m]`` diagonal of the tridiagonal matrices T.
      betas: ``[S, m]`` off-diagonal; ``betas[:, j]`` couples steps j and j+1, ``betas[:, -1]`` is the
        residual coupling β_m (0 after a breakdown at the last step).
      ritz_values: ``[S, m]`` eigenvalues of each T, descending.
      residuals: ``[S, m]`` bounds |β_m · y_{m,i}|: each Ritz value is within this of an eigenvalue.
      weights: ``[S, m]`` squared first components of T's eigenvectors (quadrature weights for SLQ).
      ritz_vectors: ``[S, m, n]`` unit Ritz vectors (descending order), or ``None``.
      num_steps: m.
      loop: which loop form ran.
    """

    alphas: np.ndarray
    betas: np.ndarray
    ritz_values: np.ndarray
    residuals: np.ndarray
    weights: np.ndarray
    ritz_vectors: np.ndarray | None
    num_steps: int
    loop: str

    @property
    def tridiagonal(self) -> np.ndarray:
        """``[S, m, m]`` dense tridiagonal matrices T."""
        m = self.num_steps
        out = np.zeros((self.alphas.shape[0], m, m))
        idx = np.arange(m)
        out[:, idx, idx] = self.alphas
        out[:, idx[:-1], idx[1:]] = self.betas[:, :-1]
        out[:, idx[1:], idx[:-1]] = self.betas[:, :-1]
        return out


def start_vectors(key: jax.Array, num_starts: int, dim: int, dtype, kind: str = "rademacher") -> jax.Array:
    """``[S, n]`` unit start vectors, Rademacher or Gaussian, from an explicit key."""
    if kind == "rademacher":
        v = jax.random.rademacher(key, (num_starts, dim), dtype=dtype)
    elif kind == "gaussian":
        v = jax.random.normal(key, (num_starts, dim), dtype=dtype)
    else:
        raise ValueError(f"start must be 'rademacher' or 'gaussian', got {kind!r}")
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def _orthogonalize(basis: jax.Array, w: jax.Array) -> jax.Array:
    """w minus its projection on the rows of basis ``[S, r, n]``, Gram-Schmidt twice."""
    for _ in range(2):
        coeffs = jnp.einsum("srn,sn->sr", basis, w, precision=_HIGHEST)
        w = w - jnp.einsum("srn,sr->sn", basis, coeffs, precision=_HIGHEST)
    return w


def _next_vector(basis, w, key, j, scale):
    """β_j and the next unit vector; on breakdown a random vector orthogonal to the basis and β=0."""
    beta = jnp.linalg.norm(w, axis=-1)
    eps = jnp.finfo(w.dtype).eps
    broke = beta <= 100.0 * eps * jnp.maximum(scale, jnp.finfo(w.dtype).tiny)
    fresh = jax.random.normal(jax.random.fold_in(key, j), w.shape, w.dtype)
    fresh = _orthogonalize(basis, fresh)
    fresh = fresh / jnp.maximum(jnp.linalg.norm(fresh, axis=-1, keepdims=True), jnp.finfo(w.dtype).tiny)
    safe_beta = jnp.where(broke, 1.0, beta)
    v_next = jnp.where(broke[:, None], fresh, w / safe_beta[:, None])
    return jnp.where(broke, 0.0, beta), v_next


def _step_update(V, alphas, betas, v, w, j, key, rows):
    """Store v_j, record α_j, orthogonalise w against the first ``rows`` basis vectors, emit v_{j+1}."""
    alpha = jnp.sum(v * w, axis=-1)
    V = jax.lax.dynamic_update_slice_in_dim(V, v[:, None, :], j, axis=1)
    alphas = jax.lax.dynamic_update_slice_in_dim(alphas, alpha[:, None], j, axis=1)
    basis = V[:, :rows]
    w = _orthogonalize(basis, w)
    scale = jnp.max(jnp.abs(alphas), axis=-1) + jnp.max(jnp.abs(betas), axis=-1)
    beta, v_next = _next_vector(basis, w, key, j, scale)
    betas = jax.lax.dynamic_update_slice_in_dim(betas, beta[:, None], j, axis=1)
    return V, alphas, betas, v_next


# One compiled step per (shapes, rows bucket); the buffers are donated so they stay in place.
_jitted_step = jax.jit(_step_update, static_argnames=("rows",), donate_argnums=(0, 1, 2))


def _host_step(V, alphas, betas, v, w, j, key):
    """The same step with the basis in host memory (device memory independent of m)."""
    v_h, w_h = np.asarray(v), np.asarray(w)
    alphas[:, j] = np.sum(v_h * w_h, axis=-1)
    V[:, j] = v_h
    basis = V[:, : j + 1]
    w_h = w_h.copy()
    for _ in range(2):
        for s in range(w_h.shape[0]):  # matrix-vector products through BLAS
            w_h[s] -= (basis[s] @ w_h[s]) @ basis[s]
    scale = np.max(np.abs(alphas), axis=-1) + np.max(np.abs(betas), axis=-1)
    beta, v_next = _next_vector(jnp.asarray(basis), jnp.asarray(w_h), key, j, jnp.asarray(scale))
    betas[:, j] = np.asarray(beta)
    return v_next


def _rows_bucket(j: int, m: int) -> int:
    """Static basis length used at step j: j+1 rounded up, so only ~8 step variants get compiled."""
    chunk = max(32, -(-m // 8))
    return min(m, -(-(j + 1) // chunk) * chunk)


def _check_finite(alpha: np.ndarray, j: int) -> None:
    if not np.all(np.isfinite(alpha)):
        raise NonFiniteError(
            f"Hessian-vector product is not finite at Lanczos step {j} (alpha={alpha}). The loss or its "
            "derivatives overflow at these parameters: check the loss for NaN/inf (e.g. log of 0), or run in "
            "float64 (jax.config.update('jax_enable_x64', True))."
        )


def _python_loop(matvec, v0, m, key, basis, progress, min_steps=None, stop=None, check_every=None):
    """Drive the step from Python; with ``stop``, end early once ``stop(alphas, betas)`` says so.

    Buffers are sized for m steps; from ``min_steps`` on, every ``check_every`` steps the coefficients
    so far are handed to ``stop`` (a Lanczos run truncated at j steps is exactly a j-step run).
    Returns the basis and coefficients truncated to the steps taken.
    """
    S, n = v0.shape
    dtype = v0.dtype
    on_host = basis == "host"
    zeros = np.zeros if on_host else jnp.zeros
    V = zeros((S, m, n), dtype)
    alphas, betas = zeros((S, m), dtype), zeros((S, m), dtype)
    v = v0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=m if stop is None else min_steps, desc="Lanczos", unit="step", leave=False)
    taken = m
    for j in range(m):
        w = matvec(v)
        if on_host:
            v = _host_step(V, alphas, betas, v, w, j, key)
            _check_finite(alphas[:, j], j)
        else:
            V, alphas, betas, v = _jitted_step(V, alphas, betas, v, w, j, key, rows=_rows_bucket(j, m))
            if j % 16 == 0 or j == m - 1:  # a host sync every few steps keeps dispatch asynchronous
                _check_finite(np.asarray(alphas[:, j]), j)
        if bar is not None:
            if stop is not None and j + 1 > bar.total:
                bar.total = min(m, bar.total + check_every)
            bar.update(1)
        if stop is not None and j + 1 >= min_steps and (j + 1 - min_steps) % check_every == 0:
            if stop(np.asarray(alphas[:, : j + 1]), np.asarray(betas[:, : j + 1])):
                taken = j + 1
                break
    if bar is not None:
        bar.close()
    alphas, betas = np.asarray(alphas)[:, :taken], np.asarray(betas)[:, :taken]
    _check_finite(alphas.ravel(), taken - 1)
    return np.asarray(V[:, :taken]), alphas, betas


@partial(jax.jit, static_argnames=("pure_matvec", "m"))
def _fori_loop(pure_matvec, args, v0, key, m):
    S, n = v0.shape
    init = (jnp.zeros((S, m, n), v0.dtype), jnp.zeros((S, m), v0.dtype), jnp.zeros((S, m), v0.dtype), v0)

    def body(j, state):
        V, alphas, betas, v = state
        return _step_update(V, alphas, betas, v, pure_matvec(args, v), j, key, m)

    V, alphas, betas, _ = jax.lax.fori_loop(0, m, body, init)
    return V, alphas, betas


def tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric tridiagonal T (``eigh``, never a general ``eig``).

    Args:
      alphas: ``[m]`` diagonal. betas: ``[m-1]`` off-diagonal.

    Returns:
      ``(values, vectors)`` in float64, values descending, vectors as columns.
    """
    d = np.asarray(alphas, np.float64)
    e = np.asarray(betas, np.float64)
    if d.shape[0] == 1:
        return d.copy(), np.ones((1, 1))
    values, vectors = scipy.linalg.eigh_tridiagonal(d, e)
    return values[::-1].copy(), vectors[:, ::-1].copy()


def _ritz(alphas, betas, V, return_vectors):
    S, m = alphas.shape
    values, residuals, weights, vecs = [], [], [], []
    for s in range(S):
        theta, Y = tridiagonal_eigh(alphas[s], betas[s, :-1])
        values.append(theta)
        residuals.append(np.abs(float(betas[s, -1]) * Y[-1]))
        weights.append(Y[0] ** 2)
        if return_vectors:
            vecs.append(Y.T @ np.asarray(V[s], np.float64))
    return (
        np.stack(values),
        np.stack(residuals),
        np.stack(weights),
        np.stack(vecs) if return_vectors else None,
    )


def _pick_loop(loop: str, basis: str) -> str:
    if loop not in ("auto", "python", "fori"):
        raise ValueError(f"loop must be 'auto', 'python' or 'fori', got {loop!r}")
    if basis not in ("device", "host"):
        raise ValueError(f"basis must be 'device' or 'host', got {basis!r}")
    if basis == "host":
        if loop == "fori":
            raise ValueError("basis='host' needs loop='python' (the basis leaves the device between steps)")
        return "python"
    if loop == "auto":
        # Measured: on XLA:CPU conv backward passes inside fori_loop run 6-10x slower (FINDINGS.md).
        return "python" if jax.default_backend() == "cpu" else "fori"
    return loop


def lanczos(
    operator,
    num_steps: int,
    *,
    key: jax.Array,
    num_starts: int = 1,
    start: str = "rademacher",
    dim: int | None = None,
    dtype=None,
    loop: str = "auto",
    basis: str = "device",
    return_vectors: bool = False,
    progress: bool = False,
    max_steps: int | None = None,
    stop=None,
    check_every: int | None = None,
) -> LanczosResult:
    """Run ``num_steps`` Lanczos steps with full reorthogonalisation from ``num_starts`` random starts.

    Args:
      operator: a :class:`hspec.HessianOperator`, or any callable mapping ``[S, n] -> [S, n]`` that applies
        a symmetric matrix to each row (then give ``dim`` and ``dtype``).
      num_steps: m, the Krylov dimension. Clamped to n with a warning when larger.
      key: PRNG key for the start vectors (and for restarts after a breakdown).
      num_starts: S independent starts, run together (vmapped operator application).
      start: ``"rademacher"`` or ``"gaussian"`` start vectors (normalised).
      dim, dtype: size and dtype of the vectors when ``operator`` is a plain callable.
      loop: ``"auto"``, ``"python"`` or ``"fori"`` (see the module docstring).
      basis: ``"device"`` or ``"host"`` (device memory independent of m).
      return_vectors: also return the Ritz vectors (costs S·m·n host memory).
      progress: show a tqdm bar (python loop).
      max_steps: grow the Krylov space beyond ``num_steps`` up to ``max_steps`` until
        ``stop(alphas, betas) -> bool`` (given the ``[S, j]`` coefficients so far) returns True; checked
        every ``check_every`` steps (default: a tenth of num_steps, at least 10). Python loop only.

    Returns:
      :class:`LanczosResult` with the tridiagonal coefficients, Ritz values, residual bounds and weights.
    """
    matvec = operator.matvec if hasattr(operator, "matvec") else operator
    n = int(getattr(operator, "dim", dim) or 0)
    dtype = getattr(operator, "dtype", dtype) or jnp.float32
    if n <= 0:
        raise ValueError("give dim=n when operator is a plain callable")
    m = _clamp_steps(num_steps, n)
    grow = max_steps is not None and stop is not None and max_steps > m
    if grow:
        m_max = min(int(max_steps), n)
        check_every = check_every or max(10, m // 10)
        loop = "python" if loop in ("auto", "fori") else loop
    if num_starts < 1:
        raise ValueError(f"num_starts must be >= 1, got {num_starts}")
    loop = _pick_loop(loop, basis)
    k_start, k_restart = jax.random.split(key)
    v0 = start_vectors(k_start, num_starts, n, dtype, start)
    if loop == "fori":
        pure = getattr(operator, "pure_matvec", None)
        args = getattr(operator, "args", None)
        if pure is None:  # a plain callable: it closes over its own arrays
            pure, args = _ClosedMatvec(matvec), ()
        V, alphas, betas = _fori_loop(pure, args, v0, k_restart, m)
        alphas_h = np.asarray(alphas)
        _check_finite(alphas_h.ravel(), m - 1)
        V, alphas, betas = np.asarray(V), alphas_h, np.asarray(betas)
    else:
        if grow:
            V, alphas, betas = _python_loop(matvec, v0, m_max, k_restart, basis, progress, m, stop, check_every)
        else:
            V, alphas, betas = _python_loop(matvec, v0, m, k_restart, basis, progress)
    values, residuals, weights, vectors = _ritz(alphas, betas, V, return_vectors)
    return LanczosResult(alphas, betas, values, residuals, weights, vectors, int(alphas.shape[1]), loop)


@dataclasses.dataclass(frozen=True)
class _ClosedMatvec:
    """Adapts a plain ``matvec(v)`` to the ``pure_matvec(args, v)`` form (hashable for jit)."""

    fn: Callable

    def __call__(self, args, v):
        return self.fn(v)


def _clamp_steps(num_steps: int, dim: int) -> int:
    """m clamped to the dimension n (a Krylov space cannot exceed n), with a warning saying so."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps > dim:
        import warnings

        warnings.warn(
            f"num_steps={num_steps} exceeds the dimension n={dim} of the operator; using num_steps={dim} "
            "(a Krylov space cannot be larger than n).",
            stacklevel=3,
        )
        return dim
    return num_steps
