"""Hessian-vector products on parameter pytrees, over datasets and parameter subsets (METHOD.md §1).

Two layers:

* :func:`hvp` is the plain forward-over-reverse product ``jax.jvp(jax.grad(loss), (params,), (v,))[1]``.
  It contains no Python-level checks so that it can be called inside a user's own ``jax.jit``.
* :class:`HessianOperator` (built by :func:`hessian_operator`) is what the drivers (Lanczos, trace,
  density, power iteration) use: a symmetric linear map on flat vectors of the selected parameters,
  with three things the plain product lacks:

  1. closed-over arrays (the data a user's ``loss = lambda p: ce(model(p, X), Y)`` captures) are hoisted
     out of the program and passed as arguments, because XLA constant-folds closed-over arrays and a
     LeNet HVP then compiles for 25 s instead of 1 s (FINDINGS.md, trap 2);
  2. a dataset given as several batches is a sample-count-weighted mean, so the product equals one HVP
     over the union of the batches (an unequal last batch included), compiled once per batch shape;
  3. the gradient may be linearised once at θ and the linear map reused for every product, which costs
     1.1-1.4 gradients per product instead of 1.7-1.9 (FINDINGS.md);
  4. a whole dataset (``data=``, e.g. the whole training set) is one batch whose mean loss is accumulated over
     micro-batches of ``micro_batch`` examples in one ``lax.scan``: one compiled program per product, the data
     on the device once, one micro-batch's activations in memory (with ``method="jvp"``).

The operator owns its compiled programs: a :class:`HessianFactory` builds operators and keeps the programs it
compiled, so that a caller who keeps one factory (a training run measured at many checkpoints) compiles once.
:func:`hessian_operator` is a factory used once. Nothing is cached at module level.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hspec._checks import (
    check_finite_loss,
    check_flat_vectors,
    check_floating_parameters,
    check_same_structure,
    check_scalar_loss,
)

PyTree = Any

__all__ = [
    "hvp",
    "HessianFactory",
    "HessianOperator",
    "hessian_operator",
    "select_parameters",
    "hoist_constants",
    "resolve_operator",
    "micro_batched",
]


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """Hessian-vector product H·v of ``loss_fn`` at ``params`` (forward-over-reverse).

    Args:
      loss_fn: scalar function of a parameter pytree.
      params: point θ at which the Hessian is taken.
      v: pytree with the structure and shapes of ``params``.

    Returns:
      H(θ)·v as a pytree like ``params``. Equation: ``jax.jvp(jax.grad(L), (θ,), (v,))[1]``.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


# --------------------------------------------------------------------------------------------------
# Hoisting closed-over constants


def hoist_constants(fn: Callable[..., Any], *example_args: Any) -> tuple[Callable[..., Any], list]:
    """Trace ``fn`` once and return ``(pure_fn, consts)`` with ``pure_fn(consts, *args) == fn(*args)``.

    Arrays that ``fn`` closes over become the jaxpr's constants; passing them back as arguments keeps
    XLA from folding them into the compiled program. (``jax.closure_convert`` does not hoist concrete
    arrays, FINDINGS.md.)

    Args:
      fn: function of pytrees returning a pytree.
      *example_args: arguments with the shapes and dtypes ``pure_fn`` will be called with.

    Returns:
      ``pure_fn`` and the list of constant arrays it expects as its first argument.
    """
    pure_fn, consts, _, _ = _hoist(fn, *example_args)
    return pure_fn, consts


def _hoist(fn, *example_args):
    """:func:`hoist_constants`, also returning the output's shape (ShapeDtypeStruct pytree) and the jaxpr."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    out_tree = jax.tree.structure(out_shape)
    jaxpr = closed.jaxpr

    def pure_fn(consts, *args):
        flat_args = jax.tree.leaves(args)
        out = jax.core.eval_jaxpr(jaxpr, list(consts), *flat_args)
        return jax.tree.unflatten(out_tree, out)

    return pure_fn, list(closed.consts), out_shape, jaxpr


# --------------------------------------------------------------------------------------------------
# Parameter subsets


def _path_string(path) -> str:
    """'a/b/0/kernel' for a jax key path (what ``wrt`` regexes match against)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _named_leaves(params: PyTree) -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs, paths as ``wrt`` regexes see them."""
    return [(_path_string(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]


def _selection_mask(params: PyTree, wrt) -> tuple[bool, ...]:
    """One bool per leaf of ``params``: is it in the Hessian's variables?"""
    leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
    if wrt is None:
        return tuple(True for _ in leaves_with_path)
    if isinstance(wrt, str):
        pattern = re.compile(wrt)
        return tuple(bool(pattern.search(_path_string(p))) for p, _ in leaves_with_path)
    if callable(wrt):
        return tuple(bool(wrt(_path_string(p), leaf)) for p, leaf in leaves_with_path)
    mask_leaves, mask_tree = jax.tree.flatten(wrt)
    if mask_tree != jax.tree.structure(params):
        raise ValueError(
            "wrt mask does not have the structure of params: give a pytree of bools shaped like params, "
            f"a regex on leaf paths, or a callable (path, leaf) -> bool. Got {mask_tree} vs "
            f"{jax.tree.structure(params)}."
        )
    return tuple(bool(m) for m in mask_leaves)


def select_parameters(params: PyTree, wrt=None) -> tuple[list, list, Callable[[list, list], PyTree]]:
    """Split ``params`` into the leaves the Hessian is taken over and the ones held fixed.

    Args:
      params: parameter pytree.
      wrt: ``None`` (all leaves), a regex searched in each leaf's path such as ``"Dense_2|head"`` (paths
        look like ``layers/2/kernel``), a callable ``(path, leaf) -> bool``, or a pytree of bools shaped
        like ``params``.

    Returns:
      ``(selected, fixed, merge)``: two lists of leaves and ``merge(selected, fixed) -> params``.
    """
    leaves, treedef = jax.tree.flatten(params)
    mask = _selection_mask(params, wrt)
    if not any(mask):
        paths = [_path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise ValueError(f"wrt={wrt!r} selects no parameters; leaf paths are: {paths}")
    selected = [leaf for leaf, m in zip(leaves, mask) if m]
    fixed = [leaf for leaf, m in zip(leaves, mask) if not m]
    return selected, fixed, partial(_merge, mask=mask, treedef=treedef)


def _merge(selected: list, fixed: list, *, mask, treedef) -> PyTree:
    it_sel, it_fix = iter(selected), iter(fixed)
    return jax.tree.unflatten(treedef, [next(it_sel) if m else next(it_fix) for m in mask])


# --------------------------------------------------------------------------------------------------
# A whole dataset as one batch, accumulated over micro-batches


def micro_batched(data, micro_batch: int) -> tuple:
    """Split a dataset into ``(stacked, remainder)``: ``[B, C, ...]`` equal micro-batches and the rest.

    Args:
      data: pytree of arrays with a leading sample axis N.
      micro_batch: C >= 1, examples per micro-batch.

    Returns:
      ``(stacked, remainder)``: the first ``C * (N // C)`` examples reshaped to ``[N // C, C, ...]`` (None when
      N < C) and the last ``N % C`` examples (None when C divides N).
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    n = _batch_size(data)
    full = n - n % micro_batch
    stacked = None if full == 0 else jax.tree.map(
        lambda a: jnp.reshape(a[:full], (full // micro_batch, micro_batch, *np.shape(a)[1:])), data)
    remainder = None if full == n else jax.tree.map(lambda a: a[full:], data)
    return stacked, remainder


def scanned_mean_loss(loss_fn: Callable, micro_batch: int, num_samples: int) -> Callable:
    """``loss(params, (stacked, remainder))``: the mean of ``loss_fn`` over all the examples, one ``lax.scan``.

    ``loss_fn(params, batch)`` is a mean over its batch, so each micro-batch counts with its size: the result
    equals ``loss_fn`` over the whole dataset at float rounding, and so do its gradient and Hessian (the scan
    is differentiated as a whole, so an HVP is one program that loops over the micro-batches).
    """

    def loss(params, parts):
        stacked, remainder = parts
        total = jnp.zeros(())
        if stacked is not None:
            def body(acc, batch):
                return acc + jnp.asarray(loss_fn(params, batch)).reshape(()) * micro_batch, None

            total = jax.lax.scan(body, total, stacked)[0]
        if remainder is not None:
            total = total + jnp.asarray(loss_fn(params, remainder)).reshape(()) * _batch_size(remainder)
        return total / num_samples

    return loss


# --------------------------------------------------------------------------------------------------
# The operator


def _batch_size(batch) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("a batch has no arrays; batches must be pytrees of arrays with a leading sample axis")
    return int(np.shape(leaves[0])[0])


def _avals(tree) -> tuple:
    return tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in jax.tree.leaves(tree)) + (
        jax.tree.structure(tree),
    )


@dataclasses.dataclass(frozen=True)
class _Programs:
    """The compiled programs of one traced loss and its shapes, kept by the :class:`HessianFactory` that built them."""

    loss: Callable  # (consts, sel, fixed, batch) -> scalar, jitted
    linearize: Callable  # (consts, sel, fixed, batch) -> linear map Partial, jitted
    apply_linear: Callable  # (f_jvp, v_flat[S, n]) -> Hv_flat[S, n], jitted
    apply_jvp: Callable  # (consts, sel, fixed, batch, v_flat[S, n]) -> Hv_flat[S, n], jitted


def _loss_of_parts(loss_fn, merge, has_batches):
    """The loss as a function of (selected leaves, fixed leaves, batch)."""

    def loss_of_parts(sel, fix, batch):
        params = merge(sel, fix)
        return loss_fn(params, batch) if has_batches else loss_fn(params)

    return loss_of_parts


def _build_programs(pure_loss, selected) -> _Programs:
    """Jit the loss, linearisation and HVP programs around a constant-free loss."""
    _, unravel = ravel_pytree(selected)

    def scalar_loss(consts, sel, fix, batch):
        return jnp.asarray(pure_loss(consts, sel, fix, batch)).reshape(())

    grad_fn = jax.grad(scalar_loss, argnums=1)

    def linearize(consts, sel, fix, batch):
        with jax.default_matmul_precision("highest"):
            return jax.linearize(lambda s: grad_fn(consts, s, fix, batch), sel)[1]

    def apply_linear(f_jvp, v_flat):
        with jax.default_matmul_precision("highest"):
            return jax.vmap(lambda v: ravel_pytree(f_jvp(unravel(v)))[0])(v_flat)

    def apply_jvp(consts, sel, fix, batch, v_flat):
        def one(v):
            tangent = jax.jvp(lambda s: grad_fn(consts, s, fix, batch), (sel,), (unravel(v),))[1]
            return ravel_pytree(tangent)[0]

        with jax.default_matmul_precision("highest"):
            return jax.vmap(one)(v_flat)

    return _Programs(
        loss=jax.jit(scalar_loss),
        linearize=jax.jit(linearize),
        apply_linear=jax.jit(apply_linear),
        apply_jvp=jax.jit(apply_jvp),
    )


class HessianOperator:
    """H (or its restriction to a parameter subset) as a symmetric linear map on flat vectors.

    Use :func:`hessian_operator` to build one, once: every driver (``top_eigenvalues``,
    ``hutchinson_trace``, ``spectral_density``, ``power_iteration``, ``lanczos``) accepts it in place of
    ``(loss_fn, params)``, so one linearisation of the gradient serves them all. ``op.matvec(V)`` takes
    a ``[S, n]`` array of S vectors (or one ``[n]`` vector) and returns H applied to each; ``op.dim`` is
    n; ``op.ravel`` / ``op.unravel`` convert between flat vectors and the selected-parameter list. It
    satisfies :class:`hspec.SymmetricOperator`, the interface Lanczos needs.
    """

    def __init__(self, parts: list, selected: list, fixed: list, weights: list, method: str, num_samples):
        # parts: one (programs, consts, batch) per batch.
        self._parts = parts
        self._selected = selected
        self._fixed = fixed
        self._weights = weights
        self.method = method
        self.num_samples = num_samples
        flat, self._unravel = ravel_pytree(selected)
        self.dim = int(flat.shape[0])
        self.dtype = flat.dtype
        self._loss = None  # the loss at θ, computed once (the drivers' finiteness check reads it)
        self._linear_maps = None
        if method == "linearize":
            self._linear_maps = [p.linearize(c, selected, fixed, b) for p, c, b in parts]

    @property
    def pure_matvec(self) -> "_PureMatvec":
        """``pure_matvec(args, V)``: the product as a hashable function of explicit arguments.

        Lanczos's compiled ``fori`` loop calls it with ``self.args`` so that nothing is closed over.
        """
        return _PureMatvec(tuple(p for p, _, _ in self._parts), self.method)

    @property
    def args(self) -> tuple:
        """The arrays ``pure_matvec`` needs: linear maps or (constants, parameters, batch), and weights."""
        if self._linear_maps is not None:
            per_part = list(self._linear_maps)
        else:
            per_part = [(c, self._selected, self._fixed, b) for _, c, b in self._parts]
        return per_part, list(self._weights)

    def matvec(self, v: jax.Array) -> jax.Array:
        """H·v for a flat vector ``[n]`` or a stack ``[S, n]``; sample-weighted over the batches."""
        check_flat_vectors(v, self.dim, "HessianOperator.matvec")  # static shapes: free at run time
        single = v.ndim == 1
        out = self.pure_matvec(self.args, v[None] if single else v)
        return out[0] if single else out

    def loss(self) -> jax.Array:
        """The loss at θ (sample-weighted over the batches), without weight decay; computed once."""
        if self._loss is None:
            self._loss = sum(
                p.loss(c, self._selected, self._fixed, b) * w for (p, c, b), w in zip(self._parts, self._weights)
            )
        return self._loss

    def ravel(self, selected: list) -> jax.Array:
        """Flat vector ``[n]`` of a list of selected leaves (shaped like the selected parameters)."""
        check_same_structure(self._selected, selected, "HessianOperator.ravel's argument (the selected leaves)")
        return ravel_pytree(selected)[0]

    def unravel(self, flat: jax.Array) -> list:
        """List of selected leaves of a flat vector ``[n]``."""
        check_flat_vectors(flat, self.dim, "HessianOperator.unravel")
        if flat.ndim != 1:
            raise ValueError(f"HessianOperator.unravel takes one vector of shape [{self.dim}]; got shape {flat.shape}")
        return self._unravel(flat)


def _batched_form(loss_fn, batches, data, micro_batch) -> tuple:
    """``(loss_fn, batch list, sample counts, has_batches)``: ``data`` as one micro-batched scan, or the batches."""
    if data is not None:
        if batches is not None:
            raise ValueError("give batches or data, not both: data is one dataset accumulated over micro-batches")
        n = _batch_size(data)
        micro_batch = n if micro_batch is None else int(micro_batch)
        parts = micro_batched(data, micro_batch)  # checks micro_batch >= 1
        return scanned_mean_loss(loss_fn, micro_batch, n), [parts], [n], True
    if micro_batch is not None:
        raise ValueError("micro_batch needs data= (one dataset); with batches= each batch is one product already")
    if batches is None:
        return loss_fn, [()], [1], False
    batch_list = list(batches)
    if not batch_list:
        raise ValueError("batches is empty: give at least one batch, or batches=None for a loss of params only")
    return loss_fn, batch_list, [_batch_size(b) for b in batch_list], True


class HessianFactory:
    """Builds Hessian operators and owns their compiled programs: keep one to measure many points, compile once.

    A training run measures the same loss at many checkpoints; the programs (loss, linearisation, products)
    depend on the traced loss and its shapes, not on the parameter values or the data. Keep one factory for the
    run and call it at each checkpoint, as matfree's factories are built once and applied to new arguments::

        hessian = hspec.HessianFactory()
        for params in checkpoints:
            op = hessian(loss_fn, params, batches=batches)   # compiles at the first checkpoint only

    A loss is recognised by the program it traces to (its jaxpr, with the parameter selection and shapes), not by
    the Python function: a new closure over other arrays of the same shapes (a checkpoint's BatchNorm
    statistics, another Hessian sample) reuses the programs, its arrays passed to them as arguments (FINDINGS.md,
    trap 2). The factory keeps programs only, no parameters or data. :func:`hessian_operator` is a factory used
    once.
    """

    def __init__(self):
        self._programs: dict = {}  # (jaxpr text, shapes, selection) -> _Programs, owned by this factory

    def __call__(self, loss_fn: Callable, params: PyTree, *, batches: Sequence | None = None, wrt=None,
                 method: str = "linearize", data=None, micro_batch: int | None = None) -> HessianOperator:
        """The Hessian operator of ``loss_fn`` at ``params`` on this factory's programs; arguments as
        :func:`hessian_operator`."""
        if method not in ("linearize", "jvp"):
            raise ValueError(f"method must be 'linearize' or 'jvp', got {method!r}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be a function of the parameters; got a {type(loss_fn).__name__}")
        if not jax.tree.leaves(params):
            raise ValueError("params has no arrays: give the parameter pytree the loss is a function of")
        loss_fn, batch_list, sizes, has_batches = _batched_form(loss_fn, batches, data, micro_batch)
        weights = [s / float(sum(sizes)) for s in sizes]
        selected, fixed, merge = select_parameters(params, wrt)
        mask = _selection_mask(params, wrt)
        check_floating_parameters([named for named, m in zip(_named_leaves(params), mask) if m])
        by_shape: dict = {}
        parts = []
        for batch in batch_list:
            shape_key = _avals(batch)
            if shape_key not in by_shape:
                by_shape[shape_key] = self._programs_for(loss_fn, params, wrt, batch, has_batches, selected, fixed,
                                                         merge)
            programs, consts = by_shape[shape_key]
            parts.append((programs, consts, batch))
        num_samples = int(sum(sizes)) if has_batches else None
        return HessianOperator(parts, selected, fixed, weights, method, num_samples)

    def _programs_for(self, loss_fn, params, wrt, batch, has_batches, selected, fixed, merge):
        """Programs and hoisted constants for one batch shape: compiled here when their traced loss is new.

        The loss is traced on every call (cheap), which refreshes its constants. A jaxpr has fixed shapes, so an
        unequal last batch gets programs of its own: one compile per distinct batch shape, never one per batch.
        """
        pure_loss, consts, out_shape, jaxpr = _hoist(_loss_of_parts(loss_fn, merge, has_batches), selected, fixed,
                                                     batch)
        check_scalar_loss(out_shape)  # before jax.grad turns a non-scalar loss into a reshape error
        key = (str(jaxpr), _avals(params), _selection_mask(params, wrt), _avals(batch), has_batches)
        if key not in self._programs:
            self._programs[key] = _build_programs(pure_loss, selected)
        return self._programs[key], consts


def hessian_operator(
    loss_fn: Callable,
    params: PyTree,
    *,
    batches: Sequence | None = None,
    wrt=None,
    method: str = "linearize",
    data=None,
    micro_batch: int | None = None,
) -> HessianOperator:
    """Build the Hessian operator of ``loss_fn`` at ``params``, once, for every driver to share.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` (data closed over), or ``loss_fn(params, batch) -> scalar``
        (mean loss over the batch) when ``batches`` is given. The scalar may have shape ``()`` or any
        shape holding one element, such as ``(1,)``; anything larger is an error that names its shape.
      params: parameter pytree θ. The leaves the Hessian is taken over must be floating point.
      batches: optional sequence of batches (pytrees whose leaves have a leading sample axis). The
        operator is Σ_b (n_b/N) H_b, which equals the Hessian of the mean loss over the union.
      wrt: parameter subset (see :func:`select_parameters`); the other leaves are held fixed (and may
        be of any dtype).
      method: ``"linearize"`` (linearise the gradient once per batch, here, and reuse it: fastest,
        keeps the linearisation residuals in memory) or ``"jvp"`` (forward-over-reverse at every
        product).
      data: instead of ``batches``, one dataset (a pytree of arrays with a leading sample axis, such as a whole
        training set) whose mean loss is the Hessian's, accumulated over micro-batches of ``micro_batch``
        examples inside one ``lax.scan`` (one compiled program per product; the data stays on the device).
        Use ``method="jvp"`` for a large dataset: the linearisation keeps every micro-batch's residuals.
      micro_batch: examples per micro-batch of ``data`` (default: all of them at once).

    Returns:
      A :class:`HessianOperator`.
    """
    return HessianFactory()(loss_fn, params, batches=batches, wrt=wrt, method=method, data=data,
                            micro_batch=micro_batch)


_GIVEN_BY_OPERATOR = ("params", "batches", "wrt", "method")


def resolve_operator(loss_fn_or_op, params=None, *, batches=None, wrt=None, method=None, caller: str):
    """The operator a driver works on: the one given, or one built from ``(loss_fn, params)``.

    Either way its loss at θ is checked to be finite (evaluated once per operator, then cached).

    Args:
      loss_fn_or_op: a :class:`HessianOperator`, or a loss function.
      params, batches, wrt, method: as in :func:`hessian_operator`, for a loss function only (the
        operator already fixes them); ``method=None`` means ``"linearize"``.
      caller: the driver's name, for the messages.

    Returns:
      A :class:`HessianOperator` whose loss is finite.
    """
    if isinstance(loss_fn_or_op, HessianOperator):
        given = [n for n, v in zip(_GIVEN_BY_OPERATOR, (params, batches, wrt, method)) if v is not None]
        if given:
            raise TypeError(
                f"{caller}: {', '.join(given)} cannot be given with a HessianOperator, which already fixes "
                f"them; give them to hspec.hessian_operator instead (other arguments by keyword, e.g. "
                f"{caller}(op, key=key, ...))"
            )
        op = loss_fn_or_op
    else:
        if params is None:
            raise TypeError(f"{caller}: give params after the loss function, or a HessianOperator alone")
        op = hessian_operator(loss_fn_or_op, params, batches=batches, wrt=wrt, method=method or "linearize")
    check_finite_loss(float(op.loss()))
    return op


@dataclasses.dataclass(frozen=True)
class _PureMatvec:
    """Σ_b w_b H_b·V over the batches, each batch's product from its own compiled program."""

    programs: tuple
    method: str

    def __call__(self, args, v_flat):
        per_part, weights = args
        total = None
        for programs, part, w in zip(self.programs, per_part, weights):
            if self.method == "linearize":
                hv = programs.apply_linear(part, v_flat)
            else:
                hv = programs.apply_jvp(*part, v_flat)
            if len(self.programs) > 1:  # one batch: skip the multiply by 1
                hv = hv * jnp.asarray(w, hv.dtype)
            total = hv if total is None else total + hv
        return total
