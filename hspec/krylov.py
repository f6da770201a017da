"""Lanczos tridiagonalisation with full reorthogonalisation, several starts at once (METHOD.md §2).

The Krylov basis of S independent starts is a ``[S, m, n]`` buffer. Each step applies the operator to
the S current vectors at once (vmapped), subtracts the three-term recurrence (α_j v_j + β_{j-1} v_{j-1}),
then orthogonalises against the whole basis: one classical Gram-Schmidt pass, and a second one only where
the first removed more than 1 − 1/√2 of the vector's norm (the Daniel-Gragg-Kaufman-Stewart test; "twice is
enough"). Without full reorthogonalisation ghost copies of the top eigenvalues appear. After the three-term
subtraction the first pass removes only rounding-level components, so a second pass is rare, and each step
reads the basis twice instead of four times. On CPU these reads rival the Hessian-vector product: halving
them took the top 1000 of LeNet-5 (3000 steps) to 0.68 of its time (benchmarks/RESULTS.md). Ritz values come from the symmetric tridiagonal
eigenproblem, solved on the host in float64.

Two loop forms, picked per backend (``loop="auto"``):

* ``"python"``: one step at a time driven from Python (a jitted step with the Krylov buffers donated
  and kept on the device, or the host-basis step). FINDINGS.md (trap 1) measured XLA:CPU convolution
  gradients inside ``lax.fori_loop`` 6-10x slower than at the top level; with train.models' banded
  convolution both forms cost the same (LeNet-5: 1.00 and 0.95 gradients per step), and the host
  basis makes this the CPU default.
* ``"fori"``: the whole loop compiled as one ``lax.fori_loop`` (no per-step dispatch); default on GPU/TPU.

A memory-bounded form, ``basis="host"``, keeps the basis in host memory and orthogonalises there
with BLAS, so that device memory does not grow with m (python loop only). It is the CPU default,
where it is also the fastest form.

Breakdown (an invariant Krylov subspace, e.g. an operator of rank r < m) restarts from a random
vector orthogonal to the basis and records β = 0, which decouples the tridiagonal matrix exactly. The
rule is written once (:func:`_next_vector`) and used by the device step and the host step alike.

The operator is anything with the :class:`SymmetricOperator` interface (``dim``, ``dtype``,
``matvec``, ``pure_matvec``, ``args``), such as :class:`hspec.HessianOperator`; a plain callable is
wrapped in a :class:`MatvecOperator`. This module is ``hspec.krylov``; ``hspec.lanczos`` is its
:func:`lanczos` function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from functools import partial
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from hspec._checks import check_flat_vectors
from hspec.errors import KrylovStateError, NonFiniteError

__all__ = [
    "KrylovStore",
    "LanczosResult",
    "MatvecOperator",
    "SymmetricOperator",
    "as_operator",
    "lanczos",
    "ritz_decomposition",
    "start_vectors",
    "tridiagonal_eigh",
]

_HIGHEST = jax.lax.Precision.HIGHEST

# Breakdown: β_j <= BREAKDOWN_TOLERANCE · eps · scale, scale = max|α| + max|β| so far (a lower bound
# on ||H||): what is left of w after orthogonalisation is then rounding noise, not a new direction.
BREAKDOWN_TOLERANCE = 100.0

# Seconds between saves of a checkpointed run (checkpoint_dir): a kill loses at most this much stepping.
CHECKPOINT_EVERY_S = 60.0


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
      resumed_steps: the steps taken from a saved state (``checkpoint_dir``) rather than computed in this call.
      resumed_s: the seconds the earlier calls spent on those steps (as they saved it), so that this call's own
        time plus ``resumed_s`` is what the whole run cost, however many times it was killed.
    """

    alphas: np.ndarray
    betas: np.ndarray
    ritz_values: np.ndarray
    residuals: np.ndarray
    weights: np.ndarray
    ritz_vectors: np.ndarray | None
    num_steps: int
    loop: str
    resumed_steps: int = 0
    resumed_s: float = 0.0

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


def _single_threaded_blas(active: bool):
    """Host BLAS limited to one thread while the host basis is orthogonalised.

    Multi-threaded OpenBLAS matrix-vector products contend with XLA's own CPU threads between the
    operator applications: LeNet-5 Lanczos steps cost 1.60-1.62 gradients with BLAS threads and
    0.77-0.92 with one (benchmarks/RESULTS.md, runs 3 and 5).
    """
    if not active:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _check_finite(alpha: np.ndarray, j: int) -> None:
    if not np.all(np.isfinite(alpha)):
        bad = int(np.argmin(np.all(np.isfinite(np.atleast_2d(alpha)), axis=0))) if np.ndim(alpha) > 1 else 0
        raise NonFiniteError(
            f"Hessian-vector product is not finite at Lanczos step {j + bad}. The loss or its derivatives "
            "overflow at these parameters: check the loss for NaN/inf (e.g. log of 0), or run in float64 "
            "(jax.config.update('jax_enable_x64', True))."
        )


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


def _advance_python(matvec, state, key, j0, j1, on_host):
    """Steps j0..j1-1 driven from Python: one jitted step each, the Krylov buffers donated."""
    V, alphas, betas, v = state
    for j in range(j0, j1):
        w = matvec(v)
        if on_host:
            v = _host_step(V, alphas, betas, v, w, j, key)
        else:
            V, alphas, betas, v = _jitted_step(V, alphas, betas, v, w, jnp.int32(j), key)
    return V, alphas, betas, v


class KrylovStore:
    """The host Krylov state of one run kept in a directory, so that a killed run resumes from its last save.

    Files: ``basis.bin``, the basis rows in step order (``[row, start, n]``, append-only, so a save writes
    only the rows added since the last one), and ``state.npz``: the steps done, the coefficients, the shape,
    the sha256 of every basis row written, the run's identity (``checkpoint_identity``) and a sha256 of all
    these arrays, replaced atomically after the rows it refers to are on disk. A resumed run continues exactly
    as the uninterrupted one: every row is fixed once written, and the steps are deterministic. A state that
    does not verify (a row overwritten or zeroed, a file truncated, a ``state.npz`` that is not a zip) or that
    belongs to another identity raises :class:`hspec.KrylovStateError` and is never resumed from.

    Args:
      directory: where the files live (created on the first save).
      every_s: seconds between saves (0: after every slice of steps).
      identity: a JSON-serialisable dict naming what the state belongs to (network, sample, settings), saved
        with it; a saved state with another identity is refused. None: not checked (the start vector and α_0
        decide, see :meth:`restore`).
    """

    BASIS, STATE = "basis.bin", "state.npz"
    _KEYS = ("steps", "alphas", "betas", "shape", "elapsed_s", "row_digests", "identity", "digest")

    def __init__(self, directory: str | os.PathLike, every_s: float = 60.0, identity: dict | None = None):
        self.dir, self.every_s = Path(directory), float(every_s)
        self.rows_on_disk, self.last_save = 0, time.monotonic()
        # Seconds of stepping behind the state restored (earlier processes), and when this one began: each save
        # records their sum, so that a run killed and resumed still knows what its steps cost.
        self.resumed_s, self.opened = 0.0, time.monotonic()
        self.digests: list[bytes] = []  # sha256 of basis rows 0.. as written (row r: [S, n] in file order)
        if identity is not None and not isinstance(identity, dict):
            raise TypeError(f"checkpoint_identity must be a dict (or None), got a {type(identity).__name__}")
        try:
            self.identity_json = json.dumps(identity, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise TypeError(f"checkpoint_identity must be JSON-serialisable: {err}") from None
        self.identity = json.loads(self.identity_json)  # as it reads back (tuples become lists)

    def _shape(self, V) -> list:
        return [int(V.shape[0]), int(V.shape[1]), int(V.shape[2]), str(V.dtype)]

    def _refuse(self, what: str) -> KrylovStateError:
        return KrylovStateError(f"the Krylov state in {self.dir} cannot be used: {what}; delete {self.dir} to start "
                                "this spectrum afresh")

    def _read_state(self) -> dict[str, np.ndarray]:
        """The arrays of ``state.npz``, verified against the sha256 it carries (KrylovStateError if not)."""
        try:
            with contextlib.ExitStack() as stack:
                saved = np.load(self.dir / self.STATE)
                if not isinstance(saved, np.lib.npyio.NpzFile):
                    raise ValueError("not an npz archive")
                stack.enter_context(saved)
                arrays = {name: saved[name] for name in saved.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise self._refuse(f"{self.STATE} is unreadable ({type(err).__name__}: {' '.join(str(err).split())})") \
                from None
        if "digest" not in arrays:
            raise self._refuse(f"{self.STATE} carries no digest (written by an older hspec), so its basis cannot be "
                               "verified")
        missing = [k for k in self._KEYS if k not in arrays]
        if missing:
            raise self._refuse(f"{self.STATE} lacks {', '.join(missing)}")
        if _arrays_digest({k: v for k, v in arrays.items() if k != "digest"}) != str(arrays["digest"]):
            raise self._refuse(f"{self.STATE} does not match its sha256")
        return arrays

    def _check_identity(self, saved: dict[str, np.ndarray]) -> None:
        """Refuse a state saved under another identity (when this run gives one)."""
        if self.identity is None:
            return
        theirs = json.loads(str(saved["identity"]))
        if theirs == self.identity:
            return
        if not isinstance(theirs, dict):
            raise self._refuse(f"it was saved without a checkpoint_identity, this run gives {self.identity_json}")
        keys = sorted(set(theirs) | set(self.identity))
        diff = [k for k in keys if theirs.get(k, "<absent>") != self.identity.get(k, "<absent>")]
        detail = "; ".join(f"{k}: saved {_short(theirs.get(k, '<absent>'))}, this run "
                           f"{_short(self.identity.get(k, '<absent>'))}" for k in diff)
        raise KrylovStateError(f"the Krylov state in {self.dir} belongs to another computation: its "
                               f"checkpoint_identity differs in {', '.join(diff)} ({detail}); delete {self.dir} to "
                               "start this spectrum afresh, or give this run its own checkpoint_dir")

    def _other_run(self, what: str) -> int:
        """A state of another run: start afresh (0) without an identity; refused when the identities agreed."""
        if self.identity is None:
            return 0
        raise self._refuse(f"its checkpoint_identity matches this run's but {what}")

    def _check_row(self, disk, i: int, digests: np.ndarray) -> np.ndarray:
        row = disk[i]
        if hashlib.sha256(row).digest() != digests[i].tobytes():
            raise self._refuse(f"row {i} of {self.BASIS} does not match its sha256 (overwritten or damaged)")
        return row

    def restore(self, state, matvec) -> int:
        """Fill ``state`` from the directory and return the steps done there (0: nothing to resume).

        Every piece read is verified first: ``state.npz`` against its sha256, the identity (when this run
        gives one), ``basis.bin``'s length, and each basis row read against its sha256; what does not verify
        raises :class:`hspec.KrylovStateError`. A verified state resumes only when its starts, dimension and
        dtype match, its first basis row is this run's start vector, and the operator gives back its α_0 (one
        product, so that a state saved for another network or Hessian sample is never continued); otherwise
        the run starts afresh, or, when the identities matched, is refused. The step budget may differ: a
        state saved under a smaller ``max_steps`` that ran out before converging continues under a larger one
        (a Lanczos run truncated at j steps is exactly a j-step run), and one saved under a larger budget is
        truncated to this one.
        """
        V, alphas, betas, _ = state
        basis = self.dir / self.BASIS
        if not (self.dir / self.STATE).is_file():
            return 0  # nothing saved (a basis.bin alone: killed before its first state; rewritten from row 0)
        saved = self._read_state()
        self._check_identity(saved)
        if not basis.is_file():
            raise self._refuse(f"{self.BASIS} is missing")
        S, capacity, n = (int(d) for d in V.shape)
        saved_j, shape = int(saved["steps"]), json.loads(str(saved["shape"]))
        if [shape[0], shape[2], shape[3]] != [S, n, str(V.dtype)] or saved_j < 1:
            return self._other_run(f"it holds {shape[0]} starts of size {shape[2]} in {shape[3]} after {saved_j} "
                                   f"steps, this run {S} of size {n} in {V.dtype}")
        digests = saved["row_digests"]
        j = min(saved_j, capacity)
        rows = min(j + 1, capacity)  # rows 0..j: the basis so far and the next vector
        size, row_bytes = basis.stat().st_size, S * n * V.dtype.itemsize
        if size < len(digests) * row_bytes:
            raise self._refuse(f"{self.BASIS} is truncated ({size} bytes, {len(digests)} rows of {row_bytes} "
                               "bytes recorded)")
        if len(digests) < rows:
            raise self._refuse(f"{self.STATE} records {len(digests)} basis rows, its {saved_j} steps need {rows}")
        # Read through a memory map: the basis (GBs for a large network) is copied once, not twice.
        disk = np.memmap(basis, dtype=V.dtype, mode="r", shape=(rows, S, n))
        v0 = np.asarray(V[:, 0])
        if not np.array_equal(self._check_row(disk, 0, digests), v0):
            return self._other_run("its start vector differs")
        alpha0 = np.sum(v0 * np.asarray(matvec(jnp.asarray(v0))), axis=-1)
        if not np.allclose(alpha0, saved["alphas"][:, 0], rtol=1e-9, atol=0):
            return self._other_run("the operator gives another α_0 (another network or Hessian sample)")
        for i in range(1, rows):
            V[:, i] = self._check_row(disk, i, digests)
        del disk
        alphas[:, :j], betas[:, :j] = saved["alphas"][:, :j], saved["betas"][:, :j]
        # Truncated to a smaller budget, the share of the saved time that its j steps took.
        self.resumed_s = float(saved["elapsed_s"]) * j / saved_j
        # Truncated to a smaller budget, the rows on disk beyond it stay valid (v_j included): never rewritten.
        self.rows_on_disk = rows if saved_j <= capacity else len(digests)
        self.digests = [d.tobytes() for d in digests[: self.rows_on_disk]]
        self.identity_json = str(saved["identity"])  # kept by a run that gave none (equal where it gave one)
        return j

    def save(self, state, j: int, *, force: bool = False) -> None:
        """Save after j steps (basis rows 0..j are set), at most every ``every_s`` seconds unless forced.

        At the end of the buffers (j = their capacity) the next vector v_j, which has no row there, is
        taken from the state's current vector, so that a run with a larger budget can continue.
        """
        if not force and time.monotonic() - self.last_save < self.every_s:
            return
        V, alphas, betas, v = state
        self.dir.mkdir(parents=True, exist_ok=True)
        first, hi = self.rows_on_disk, min(j + 1, V.shape[1])
        rows = V[:, first:hi].transpose(1, 0, 2)
        if j + 1 > V.shape[1] and v is not None and first <= j:
            rows = np.concatenate([rows, np.asarray(v, dtype=V.dtype)[None]])
            hi = j + 1
        rows = np.ascontiguousarray(rows)
        with open(self.dir / self.BASIS, "r+b" if first else "wb") as f:
            f.seek(first * V.shape[0] * V.shape[2] * V.dtype.itemsize)
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.digests[first : first + len(rows)] = [hashlib.sha256(row).digest() for row in rows]
        arrays = dict(steps=np.int64(j), alphas=alphas[:, :j], betas=betas[:, :j],
                      shape=np.str_(json.dumps(self._shape(V))),
                      elapsed_s=np.float64(self.resumed_s + time.monotonic() - self.opened),
                      row_digests=np.frombuffer(b"".join(self.digests), np.uint8).reshape(-1, 32),
                      identity=np.str_(self.identity_json))
        tmp = self.dir / f".{self.STATE}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, digest=np.str_(_arrays_digest(arrays)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / self.STATE)
        self.rows_on_disk, self.last_save = hi, time.monotonic()

    @classmethod
    def progress(cls, directory: str | os.PathLike) -> dict | None:
        """``{"steps": j, "identity": ...}`` of a directory's saved state, read cheaply (for listings).

        Nothing is verified here (:meth:`restore` does that); None: no readable state there.
        """
        try:
            with np.load(Path(directory) / cls.STATE) as saved:
                identity = json.loads(str(saved["identity"])) if "identity" in saved.files else None
                return {"steps": int(saved["steps"]), "identity": identity}
        except (OSError, KeyError, ValueError, EOFError, AttributeError, zipfile.BadZipFile, zlib.error):
            return None

    @classmethod
    def saved_steps(cls, directory: str | os.PathLike) -> int | None:
        """The steps a directory's saved state holds (None: no saved state there)."""
        progress = cls.progress(directory)
        return None if progress is None else progress["steps"]

    def clear(self) -> None:
        """Remove the files (the run finished) and the directory when it is left empty."""
        for name in (self.STATE, self.BASIS, f".{self.STATE}.tmp"):
            (self.dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def _arrays_digest(arrays: dict[str, Any]) -> str:
    """sha256 of named arrays: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def saved_progress(directory: str | os.PathLike, *, k: int, tol: float) -> dict[str, int] | None:
    """How far a saved Krylov state is: its steps, and how many of the top k Ritz values of its first start have
    converged there (residual <= tol · |θ_1|, the rule of :func:`hspec.top_eigenvalues`). None when the folder
    holds no readable state. Reads only the coefficients (cheap: for listings of long runs)."""
    path = Path(directory) / KrylovStore.STATE
    try:
        with np.load(path) as saved:
            steps, alphas, betas = int(saved["steps"]), np.asarray(saved["alphas"]), np.asarray(saved["betas"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if steps < 1 or alphas.shape[-1] < 1:
        return None
    values, residuals, _, _ = ritz_decomposition(alphas[:1], betas[:1])
    converged = int(np.sum(residuals[0][:k] <= tol * abs(values[0][0])))
    return {"steps": steps, "converged": converged}


def _drive(advance, state, m_total, first, stop, check_every, progress, j0=0, store=None):
    """Run ``first`` steps, then (with ``stop``) chunks of ``check_every`` until ``stop`` or ``m_total``.

    A Lanczos run truncated at j steps is exactly a j-step run, so growing costs nothing extra. A run
    resumed at ``j0`` steps checks ``stop`` at the same step counts as one that ran from 0. With a
    ``store``, the state is saved as the run goes. Returns the basis and coefficients truncated to the
    steps taken.
    """
    bar = None
    j, j_end = j0, first
    while j_end < j:  # the check point at or after j0, as a run from 0 would have met it
        j_end = min(m_total, j_end + check_every)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=j_end, initial=j0, desc="Lanczos", unit="step", leave=False)
    # Advance in slices so that the bar moves, a non-finite product is caught early and the store saves. With a
    # store (host basis, python loop: a slice costs nothing extra) every step is a slice, so that the save comes
    # every_s seconds apart even where a step takes minutes (ResNet18 on a CPU: 20 s).
    slice_len = 1 if store is not None else 16 if bar is not None else None
    while True:
        if bar is not None:
            bar.total = max(bar.total, j_end)
        for lo in range(j, j_end, slice_len or max(j_end - j, 1)):
            hi = min(j_end, lo + slice_len) if slice_len else j_end
            state = advance(state, lo, hi)
            _check_finite(np.asarray(state[1][:, lo:hi]), lo)
            if store is not None:
                store.save(state, hi)
            if bar is not None:
                bar.update(hi - lo)
        j = j_end
        if stop is None or j >= m_total or stop(np.asarray(state[1][:, :j]), np.asarray(state[2][:, :j])):
            break
        if store is not None:
            store.save(state, j, force=True)  # a check point: the next resumption starts here at the latest
        j_end = min(m_total, j + check_every)
    if bar is not None:
        bar.close()
    if store is not None:
        store.save(state, j, force=True)  # the end: kept when the budget ran out before `stop` (see lanczos)
    V, alphas, betas, _ = state
    return np.asarray(V[:, :j]), np.asarray(alphas[:, :j]), np.asarray(betas[:, :j])


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


def ritz_decomposition(alphas, betas, V=None, return_vectors=False):
    """Ritz values, residual bounds |β_m y_{m,i}|, quadrature weights (and vectors) of each start's T.

    Args:
      alphas, betas: ``[S, m]`` Lanczos coefficients (``betas[:, -1]`` is the residual coupling).
      V: ``[S, m, n]`` basis, needed only with ``return_vectors``.
      return_vectors: also return the Ritz vectors ``[S, m, n]``.

    Returns:
      ``(values, residuals, weights, vectors or None)``, values descending per start.
    """
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


def _pick_loop(loop: str, basis: str) -> tuple[str, str]:
    """Resolve "auto" loop and basis choices per backend, by measurement (benchmarks/RESULTS.md).

    On CPU the basis lives in host memory anyway, and BLAS matrix-vector products orthogonalise 4x
    faster there than the compiled step did (MLP, m=1000: 17 s against 72 s); elsewhere the basis
    stays on the device and the whole loop is one ``fori_loop``.
    """
    if loop not in ("auto", "python", "fori"):
        raise ValueError(f"loop must be 'auto', 'python' or 'fori', got {loop!r}")
    if basis not in ("auto", "device", "host"):
        raise ValueError(f"basis must be 'auto', 'device' or 'host', got {basis!r}")
    cpu = jax.default_backend() == "cpu"
    if basis == "auto":
        basis = "host" if cpu and loop != "fori" else "device"
    if basis == "host":
        if loop == "fori":
            raise ValueError("basis='host' needs loop='python' (the basis leaves the device between steps)")
        return "python", basis
    if loop == "auto":
        loop = "python" if cpu else "fori"
    return loop, basis


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
    basis: str = "auto",
    return_vectors: bool = False,
    progress: bool = False,
    max_steps: int | None = None,
    stop=None,
    check_every: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_s: float | None = None,
    checkpoint_identity: dict | None = None,
) -> LanczosResult:
    """Run ``num_steps`` Lanczos steps with full reorthogonalisation from ``num_starts`` random starts.

    Args:
      operator: a :class:`SymmetricOperator` such as :class:`hspec.HessianOperator`, or any callable
        mapping ``[S, n] -> [S, n]`` that applies a symmetric matrix to each row (then give ``dim`` and
        ``dtype``; it is wrapped in a :class:`MatvecOperator`).
      num_steps: m, the Krylov dimension. Clamped to n with a warning when larger.
      key: PRNG key for the start vectors (and for restarts after a breakdown).
      num_starts: S independent starts, run together (vmapped operator application).
      start: ``"rademacher"`` or ``"gaussian"`` start vectors (normalised).
      dim, dtype: size and dtype (default float32) of the vectors when ``operator`` is a plain callable.
      loop: ``"auto"``, ``"python"`` or ``"fori"`` (see the module docstring).
      basis: ``"auto"`` (host on CPU, device elsewhere), ``"device"`` or ``"host"`` (device memory
        independent of m: only the current vectors live on the device).
      return_vectors: also return the Ritz vectors (costs S·m·n host memory).
      progress: show a tqdm bar (python loop).
      max_steps: grow the Krylov space beyond ``num_steps`` up to ``max_steps`` until
        ``stop(alphas, betas) -> bool`` (given the ``[S, j]`` coefficients so far) returns True; checked
        every ``check_every`` steps (default: a tenth of num_steps, at least 10). Buffers are sized for
        ``max_steps`` from the start.
      checkpoint_dir: keep the Krylov state in this directory (a :class:`KrylovStore`), saved every
        ``checkpoint_every_s`` seconds (default ``CHECKPOINT_EVERY_S``) and at each convergence check, so that a killed run started again
        with the same arguments resumes where it was saved and gives the same result as an uninterrupted
        run. The files are removed when the run finishes; when ``stop`` is still false at the end of the
        budget they are kept, and a run with a larger ``max_steps`` continues from them. Needs the host
        basis (the CPU default). Every saved piece carries a sha256: a state that does not verify raises
        :class:`hspec.KrylovStateError` and is never resumed from.
      checkpoint_identity: a JSON-serialisable dict saying what the state belongs to (network, Hessian sample,
        settings), saved with it: a saved state of another identity raises :class:`hspec.KrylovStateError`
        (naming the keys that differ) instead of being continued or overwritten. None: a state whose start
        vector or α_0 differs from this run's is replaced by a fresh run.

    Returns:
      :class:`LanczosResult` with the tridiagonal coefficients, Ritz values, residual bounds and weights.
    """
    op = as_operator(operator, dim=dim, dtype=dtype)
    n, dtype = op.dim, op.dtype
    m = _clamp_steps(num_steps, n)
    if num_starts < 1:
        raise ValueError(f"num_starts must be >= 1, got {num_starts}")
    grow = max_steps is not None and stop is not None and max_steps > m
    m_total = min(int(max_steps), n) if grow else m
    check_every = check_every or max(10, m // 10)
    loop, basis = _pick_loop(loop, basis)
    k_start, k_restart = jax.random.split(key)
    v0 = start_vectors(k_start, num_starts, n, dtype, start)
    on_host = basis == "host"
    zeros = np.zeros if on_host else jnp.zeros
    state = (zeros((num_starts, m_total, n), dtype), zeros((num_starts, m_total), dtype),
             zeros((num_starts, m_total), dtype), v0)
    if on_host:
        state[0][:, 0] = np.asarray(v0)  # the host step reads v_j from the basis
    store, j0 = None, 0
    if checkpoint_dir is not None:
        if not on_host:
            raise ValueError("checkpoint_dir needs basis='host' (the basis is saved from host memory); "
                             f"this run resolved to basis={basis!r}, loop={loop!r}")
        store = KrylovStore(checkpoint_dir, CHECKPOINT_EVERY_S if checkpoint_every_s is None else checkpoint_every_s,
                            identity=checkpoint_identity)
        j0 = store.restore(state, op.matvec)
        if j0:
            state = state[:3] + (jnp.asarray(state[0][:, j0]) if j0 < m_total else state[3],)
    if loop == "fori":
        pure, args = op.pure_matvec, op.args
        advance = lambda st, j0, j1: _run_steps(pure, args, *st, k_restart, j0, j1)  # noqa: E731
    else:
        advance = lambda st, j0, j1: _advance_python(op.matvec, st, k_restart, j0, j1, on_host)  # noqa: E731
    with _single_threaded_blas(on_host):
        V, alphas, betas = _drive(advance, state, m_total, m, stop if grow else None, check_every, progress,
                                  j0, store)
    if store is not None:
        # Saved at the last step (_drive). When the budget ran out before `stop`, the state is kept, so that a
        # run with a larger max_steps continues from here instead of starting again.
        if stop is None or stop(alphas, betas):
            store.clear()
    values, residuals, weights, vectors = ritz_decomposition(alphas, betas, V, return_vectors)
    return LanczosResult(alphas, betas, values, residuals, weights, vectors, int(alphas.shape[1]), loop,
                         resumed_steps=j0, resumed_s=store.resumed_s if j0 else 0.0)


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
