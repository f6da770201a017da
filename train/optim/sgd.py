"""Momentum SGD and vanilla SGD in PyTorch's form (torch.optim.SGD), with coupled L2 decay.

PyTorch's rule, which the paper used: d = g + wd·θ; b ← μ·b + d (b_1 = d); θ ← θ − η·b.
`optax.trace` keeps exactly this buffer (b starts at zero, so b_1 = d), and the learning rate is
applied after the buffer, as in PyTorch, so a scheduled rate changes the step but not the buffer.
"""

from __future__ import annotations

import optax

from train.optim import _base


def sgd(learning_rate: _base.ScalarOrSchedule, momentum: float = 0.9,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Momentum SGD as torch.optim.SGD (dampening 0, no Nesterov) with L2 weight decay.

    Update (METHOD.md §5): d = g + wd·θ; b ← μ b + d; θ ← θ − η b.

    Args:
      learning_rate: η, a number or an optax schedule.
      momentum: μ in [0, 1); 0 gives vanilla SGD.
      weight_decay: L2 coefficient added to the gradient before the buffer (>= 0).

    Returns:
      An optax GradientTransformation; its update needs `params` (weight decay reads them).
    """
    owner = "sgd"
    _base.check_learning_rate(owner, learning_rate)
    _base.check_range(owner, "momentum", momentum, 0.0, 1.0, note="The paper uses 0.9.")
    _base.check_range(owner, "weight_decay", weight_decay, 0.0)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    ))


def vanilla_sgd(learning_rate: _base.ScalarOrSchedule,
                weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Plain SGD without momentum: θ ← θ − η (g + wd·θ).

    Args:
      learning_rate: η, a number or an optax schedule.
      weight_decay: L2 coefficient added to the gradient (>= 0).

    Returns:
      An optax GradientTransformation; its update needs `params`.
    """
    owner = "vanilla_sgd"
    _base.check_learning_rate(owner, learning_rate)
    _base.check_range(owner, "weight_decay", weight_decay, 0.0)
    return _base.keep_dtypes(optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    ))
