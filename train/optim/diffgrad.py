"""diffGrad as its authors' corrected PyTorch code computes it (shivram1987/diffGrad, diffGrad_v2.py).

Reference step (METHOD.md §6), with coupled L2 decay g ← g + wd·θ:
  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  ξ = 1/(1 + exp(−|g_{t−1} − g_t|))  (g₀ = 0);
  θ ← θ − η √(1−β₂ᵗ)/(1−β₁ᵗ) · ξ ⊙ m/(√v + ε).
The stored previous gradient includes the decay term, as in the reference (it decays the gradient
in place before storing it).

ε is on the raw √v and the bias correction in the step size; `optax.scale_by_adam` puts ε on the
bias-corrected √v̂, which gives different numbers, so the moments are written out here.

The first release (diffGrad.py, used in the diffGrad paper) stored a reference to the gradient
tensor instead of a copy; PyTorch then overwrote it in place, so |g_{t−1} − g_t| was 0 and ξ = 0.5
from step 2 on (step 1 still saw g₀ = 0). `frozen_dfc=True` reproduces that behaviour; it is off
by default.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train.optim import _base
from train.optim.adam import _check_adam_family


class ScaleByDiffGradState(NamedTuple):
    """State of `scale_by_diffgrad`."""

    count: jax.Array  # int32 scalar, number of updates made.
    mu: optax.Updates  # first moment m.
    nu: optax.Updates  # second moment v.
    prev_grad: optax.Updates  # the gradient of the previous step (zeros before the first).


def scale_by_diffgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                      frozen_dfc: bool = False) -> optax.GradientTransformation:
    """Rescale updates as diffGrad does, before the learning rate.

    Output: √(1−β₂ᵗ)/(1−β₁ᵗ) · ξ ⊙ m/(√v + ε), ξ = sigmoid(|g_{t−1} − g_t|).

    Args:
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0, added to the raw √v.
      frozen_dfc: reproduce the first release's bug (ξ = 0.5 from step 2 on).

    Returns:
      An optax GradientTransformation with a `ScaleByDiffGradState`.
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return ScaleByDiffGradState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros,
                                    prev_grad=zeros)

    def update_fn(updates, state, params=None):
        del params
        count = _base.safe_increment(state.count)
        dtype = _base.scalar_dtype(updates)
        step_size = jnp.sqrt(_base.one_minus_power(b2, count, dtype)) / (
            _base.one_minus_power(b1, count, dtype))
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)

        def friction(g, prev):
            xi = 1 / (1 + jnp.exp(-jnp.abs(prev - g)))
            if frozen_dfc:
                # The bug: after step 1 the stored "previous" gradient is the current one.
                xi = jnp.where(state.count == 0, xi, 0.5)
            return xi

        xi = jax.tree.map(friction, updates, state.prev_grad)
        out = jax.tree.map(lambda x, m, v: step_size * (x * m) / (jnp.sqrt(v) + eps), xi, mu, nu)
        new_state = ScaleByDiffGradState(
            count=count, mu=_base.cast_tree(mu, state.mu), nu=_base.cast_tree(nu, state.nu),
            prev_grad=_base.cast_tree(updates, state.prev_grad))
        return _base.cast_tree(out, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def diffgrad(learning_rate: _base.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
             eps: float = 1e-8, weight_decay: float = 0.0,
             frozen_dfc: bool = False) -> optax.GradientTransformation:
    """diffGrad (Dubey et al. 2019) as its authors' corrected code, with L2 weight decay.

    Args:
      learning_rate: η, a number or an optax schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0, added to the raw √v.
      weight_decay: L2 coefficient added to the gradient (>= 0).
      frozen_dfc: reproduce the first release's bug (ξ = 0.5 from step 2 on); off by default.

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    owner = "diffgrad"
    _check_adam_family(owner, learning_rate, b1, b2, eps, weight_decay)
    _base.check_bool(owner, "frozen_dfc", frozen_dfc)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(weight_decay),
        scale_by_diffgrad(b1=b1, b2=b2, eps=eps, frozen_dfc=frozen_dfc),
        optax.scale_by_learning_rate(learning_rate),
    ))
