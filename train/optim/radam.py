"""RAdam as its authors' PyTorch code computes it (LiyuanLucasLiu/RAdam, radam.py).

The reference step, with ρ∞ = 2/(1−β₂) − 1 and ρ_t = ρ∞ − 2tβ₂ᵗ/(1−β₂ᵗ):
  if ρ_t ≥ 5:  θ ← θ − η · r_t √(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε),
               r_t = √((ρ_t−4)(ρ_t−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρ_t));
  otherwise:   θ ← θ − η · m/(1−β₁ᵗ)   (degenerated_to_sgd=True), or no step at all (False);
and decoupled weight decay θ ← θ − η·wd·θ on every step that moves θ.

Differences from `optax.scale_by_radam`, which is therefore not used: optax puts ε on the
bias-corrected √v̂ (m̂/(√v̂ + ε)); the reference puts it on the raw √v and moves √(1−β₂ᵗ) into the
step size, which gives different numbers whenever ε matters. The threshold is the same (ρ_t ≥ 5).
optax has no decoupled decay inside RAdam and no "no step" option.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train.optim import _base
from train.optim.adam import _check_adam_family


class ScaleByRAdamState(NamedTuple):
    """State of `scale_by_radam`."""

    count: jax.Array  # int32 scalar, number of updates made.
    mu: optax.Updates  # first moment m.
    nu: optax.Updates  # second moment v.


def _rectification(count: jax.Array, b1, b2, dtype):
    """Per-step scalars of the reference: (ρ_t, adaptive step size, SGD step size), without η.

    Args:
      count: the step number t (>= 1).
      b1: β₁.
      b2: β₂.
      dtype: the scalar dtype.

    Returns:
      (rho_t, adaptive_size, sgd_size) as scalars; adaptive_size is only meaningful when
      rho_t >= 5 (it is computed from clipped values otherwise, to stay finite).
    """
    bc1 = _base.one_minus_power(b1, count, dtype)  # 1 − β₁ᵗ
    bc2 = _base.one_minus_power(b2, count, dtype)  # 1 − β₂ᵗ
    t = count.astype(dtype)
    rho_inf = 2 / (1 - jnp.asarray(b2, dtype)) - 1
    rho = rho_inf - 2 * t * (1 - bc2) / bc2
    # Same expression and order as the reference; rho is clipped at 5 so that the unused branch
    # stays finite (jnp.where evaluates both).
    rho_c = jnp.maximum(rho, 5.0)
    adaptive = jnp.sqrt(bc2 * (rho_c - 4) / (rho_inf - 4) * (rho_c - 2) / rho_c * rho_inf
                        / (rho_inf - 2)) / bc1
    return rho, adaptive, 1 / bc1


def scale_by_radam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, degenerated_to_sgd: bool = True,
                   threshold: float = 5.0) -> optax.GradientTransformation:
    """Rescale updates as the RAdam authors' code does, before the learning rate.

    Output (to be multiplied by −η): r_t √(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε) + wd·θ when ρ_t ≥ threshold;
    m/(1−β₁ᵗ) + wd·θ below it when degenerated_to_sgd, else zero (no step and no decay).

    Args:
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0, added to the raw √v.
      weight_decay: decoupled decay coefficient; it sits inside this transform because the
        reference skips it on the steps where it makes no update.
      degenerated_to_sgd: below the threshold, take the bias-corrected momentum step (True) or
        no step (False).
      threshold: the ρ_t threshold (the reference uses ρ_t >= 5).

    Returns:
      An optax GradientTransformation with a `ScaleByRAdamState`; its update needs `params`
      when weight_decay may be non-zero.
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return ScaleByRAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_radam: update needs params (decoupled weight decay reads them);"
                             " call update(grads, state, params).")
        count = _base.safe_increment(state.count)
        dtype = _base.scalar_dtype(updates)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
        rho, adaptive, sgd_size = _rectification(count, b1, b2, dtype)
        rectified = rho >= threshold
        # 1.0 where the reference moves θ this step, 0.0 where it does nothing.
        moves = jnp.logical_or(rectified, degenerated_to_sgd).astype(dtype)

        def leaf(m, v, p):
            step = jnp.where(rectified, adaptive * m / (jnp.sqrt(v) + eps), sgd_size * m)
            return moves * (step + weight_decay * p)

        out = jax.tree.map(leaf, mu, nu, params)
        new_state = ScaleByRAdamState(count=count, mu=_base.cast_tree(mu, state.mu),
                                      nu=_base.cast_tree(nu, state.nu))
        return _base.cast_tree(out, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def radam(learning_rate: _base.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = True,
          degenerated_to_sgd: bool = True) -> optax.GradientTransformation:
    """RAdam as its authors' code, with decoupled weight decay θ ← θ − η·wd·θ by default.

    Args:
      learning_rate: η, a number or an optax schedule; decoupled decay uses the current η.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε >= 0, added to the raw √v as in the reference.
      weight_decay: decay coefficient (>= 0).
      decoupled: True (the reference): θ ← θ − η·wd·θ on each step that moves θ; False: L2,
        wd·θ added to the gradient before the moments.
      degenerated_to_sgd: while ρ_t < 5 take the step η m/(1−β₁ᵗ) (True, the default of the
        reference's radam.py) or no step (False, the default of its packaged radam/radam.py).

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    owner = "radam"
    _check_adam_family(owner, learning_rate, b1, b2, eps, weight_decay)
    _base.check_bool(owner, "decoupled", decoupled)
    _base.check_bool(owner, "degenerated_to_sgd", degenerated_to_sgd)
    coupled_wd, decoupled_wd = (0.0, weight_decay) if decoupled else (weight_decay, 0.0)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(coupled_wd),
        scale_by_radam(b1=b1, b2=b2, eps=eps, weight_decay=decoupled_wd,
                       degenerated_to_sgd=degenerated_to_sgd),
        optax.scale_by_learning_rate(learning_rate),
    ))
