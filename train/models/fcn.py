"""Fully connected networks (the paper's FCNs: 1, 2 or 4 hidden layers of width 100, ReLU).

Inputs of any shape are flattened. `depth` counts hidden layers; each is Linear(width) followed,
optionally, by BatchNorm and then by the activation; a final Linear gives the logits. depth = 0 is
multinomial logistic regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from train.models.layers import dense

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # PyTorch's nn.GELU default is exact
    "identity": lambda x: x,
}


def get_activation(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """Look up an activation by name; None means identity.

    Args:
      name: one of ACTIVATIONS' keys, or None.

    Returns:
      The elementwise function.
    """
    if name is None:
        return ACTIVATIONS["identity"]
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)} or None")
    return ACTIVATIONS[name]


class FCN(nnx.Module):
    """A multi-layer perceptron on flattened inputs; `__call__` returns logits."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        depth: int = 2,
        width: int = 100,
        activation: str | None = "relu",
        batchnorm: bool = False,
        use_bias: bool = True,
        init: str = "torch",
        rngs: nnx.Rngs,
    ):
        """Create the network.

        Args:
          num_classes: width of the last layer.
          input_shape: shape of one example (flattened inside).
          depth: number of hidden layers (>= 0).
          width: width of every hidden layer.
          activation: a name from ACTIVATIONS, or None for a linear network.
          batchnorm: add BatchNorm (PyTorch's momentum 0.1 and eps 1e-5) after each hidden Linear.
          use_bias: whether the Linear layers have biases.
          init: "torch" (PyTorch's default init) or "flax".
          rngs: NNX random streams.
        """
        if depth < 0 or width < 1:
            raise ValueError(f"FCN needs depth >= 0 and width >= 1, got depth={depth}, width={width}")
        self.activation = activation
        get_activation(activation)  # fail now, not at the first call
        din = math.prod(int(s) for s in input_shape)
        widths = [din] + [width] * depth
        self.hidden = nnx.List([dense(a, b, init=init, use_bias=use_bias, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        # flax momentum m keeps m of the old running average; PyTorch's momentum 0.1 is flax's 0.9.
        self.norms = nnx.List(
            [nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs) for _ in range(depth)] if batchnorm else []
        )
        self.out = dense(widths[-1], num_classes, init=init, use_bias=use_bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (N, num_classes) of a batch (N, *input_shape)."""
        act = get_activation(self.activation)
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = act(x)
        return self.out(x)
