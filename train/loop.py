"""The functional training loop: one NNX split, a jitted step over plain pytrees, the paper's schedule.

The model is split once into a graph definition and its state (parameters; the rest, e.g. BatchNorm
statistics); the step merges them inside `jit`, so the training state is an ordinary pytree that orbax
saves and optax updates. Each step's randomness (data augmentation) is `fold_in(key, step)` and each
epoch's data order is `train.data.epoch_permutation(n, key, epoch)` with the run's `data_order` key, so a
run resumed from a checkpoint is bit-identical to one that never stopped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# A window of steps whose losses are checked together: one host sync per window, not per step.
CHECK_EVERY = 50


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped before saving anything from it."""

    def __init__(self, epoch: int, step: int, loss: float, last_checkpoint: str | None = None):
        self.epoch, self.step, self.loss, self.last_checkpoint = epoch, step, loss, last_checkpoint
        where = (f"the last good checkpoint is intact at {last_checkpoint}" if last_checkpoint
                 else "no checkpoint was written")
        super().__init__(f"training loss became {loss} at epoch {epoch}, step {step}; the run stopped and "
                         f"{where}. Lower the learning rate (--set learning_rate=...) or check the data")


class TrainState(NamedTuple):
    """Everything a step changes: parameters, the other model state, optimizer state."""

    params: Any
    rest: Any  # non-Param NNX state (BatchNorm running statistics); empty for most models
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
    """A model split once: graph definitions for training and evaluation mode (same state layout)."""

    train_def: Any
    eval_def: Any


def split_model(model: nnx.Module) -> tuple[FunctionalModel, Any, Any]:
    """Split an NNX model into its graph definitions (train, eval) and its state.

    Args:
        model: the model; it is left in eval mode.

    Returns:
        (FunctionalModel, params, rest): params are the `nnx.Param` state, rest everything else.
    """
    model.train()
    train_def, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_def, _, _ = nnx.split(model, nnx.Param, ...)
    return FunctionalModel(train_def, eval_def), params, rest


def merge(graphdef: Any, params: Any, rest: Any) -> nnx.Module:
    """Rebuild a model from a graph definition and its state.

    Args:
        graphdef: `FunctionalModel.train_def` or `.eval_def`.
        params: the parameter state.
        rest: the other state.

    Returns:
        The model.
    """
    return nnx.merge(graphdef, params, rest, copy=True)


def plan(epochs: int | None, max_steps: int | None, steps_per_epoch: int) -> tuple[int, int]:
    """How long a run is: it stops after `epochs` epochs or `max_steps` steps, whichever comes first.

    Args:
        epochs: epoch budget (None: unbounded).
        max_steps: step budget (None: unbounded).
        steps_per_epoch: minibatches in one pass over the training set (train.data.num_batches).

    Returns:
        (epochs to run, the last partial if max_steps cuts it; total steps).
    """
    total = min(epochs * steps_per_epoch if epochs is not None else math.inf,
                max_steps if max_steps is not None else math.inf)
    total = int(total)
    return math.ceil(total / steps_per_epoch), total


def drop_boundaries(*, epochs: int | None, max_steps: int | None, steps_per_epoch: int, fractions: tuple[float, ...],
                    drop_epochs: tuple[int, ...]) -> list[int]:
    """Steps at which the learning rate is divided (the paper: at 40% and 80% of training).

    Explicit `drop_epochs` drop after those epochs. Fractions drop at the epoch boundary nearest to that
    fraction of the epochs (as PyTorch's MultiStepLR does); in a run bounded by `max_steps` they drop at
    that fraction of the steps.

    Args:
        epochs: the epoch budget.
        max_steps: the step budget.
        steps_per_epoch: minibatches per epoch.
        fractions: fractions of the run, each in (0, 1).
        drop_epochs: explicit epochs (replace `fractions` when non-empty).

    Returns:
        Ascending step counts (a repeated boundary means two drops there).
    """
    n_epochs, total = plan(epochs, max_steps, steps_per_epoch)
    if drop_epochs:
        return sorted(e * steps_per_epoch for e in drop_epochs)
    if max_steps is not None and total < (epochs or math.inf) * steps_per_epoch:
        return sorted(max(1, math.floor(f * total + 0.5)) for f in fractions)
    return sorted(max(1, math.floor(f * n_epochs + 0.5)) * steps_per_epoch for f in fractions)


def lr_schedule(base_lr: float, boundaries: list[int], factor: float) -> optax.Schedule:
    """Piecewise-constant learning rate: × `factor` at each boundary step (count ≥ boundary).

    Args:
        base_lr: the initial rate.
        boundaries: step counts from `drop_boundaries`.
        factor: the multiplier at each (0.1 in the paper).

    Returns:
        An optax schedule of the update count.
    """
    scales: dict[int, float] = {}
    for b in boundaries:  # coinciding drops multiply; a dict would keep only one
        scales[b] = scales.get(b, 1.0) * factor
    return optax.piecewise_constant_schedule(base_lr, scales)


def current_lr(opt_state: Any) -> float | None:
    """The learning rate held by an `optax.inject_hyperparams` state (searched through wrappers).

    Args:
        opt_state: an optimizer state.

    Returns:
        The rate used by the last update's schedule value, or None when no state holds one.
    """
    for node in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "hyperparams")):
        if hasattr(node, "hyperparams") and "learning_rate" in node.hyperparams:
            return float(node.hyperparams["learning_rate"])
    return None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels.

    Args:
        logits: (batch, classes).
        labels: (batch,) int.

    Returns:
        (batch,) losses.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model_defs: FunctionalModel, tx: optax.GradientTransformation,
                    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                    micro_batch: int | None = None) -> Callable:
    """A jitted training step over plain pytrees.

    Args:
        model_defs: the split model.
        tx: the optimizer (weight decay included, as the paper passes it to every optimizer).
        augment: optional `augment(key, x) -> x`, applied inside the step (to the whole batch).
        micro_batch: accumulate the gradient over micro-batches of this many examples (the last one may be
            smaller) in one `lax.scan`; None takes it over the whole batch in one pass. The same mean-loss
            gradient in exact arithmetic, at float rounding, with the activations of one micro-batch in
            memory: on XLA:CPU a LeNet-5 step over all 60,000 MNIST images is about 2x faster in
            micro-batches of 2000 (benchmarks/large_batch_cpu.py). Not for a model with BatchNorm, whose
            statistics are the whole batch's (`train.config` refuses that combination).

    Returns:
        `step(state, x, y, key) -> (state, mean loss, correct count)`.
    """
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1 (or None for the whole batch), got {micro_batch}")

    def loss_fn(params, rest, x, y, n):
        # The share of a batch of n examples' mean loss that x carries (all of it when x is the whole batch;
        # sum / n is bit-identical to mean there): the shares' gradients sum to the mean's gradient.
        # Fresh Variables (copy=True): BatchNorm mutates them, which NNX allows only inside this trace.
        model = nnx.merge(model_defs.train_def, params, rest, copy=True)
        logits = model(x)
        # BatchNorm updated its statistics in place on the merged copy; carry them out of the step.
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return cross_entropy(logits, y).sum() / n, (logits, new_rest)

    def part(params, rest, x, y, n):
        """(loss share, its gradient, the rest after it, correct count) of the examples x of a batch of n."""
        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y, n)
        return loss, grads, rest, jnp.sum(jnp.argmax(logits, -1) == y)

    def micro_batches(params, rest, x, y):
        if jax.tree.leaves(rest):  # in these models only BatchNorm keeps state besides its parameters
            raise ValueError("micro_batch needs a model without BatchNorm statistics: BatchNorm normalises by the "
                             "whole batch, which micro-batches would change; pass micro_batch=None")
        n = x.shape[0]
        full = n - n % micro_batch

        def accumulate(carry, xy):
            loss, grads, right = carry
            share, g, _, r = part(params, rest, *xy, n)
            return (loss + share, jax.tree.map(jnp.add, grads, g), right + r), None

        parts = (x[:full].reshape(full // micro_batch, micro_batch, *x.shape[1:]),
                 y[:full].reshape(full // micro_batch, micro_batch, *y.shape[1:]))
        # Zeros of the types one part returns (they follow the params' dtype and jax_enable_x64).
        loss, grads, _, right = jax.eval_shape(part, params, rest, parts[0][0], parts[1][0], n)
        carry = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), (loss, grads, right))
        carry, _ = jax.lax.scan(accumulate, carry, parts)
        if full < n:  # the remainder, shapes being static under jit
            carry, _ = accumulate(carry, (x[full:], y[full:]))
        loss, grads, right = carry
        return loss, grads, rest, right

    @jax.jit
    def step(state: TrainState, x, y, key):
        if augment is not None:
            x = augment(key, x)
        if micro_batch is not None and x.shape[0] > micro_batch:
            loss, grads, rest, correct = micro_batches(state.params, state.rest, x, y)
        else:
            loss, grads, rest, correct = part(state.params, state.rest, x, y, x.shape[0])
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, rest, opt_state), loss, correct

    return step


def make_eval_step(model_defs: FunctionalModel) -> Callable:
    """A jitted evaluation step in eval mode (BatchNorm running statistics).

    Args:
        model_defs: the split model.

    Returns:
        `eval_step(params, rest, x, y) -> (summed loss, correct count)`.
    """

    @jax.jit
    def eval_step(params, rest, x, y):
        logits = nnx.merge(model_defs.eval_def, params, rest, copy=True)(x)
        return cross_entropy(logits, y).sum(), jnp.sum(jnp.argmax(logits, -1) == y)

    return eval_step


def evaluate(eval_step: Callable, params: Any, rest: Any, x: np.ndarray, y: np.ndarray,
             batch_size: int = 1000) -> tuple[float, float]:
    """Mean loss and accuracy (a fraction) over a data set, in eval mode.

    Args:
        eval_step: from `make_eval_step`.
        params: parameter state.
        rest: other model state.
        x: inputs.
        y: integer labels.
        batch_size: examples per forward pass.

    Returns:
        (mean cross-entropy, accuracy in [0, 1]).
    """
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        l, c = eval_step(params, rest, x[i:i + batch_size], y[i:i + batch_size])
        loss, correct = loss + float(l), correct + int(c)
    return loss / len(x), correct / len(x)


def tree_is_finite(tree: Any) -> bool:
    """Whether every floating-point leaf of a pytree is finite.

    Args:
        tree: a pytree of arrays.

    Returns:
        True when no NaN or infinity occurs.
    """
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def _check_window(window: list[tuple[int, jax.Array]], epoch: int) -> None:
    """Raise NonFiniteLossError at the first non-finite loss of a window of (step, loss)."""
    losses = np.asarray(jax.device_get([l for _, l in window]))
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise NonFiniteLossError(epoch, window[bad[0]][0], float(losses[bad[0]]))


def train_epoch(step: Callable, state: TrainState, batches: Iterator[tuple[np.ndarray, np.ndarray]], *,
                key: jax.Array, epoch: int, first_step: int, num_steps: int,
                progress: bool = False) -> tuple[TrainState, dict[str, float]]:
    """Run up to `num_steps` training steps over the batches of one epoch.

    Args:
        step: from `make_train_step`.
        state: the state before the epoch (the step returns a new one; its buffers are not donated).
        batches: (x, y) minibatches in this epoch's order.
        key: the run's augmentation key; step s uses `fold_in(key, s)`.
        epoch: the epoch number (1-based), for messages.
        first_step: the global step count before this epoch.
        num_steps: steps to take (fewer than the batches when max_steps ends the run mid-epoch).
        progress: show a tqdm bar.

    Returns:
        (new state, {"train_loss", "train_acc", "steps"}): mean loss and accuracy over the examples seen
        this epoch, in training mode, as PyTorch scripts report them.

    Raises:
        NonFiniteLossError: a step's loss was NaN or infinite.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=num_steps, desc=f"epoch {epoch}", disable=not progress, leave=False, unit="step")
    loss_sum, correct, seen, window = jnp.zeros(()), jnp.zeros((), jnp.int32), 0, []
    s = first_step
    for x, y in batches:
        if s - first_step >= num_steps:
            break
        state, loss, c = step(state, x, y, jax.random.fold_in(key, s))
        loss_sum, correct, seen = loss_sum + loss * len(y), correct + c, seen + len(y)
        window.append((s, loss))
        s += 1
        if len(window) == CHECK_EVERY:
            _check_window(window, epoch)
            bar.set_postfix(loss=f"{float(window[-1][1]):.4f}")
            window = []
        bar.update(1)
    bar.close()
    if window:
        _check_window(window, epoch)
    return state, {"train_loss": float(loss_sum) / seen, "train_acc": int(correct) / seen, "steps": s - first_step}

