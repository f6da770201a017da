"""Adai (adaptive inertia) as its authors' PyTorch code computes it (zeke-xie/adaptive-inertia-adai).

Reference step (METHOD.md §6):
  v ← β₂v + (1−β₂)g²;  v̂ = v/(1−β₂ᵗ);  v̄ = mean of v̂ over every element of every parameter;
  β₁ = clip(1 − β₀ v̂/v̄, 0, 1−ε) elementwise;  m ← β₁m + (1−β₁)g;
  P ← P·β₁ (running product, P₀ = 1);  m̂ = m/(1 − P);  θ ← θ − η m̂.
Weight decay: L2 (g ← g + wd·θ before the moments) by default; `decoupled=True` gives AdaiW,
θ ← θ(1 − η·wd) before the step, i.e. the update −η(m̂ + wd·θ).

One difference from the reference, kept on purpose: when every gradient is exactly zero at the
first step, v̄ = 0 and the reference divides 0 by 0 (NaN everywhere from then on); here v̂/v̄ is
taken as 0 in that case (β₁ = 1 − ε). Any other input gives the reference's numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train.optim import _base


class ScaleByAdaiState(NamedTuple):
    """State of `scale_by_adai`."""

    count: jax.Array  # int32 scalar, number of updates made.
    mu: optax.Updates  # first moment m (with the adaptive β₁).
    nu: optax.Updates  # second moment v.
    beta1_prod: optax.Updates  # running product of the elementwise β₁ (starts at 1).


def _global_mean(tree, dtype) -> jax.Array:
    """The mean of all elements of all leaves (v̄ in the Adai paper), accumulated in `dtype`.

    Args:
      tree: a pytree of arrays.
      dtype: the accumulation dtype.

    Returns:
      A scalar.
    """
    leaves = jax.tree.leaves(tree)
    total = sum(jnp.sum(x.astype(dtype)) for x in leaves)
    size = sum(x.size for x in leaves)  # static: the parameter count.
    return total / size


def scale_by_adai(b0: float = 0.1, b2: float = 0.99,
                  eps: float = 1e-3) -> optax.GradientTransformation:
    """Rescale updates as Adai does, before the learning rate: the output is m̂.

    Args:
      b0: β₀ >= 0, the inertia scale (β₁ = 1 − β₀ v̂/v̄).
      b2: β₂ in [0, 1).
      eps: ε in (0, 1), the inertia bound (β₁ <= 1 − ε).

    Returns:
      An optax GradientTransformation with a `ScaleByAdaiState`.
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        ones = jax.tree.map(jnp.ones_like, params)
        return ScaleByAdaiState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros, beta1_prod=ones)

    def update_fn(updates, state, params=None):
        del params
        count = _base.safe_increment(state.count)
        dtype = _base.scalar_dtype(updates)
        bc2 = _base.one_minus_power(b2, count, dtype)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
        nu_hat = jax.tree.map(lambda v: v / bc2, nu)
        nu_bar = _global_mean(nu_hat, dtype)
        safe_bar = jnp.where(nu_bar > 0, nu_bar, 1)  # see the module docstring (all-zero gradients).
        beta1 = jax.tree.map(lambda vh: jnp.clip(1.0 - b0 * (vh / safe_bar), 0.0, 1 - eps), nu_hat)
        prod = jax.tree.map(lambda p, b: p * b, state.beta1_prod, beta1)
        mu = jax.tree.map(lambda g, m, b: b * m + (1 - b) * g, updates, state.mu, beta1)
        out = jax.tree.map(lambda m, p: m / (1 - p), mu, prod)
        new_state = ScaleByAdaiState(
            count=count, mu=_base.cast_tree(mu, state.mu), nu=_base.cast_tree(nu, state.nu),
            beta1_prod=_base.cast_tree(prod, state.beta1_prod))
        return _base.cast_tree(out, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def adai(learning_rate: _base.ScalarOrSchedule, b0: float = 0.1, b2: float = 0.99,
         eps: float = 1e-3, weight_decay: float = 0.0,
         decoupled: bool = False) -> optax.GradientTransformation:
    """Adai (Xie et al. 2022) as its authors' code; AdaiW with `decoupled=True`.

    Args:
      learning_rate: η, a number or an optax schedule (SGD-like values: the paper uses 0.1 on
        MNIST-family data and 1 on CIFAR).
      b0: β₀ >= 0 (reference default 0.1).
      b2: β₂ in [0, 1) (reference default 0.99).
      eps: ε in (0, 1), the inertia bound (reference default 1e-3).
      weight_decay: decay coefficient (>= 0).
      decoupled: False: L2, wd·θ added to the gradient before the moments (Adai); True: θ ←
        θ(1 − η·wd) with the current η (AdaiW).

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    owner = "adai"
    _base.check_learning_rate(owner, learning_rate)
    _base.check_range(owner, "b0", b0, 0.0, note="Adai's default is 0.1.")
    _base.check_range(owner, "b2", b2, 0.0, 1.0, note="Adai's default is 0.99.")
    _base.check_range(owner, "eps", eps, 0.0, 1.0, low_open=True,
                      note="eps bounds the inertia, beta1 <= 1 - eps; Adai's default is 1e-3.")
    _base.check_range(owner, "weight_decay", weight_decay, 0.0)
    _base.check_bool(owner, "decoupled", decoupled)
    coupled_wd, decoupled_wd = (0.0, weight_decay) if decoupled else (weight_decay, 0.0)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(coupled_wd),
        scale_by_adai(b0=b0, b2=b2, eps=eps),
        optax.add_decayed_weights(decoupled_wd),
        optax.scale_by_learning_rate(learning_rate),
    ))
