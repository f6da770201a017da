"""Linear networks, with or without ReLU and BatchNorm (the paper's "linear networks" ablation).

A deep linear network is a product of weight matrices: with activation=None and batchnorm=False it
computes an affine map of the flattened input, yet its loss landscape (and Hessian) is that of a
depth-`depth` factorisation. ReLU and BatchNorm are the two switches the paper varies.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from train.models.fcn import FCN

LINEAR_ACTIVATIONS = (None, "relu")


class LinearNet(FCN):
    """`depth` hidden Linear layers of `width`, each optionally followed by BatchNorm and ReLU."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        depth: int = 2,
        width: int = 100,
        activation: str | None = None,
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
          activation: None (a linear network) or "relu".
          batchnorm: add BatchNorm after each hidden Linear.
          use_bias: whether the Linear layers have biases (PyTorch's nn.Linear default: True).
          init: "torch" or "flax".
          rngs: NNX random streams.
        """
        if activation not in LINEAR_ACTIVATIONS:
            raise ValueError(f"linear networks take activation None or 'relu', got {activation!r}; use 'fcn' for others")
        super().__init__(
            num_classes=num_classes, input_shape=input_shape, depth=depth, width=width,
            activation=activation, batchnorm=batchnorm, use_bias=use_bias, init=init, rngs=rngs,
        )
