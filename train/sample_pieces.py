"""The Hessian-sample study's pieces: which examples a piece's sample holds, its operator, its Krylov identity, and
one converged spectrum of it (exact, or reduced to its curvature carriers and certified by Weyl's inequality).

train.sample_size plans the pieces, keeps the finished ones and publishes the series; this module measures one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from train.measure import SETTLE, TOL

STUDY = "hessian-sample"
STATES = ("trained", "init")
# The dropped part may move an eigenvalue by at most this fraction of λ_K (Weyl).
CERTIFY_TOLERANCE = 1e-3
# The dropped examples' Gauss-Newton trace, (1/N) Σ_dropped t_i, is budgeted at this fraction of λ_K: a tenth of
# the tolerance, since the residual part of the dropped Hessian is not bounded by its trace.
DROP_BUDGET = 1e-4
CERTIFY_STEPS = 80


@dataclasses.dataclass(frozen=True)
class Piece:
    """One spectrum of the study: a state (trained or init) on draw `draw` of a sample of `size` examples."""

    state: str
    size: int
    draw: int
    reduced: bool = False

    @property
    def name(self) -> str:
        return f"{self.state}-n{self.size}-d{self.draw}{'-reduced' if self.reduced else ''}"


def plan(sizes: list[int], n_train: int, draws: int, draws_up_to: int, states: tuple[str, ...],
         reduce_from: int | None, draws_from: int = 1) -> list[Piece]:
    """The pieces in the order they are computed: the trained network first (it decides the question), small
    samples first within a state; extra draws after every size's first draw."""
    out = []
    for state in states:
        first = [Piece(state, n, 0, _reduced(state, n, reduce_from)) for n in sizes if n <= n_train]
        extra = [Piece(state, n, d, _reduced(state, n, reduce_from)) for n in sizes
                 if draws_from <= n <= min(draws_up_to, n_train) for d in range(1, draws)]
        out += first + extra
    return out


def _reduced(state: str, size: int, reduce_from: int | None) -> bool:
    return state == "trained" and reduce_from is not None and size >= reduce_from


def sample_indices(exp: Any, size: int, draw: int) -> np.ndarray:
    """The sorted training-set rows of draw `draw` of a `size`-example sample: draw 0 is what a run with
    hessian_samples=size uses (the run's `hessian_sample` stream), draw i uses fold_in(that stream, i)."""
    import jax

    from train import data

    n = len(exp.ds.y_train)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    key = exp.keys.hessian_sample if draw == 0 else jax.random.fold_in(exp.keys.hessian_sample, draw)
    return data.subset_indices(key, n, size)


def state_fingerprint(params: Any) -> str:
    """sha256 of a parameter pytree's bytes (the identity of a network in a Krylov state)."""
    import jax

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def gn_traces(exp: Any, state: Any, cache: Path, compute: bool = True) -> np.ndarray | None:
    """The per-example Gauss-Newton traces of `state` over the whole training set, cached in `cache` under the
    network's fingerprint (None when not cached and `compute` is false)."""
    from hspec.curvature import gauss_newton_traces
    from train.hessian import example_loss, jacobian_output_fn

    path = cache / f"gn-traces-{state_fingerprint(state.params)[:16]}.npy"
    if path.is_file():
        return np.load(path)
    if not compute:
        return None
    t = gauss_newton_traces(jacobian_output_fn(exp, state.rest), example_loss, state.params,
                            (exp.ds.x_train, exp.ds.y_train))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), t)
    os.replace(path.with_suffix(".tmp.npy"), path)
    return t


def carriers(t: np.ndarray) -> dict[str, Any]:
    """The curvature diagnostic of traces `t` as a JSON-ready dict."""
    from hspec.curvature import CurvatureCarriers

    return CurvatureCarriers.of(t).to_dict()


def split_by_curvature(t_sample: np.ndarray, budget: float) -> np.ndarray:
    """A boolean mask of the examples to keep: all but the smallest traces whose mean over the sample,
    (1/N) Σ_dropped t_i, stays within `budget`."""
    n = t_sample.size
    order = np.argsort(t_sample)  # smallest first
    dropped_mass = np.cumsum(t_sample[order]) / n
    num_dropped = int(np.searchsorted(dropped_mass, budget, side="right"))
    keep = np.ones(n, bool)
    keep[order[:num_dropped]] = False
    return keep


def krylov_identity(exp: Any, state: Any, piece: Piece, idx: np.ndarray, keep: np.ndarray | None) -> dict[str, Any]:
    """What a piece's Krylov state belongs to: the network, the sample (and the kept part), the settings."""
    identity = {"study": STUDY, "network": state_fingerprint(state.params), "piece": piece.name,
                "sample": hashlib.sha256(np.asarray(idx, np.int64).tobytes()).hexdigest(), "k": exp.cfg.k,
                "tol": TOL, "micro_batch": exp.cfg.hessian_batch_size, "start": "lanczos_start",
                "method": _method(int(np.sum(keep)) if keep is not None else idx.size)}
    if keep is not None:
        identity["kept"] = hashlib.sha256(np.packbits(keep).tobytes()).hexdigest()
    return identity


def _method(n: int) -> str:
    """The operator's method for n examples (a Krylov state continues only with the same products)."""
    from train.measure import linearize_max_examples

    return "linearize" if n <= linearize_max_examples() else "jvp"


def piece_operator(exp: Any, state: Any, idx: np.ndarray, factory: Any = None) -> Any:
    """The Hessian operator of `state` on the training rows `idx` (mean loss, micro-batched in one scan), through
    the study's hspec.HessianFactory (samples of one size share its programs; None: a new one)."""
    from train.hessian import hessian_loss
    from train.measure import sample_operator

    return sample_operator(hessian_loss(exp.model_defs.eval_def, state.rest), state.params,
                           (exp.ds.x_train[idx], exp.ds.y_train[idx]), exp.cfg.hessian_batch_size, factory=factory)


def converged_top(op: Any, exp: Any, state_dir: Path, identity: dict, progress: bool) -> Any:
    """The strict top K of an operator (the run's step rule, grown until they converge and settle), its Krylov
    state kept in `state_dir` under `identity`."""
    from train.measure import SpectrumSpec, top_k

    spec = SpectrumSpec(k=exp.cfg.k, lanczos_steps=exp.cfg.lanczos_steps, max_lanczos_steps=exp.cfg.max_lanczos_steps,
                        tol=TOL, settle=SETTLE)
    return top_k(op, spec, exp.keys.lanczos_start, progress, state_dir, identity)[0]


def spectrum_entry(values: np.ndarray, k: int, top: Any, seconds: float) -> dict[str, Any]:
    """The JSON entry of one converged spectrum: the fit at K, convergence, the values, the seconds."""
    from train import record

    return dict(record.refit(values, k), num_converged=int(top.num_converged), lanczos_steps=int(top.num_steps),
                moved=top.moved, settle=top.settle, eigenvalues=np.asarray(values), seconds=seconds)


def exact_piece(exp: Any, state: Any, piece: Piece, idx: np.ndarray, work: Path, progress: bool,
                factory: Any = None) -> dict[str, Any]:
    """A spectrum on the whole sample."""
    t0 = time.perf_counter()
    top = converged_top(piece_operator(exp, state, idx, factory), exp, work / f"{piece.name}.lanczos",
                        krylov_identity(exp, state, piece, idx, None), progress)
    return spectrum_entry(top.eigenvalues, exp.cfg.k, top, top.lanczos.resumed_s + time.perf_counter() - t0)


def reduced_piece(exp: Any, state: Any, piece: Piece, idx: np.ndarray, t_sample: np.ndarray, lambda_k_guess: float,
                  work: Path, progress: bool, factory: Any = None) -> dict[str, Any]:
    """A spectrum of the examples that carry the curvature, certified against the dropped ones (Weyl).

    The kept operator is the mean over the kept examples scaled by n_kept / N, the dropped part's norm that of the
    mean over the dropped ones scaled by n_dropped / N: together they are the sample's Hessian."""
    import jax

    from hspec.certify import NormEstimate, spectral_norm, weyl_certificate

    t0 = time.perf_counter()
    keep = split_by_curvature(t_sample, DROP_BUDGET * lambda_k_guess)
    n, n_kept = idx.size, int(keep.sum())
    top = converged_top(piece_operator(exp, state, idx[keep], factory), exp, work / f"{piece.name}.lanczos",
                        krylov_identity(exp, state, piece, idx, keep), progress)
    values = np.asarray(top.eigenvalues, np.float64) * (n_kept / n)
    t1 = time.perf_counter()
    if n_kept < n:
        norm = spectral_norm(piece_operator(exp, state, idx[~keep], factory),
                             key=jax.random.fold_in(exp.keys.lanczos_start, 1),
                             num_steps=CERTIFY_STEPS, scale=(n - n_kept) / n)
    else:  # nothing dropped: the operator is the sample's
        norm = NormEstimate(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
    cert = weyl_certificate(norm, values, exp.cfg.k, CERTIFY_TOLERANCE)
    entry = spectrum_entry(values, exp.cfg.k, top, top.lanczos.resumed_s + time.perf_counter() - t0)
    entry["reduced"] = {"kept": n_kept, "dropped": n - n_kept, "drop_budget": DROP_BUDGET * lambda_k_guess,
                        "dropped_gn_trace": float(np.sum(t_sample[~keep]) / n), "certificate": cert,
                        "certify_s": time.perf_counter() - t1}
    return entry

def parse_piece_name(name: str) -> tuple[str, int, int, bool]:
    """(state, size, draw, reduced) of a piece's name, Piece.name's inverse."""
    state, rest = name.split("-n", 1)
    parts = rest.split("-")
    return state, int(parts[0]), int(parts[1][1:]), len(parts) > 2 and parts[2] == "reduced"


def piece_order(name: str) -> tuple:
    """The sort key of piece names: the trained network first, then by size, draw, reduction."""
    state, size, draw, reduced = parse_piece_name(name)
    return (STATES.index(state) if state in STATES else 9, size, draw, reduced)
