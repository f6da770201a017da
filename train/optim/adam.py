"""Adam, AMSGrad and Yogi as their PyTorch references compute them, with coupled L2 decay.

- Adam follows torch.optim.Adam: m̂/(√v̂ + ε) with ε on the bias-corrected √v̂. That is exactly
  `optax.scale_by_adam`, which is used as is.
- AMSGrad follows torch.optim.Adam(amsgrad=True): the running maximum is taken of the raw second
  moment v, and the bias correction of the current step is applied to that maximum,
  θ ← θ − η/(1−β₁ᵗ) · m / (√(max v)/√(1−β₂ᵗ) + ε). `optax.scale_by_amsgrad` takes the maximum of
  the bias-corrected v̂ instead (max_τ v_τ/(1−β₂^τ) ≠ max_τ v_τ / (1−β₂ᵗ)), so `scale_by_amsgrad`
  here is written out.
- Yogi follows torch-optimizer's Yogi (the widely used PyTorch version): both moments start at
  1e-6, v ← v − (1−β₂) sign(v − g²) g², ε added to the bias-corrected √v̂. `optax.scale_by_yogi`
  computes the same numbers (same initial value, same ε placement) and is used as is.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train.optim import _base


def _check_adam_family(owner: str, learning_rate, b1, b2, eps, weight_decay) -> None:
    """Validate the hyperparameters shared by the Adam-like optimizers.

    Args:
      owner: the optimizer's name for messages.
      learning_rate: η.
      b1: β₁, must lie in [0, 1).
      b2: β₂, must lie in [0, 1).
      eps: ε, must be >= 0.
      weight_decay: must be >= 0.

    Returns:
      None.
    """
    _base.check_learning_rate(owner, learning_rate)
    _base.check_range(owner, "b1", b1, 0.0, 1.0, note="The usual value is 0.9.")
    _base.check_range(owner, "b2", b2, 0.0, 1.0, note="The usual value is 0.999.")
    _base.check_range(owner, "eps", eps, 0.0)
    _base.check_range(owner, "weight_decay", weight_decay, 0.0)


def adam(learning_rate: _base.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam as torch.optim.Adam, with L2 weight decay added to the gradient.

    Update: g ← g + wd·θ; m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    θ ← θ − η · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).

    Args:
      learning_rate: η, a number or an optax schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0, added to the bias-corrected √v̂.
      weight_decay: L2 coefficient (>= 0).

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    _check_adam_family("adam", learning_rate, b1, b2, eps, weight_decay)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    ))


class ScaleByAmsgradState(NamedTuple):
    """State of `scale_by_amsgrad` (PyTorch form)."""

    count: jax.Array  # int32 scalar, number of updates made.
    mu: optax.Updates  # first moment m.
    nu: optax.Updates  # raw second moment v (not bias-corrected).
    nu_max: optax.Updates  # running maximum of the raw v.


def scale_by_amsgrad(b1: float = 0.9, b2: float = 0.999,
                     eps: float = 1e-8) -> optax.GradientTransformation:
    """Rescale updates as torch.optim.Adam(amsgrad=True) does, before the learning rate.

    Output: (m/(1−β₁ᵗ)) / (√(v_max)/√(1−β₂ᵗ) + ε) with v_max the running maximum of the raw v.

    Args:
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0.

    Returns:
      An optax GradientTransformation with a `ScaleByAmsgradState`.
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return ScaleByAmsgradState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros,
                                   nu_max=zeros)

    def update_fn(updates, state, params=None):
        del params
        count = _base.safe_increment(state.count)
        dtype = _base.scalar_dtype(updates)
        bc1 = _base.one_minus_power(b1, count, dtype)
        bc2 = _base.one_minus_power(b2, count, dtype)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        out = jax.tree.map(lambda m, vm: (m / bc1) / (jnp.sqrt(vm) / jnp.sqrt(bc2) + eps), mu,
                           nu_max)
        new_state = ScaleByAmsgradState(
            count=count, mu=_base.cast_tree(mu, state.mu), nu=_base.cast_tree(nu, state.nu),
            nu_max=_base.cast_tree(nu_max, state.nu_max))
        return _base.cast_tree(out, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def amsgrad(learning_rate: _base.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """AMSGrad as torch.optim.Adam(amsgrad=True), with L2 weight decay.

    Update: g ← g + wd·θ; Adam moments; v_max ← max(v_max, v);
    θ ← θ − η/(1−β₁ᵗ) · m / (√v_max/√(1−β₂ᵗ) + ε).

    Args:
      learning_rate: η, a number or an optax schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0.
      weight_decay: L2 coefficient (>= 0).

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    _check_adam_family("amsgrad", learning_rate, b1, b2, eps, weight_decay)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(weight_decay),
        scale_by_amsgrad(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    ))


def yogi(learning_rate: _base.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-3, initial_accumulator: float = 1e-6,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Yogi as torch-optimizer's Yogi, with L2 weight decay.

    Update: g ← g + wd·θ; m ← β₁m + (1−β₁)g; v ← v − (1−β₂) sign(v − g²) g² (m₀ = v₀ = 1e-6);
    θ ← θ − η (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).

    Args:
      learning_rate: η, a number or an optax schedule (torch-optimizer's default is 1e-2; the
        paper used 1e-3).
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0, added to the bias-corrected √v̂ (Yogi's paper uses 1e-3).
      initial_accumulator: the starting value of both moments (> 0).
      weight_decay: L2 coefficient (>= 0).

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    _check_adam_family("yogi", learning_rate, b1, b2, eps, weight_decay)
    _base.check_range("yogi", "initial_accumulator", initial_accumulator, 0.0, low_open=True,
                      note="torch-optimizer uses 1e-6.")
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_yogi(b1=b1, b2=b2, eps=eps, initial_accumulator_value=initial_accumulator),
        optax.scale_by_learning_rate(learning_rate),
    ))
