"""AdaBound as its authors' PyTorch code computes it (Luolc/AdaBound, adabound.py).

Reference step (METHOD.md §6), with coupled L2 decay g ← g + wd·θ:
  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
  step = η √(1−β₂ᵗ)/(1−β₁ᵗ);  f = final_lr · η/η₀  (η₀: the learning rate at the start);
  rate = clip(step/(√v + ε), f(1 − 1/(γt+1)), f(1 + 1/(γt)));  θ ← θ − rate ⊙ m.

ε is on the raw √v and the bias correction is in the step size; `optax.scale_by_adam` puts ε on
the bias-corrected √v̂, which differs, so the moments are written out here. Because the bounds
need η, `scale_by_adabound` takes the learning rate and returns the full step (the alias only
flips its sign). f follows a schedule the way the reference's workaround does: final_lr scaled by
the current over the initial learning rate.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train.optim import _base
from train.optim.adam import _check_adam_family


class ScaleByAdaBoundState(NamedTuple):
    """State of `scale_by_adabound`."""

    count: jax.Array  # int32 scalar, number of updates made.
    mu: optax.Updates  # first moment m.
    nu: optax.Updates  # second moment v.
    base_lr: jax.Array  # η₀, the learning rate when the state was created.


def scale_by_adabound(learning_rate: _base.ScalarOrSchedule = 1e-3, b1: float = 0.9,
                      b2: float = 0.999, final_lr: float = 0.1, gamma: float = 1e-3,
                      eps: float = 1e-8) -> optax.GradientTransformation:
    """The AdaBound step rate ⊙ m (positive; negate it to descend), learning rate included.

    Args:
      learning_rate: η, a number or an optax schedule (evaluated at the update count). Under
        `optax.inject_hyperparams` η arrives as a number each step; η₀ is the value seen by init.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      final_lr: the SGD rate the bounds converge to (>= 0), scaled by η/η₀.
      gamma: convergence speed of the bounds, in [0, 1).
      eps: ε >= 0, added to the raw √v.

    Returns:
      An optax GradientTransformation with a `ScaleByAdaBoundState`.
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        base_lr = _base.learning_rate_at(learning_rate, jnp.zeros([], jnp.int32))
        return ScaleByAdaBoundState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros,
                                    base_lr=base_lr)

    def update_fn(updates, state, params=None):
        del params
        lr = _base.learning_rate_at(learning_rate, state.count)
        count = _base.safe_increment(state.count)
        dtype = _base.scalar_dtype(updates)
        t = count.astype(dtype)
        step_size = lr * jnp.sqrt(_base.one_minus_power(b2, count, dtype)) / (
            _base.one_minus_power(b1, count, dtype))
        f = final_lr * lr / state.base_lr
        lower = f * (1 - 1 / (gamma * t + 1))
        upper = f * (1 + 1 / (gamma * t))
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
        out = jax.tree.map(
            lambda m, v: jnp.clip(step_size / (jnp.sqrt(v) + eps), lower, upper) * m, mu, nu)
        new_state = ScaleByAdaBoundState(count=count, mu=_base.cast_tree(mu, state.mu),
                                         nu=_base.cast_tree(nu, state.nu), base_lr=state.base_lr)
        return _base.cast_tree(out, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def adabound(learning_rate: _base.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
             final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8,
             weight_decay: float = 0.0) -> optax.GradientTransformation:
    """AdaBound (Luo et al. 2019) as its authors' code, with L2 weight decay.

    Args:
      learning_rate: η, a number or an optax schedule; must be > 0 at the start (the bounds are
        scaled by η/η₀).
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      final_lr: the final SGD rate of the bounds (>= 0).
      gamma: convergence speed of the bounds, in [0, 1).
      eps: ε >= 0, added to the raw √v.
      weight_decay: L2 coefficient added to the gradient (>= 0).

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    owner = "adabound"
    _check_adam_family(owner, learning_rate, b1, b2, eps, weight_decay)
    first_lr = learning_rate(jnp.zeros([], jnp.int32)) if callable(learning_rate) else learning_rate
    _base.check_range(owner, "learning_rate (initial)", first_lr, 0.0, low_open=True,
                      note="AdaBound scales its bounds by the current over the initial rate.")
    _base.check_range(owner, "final_lr", final_lr, 0.0, note="The reference default is 0.1.")
    _base.check_range(owner, "gamma", gamma, 0.0, 1.0,
                      note="The reference default is 1e-3; 0 gives bounds [0, inf), i.e. Adam.")
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(weight_decay),
        scale_by_adabound(learning_rate=learning_rate, b1=b1, b2=b2, final_lr=final_lr,
                          gamma=gamma, eps=eps),
        optax.scale(-1.0),
    ))
