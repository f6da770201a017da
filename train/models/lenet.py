"""LeNet-5 in its common modern form (METHOD.md section 5).

conv5x5(6) - ReLU - maxpool2 - conv5x5(16) - ReLU - maxpool2 - FC120 - ReLU - FC84 - ReLU - FC(classes).
On 28x28 inputs the first convolution pads by 2, which reproduces LeCun's 32x32 geometry; on 32x32
inputs it does not pad. Parameter counts: 61,706 on MNIST (28x28x1), 62,006 on CIFAR (32x32x3).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from train.models.layers import Conv2D, avg_pool2d, dense, max_pool2d, resolve_pool_impl


def _conv1_padding(height: int, width: int) -> int:
    """The first convolution's padding: 2 for 28x28 inputs (MNIST), else 0 (32x32 CIFAR and others)."""
    return 2 if (height, width) == (28, 28) else 0


class LeNet5(nnx.Module):
    """LeNet-5 for NHWC images; `__call__` returns logits."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        input_shape: Sequence[int] = (28, 28, 1),
        conv1_padding: int | None = None,
        pooling: str = "max",
        conv_impl: str = "auto",
        pool_impl: str = "auto",
        init: str = "torch",
        rngs: nnx.Rngs,
    ):
        """Create the network.

        Args:
          num_classes: width of the last layer.
          input_shape: (H, W, C) of one image.
          conv1_padding: zero padding of the first convolution; None picks 2 on 28x28, else 0.
          pooling: "max" (the common modern form, METHOD.md §5) or "avg" (LeCun 1998's subsampling, without
            its trainable coefficients): the paper gives no layers, so the variant is a sensitivity option.
          conv_impl: "xla", "slices", "banded" or "auto" (see train.models.layers).
          pool_impl: "reduce_window", "reshape" or "auto".
          init: "torch" (PyTorch's default init, as the paper's code) or "flax".
          rngs: NNX random streams.
        """
        if len(input_shape) != 3:
            raise ValueError(f"LeNet5 needs input_shape (H, W, C), got {tuple(input_shape)}")
        h, w, c = (int(s) for s in input_shape)
        pad = _conv1_padding(h, w) if conv1_padding is None else int(conv1_padding)
        # Spatial sizes after conv5 (valid) and pool2, twice.
        h2, w2 = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        if h2 < 1 or w2 < 1:
            raise ValueError(f"input {h}x{w} (padding {pad}) is too small for LeNet5: it needs at least 16x16 after padding")
        self.conv1 = Conv2D(c, 6, 5, padding=pad, conv_impl=conv_impl, init=init, rngs=rngs)
        self.conv2 = Conv2D(6, 16, 5, padding=0, conv_impl=conv_impl, init=init, rngs=rngs)
        self.fc1 = dense(16 * h2 * w2, 120, init=init, rngs=rngs)
        self.fc2 = dense(120, 84, init=init, rngs=rngs)
        self.fc3 = dense(84, num_classes, init=init, rngs=rngs)
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        self.pooling = pooling
        self.pool_impl = resolve_pool_impl(pool_impl)

    def _pool(self, x: jax.Array) -> jax.Array:
        return max_pool2d(x, 2, impl=self.pool_impl) if self.pooling == "max" else avg_pool2d(x, 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (N, num_classes) of NHWC images (N, H, W, C)."""
        x = self._pool(jax.nn.relu(self.conv1(x)))
        x = self._pool(jax.nn.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x))
        x = jax.nn.relu(self.fc2(x))
        return self.fc3(x)
