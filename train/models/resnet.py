"""ResNet-18 in its CIFAR form (He et al. 2016 as adapted by the widely used pytorch-cifar code).

3x3 stem convolution (64, stride 1) - BatchNorm - ReLU, no max-pool; four stages of two BasicBlocks
with 64, 128, 256, 512 channels and strides 1, 2, 2, 2; global average pooling; Linear. Convolutions
have no bias (BatchNorm follows each). A block's shortcut is the identity, or a 1x1 strided
convolution plus BatchNorm where the shape changes. 11,173,962 parameters for 10 classes.
BatchNorm uses PyTorch's defaults (momentum 0.1, i.e. flax momentum 0.9; eps 1e-5); flax updates the
running variance with the biased batch variance where PyTorch uses the unbiased one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from train.models.layers import Conv2D, dense

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
BLOCKS_PER_STAGE = 2


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (flax's momentum is one minus PyTorch's)."""
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convolutions."""

    def __init__(self, cin: int, cout: int, stride: int, *, conv_impl: str, init: str, rngs: nnx.Rngs):
        """Create the block.

        Args:
          cin: input channels.
          cout: output channels.
          stride: stride of the first convolution (and of the shortcut).
          conv_impl: convolution implementation (train.models.layers).
          init: "torch" or "flax".
          rngs: NNX random streams.
        """
        kw = dict(use_bias=False, conv_impl=conv_impl, init=init, rngs=rngs)
        self.conv1 = Conv2D(cin, cout, 3, strides=stride, padding=1, **kw)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = Conv2D(cout, cout, 3, strides=1, padding=1, **kw)
        self.bn2 = _bn(cout, rngs)
        if stride != 1 or cin != cout:
            self.short_conv = Conv2D(cin, cout, 1, strides=stride, padding=0, **kw)
            self.short_bn = _bn(cout, rngs)
        else:
            self.short_conv = nnx.data(None)
            self.short_bn = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC inputs."""
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.short_conv is None else self.short_bn(self.short_conv(x))
        return jax.nn.relu(y + s)


class ResNet18(nnx.Module):
    """CIFAR ResNet-18 for NHWC images; `__call__` returns logits. Honours model.train()/eval()."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        input_shape: Sequence[int] = (32, 32, 3),
        conv_impl: str = "auto",
        init: str = "torch",
        rngs: nnx.Rngs,
    ):
        """Create the network.

        Args:
          num_classes: width of the last layer.
          input_shape: (H, W, C) of one image.
          conv_impl: "xla", "slices", "banded" or "auto" (see train.models.layers).
          init: "torch" (PyTorch's default init) or "flax".
          rngs: NNX random streams.
        """
        if len(input_shape) != 3:
            raise ValueError(f"ResNet18 needs input_shape (H, W, C), got {tuple(input_shape)}")
        cin = int(input_shape[-1])
        self.stem = Conv2D(cin, 64, 3, padding=1, use_bias=False, conv_impl=conv_impl, init=init, rngs=rngs)
        self.stem_bn = _bn(64, rngs)
        blocks = []
        c = 64
        for cout, stride in STAGES:
            for b in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(c, cout, stride if b == 0 else 1, conv_impl=conv_impl, init=init, rngs=rngs))
                c = cout
        self.blocks = nnx.List(blocks)
        self.fc = dense(c, num_classes, init=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (N, num_classes) of NHWC images (N, H, W, C)."""
        x = jax.nn.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))
