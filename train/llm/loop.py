"""The LLM training step: AdamW with decay on matrices, global-norm clipping, gradient accumulation, LoRA.

The model is split once into a graph definition, the parameters that are trained and the ones held fixed
(`nnx.split(model, nnx.LoRAParam, ...)` for LoRA: the adapters alone are trained, the base is frozen;
`nnx.split(model, nnx.Param, ...)` otherwise, leaving nothing fixed). A step is one jitted function of
plain pytrees: it scans over the `accum` micro-batches of the step, summing the gradients of
sum(w * cross-entropy) / (the step's total weight), so that the accumulated gradient is exactly that of
the step's mean token loss; then it clips and applies AdamW. Micro-batch i of step s draws its dropout
masks from fold_in(fold_in(dropout, s), i), so a resumed run is bit-identical.

The learning rate is nanoGPT's `get_lr`: (step + 1) / (warmup + 1) of the peak during warm-up, then a
cosine from the peak at `warmup` to `min_lr` at the last step; or constant.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["TokenTrainState", "OptimSpec", "lr_schedule", "decay_mask", "make_optimizer", "SplitModel",
           "split_model", "accumulated_grads", "lm_train_step", "make_eval_step", "hessian_loss", "token_loss",
           "full_params", "TrainState", "make_train_step"]


class TokenTrainState(NamedTuple):
    """What a language model's step changes: the trained parameters and the optimiser state.

    The CNN's twin (train.loop.TrainState) also carries the non-parameter state (BatchNorm statistics); here the
    parameters held fixed (a LoRA base) stay outside the state, so that they are neither donated nor checkpointed.
    """

    params: Any
    opt_state: Any


TrainState = TokenTrainState  # the name before the LLM twins were named by what differs


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """The optimiser's settings (hashable, so that one compiled step serves every run that shares them)."""

    learning_rate: float
    min_lr: float
    warmup_steps: int
    decay_steps: int
    schedule: str
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    grad_clip: float

    @classmethod
    def from_config(cls, cfg: Any) -> OptimSpec:
        """The optimiser fields of an LLMConfig (the cosine ends at its last step)."""
        return cls(cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.steps, cfg.schedule, cfg.beta1, cfg.beta2,
                   cfg.eps, cfg.weight_decay, cfg.grad_clip)


def lr_schedule(spec: OptimSpec) -> optax.Schedule:
    """nanoGPT's learning rate of update `count` (0-based): linear warm-up, cosine to min_lr, or constant.

    Args:
        spec: the optimiser settings.

    Returns:
        An optax schedule.
    """
    if spec.schedule == "constant":
        return optax.constant_schedule(spec.learning_rate)
    peak, low, warm, end = spec.learning_rate, spec.min_lr, spec.warmup_steps, max(spec.decay_steps, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warmup = peak * (count + 1) / (warm + 1)
        ratio = jnp.clip((count - warm) / max(end - warm, 1), 0.0, 1.0)
        cosine = low + 0.5 * (1.0 + jnp.cos(math.pi * ratio)) * (peak - low)
        return jnp.where(count < warm, warmup, cosine)

    return schedule


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (ndim >= 2: kernels, embeddings, LoRA A/B), as nanoGPT's param groups."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(spec: OptimSpec) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with decoupled decay on matrices (METHOD.md section 5)."""
    return optax.chain(
        optax.clip_by_global_norm(spec.grad_clip),
        optax.adamw(lr_schedule(spec), b1=spec.beta1, b2=spec.beta2, eps=spec.eps, weight_decay=spec.weight_decay,
                    mask=decay_mask),
    )


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """A model split once: graph definitions in training and evaluation mode, and which filter trains."""

    train_def: Any
    eval_def: Any
    lora: bool


def split_model(model: nnx.Module, *, lora: bool) -> tuple[SplitModel, Any, Any]:
    """Split a GPT-2/Llama into (graph definitions, trained parameters, fixed parameters).

    Args:
        model: the model (left in evaluation mode).
        lora: train the `nnx.LoRAParam` adapters only (split first, so the base weights land in `fixed`).

    Returns:
        (SplitModel, trained, fixed): `fixed` is empty without LoRA (these models hold no other state).
    """
    trained_filter = nnx.LoRAParam if lora else nnx.Param
    model.train()
    train_def, trained, fixed = nnx.split(model, trained_filter, ...)
    model.eval()
    eval_def, _, _ = nnx.split(model, trained_filter, ...)
    return SplitModel(train_def, eval_def, lora), trained, fixed


def full_params(trained: Any, fixed: Any) -> nnx.State:
    """Trained and fixed parameters as one state with the model's own paths (what `wrt` regexes see)."""
    return nnx.merge_state(trained, fixed)


def token_loss(logits: jax.Array, y: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of w * cross-entropy, sum of w) over a batch of sequences, in float32."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    return jnp.sum(ce * w), jnp.sum(w)


def accumulated_grads(train_def: Any) -> Callable:
    """`grads(params, fixed, xs, ys, ws, key) -> (mean token loss, gradient)` over a step's micro-batches.

    Each micro-batch contributes the gradient of sum(w * CE) / (the whole step's sum of w), so the sum over
    the micro-batches is exactly the gradient of the step's mean token loss, however it is split. Micro-batch
    i draws its dropout masks from fold_in(key, i).
    """

    def micro_loss(params, fixed, x, y, w, key, total):
        logits = nnx.merge(train_def, params, fixed)(x, rngs=key)
        loss_sum, _ = token_loss(logits, y, w)
        return loss_sum / total

    def grads(params, fixed, xs, ys, ws, key):
        total = jnp.maximum(jnp.sum(ws), 1.0)

        def accumulate(acc, inputs):
            x, y, w, i = inputs
            # Differentiated in `fixed` too, and that gradient dropped: with nnx.remat, a frozen part closed
            # over at another trace level raises TraceContextError (LoRA + remat). XLA removes the unused base
            # gradients (tiny Llama + LoRA + remat: 80 dot ops, against 104 for the full gradient).
            loss, (g, _) = jax.value_and_grad(micro_loss, argnums=(0, 1))(
                params, fixed, x, y, w, jax.random.fold_in(key, i), total)
            return jax.tree.map(jnp.add, acc, g), loss

        zeros = jax.tree.map(jnp.zeros_like, params)
        summed, losses = jax.lax.scan(accumulate, zeros, (xs, ys, ws, jnp.arange(xs.shape[0])))
        return jnp.sum(losses), summed

    return grads


def lm_train_step(train_def: Any, spec: OptimSpec) -> Callable:
    """The jitted optimiser step (built once per run: train.llm.build keeps it in the LMRun).

    Args:
        train_def: the training-mode graph definition.
        spec: the optimiser settings.

    Returns:
        `step(state, fixed, xs, ys, ws, key) -> (state, mean token loss)`; xs, ys, ws are
        (accum, micro_batch, block); `key` is fold_in(dropout, step). The state is donated.
    """
    tx = make_optimizer(spec)
    grads_fn = accumulated_grads(train_def)

    def step(state: TokenTrainState, fixed, xs, ys, ws, key):
        loss, grads = grads_fn(state.params, fixed, xs, ys, ws, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TokenTrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0)


make_train_step = lm_train_step  # the name before the LLM twins were named by what differs


def init_state(trained: Any, spec: OptimSpec) -> TokenTrainState:
    """The state before step 0: the parameters and a fresh AdamW state."""
    return TokenTrainState(trained, make_optimizer(spec).init(trained))


def make_eval_step(eval_def: Any) -> Callable:
    """`eval_step(trained, fixed, x, y, w) -> (sum w * CE, sum w)` in evaluation mode (no dropout), jitted (built once
    per run: train.llm.build keeps it in the LMRun)."""

    @jax.jit
    def eval_step(trained, fixed, x, y, w):
        return token_loss(nnx.merge(eval_def, trained, fixed)(x), y, w)

    return eval_step


def evaluate(eval_step: Callable, trained: Any, fixed: Any, batches: list) -> float:
    """Mean token cross-entropy over fixed batches: sum(w * CE) / sum(w) over all of them."""
    total, weight = 0.0, 0.0
    for x, y, w in batches:
        s, n = eval_step(trained, fixed, x, y, w)
        total, weight = total + float(s), weight + float(n)
    return total / max(weight, 1.0)


def hessian_loss(eval_def: Any) -> Callable:
    """The Hessian loss `loss(params, (x, y, w))`: mean token cross-entropy in evaluation mode, no decay.

    `params` is the full parameter state (`full_params`), so that hspec's `wrt` regexes see the model's
    paths. A run measures every checkpoint through one hspec.HessianFactory, which recognises this loss by its
    traced program, so that its programs are compiled once.
    """

    def loss(params, batch):
        x, y, w = batch
        s, n = token_loss(nnx.merge(eval_def, params)(x), y, w)
        return s / jnp.maximum(n, 1.0)

    return loss
