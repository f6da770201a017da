"""The Lanczos driver: several starts at once, the loop form per backend, the Krylov space grown until it converges.

:func:`lanczos` tridiagonalises a symmetric operator with full reorthogonalisation (METHOD.md §2); its step
kernels are in :mod:`hspec.lanczos_steps`, the Ritz values in :mod:`hspec.ritz`, the Krylov state kept on disk in
:mod:`hspec.krylov_store`, the operator protocol in :mod:`hspec.operators`. How it runs (not what it computes) is
one value, :class:`LanczosExecution`.

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

The operator is anything with the :class:`SymmetricOperator` interface (``dim``, ``dtype``,
``matvec``, ``pure_matvec``, ``args``), such as :class:`hspec.HessianOperator`; a plain callable is
wrapped in a :class:`MatvecOperator`. This module is ``hspec.krylov``; ``hspec.lanczos`` is its
:func:`lanczos` function. It re-exports the names that lived here before the split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from hspec.errors import NonFiniteError
from hspec.krylov_store import KrylovStore, saved_progress
from hspec.lanczos_steps import (
    BREAKDOWN_TOLERANCE,
    REORTHOGONALIZE_BELOW,
    _host_step,
    _jitted_step,
    _run_steps,
)
from hspec.operators import MatvecOperator, SymmetricOperator, as_operator
from hspec.ritz import ritz_decomposition, tridiagonal_eigh

__all__ = [
    "BREAKDOWN_TOLERANCE",
    "CHECKPOINT_EVERY_S",
    "KrylovStore",
    "LanczosExecution",
    "LanczosResult",
    "MatvecOperator",
    "REORTHOGONALIZE_BELOW",
    "SymmetricOperator",
    "as_operator",
    "lanczos",
    "ritz_decomposition",
    "saved_progress",
    "start_vectors",
    "tridiagonal_eigh",
]

# Seconds between saves of a checkpointed run (checkpoint_dir): a kill loses at most this much stepping.
CHECKPOINT_EVERY_S = 60.0


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



@dataclasses.dataclass(frozen=True)
class LanczosExecution:
    """How :func:`lanczos` runs, not what it computes: one value with defaults, for the keywords of the same names.

    Attributes:
      loop: ``"auto"``, ``"python"`` or ``"fori"`` (see the module docstring).
      basis: ``"auto"`` (host on CPU, device elsewhere), ``"device"`` or ``"host"`` (device memory
        independent of m: only the current vectors live on the device).
      progress: show a tqdm bar (python loop).
      check_every: steps between the checks of ``stop`` while the Krylov space grows (None: a tenth of
        num_steps, at least 10).
      checkpoint_dir: keep the Krylov state in this directory (a :class:`KrylovStore`), so that a killed run
        started again with the same arguments resumes where it was saved (see :func:`lanczos`). None: not kept.
      checkpoint_every_s: seconds between saves (None: ``CHECKPOINT_EVERY_S``).
      checkpoint_identity: a JSON-serialisable dict saying what the state belongs to, saved with it.
    """

    loop: str = "auto"
    basis: str = "auto"
    progress: bool = False
    check_every: int | None = None
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every_s: float | None = None
    checkpoint_identity: dict | None = None


def _execution_of(execution: LanczosExecution | None, **given) -> LanczosExecution:
    """``execution`` (default: every default) with the keyword arguments given (those not None) in its place."""
    return dataclasses.replace(execution or LanczosExecution(), **{k: v for k, v in given.items() if v is not None})


def _empty_state(num_starts: int, m_total: int, n: int, dtype, v0, on_host: bool) -> tuple:
    """``(V, alphas, betas, v)``: zero Krylov buffers sized for ``m_total`` steps, and the start vectors."""
    zeros = np.zeros if on_host else jnp.zeros
    state = (zeros((num_starts, m_total, n), dtype), zeros((num_starts, m_total), dtype),
             zeros((num_starts, m_total), dtype), v0)
    if on_host:
        state[0][:, 0] = np.asarray(v0)  # the host step reads v_j from the basis
    return state


def _restored(ex: LanczosExecution, state: tuple, op, m_total: int) -> tuple:
    """``(store, state, j0)``: the run's Krylov store, and the state filled from it (j0 steps done there)."""
    every_s = CHECKPOINT_EVERY_S if ex.checkpoint_every_s is None else ex.checkpoint_every_s
    store = KrylovStore(ex.checkpoint_dir, every_s, identity=ex.checkpoint_identity)
    j0 = store.restore(state, op.matvec)
    if j0:
        state = state[:3] + (jnp.asarray(state[0][:, j0]) if j0 < m_total else state[3],)
    return store, state, j0


def lanczos(
    operator,
    num_steps: int,
    *,
    key: jax.Array,
    num_starts: int = 1,
    start: str = "rademacher",
    dim: int | None = None,
    dtype=None,
    return_vectors: bool = False,
    max_steps: int | None = None,
    stop=None,
    execution: LanczosExecution | None = None,
    loop: str | None = None,
    basis: str | None = None,
    progress: bool | None = None,
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
      return_vectors: also return the Ritz vectors (costs S·m·n host memory).
      max_steps: grow the Krylov space beyond ``num_steps`` up to ``max_steps`` until
        ``stop(alphas, betas) -> bool`` (given the ``[S, j]`` coefficients so far) returns True; checked
        every ``check_every`` steps. Buffers are sized for ``max_steps`` from the start.
      execution: how it runs (:class:`LanczosExecution`: loop, basis, progress, check cadence, checkpointing);
        the keywords below, where given, take the place of its fields.
      loop, basis, progress, check_every: as in :class:`LanczosExecution`.
      checkpoint_dir: keep the Krylov state in this directory (a :class:`KrylovStore`), saved every
        ``checkpoint_every_s`` seconds (default ``CHECKPOINT_EVERY_S``) and at each convergence check, so that a
        killed run started again with the same arguments resumes where it was saved and gives the same result as
        an uninterrupted run. The files are removed when the run finishes; when ``stop`` is still false at the
        end of the budget they are kept, and a run with a larger ``max_steps`` continues from them. Needs the
        host basis (the CPU default). Every saved piece carries a sha256: a state that does not verify raises
        :class:`hspec.KrylovStateError` and is never resumed from.
      checkpoint_identity: a JSON-serialisable dict saying what the state belongs to (network, Hessian sample,
        settings), saved with it: a saved state of another identity raises :class:`hspec.KrylovStateError`
        (naming the keys that differ) instead of being continued or overwritten. None: a state whose start
        vector or α_0 differs from this run's is replaced by a fresh run.

    Returns:
      :class:`LanczosResult` with the tridiagonal coefficients, Ritz values, residual bounds and weights.
    """
    op = as_operator(operator, dim=dim, dtype=dtype)
    ex = _execution_of(execution, loop=loop, basis=basis, progress=progress, check_every=check_every,
                       checkpoint_dir=checkpoint_dir, checkpoint_every_s=checkpoint_every_s,
                       checkpoint_identity=checkpoint_identity)
    n, dtype = op.dim, op.dtype
    m = _clamp_steps(num_steps, n)
    if num_starts < 1:
        raise ValueError(f"num_starts must be >= 1, got {num_starts}")
    grow = max_steps is not None and stop is not None and max_steps > m
    m_total = min(int(max_steps), n) if grow else m
    loop, basis = _pick_loop(ex.loop, ex.basis)
    k_start, k_restart = jax.random.split(key)
    v0 = start_vectors(k_start, num_starts, n, dtype, start)
    on_host = basis == "host"
    state = _empty_state(num_starts, m_total, n, dtype, v0, on_host)
    store, j0 = None, 0
    if ex.checkpoint_dir is not None:
        if not on_host:
            raise ValueError("checkpoint_dir needs basis='host' (the basis is saved from host memory); "
                             f"this run resolved to basis={basis!r}, loop={loop!r}")
        store, state, j0 = _restored(ex, state, op, m_total)
    if loop == "fori":
        pure, args = op.pure_matvec, op.args
        advance = lambda st, j0, j1: _run_steps(pure, args, *st, k_restart, j0, j1)  # noqa: E731
    else:
        advance = lambda st, j0, j1: _advance_python(op.matvec, st, k_restart, j0, j1, on_host)  # noqa: E731
    with _single_threaded_blas(on_host):
        V, alphas, betas = _drive(advance, state, m_total, m, stop if grow else None,
                                  ex.check_every or max(10, m // 10), ex.progress, j0, store)
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
