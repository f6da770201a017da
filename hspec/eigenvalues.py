"""Top eigenvalues of a loss's Hessian: Lanczos, convergence bookkeeping and combination of starts."""

from __future__ import annotations

import dataclasses
import time
import warnings
from functools import partial

import jax
import numpy as np

from hspec._checks import resolve_finite_operator
from hspec.krylov import LanczosResult, lanczos
from hspec.krylov_store import KrylovStore
from hspec.ritz import ritz_decomposition

__all__ = [
    "MAX_STEPS_FACTOR",
    "NotConvergedError",
    "NotConvergedWarning",
    "TopEigenvalues",
    "COMBINES",
    "default_max_steps",
    "default_num_steps",
    "distinct_order",
    "top_eigenvalues",
    "top_k_converged",
    "top_k_movement",
]

# A growing run keeps stepping up to this many times its initial steps until the top k converge: randomly
# initialised networks have clustered top eigenvalues and need more steps than trained ones (the default
# run: 450 steps at initialisation against 300 after training, benchmarks/RESULTS.md).
MAX_STEPS_FACTOR = 4


class NotConvergedError(RuntimeError):
    """Fewer than k Ritz values converged and the caller asked to be strict."""


class NotConvergedWarning(UserWarning):
    """Fewer than k Ritz values converged; the tail of the returned values is not yet eigenvalues."""


@dataclasses.dataclass(frozen=True)
class TopEigenvalues:
    """The k largest (algebraic) Hessian eigenvalues and how far to trust them.

    Attributes:
      eigenvalues: ``[k]`` descending.
      residuals: ``[k]`` residual bounds |β_m y_{m,i}| (each value is within this of an eigenvalue).
      converged: ``[k]`` bool, residual <= tol * |λ_1|.
      num_converged: number of converged values among the top k.
      tol: the relative tolerance used.
      num_steps: Lanczos steps m; num_starts: S; combine: "pool", "distinct" or "mean".
      num_distinct: how many of the values are distinct eigenvalues: k, less the converged eigenvalues that
        "pool" repeats because several starts found them (see :func:`distinct_order`); None for "mean".
      std: ``[k]`` standard deviation across starts of the sorted values (combine="mean"), else None.
      vectors: ``[k, n]`` Ritz vectors (flat, selected parameters) when asked for, else None.
      lanczos: the raw :class:`LanczosResult`.
      seconds: wall time of the call.
      moved: the largest relative change, over the ranks, of the top k between the run truncated one check
        interval earlier (``settle_steps`` steps) and the whole run: how far the values still moved at the end.
        A residual bound says that a Ritz value lies near *some* eigenvalue; in a dense tail an eigenvalue that
        the Krylov space has not found yet shifts every rank below it while every value meets the residual
        rule, and only this movement shows it. None when the shorter run has fewer than k values.
      settle: the bound on ``moved`` that the stop rule required (None: not required).
      settle_steps: the interval of ``moved``.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    num_converged: int
    tol: float
    num_steps: int
    num_starts: int
    combine: str
    std: np.ndarray | None
    vectors: np.ndarray | None
    lanczos: LanczosResult
    seconds: float
    num_distinct: int | None = None
    moved: float | None = None
    settle: float | None = None
    settle_steps: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (full float precision)."""
        return {
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "residuals": [float(x) for x in self.residuals],
            "num_converged": int(self.num_converged),
            "tol": self.tol,
            "lanczos_steps": self.num_steps,
            "num_starts": self.num_starts,
            "combine": self.combine,
            "num_distinct": self.num_distinct,
            "std": None if self.std is None else [float(x) for x in self.std],
            "seconds": self.seconds,
            "moved": self.moved,
            "settle": self.settle,
            "settle_steps": self.settle_steps,
        }


def default_num_steps(k: int, dim: int | None = None) -> int:
    """The default Lanczos steps for the top k: Ritz values near rank k converge only when m is well above k.

    Args:
      k: how many top eigenvalues are wanted.
      dim: n, the number of parameters (a Krylov space cannot be larger); ``None`` when not known yet
        (no bound).

    Returns:
      m = max(3k, k + 100), at most n.
    """
    m = max(3 * k, k + 100)
    return m if dim is None else min(dim, m)


def default_max_steps(num_steps: int, dim: int | None = None) -> int:
    """The default limit of a growing run: keep stepping up to MAX_STEPS_FACTOR x num_steps.

    Args:
      num_steps: the initial Lanczos steps m.
      dim: n, the number of parameters; ``None`` when not known yet (no bound).

    Returns:
      min(n, MAX_STEPS_FACTOR * m).
    """
    m = MAX_STEPS_FACTOR * num_steps
    return m if dim is None else min(dim, m)


COMBINES = ("pool", "distinct", "mean")

# Two starts' converged Ritz values are the same eigenvalue found twice when they differ by no more than their
# residual bounds (each lies within its bound of an eigenvalue) plus this many ulps of |λ_1| in the Hessian-
# vector products' precision: the bounds come from the tridiagonal T and do not see the products' rounding
# (float32 starts agree to ~1e-9 relative while their bounds say ~1e-12).
_DISTINCT_ULPS = 100


def distinct_order(ritz_values: np.ndarray, residuals: np.ndarray, tol: float, eps: float | None = None) -> np.ndarray:
    """The pooled Ritz values of several starts, each eigenvalue found by more than one start kept once.

    Independent starts of a single-vector Lanczos run each converge to the same top eigenvalues, so pooling
    their Ritz values repeats every converged eigenvalue up to S times (and cannot reveal a true multiplicity:
    one start finds one copy of a repeated eigenvalue). A converged value of one start that lies within
    r_a + r_b (+ rounding) of a kept converged value of another start, not yet matched to this start, is
    that eigenvalue again and is dropped; unconverged values are all kept, as pooled.

    Args:
      ritz_values, residuals: ``[S, m]`` Ritz values and residual bounds of each start.
      tol: convergence tolerance relative to |λ_1|.
      eps: machine epsilon of the Hessian-vector products (default: that of ``ritz_values``' dtype).

    Returns:
      Indices into the raveled ``[S * m]`` arrays, the kept values in descending order.
    """
    order = np.argsort(-np.ravel(ritz_values), kind="stable")
    # Work in descending order: values[0] is λ_1, as _converged_mask expects.
    values, res = np.ravel(ritz_values)[order], np.ravel(residuals)[order]
    starts = np.repeat(np.arange(np.shape(ritz_values)[0]), np.shape(ritz_values)[1])[order]
    if eps is None:
        eps = float(np.finfo(values.dtype if values.dtype.kind == "f" else np.float64).eps)
    slack = _DISTINCT_ULPS * eps * (abs(float(values[0])) if values.size else 0.0)
    converged = _converged_mask(values, res, tol)
    kept: list[int] = []
    found_by: list[set[int]] = []  # per kept value: the starts that found it
    max_res_kept = 0.0  # the largest residual bound of a kept converged value: how far back a match can be
    for i in range(values.size):
        match = None
        if converged[i]:
            # Kept values are in descending order: walk back over those close enough above this one.
            for j in range(len(kept) - 1, -1, -1):
                gap = values[kept[j]] - values[i]
                if gap > res[i] + max_res_kept + slack:
                    break
                if (converged[kept[j]] and starts[i] not in found_by[j]
                        and gap <= res[i] + res[kept[j]] + slack):
                    match = j
                    break
        if match is None:
            kept.append(int(i))
            found_by.append({int(starts[i])})
            if converged[i]:
                max_res_kept = max(max_res_kept, float(res[i]))
        else:
            found_by[match].add(int(starts[i]))
    return order[np.asarray(kept, dtype=np.int64)]


def _combine(ritz_values: np.ndarray, residuals: np.ndarray, k: int, combine: str, tol: float, eps: float):
    """Top k over the starts: pooled (merge, sort, take k), distinct (pooled, each converged eigenvalue found by
    several starts once) or the mean of each start's sorted top k."""
    if combine in ("pool", "distinct"):
        if combine == "pool":
            order = np.argsort(-ritz_values.ravel(), kind="stable")[:k]
        else:
            order = distinct_order(ritz_values, residuals, tol, eps)[:k]
        return ritz_values.ravel()[order], residuals.ravel()[order], None, order
    if combine == "mean":
        return (
            ritz_values[:, :k].mean(axis=0),
            residuals[:, :k].max(axis=0),
            ritz_values[:, :k].std(axis=0, ddof=1) if ritz_values.shape[0] > 1 else None,
            None,
        )
    raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")


def _converged_mask(values: np.ndarray, residuals: np.ndarray, tol: float) -> np.ndarray:
    """residual <= tol * |λ_1| (λ_1 the largest of the values)."""
    lam1 = abs(float(values[0])) if values.size else 0.0
    return residuals <= tol * max(lam1, np.finfo(np.float64).tiny)


def _top_k_of(alphas: np.ndarray, betas: np.ndarray, *, k: int, combine: str, tol: float,
              eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The combined top k Ritz values of a run and their residual bounds."""
    values, residuals, _, _ = ritz_decomposition(alphas, betas)
    top, res, _, _ = _combine(values, residuals, k, combine, tol, eps)
    return top, res


def top_k_movement(alphas: np.ndarray, betas: np.ndarray, back: int, *, k: int, combine: str = "pool",
                   tol: float = 1e-4, eps: float = 0.0, now: np.ndarray | None = None) -> float | None:
    """max_i |θ_i(m) − θ_i(m − back)| / |θ_i(m)| over the top k: how far the values moved in the last ``back`` steps.

    A Lanczos run truncated at j steps is exactly a j-step run, so the earlier top k come from the first m − back
    coefficients of ``alphas``/``betas`` (``[S, m]``, as :class:`LanczosResult` holds them). None when either run
    has fewer than k values. ``now``: the whole run's combined top k when the caller has it already.
    """
    m = alphas.shape[1]
    if m - back < 1 or (combine == "mean" and m - back < k):
        return None
    if now is None:
        now, _ = _top_k_of(alphas, betas, k=k, combine=combine, tol=tol, eps=eps)
    before, _ = _top_k_of(alphas[:, :m - back], betas[:, :m - back], k=k, combine=combine, tol=tol, eps=eps)
    if now.size < k or before.size < k:
        return None
    return float(np.max(np.abs(now - before) / np.maximum(np.abs(now), np.finfo(np.float64).tiny)))


def top_k_converged(alphas: np.ndarray, betas: np.ndarray, *, k: int, combine: str = "pool", tol: float = 1e-4,
                    eps: float = 0.0, settle: float | None = None, back: int = 0) -> bool:
    """The stop rule of a growing run: have the top k Ritz values of the run so far (``alphas``/``betas``
    ``[S, m]``) converged (and, with ``settle``, moved by at most that, relative, over the last ``back`` steps)?
    Public so that a replay of the rule on saved coefficients (train.krylov_steps) is this rule, not a copy."""
    if alphas.shape[1] < k and combine == "mean":
        return False
    top, res = _top_k_of(alphas, betas, k=k, combine=combine, tol=tol, eps=eps)
    if not (top.size >= k and bool(np.all(_converged_mask(top, res, tol)))):
        return False
    if settle is None:
        return True
    moved = top_k_movement(alphas, betas, back, k=k, combine=combine, tol=tol, eps=eps, now=top)
    return moved is not None and moved <= settle


def _check_k(k: int, dim: int, num_steps: int, pooled_starts: int) -> None:
    """k must be at least 1, at most n (the real limit, said first), and at most the Ritz values available."""
    if k < 1:
        raise ValueError(f"k={k}: ask for at least one eigenvalue")
    if k > dim:
        raise ValueError(
            f"k={k} is larger than the number of parameters n={dim}: the Hessian has only {dim} eigenvalues. "
            f"Use k <= {dim}."
        )
    available = min(num_steps, dim) * pooled_starts
    if k > available:
        raise ValueError(
            f"k={k} is larger than the Ritz values available (num_steps={num_steps} x num_starts={pooled_starts}); "
            f"raise num_steps to at least {k} (the default, num_steps=None, is {default_num_steps(k, dim)})"
        )


def _report_convergence(num_converged: int, k: int, m: int, tol: float, strict: bool, kept=None,
                        moved: float | None = None, settle: float | None = None, back: int | None = None) -> None:
    unsettled = settle is not None and not (moved is not None and moved <= settle)
    if num_converged >= k and not unsettled:
        return
    if num_converged < k:
        message = (
            f"only {num_converged} of the top {k} Ritz values converged to residual <= {tol:g}*|lambda_1| after "
            f"{m} Lanczos steps; the rest are not yet eigenvalues. Increase num_steps (or lower k)."
        )
    else:
        message = (
            f"the top {k} Ritz values meet the residual rule after {m} Lanczos steps but are not settled: they "
            f"still moved by up to {moved if moved is not None else float('nan'):.3g} (relative) over the last "
            f"{back} steps, more than settle={settle:g} (an eigenvalue the Krylov space had not found yet shifts "
            f"the ranks below it). Increase max_steps."
        )
    if kept is not None:
        message += (f" The Krylov state of these {m} steps is kept in {kept}: a run with a larger max_steps "
                    "and the same checkpoint_dir continues from it.")
    if strict:
        raise NotConvergedError(message)
    warnings.warn(message, NotConvergedWarning, stacklevel=3)


def top_eigenvalues(
    loss_fn,
    params=None,
    k: int | None = None,
    *,
    key: jax.Array,
    num_steps: int | None = None,
    batches=None,
    wrt=None,
    num_starts: int = 1,
    combine: str = "pool",
    tol: float = 1e-4,
    strict: bool = False,
    method: str | None = None,
    loop: str = "auto",
    basis: str = "auto",
    start: str = "rademacher",
    return_vectors: bool = False,
    progress: bool = False,
    max_steps: int | None = None,
    checkpoint_dir=None,
    checkpoint_identity: dict | None = None,
    settle: float | None = None,
) -> TopEigenvalues:
    """The k largest (algebraic, not magnitude) eigenvalues of the Hessian of ``loss_fn`` at ``params``.

    Two calling forms: ``top_eigenvalues(loss_fn, params, k, key=key, ...)``, or, with an operator
    built once by :func:`hspec.hessian_operator` and shared with other drivers,
    ``top_eigenvalues(op, k=k, key=key, ...)``.

    Args:
      loss_fn: ``loss_fn(params)`` (data closed over) or ``loss_fn(params, batch)`` with ``batches``;
        or a :class:`hspec.HessianOperator` (then params, batches, wrt and method are not given).
      params: parameter pytree θ.
      k: how many eigenvalues (at most n, the number of parameters).
      key: PRNG key of the start vectors.
      num_steps: Lanczos steps m. Default: :func:`default_num_steps` (max(3k, k+100), at most n), and
        then growing up to :func:`default_max_steps` (4x that, at most n) until the top k have converged.
      batches: optional sequence of batches; the Hessian is of the sample-weighted mean loss.
      wrt: parameter subset (regex on leaf paths, callable, or bool pytree); the rest is held fixed.
      num_starts: independent starts run together; ``combine`` says how their Ritz values are merged:
        "pool" (all Ritz values, sorted, top k: the paper's likely reading, METHOD.md §1, which repeats every
        eigenvalue that several starts converged to), "distinct" (pooled, each such eigenvalue once) or
        "mean" (mean of each start's sorted top k, with std).
      tol: a Ritz value is converged when its residual bound is <= tol * |λ_1|.
      strict: raise :class:`NotConvergedError` instead of warning when fewer than k converged.
      method: "linearize" (the default: gradient linearised once, reused) or "jvp" (forward-over-reverse
        each time).
      loop, basis, start, progress: passed to :func:`hspec.lanczos`.
      return_vectors: also return the Ritz vectors of the top k.
      max_steps: if larger than ``num_steps``, keep stepping (checking every num_steps/10 steps) until
        the top k have converged or ``max_steps`` is reached; the steps taken are in ``num_steps`` of the
        result. A truncated Lanczos run is exactly a shorter run, so nothing is recomputed.
      checkpoint_dir: keep the Krylov state there so that a killed call, made again with the same
        arguments, resumes (:func:`hspec.lanczos`); needs the host basis, the CPU default.
      checkpoint_identity: a JSON-serialisable dict naming what the state belongs to; a saved state of
        another identity raises :class:`hspec.KrylovStateError` (:func:`hspec.lanczos`).
      settle: also require, to stop growing, that no rank of the top k moved by more than this (relative) over
        the last check interval (num_steps/10 steps). Residual bounds alone can pass while an eigenvalue of a
        dense tail is still missing (measured on LeNet-5: a top 1000 that met the rule after 2310 steps had ranks
        25% off the 3463-step values, train.krylov_steps). Unsettled at ``max_steps``: a warning, or
        :class:`NotConvergedError` when strict. The movement at the end is always reported (``moved``).

    Returns:
      :class:`TopEigenvalues`.
    """
    t0 = time.perf_counter()
    if k is None:
        # top_eigenvalues(op, 5, key=key) puts k where params goes: say so.
        what = f"k={params} by keyword" if isinstance(params, int) else "k, the number of eigenvalues"
        raise TypeError(
            f"top_eigenvalues: give {what}: top_eigenvalues(op, k=k, key=key) or "
            "top_eigenvalues(loss_fn, params, k, key=key)"
        )
    op = resolve_finite_operator(loss_fn, params, batches=batches, wrt=wrt, method=method,
                                 caller="top_eigenvalues")
    if num_steps is None:
        # Defaults: start at max(3k, k+100) steps and keep going, up to 4x that, until the top k converge.
        num_steps = default_num_steps(k, op.dim)
        max_steps = max_steps if max_steps is not None else default_max_steps(num_steps, op.dim)
    _check_k(k, op.dim, num_steps, num_starts if combine in ("pool", "distinct") else 1)
    m = num_steps
    eps = float(np.finfo(op.dtype).eps)
    back = max(10, m // 10)  # the check interval of a growing run (hspec.lanczos's default), and of `moved`
    result = lanczos(
        op, m, key=key, num_starts=num_starts, start=start, loop=loop, basis=basis,
        return_vectors=return_vectors, progress=progress, max_steps=max_steps,
        stop=partial(top_k_converged, k=k, combine=combine, tol=tol, eps=eps, settle=settle, back=back),
        check_every=back, checkpoint_dir=checkpoint_dir,
        checkpoint_identity=checkpoint_identity,
    )
    values, residuals, std, order = _combine(result.ritz_values, result.residuals, k, combine, tol, eps)
    converged = _converged_mask(values, residuals, tol)
    num_converged = int(np.sum(converged))
    num_distinct = None
    if combine == "distinct":
        num_distinct = int(order.size)
    elif combine == "pool":  # how many of the pooled top k are not an eigenvalue found again by another start
        num_distinct = int(np.isin(order, distinct_order(result.ritz_values, result.residuals, tol, eps)).sum())
    kept = checkpoint_dir if checkpoint_dir is not None and KrylovStore.saved_steps(checkpoint_dir) else None
    moved = top_k_movement(result.alphas, result.betas, back, k=k, combine=combine, tol=tol, eps=eps, now=values)
    _report_convergence(num_converged, k, result.num_steps, tol, strict, kept, moved, settle, back)
    vectors = None
    if return_vectors:
        flat = result.ritz_vectors.reshape(-1, result.ritz_vectors.shape[-1])
        vectors = flat[order] if order is not None else result.ritz_vectors[0, :k]
    return TopEigenvalues(
        eigenvalues=np.asarray(values), residuals=np.asarray(residuals), converged=converged,
        num_converged=num_converged, tol=tol, num_steps=result.num_steps, num_starts=num_starts,
        combine=combine, std=std, vectors=vectors, lanczos=result, seconds=time.perf_counter() - t0,
        num_distinct=num_distinct, moved=moved, settle=settle, settle_steps=back,
    )
