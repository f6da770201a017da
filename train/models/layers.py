"""Shared layers: a 2-D convolution with a fast CPU form, max-pooling, and PyTorch-style initialisers.

XLA's CPU convolution is slow in the backward pass (FINDINGS.md: a LeNet-5 gradient on 1000 MNIST
images took 0.27 s against 0.004 s for an MLP of the same size). `conv2d` therefore has two
interchangeable implementations over the same parameters (kernel HWIO, bias (O,)):

- "xla":    `lax.conv_general_dilated`, the right choice on GPU/TPU;
- "slices": im2col written as kh*kw shifted slices concatenated on the channel axis, then one matmul.
            Every piece (slice, concatenate, dot) has cheap, well-vectorised transposes on CPU.

and `max_pool2d` two as well:

- "reduce_window": `lax.reduce_window` (its gradient is `select_and_scatter`, slow on CPU);
- "reshape":       a reshape to (N, H/k, k, W/k, k, C) and a max over the window axes.

The two pooling forms agree in value everywhere and in derivatives wherever the window maximum is
unique. At ties, "reduce_window" sends the whole cotangent to one element and "reshape" splits it
equally among the tied elements (JAX's rule for `max`). After a ReLU the common ties are exact zeros,
where the ReLU derivative is 0 anyway, so gradients and Hessian-vector products of ReLU networks
agree; networks that pool plateaus of equal non-zero values would not.

"auto" picks "slices"/"reshape" when `jax.default_backend()` is "cpu" and "xla"/"reduce_window"
otherwise, decided once at construction (benchmarks/conv_cpu.py measures the ratio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

CONV_IMPLS = ("xla", "slices")
POOL_IMPLS = ("reduce_window", "reshape")

Padding = int | str | Sequence[int] | Sequence[tuple[int, int]]


def resolve_conv_impl(impl: str) -> str:
    """Resolve a convolution implementation name, mapping "auto" to the backend's fast one.

    Args:
      impl: "xla", "slices" or "auto".

    Returns:
      "xla" or "slices".
    """
    if impl == "auto":
        return "slices" if jax.default_backend() == "cpu" else "xla"
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS + ('auto',)}, got {impl!r}")
    return impl


def resolve_pool_impl(impl: str) -> str:
    """Resolve a max-pool implementation name, mapping "auto" to the backend's fast one.

    Args:
      impl: "reduce_window", "reshape" or "auto".

    Returns:
      "reduce_window" or "reshape".
    """
    if impl == "auto":
        return "reshape" if jax.default_backend() == "cpu" else "reduce_window"
    if impl not in POOL_IMPLS:
        raise ValueError(f"pool_impl must be one of {POOL_IMPLS + ('auto',)}, got {impl!r}")
    return impl


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    """Return (v, v) for an int, or the two entries of a length-2 sequence."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return v


def normalize_padding(
    padding: Padding, kernel_size: tuple[int, int], strides: tuple[int, int], spatial: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Turn any accepted padding spec into explicit ((top, bottom), (left, right)) zero padding.

    Args:
      padding: an int (same on all sides), a pair (ph, pw), a pair of pairs, or "SAME" / "VALID"
        with XLA's meaning.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      spatial: the input's (H, W), needed for "SAME".

    Returns:
      ((top, bottom), (left, right)).
    """
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding string must be 'SAME' or 'VALID', got {padding!r}")
        pads = lax.padtype_to_pads(spatial, kernel_size, strides, padding.upper())
        return tuple((int(a), int(b)) for a, b in pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    if len(padding) == 2 and all(len(p) == 2 for p in padding):
        return tuple((int(p[0]), int(p[1])) for p in padding)
    raise ValueError(f"cannot read padding {padding!r}: use an int, (ph, pw), ((t, b), (l, r)), 'SAME' or 'VALID'")


def conv2d_xla(x: jax.Array, kernel: jax.Array, *, strides=(1, 1), pads=((0, 0), (0, 0)), precision=None) -> jax.Array:
    """Cross-correlate NHWC inputs with an HWIO kernel using XLA's convolution (no bias).

    Args:
      x: (N, H, W, C_in) inputs.
      kernel: (kh, kw, C_in, C_out).
      strides: (sh, sw).
      pads: ((top, bottom), (left, right)) zero padding.
      precision: passed to `lax.conv_general_dilated`.

    Returns:
      (N, H_out, W_out, C_out).
    """
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
    )


def conv2d_slices(x: jax.Array, kernel: jax.Array, *, strides=(1, 1), pads=((0, 0), (0, 0)), precision=None) -> jax.Array:
    """Cross-correlate NHWC inputs with an HWIO kernel as kh*kw shifted slices and one matmul (no bias).

    The patch tensor P[n, h, w, (i, j, c)] = x_padded[n, s_h h + i, s_w w + j, c] is built by
    concatenating the kh*kw strided slices on the channel axis, in the (i, j, c) order of a row-major
    reshape of the HWIO kernel, so y = P @ kernel.reshape(kh*kw*C_in, C_out) is exactly the
    cross-correlation that `conv2d_xla` computes.

    Args:
      x: (N, H, W, C_in) inputs.
      kernel: (kh, kw, C_in, C_out).
      strides: (sh, sw).
      pads: ((top, bottom), (left, right)) zero padding.
      precision: passed to the matmul.

    Returns:
      (N, H_out, W_out, C_out).
    """
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    if any(p for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {h}x{w}")
    cols = [
        x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    y = jnp.matmul(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout), precision=precision)
    return y.reshape(n, ho, wo, cout)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = 0,
    impl: str = "xla",
    precision: Any = None,
) -> jax.Array:
    """2-D cross-correlation (PyTorch's Conv2d / XLA's convolution) on NHWC inputs, HWIO kernels.

    Args:
      x: (N, H, W, C_in) inputs.
      kernel: (kh, kw, C_in, C_out) weights.
      bias: optional (C_out,) bias.
      strides: an int or (sh, sw).
      padding: zero padding: int, (ph, pw), ((t, b), (l, r)), "SAME" or "VALID".
      impl: "xla", "slices" or "auto" (see the module docstring).
      precision: matmul/convolution precision (None follows `jax.default_matmul_precision`).

    Returns:
      (N, H_out, W_out, C_out) with H_out = (H + t + b - kh) // sh + 1, likewise W_out.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d needs NHWC inputs and an HWIO kernel, got shapes {x.shape} and {kernel.shape}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[-1]} channels but the kernel expects {kernel.shape[2]} (HWIO layout)")
    strides = _pair(strides, "strides")
    pads = normalize_padding(padding, kernel.shape[:2], strides, x.shape[1:3])
    fn = conv2d_slices if resolve_conv_impl(impl) == "slices" else conv2d_xla
    y = fn(x, kernel, strides=strides, pads=pads, precision=precision)
    return y if bias is None else y + bias


def max_pool2d(x: jax.Array, window: int = 2, *, impl: str = "reduce_window") -> jax.Array:
    """Non-overlapping max-pooling (stride = window, VALID) of NHWC inputs, like PyTorch's MaxPool2d(k).

    Args:
      x: (N, H, W, C).
      window: the pooling size k; trailing rows/columns that do not fill a window are dropped.
      impl: "reduce_window", "reshape" or "auto" (see the module docstring for the tie rule).

    Returns:
      (N, H // k, W // k, C).
    """
    n, h, w, c = x.shape
    ho, wo = h // window, w // window
    if ho < 1 or wo < 1:
        raise ValueError(f"pooling window {window} is larger than the input {h}x{w}")
    if resolve_pool_impl(impl) == "reduce_window":
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, window, window, 1), "VALID")
    x = x[:, : ho * window, : wo * window, :]
    return jnp.max(x.reshape(n, ho, window, wo, window, c), axis=(2, 4))


def torch_kernel_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """PyTorch's default Linear/Conv2d weight init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).

    fan_in is the product of all but the last axis (Linear (in, out): in; Conv HWIO: kh*kw*in).

    Args:
      key: PRNG key.
      shape: kernel shape, output features last.
      dtype: parameter dtype.

    Returns:
      The initialised kernel.
    """
    fan_in = math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_bias_init(fan_in: int):
    """PyTorch's default Linear/Conv2d bias init U(+-1/sqrt(fan_in)), as a flax initializer.

    Args:
      fan_in: the fan-in of the layer's kernel (the bias shape alone does not tell it).

    Returns:
      An initializer (key, shape, dtype) -> array.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


INITS = ("torch", "flax")


def dense(in_features: int, out_features: int, *, init: str = "torch", use_bias: bool = True, rngs: nnx.Rngs) -> nnx.Linear:
    """An `nnx.Linear` with PyTorch's default init ("torch") or flax's (lecun_normal, zero bias).

    Args:
      in_features: input width.
      out_features: output width.
      init: "torch" or "flax".
      use_bias: whether the layer has a bias.
      rngs: NNX random streams.

    Returns:
      The layer, float32 parameters.
    """
    if init == "torch":
        kw = dict(kernel_init=torch_kernel_init, bias_init=torch_bias_init(in_features))
    elif init == "flax":
        kw = {}
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return nnx.Linear(in_features, out_features, use_bias=use_bias, param_dtype=jnp.float32, rngs=rngs, **kw)


class Conv2D(nnx.Module):
    """A 2-D convolution layer (NHWC in and out) whose implementation is chosen per backend.

    Parameters: `kernel` (kh, kw, C_in, C_out) and `bias` (C_out,), float32, identical for every
    implementation, so a model can switch with `model.set_attributes(conv_impl="xla")`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: Padding = 0,
        use_bias: bool = True,
        conv_impl: str = "auto",
        init: str = "torch",
        rngs: nnx.Rngs,
    ):
        """Create the layer.

        Args:
          in_features: input channels.
          out_features: output channels.
          kernel_size: an int or (kh, kw).
          strides: an int or (sh, sw).
          padding: int, (ph, pw), ((t, b), (l, r)), "SAME" or "VALID".
          use_bias: whether to add a bias.
          conv_impl: "xla", "slices" or "auto" (resolved now, from `jax.default_backend()`).
          init: "torch" (U(+-1/sqrt(fan_in)) for kernel and bias) or "flax" (lecun_normal, zero bias).
          rngs: NNX random streams.
        """
        kh, kw = _pair(kernel_size, "kernel_size")
        shape = (kh, kw, in_features, out_features)
        fan_in = kh * kw * in_features
        if init == "torch":
            kinit, binit = torch_kernel_init, torch_bias_init(fan_in)
        elif init == "flax":
            kinit, binit = nnx.initializers.lecun_normal(), nnx.initializers.zeros_init()
        else:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.kernel = nnx.Param(kinit(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(binit(rngs.params(), (out_features,), jnp.float32)) if use_bias else nnx.data(None)
        self.strides = _pair(strides, "strides")
        # Stored hashable (a string or explicit pairs): NNX keeps it as static structure.
        self.padding = (
            padding.upper() if isinstance(padding, str) else normalize_padding(padding, (kh, kw), self.strides, (0, 0))
        )
        if self.padding not in ("SAME", "VALID") and isinstance(self.padding, str):
            raise ValueError(f"padding string must be 'SAME' or 'VALID', got {padding!r}")
        self.conv_impl = resolve_conv_impl(conv_impl)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the convolution to (N, H, W, C_in) inputs; returns (N, H_out, W_out, C_out)."""
        bias = None if self.bias is None else self.bias[...]
        return conv2d(x, self.kernel[...], bias, strides=self.strides, padding=self.padding, impl=self.conv_impl)
