"""The one adapter from a Flax NNX model to the pure loss function hspec needs (STYLE.md), CNNs and LLMs alike.

``nnx.split`` happens here, at the boundary, and ``nnx.merge`` inside the loss, so that hspec sees only
``loss_fn(params, batch) -> scalar`` over a plain parameter pytree and nothing else in the code base
needs to know both Flax and hspec. The classifiers' loss is `hessian_loss`, the language models'
`token_hessian_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from train.loop import cross_entropy

__all__ = ["hessian_loss", "token_hessian_loss", "loss_fn_from_model", "hessian_batches", "output_fn",
           "jacobian_output_fn", "example_loss", "curvature_record"]


def hessian_loss(eval_def: nnx.GraphDef, rest: nnx.State) -> Callable:
    """The Hessian loss of a split model: mean cross-entropy in evaluation mode, no weight decay (METHOD.md §1).

    The training pipeline holds its model split already (`train.loop.split_model`), so nothing is cloned
    or split again here.

    Args:
      eval_def: the evaluation-mode graph definition (BatchNorm running statistics, no dropout).
      rest: the non-parameter state (BatchNorm statistics), held fixed.

    Returns:
      ``loss_fn(params, (x, y))``, the mean cross-entropy of the model with parameters ``params``.
    """

    def loss_fn(p, batch):
        x, y = batch
        # Evaluation mode mutates nothing, so merging without a copy is safe under tracing.
        return jnp.mean(cross_entropy(nnx.merge(eval_def, p, rest)(x), y))

    return loss_fn


def token_hessian_loss(eval_def: nnx.GraphDef) -> Callable:
    """The Hessian loss of a split language model: mean token cross-entropy in evaluation mode, no weight decay.

    The LLM pipeline keeps one such function per run (train.llm.build), so that hspec reuses its compiled
    programs at every checkpoint.

    Args:
      eval_def: the evaluation-mode graph definition (no dropout).

    Returns:
      ``loss_fn(params, (x, y, w))``: sum(w * cross-entropy) / sum(w) over the batch's tokens; ``params`` is the
      full parameter state (train.llm.loop.full_params: trained and fixed merged), so that hspec's ``wrt``
      regexes see the model's own paths.
    """
    from train.llm.loop import token_loss

    def loss_fn(params, batch):
        x, y, w = batch
        s, n = token_loss(nnx.merge(eval_def, params)(x), y, w)
        return s / jnp.maximum(n, 1.0)

    return loss_fn


def output_fn(eval_def: nnx.GraphDef, rest: nnx.State) -> Callable:
    """``output_fn(params, x) -> logits`` of a split model in evaluation mode (the curvature diagnostic's input)."""

    def logits(p, x):
        return nnx.merge(eval_def, p, rest)(x)

    return logits


def jacobian_output_fn(exp, rest: nnx.State) -> Callable:
    """``output_fn`` of an experiment's model for per-example Jacobians (the curvature diagnostic).

    The same network, except that a LeNet's convolutions use XLA's convolution: on CPU the "banded" form the
    model otherwise uses materialises one band matrix per example under ``vmap``, which made per-example
    Jacobians 2x slower (21 against 45 ms per LeNet-5 example, measured on this 2-core CPU).
    """
    from train import config as config_lib
    from train import models

    if exp.cfg.model != "lenet5":
        return output_fn(exp.model_defs.eval_def, rest)
    model = models.build(exp.cfg.model, num_classes=exp.ds.num_classes, input_shape=tuple(exp.ds.input_shape),
                         rngs=nnx.Rngs(0), **dict(config_lib.model_kwargs(exp.cfg), conv_impl="xla"))
    model.eval()
    graphdef = nnx.split(model, nnx.Param, ...)[0]
    return output_fn(graphdef, rest)


def example_loss(logits: jnp.ndarray, label: jnp.ndarray) -> jnp.ndarray:
    """One example's cross-entropy as a function of its logits ``[C]`` (the loss whose Hessian is measured)."""
    return cross_entropy(logits[None], jnp.asarray(label)[None])[0]


def loss_fn_from_model(model: nnx.Module) -> tuple[Callable, nnx.State]:
    """The Hessian loss of a model: evaluation mode, mean cross-entropy, no weight decay (METHOD.md §1).

    Args:
      model: an NNX model returning logits. It is cloned and the clone is put in evaluation mode
        (BatchNorm running statistics, no dropout); the caller's model is left as it was.

    Returns:
      ``(loss_fn, params)``: ``loss_fn(params, (x, y))`` is the mean cross-entropy of the model with
      parameters ``params`` (the ``nnx.Param`` state) on the batch; all other state (BatchNorm
      statistics) is held fixed.
    """
    frozen = nnx.clone(model)
    frozen.eval()
    graphdef, params, rest = nnx.split(frozen, nnx.Param, ...)
    return hessian_loss(graphdef, rest), params


def hessian_batches(x, y, batch_size: int) -> list[tuple]:
    """Split a fixed Hessian sample into batches (the last may be smaller; hspec weights by size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def curvature_record(exp, state) -> dict | None:
    """Who carries the curvature of a measured state (the config's `curvature`): the carriers of the per-example
    Gauss-Newton traces over the Hessian sample and, with "all", over the whole training set; None with "none"."""
    from hspec.curvature import CurvatureCarriers, gauss_newton_traces

    scope = getattr(exp.cfg, "curvature", "sample")
    if scope == "none":
        return None
    fn = jacobian_output_fn(exp, state.rest)
    out = {"sample": CurvatureCarriers.of(gauss_newton_traces(fn, example_loss, state.params,
                                                              (exp.hessian.x, exp.hessian.y))).to_dict()}
    if scope == "all":
        out["training_set"] = CurvatureCarriers.of(gauss_newton_traces(
            fn, example_loss, state.params, (exp.ds.x_train, exp.ds.y_train))).to_dict()
    return out
