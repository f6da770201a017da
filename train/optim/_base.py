"""Shared helpers for the optimizers: hyperparameter checks, step scalars, dtype handling.

Every factory in `train.optim` validates its arguments through these helpers. The factories are
also re-entered by `optax.inject_hyperparams` on every update, where the hyperparameters are
jax arrays (concrete outside `jit`, tracers inside); the checks therefore look only at values that
are concrete and skip tracers and schedules without complaint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

#: A hyperparameter that is a number, a scalar array, or an optax schedule (step count -> value).
ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


def concrete_value(owner: str, name: str, value: Any) -> float | None:
    """Return a hyperparameter as a Python float, or None when it cannot be inspected.

    Args:
      owner: the optimizer's name, used in error messages.
      name: the hyperparameter's keyword.
      value: a number, a scalar array (possibly a tracer), or a schedule.

    Returns:
      The value as a float; None for tracers (inside `jit`) and for callables (schedules).

    Raises:
      TypeError: when the value is neither numeric nor callable, or is a non-scalar array.
    """
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a number, got the bool {value!r}.")
    try:
        arr = np.asarray(value)
    except Exception as err:  # jax raises several error types for non-concrete arrays.
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__}.") from err
    if arr.shape != () or not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(
            f"{owner}: {name} must be a scalar number, got {type(value).__name__} of shape "
            f"{arr.shape} and dtype {arr.dtype}.")
    return float(arr)


def check_range(owner: str, name: str, value: Any, low: float, high: float | None = None, *,
                low_open: bool = False, high_open: bool = True, note: str = "") -> None:
    """Raise a ValueError naming the problem when a concrete hyperparameter is out of range.

    Args:
      owner: the optimizer's name, used in the message.
      name: the hyperparameter's keyword.
      value: the value to check (tracers and schedules are skipped).
      low: the lower end of the valid interval.
      high: the upper end, or None for no upper end.
      low_open: whether `low` itself is excluded.
      high_open: whether `high` itself is excluded.
      note: a sentence appended to the message (what the value means, the usual choice).

    Returns:
      None.
    """
    x = concrete_value(owner, name, value)
    if x is None:
        return
    too_low = x <= low if low_open else x < low
    too_high = high is not None and (x >= high if high_open else x > high)
    if np.isnan(x) or too_low or too_high:
        left = "(" if low_open else "["
        right = "inf)" if high is None else (f"{high:g})" if high_open else f"{high:g}]")
        raise ValueError(
            f"{owner}: {name}={x!r} is outside its valid range {left}{low:g}, {right}; "
            f"pass a value inside it.{(' ' + note) if note else ''}")


def check_learning_rate(owner: str, learning_rate: ScalarOrSchedule) -> None:
    """Check that a learning rate (or a schedule's value at step 0) is a non-negative number.

    Args:
      owner: the optimizer's name, used in the message.
      learning_rate: a number, scalar array or optax schedule.

    Returns:
      None.
    """
    if callable(learning_rate):
        try:
            first = learning_rate(jnp.zeros([], jnp.int32))
        except Exception as err:
            raise TypeError(
                f"{owner}: learning_rate is callable but calling it at step 0 failed ({err}); pass a "
                "number or an optax schedule (a function of the integer step count).") from err
        check_range(owner, "learning_rate (schedule at step 0)", first, 0.0,
                    note="A learning rate must be >= 0.")
        return
    check_range(owner, "learning_rate", learning_rate, 0.0, note="A learning rate must be >= 0.")


def check_bool(owner: str, name: str, value: Any) -> None:
    """Raise a TypeError when a flag is not a Python bool (inject_hyperparams keeps bools static).

    Args:
      owner: the optimizer's name.
      name: the flag's keyword.
      value: the value given.

    Returns:
      None.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}.")


def learning_rate_at(learning_rate: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate used at the update whose zero-based index is `count`.

    Args:
      learning_rate: a number, scalar array or optax schedule.
      count: the number of updates already made (int32 scalar).

    Returns:
      A scalar array.
    """
    if callable(learning_rate):
        return jnp.asarray(learning_rate(count))
    return jnp.asarray(learning_rate)


def scalar_dtype(tree: Any) -> jnp.dtype:
    """The dtype for per-step scalars (bias corrections): the tree's widest float, at least float32.

    Args:
      tree: a pytree of arrays (the updates).

    Returns:
      A floating dtype; float32 for bf16/float16 trees so that 1 - beta**t stays accurate.
    """
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    widest = jnp.result_type(*leaves) if leaves else jnp.float32
    if not jnp.issubdtype(widest, jnp.floating):
        widest = jnp.float32
    return jnp.promote_types(widest, jnp.float32)


def one_minus_power(base: Any, count: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """1 − base**count, computed as −expm1(count·log(base)) to keep its relative accuracy.

    PyTorch computes bias corrections such as 1 − β₂ᵗ in Python doubles; in float32 the direct
    form loses about 1e-5 of relative accuracy at small t for β₂ = 0.999 (cancellation), this form
    about 1e-7.

    Args:
      base: a decay rate in [0, 1).
      count: the step number (>= 1).
      dtype: the result dtype.

    Returns:
      A scalar array.
    """
    return -jnp.expm1(count.astype(dtype) * jnp.log(jnp.asarray(base, dtype)))


def cast_tree(tree: Any, like: Any) -> Any:
    """Cast every leaf of `tree` to the dtype of the matching leaf of `like`.

    Args:
      tree: the pytree to cast.
      like: a pytree of the same structure whose dtypes are kept.

    Returns:
      The cast pytree.
    """
    return jax.tree.map(lambda x, ref: jnp.asarray(x).astype(ref.dtype), tree, like)


def safe_increment(count: jax.Array) -> jax.Array:
    """count + 1 without int32 overflow (optax's convention for step counters).

    Args:
      count: an int32 scalar.

    Returns:
      The incremented counter.
    """
    return optax.safe_increment(count)


def keep_dtypes(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Make updates take the gradients' dtypes and the state keep the dtypes it was created with.

    Without this, a float32 hyperparameter (e.g. one injected by `inject_hyperparams`) promotes
    bfloat16 moments to float32 after the first step, which changes the state's type and makes
    `jit` compile a second time.

    Args:
      tx: the transformation to wrap.

    Returns:
      The wrapped transformation (same init, same numbers up to the final casts).
    """

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = optax.with_extra_args_support(tx).update(
            updates, state, params, **extra_args)
        return cast_tree(new_updates, updates), cast_tree(new_state, state)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
