"""The paper's networks in Flax NNX: LeNet-5, FCNs, CIFAR ResNet-18, linear networks, GPT-2, Llama, LoRA.

The image and tabular classifiers are built by name: `build(name, num_classes=..., input_shape=..., rngs=...)` returns a module whose `__call__(x)` gives
logits; BatchNorm follows `model.train()` / `model.eval()` (the Hessian is always taken in eval mode).
New models start in training mode, as in PyTorch. The language models are built from their own frozen
configs (`gpt2.GPT2(gpt2.preset("nano"), rngs=...)`, `llama.Llama(...)`, `lora.apply_lora(model, ...)`);
`train.llm` trains them and tracks their spectra.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from flax import nnx

from train.models import gpt2, llama, lora
from train.models.fcn import FCN
from train.models.layers import Conv2D, conv2d, max_pool2d
from train.models.lenet import LeNet5
from train.models.linear import LinearNet
from train.models.gpt2 import GPT2, GPT2Config
from train.models.llama import Llama, LlamaConfig
from train.models.lora import apply_lora
from train.models.resnet import ResNet18

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "lenet5": LeNet5,
    "fcn": FCN,
    "resnet18": ResNet18,
    "linear": LinearNet,
}

__all__ = ["MODELS", "build", "count_params", "LeNet5", "FCN", "ResNet18", "LinearNet", "Conv2D", "conv2d", "max_pool2d",
           "gpt2", "llama", "lora", "GPT2", "GPT2Config", "Llama", "LlamaConfig", "apply_lora"]


def build(name: str, *, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Construct a model by name.

    Args:
      name: one of "lenet5", "fcn", "resnet18", "linear".
      num_classes: number of output logits.
      input_shape: shape of one example, without the batch axis (NHWC images: (H, W, C)).
      rngs: NNX random streams (parameter init uses `rngs.params()`).
      **kwargs: model options, e.g. depth/width/activation for "fcn", conv_impl for the CNNs.

    Returns:
      The model, float32 parameters, in training mode.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {sorted(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    cls = MODELS[name]
    try:
        return cls(num_classes=int(num_classes), input_shape=tuple(int(s) for s in input_shape), rngs=rngs, **kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise TypeError(f"model {name!r} ({cls.__name__}) does not take these options: {e}") from e
        raise


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (nnx.Param leaves; BatchNorm running statistics excluded).

    Args:
      model: an NNX module.

    Returns:
      The total size of its parameters.
    """
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
