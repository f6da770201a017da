"""Positive-Negative Momentum as its authors' PyTorch code computes it (zeke-xie/Positive-Negative-Momentum).

Reference step (METHOD.md §6): two momentum buffers are used in turn; at step t the one updated is
"positive" (the buffer for odd t, the other for even t), the other is "negative":
  m⁺ ← β₁² m⁺ + (1−β₁²) g;  Δ = ((1+β₀) m⁺ − β₀ m⁻)/√((1+β₀)² + β₀²);  θ ← θ − η Δ.
There is no bias correction. Weight decay is decoupled by default, θ ← θ(1 − η·wd) before the
step (the update −η(Δ + wd·θ)); `decoupled=False` adds wd·θ to the gradient instead.

The state keeps the buffers as (the one to update next step, the one updated this step) and swaps
them each step, which is the reference's odd/even alternation without a branch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train.optim import _base


class ScaleByPNMState(NamedTuple):
    """State of `scale_by_pnm`."""

    count: jax.Array  # int32 scalar, number of updates made.
    next_momentum: optax.Updates  # the buffer that will be "positive" at the next step.
    last_momentum: optax.Updates  # the buffer updated at the last step ("negative" next step).


def scale_by_pnm(b1: float = 0.9, b0: float = 1.0) -> optax.GradientTransformation:
    """Rescale updates as PNM does, before the learning rate: the output is Δ.

    Args:
      b1: β₁ in [0, 1); each buffer decays by β₁² per use.
      b0: β₀ >= 0, the weight of the negative momentum (reference default 1.0).

    Returns:
      An optax GradientTransformation with a `ScaleByPNMState`.
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return ScaleByPNMState(count=jnp.zeros([], jnp.int32), next_momentum=zeros,
                               last_momentum=zeros)

    def update_fn(updates, state, params=None):
        del params
        dtype = _base.scalar_dtype(updates)
        b1_sq = jnp.asarray(b1, dtype) ** 2
        b0_ = jnp.asarray(b0, dtype)
        noise_norm = jnp.sqrt((1 + b0_) ** 2 + b0_ ** 2)
        positive = jax.tree.map(lambda g, m: b1_sq * m + (1 - b1_sq) * g, updates,
                                state.next_momentum)
        out = jax.tree.map(lambda mp, mn: ((1 + b0_) * mp - b0_ * mn) * (1 / noise_norm), positive,
                           state.last_momentum)
        new_state = ScaleByPNMState(
            count=_base.safe_increment(state.count),
            next_momentum=state.last_momentum,
            last_momentum=_base.cast_tree(positive, state.next_momentum))
        return _base.cast_tree(out, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def pnm(learning_rate: _base.ScalarOrSchedule, b1: float = 0.9, b0: float = 1.0,
        weight_decay: float = 0.0, decoupled: bool = True) -> optax.GradientTransformation:
    """PNM (Xie et al. 2021) as its authors' code, with decoupled weight decay by default.

    Args:
      learning_rate: η, a number or an optax schedule (SGD-like values: the paper uses 0.1 on
        MNIST-family data and 1 on CIFAR).
      b1: β₁ in [0, 1) (reference default 0.9).
      b0: β₀ >= 0 (reference default 1.0).
      weight_decay: decay coefficient (>= 0).
      decoupled: True (reference default): θ ← θ(1 − η·wd) with the current η; False: L2.

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    owner = "pnm"
    _base.check_learning_rate(owner, learning_rate)
    _base.check_range(owner, "b1", b1, 0.0, 1.0, note="PNM's default is 0.9.")
    _base.check_range(owner, "b0", b0, 0.0, note="PNM's default is 1.0.")
    _base.check_range(owner, "weight_decay", weight_decay, 0.0)
    _base.check_bool(owner, "decoupled", decoupled)
    coupled_wd, decoupled_wd = (0.0, weight_decay) if decoupled else (weight_decay, 0.0)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(coupled_wd),
        scale_by_pnm(b1=b1, b0=b0),
        optax.add_decayed_weights(decoupled_wd),
        optax.scale_by_learning_rate(learning_rate),
    ))
