"""Lookahead (Zhang et al. 2019) as the authors' PyTorch wrapper computes it, on ordinary params.

Reference (michaelrzhang/lookahead, lookahead_pytorch.py; lonePatient/lookahead_pytorch is the
same rule): slow weights φ start as a copy of the initial parameters; the inner optimizer updates
the fast weights θ every step; after every k-th inner step
  θ ← α θ + (1−α) φ   (i.e. φ + α(θ − φ)),   φ ← θ,
and the inner optimizer's state (e.g. the momentum buffer) is left as it is (pullback "none").

Here the training loop keeps seeing the fast weights: the transform's update is the inner update
on ordinary steps, and on a synchronisation step it is the update that moves the current params to
the new slow weights (φ_new − θ_old), so `optax.apply_updates` lands on them. `optax.lookahead`
is not used because it needs the parameters wrapped in `LookaheadParams(fast, slow)`, which a loop
built on plain parameter pytrees cannot pass.

Reading the learning rate: `train.optim.get("lookahead", learning_rate=...)` wraps this factory
itself in `optax.inject_hyperparams`, so `state.hyperparams["learning_rate"]` is the rate of the
default inner SGD, as for every other optimizer. With a custom `inner`, the rate lives in that
inner transformation. If the inner one came from `get` (or `inject_hyperparams`), read
`state.inner_state.inner_state.hyperparams["learning_rate"]` when Lookahead itself came from `get`
(outer inject state → `LookaheadState` → inner inject state), and
`state.inner_state.hyperparams["learning_rate"]` when `lookahead(...)` was called directly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train.optim import _base
from train.optim.sgd import sgd


class LookaheadState(NamedTuple):
    """State of `lookahead`."""

    count: jax.Array  # int32 scalar, number of inner steps made.
    slow: optax.Params  # the slow weights φ.
    inner_state: optax.OptState  # the inner optimizer's state.


def _lookahead_transform(inner: optax.GradientTransformation, k: int,
                         alpha) -> optax.GradientTransformation:
    """The Lookahead wrapper around `inner` (no checks; see `lookahead`).

    Args:
      inner: the inner (fast) optimizer.
      k: synchronisation period.
      alpha: slow-weight step size α.

    Returns:
      An optax GradientTransformation with a `LookaheadState`.
    """

    def init_fn(params):
        # A copy, so that donated parameter buffers never alias the slow weights.
        slow = jax.tree.map(jnp.array, params)
        return LookaheadState(count=jnp.zeros([], jnp.int32), slow=slow,
                              inner_state=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("lookahead: update needs params (the fast weights); call "
                             "update(grads, state, params).")
        inner_updates, inner_state = optax.with_extra_args_support(inner).update(
            updates, state.inner_state, params, **extra_args)
        count = _base.safe_increment(state.count)
        sync = count % k == 0
        fast = optax.apply_updates(params, inner_updates)
        # The reference's "crucial line": θ·α + φ·(1−α).
        merged = jax.tree.map(lambda f, s: f * alpha + s * (1 - alpha), fast, state.slow)
        slow = jax.tree.map(lambda m, s: jnp.where(sync, m, s).astype(s.dtype), merged, state.slow)
        out = jax.tree.map(lambda u, m, p: jnp.where(sync, m - p, u).astype(u.dtype),
                           inner_updates, merged, params)
        return out, LookaheadState(count=count, slow=slow, inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lookahead(learning_rate: _base.ScalarOrSchedule | None = None,
              inner: optax.GradientTransformation | None = None, k: int = 5,
              alpha: float = 0.5, momentum: float = 0.9,
              weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Lookahead around an inner optimizer (default: momentum SGD with the given learning rate).

    Args:
      learning_rate: η of the default inner optimizer, `sgd(η, momentum, weight_decay)`. Leave it
        None when passing `inner`.
      inner: a custom inner optimizer (it carries its own rate, momentum and decay).
      k: synchronisation period, an int >= 1 (the paper's experiments: 5).
      alpha: slow-weight step size α in [0, 1] (the paper's experiments: 0.5); α = 1 gives the
        inner optimizer alone.
      momentum: μ of the default inner SGD.
      weight_decay: L2 coefficient of the default inner SGD.

    Returns:
      An optax GradientTransformation whose update needs `params` (the fast weights).
    """
    owner = "lookahead"
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"{owner}: k={k!r} must be a Python int >= 1 (the synchronisation period); under "
            "optax.inject_hyperparams pass static_args=('k',), as train.optim.get does.")
    _base.check_range(owner, "alpha", alpha, 0.0, 1.0, high_open=False,
                      note="The paper uses 0.5.")
    if inner is None:
        if learning_rate is None:
            raise TypeError(f"{owner}: pass learning_rate (for the default inner momentum SGD) or an "
                            "inner optimizer via inner=...")
        inner = sgd(learning_rate, momentum=momentum, weight_decay=weight_decay)
    else:
        if not isinstance(inner, optax.GradientTransformation):
            raise TypeError(f"{owner}: inner must be an optax.GradientTransformation, got "
                            f"{type(inner).__name__}.")
        if learning_rate is not None:
            raise ValueError(f"{owner}: learning_rate={learning_rate!r} would be ignored because "
                             "inner is given; set the rate on the inner optimizer instead.")
        for name, value, default in (("momentum", momentum, 0.9), ("weight_decay", weight_decay, 0.0)):
            given = _base.concrete_value(owner, name, value)
            # A tolerance, because inject_hyperparams hands the defaults back as float32 arrays.
            if given is not None and abs(given - default) > 1e-6:
                raise ValueError(f"{owner}: {name}={given!r} would be ignored because inner is given; "
                                 "set it on the inner optimizer instead.")
    return _base.keep_dtypes(_lookahead_transform(inner, k, alpha))
