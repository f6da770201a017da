"""Shared layers: a 2-D convolution with fast CPU forms, max-pooling, and PyTorch-style initialisers.

XLA's CPU convolution is slow, above all in the backward pass (FINDINGS.md: a LeNet-5 gradient on 1000
MNIST images took 0.27 s against 0.004 s for an MLP of the same size). `conv2d` therefore has three
interchangeable implementations over the same parameters (kernel HWIO, bias (O,)):

- "xla":    `lax.conv_general_dilated`; the right choice on GPU/TPU and for wide layers.
- "slices": im2col written as kh*kw shifted slices concatenated on the channel axis, then one matmul.
- "banded": one matmul per output row against a banded matrix. For kernel row i, the map from an
            input row (W*C_in values) to an output row (W_out*C_out values) is a banded matrix built
            from k[i] by a gather; stacking the kh input rows each output row needs gives
            y_rows = rows @ band with band of shape (kh*W*C_in, W_out*C_out). It spends W/kw times
            the convolution's FLOPs, but as one well-shaped GEMM (LeNet: K = 140 and 420) instead of
            a convolution with 1 or 6 input channels, and its transposes are a GEMM, slices and a
            scatter-add into the small kernel; so it suits narrow, small-channel layers only.

and `max_pool2d` two:

- "reduce_window": `lax.reduce_window` (its gradient is `select_and_scatter`, slow on CPU);
- "reshape":       a reshape to (N, H/k, k, W/k, k, C) and a max over the window axes.

The two pooling forms agree in value everywhere and in derivatives wherever the window maximum is
unique. At ties, "reduce_window" sends the whole cotangent to one element and "reshape" splits it
equally among the tied elements (JAX's rule for `max`). After a ReLU the common ties are exact zeros,
where the ReLU derivative is 0 anyway, so gradients and Hessian-vector products of ReLU networks
agree; networks that pool plateaus of equal non-zero values would not.

"auto": off CPU, "xla" and "reduce_window". On CPU, "reshape" pooling, and per layer "banded" when its
band matrix is small and not too sparse (BANDED_MAX_ENTRIES, BANDED_MAX_WIDTH_PER_TAP; both LeNet-5
convolutions qualify), else "xla". The
backend is read once, when a layer is built; the per-layer choice is made from static shapes at
trace time. benchmarks/conv_cpu.py measures each choice against "xla" + "reduce_window"; "slices" is
kept as an option because it measured faster than "xla" on some machines and slower on others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

CONV_IMPLS = ("xla", "slices", "banded")
# "auto" on CPU uses "banded" only for small bands that are not too sparse: the band has W^2 C_in C_out
# kh / s_w entries, of which a fraction kw / W is non-zero (the FLOP overhead). Both LeNet-5 layers
# (MNIST: 23,520 and 67,200 entries, W/kw = 5.6 and 2.8; CIFAR: 80,640 and 67,200) qualify; wide
# ResNet layers do not. Measured on LeNet-5 only; other layers keep XLA's convolution.
BANDED_MAX_ENTRIES = 1 << 18
BANDED_MAX_WIDTH_PER_TAP = 7.0
POOL_IMPLS = ("reduce_window", "reshape")

Padding = int | str | Sequence[int] | Sequence[tuple[int, int]]


def check_conv_impl(impl: str) -> str:
    """Validate a convolution implementation name.

    Args:
      impl: "xla", "slices", "banded" or "auto".

    Returns:
      impl, unchanged.
    """
    if impl != "auto" and impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS + ('auto',)}, got {impl!r}")
    return impl


def band_entries(width: int, kernel_shape: Sequence[int], stride: int, pads_w: tuple[int, int]) -> int:
    """Number of entries of the "banded" implementation's matrix (kh*W*C_in by W_out*C_out).

    Args:
      width: input width W (unpadded).
      kernel_shape: (kh, kw, C_in, C_out).
      stride: horizontal stride.
      pads_w: (left, right) zero padding.

    Returns:
      The entry count.
    """
    kh, kw, cin, cout = kernel_shape
    wo = (width + pads_w[0] + pads_w[1] - kw) // stride + 1
    return kh * width * cin * wo * cout


def choose_conv_impl(impl: str, backend: str, width: int, kernel_shape: Sequence[int], stride: int,
                     pads_w: tuple[int, int]) -> str:
    """The implementation a layer uses: `impl` itself, or for "auto" the backend's and shape's choice.

    Args:
      impl: "xla", "slices", "banded" or "auto".
      backend: the JAX backend the layer was built for ("cpu", "gpu", "tpu").
      width: input width W.
      kernel_shape: (kh, kw, C_in, C_out).
      stride: horizontal stride.
      pads_w: (left, right) zero padding.

    Returns:
      "xla", "slices" or "banded".
    """
    if check_conv_impl(impl) != "auto":
        return impl
    small = band_entries(width, kernel_shape, stride, pads_w) <= BANDED_MAX_ENTRIES
    dense_enough = width / kernel_shape[1] <= BANDED_MAX_WIDTH_PER_TAP
    return "banded" if backend == "cpu" and small and dense_enough else "xla"


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


def _band_index(width: int, kw: int, stride: int, pad_left: int, wo: int) -> np.ndarray:
    """J[a, p] = the kernel column linking input column a to output column p, or kw where none does."""
    j = np.arange(width)[:, None] + pad_left - stride * np.arange(wo)[None, :]
    return np.where((j >= 0) & (j < kw), j, kw)


def conv2d_banded(x: jax.Array, kernel: jax.Array, *, strides=(1, 1), pads=((0, 0), (0, 0)), precision=None) -> jax.Array:
    """Cross-correlate NHWC inputs with an HWIO kernel as one matmul with a banded matrix (no bias).

    band[(i, a, c), (p, o)] = kernel[i, a + left - s_w p, c, o] when that column index lies in [0, kw),
    else 0; it is gathered from the kernel with a zero slot appended (exact on every backend, unlike a
    product with a 0/1 matrix under reduced matmul precision). Horizontal zero padding is folded into
    the band; vertical padding is applied to the input.

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
    (top, bottom), (left, right) = pads
    if top or bottom:
        x = jnp.pad(x, ((0, 0), (top, bottom), (0, 0), (0, 0)))
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // sh + 1, (w + left + right - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input")
    kz = jnp.concatenate([kernel, jnp.zeros((kh, 1, cin, cout), kernel.dtype)], axis=1)
    band = kz[:, _band_index(w, kw, sw, left, wo)]  # (kh, W, W_out, C_in, C_out)
    band = band.transpose(0, 1, 3, 2, 4).reshape(kh * w * cin, wo * cout)
    xr = x.reshape(n, h, w * cin)
    rows = [xr[:, i : i + sh * (ho - 1) + 1 : sh, :] for i in range(kh)]
    rows = rows[0] if kh == 1 else jnp.concatenate(rows, axis=-1)  # (N, H_out, kh*W*C_in)
    y = jnp.matmul(rows.reshape(n * ho, kh * w * cin), band, precision=precision)
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
    backend: str | None = None,
) -> jax.Array:
    """2-D cross-correlation (PyTorch's Conv2d / XLA's convolution) on NHWC inputs, HWIO kernels.

    Args:
      x: (N, H, W, C_in) inputs.
      kernel: (kh, kw, C_in, C_out) weights.
      bias: optional (C_out,) bias.
      strides: an int or (sh, sw).
      padding: zero padding: int, (ph, pw), ((t, b), (l, r)), "SAME" or "VALID".
      impl: "xla", "slices", "banded" or "auto" (see the module docstring).
      precision: matmul/convolution precision (None follows `jax.default_matmul_precision`).
      backend: the backend "auto" decides for (None: `jax.default_backend()` now).

    Returns:
      (N, H_out, W_out, C_out) with H_out = (H + t + b - kh) // sh + 1, likewise W_out.
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d needs NHWC inputs and an HWIO kernel, got shapes {x.shape} and {kernel.shape}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[-1]} channels but the kernel expects {kernel.shape[2]} (HWIO layout)")
    strides = _pair(strides, "strides")
    pads = normalize_padding(padding, kernel.shape[:2], strides, x.shape[1:3])
    impl = choose_conv_impl(impl, backend or jax.default_backend(), x.shape[2], kernel.shape, strides[1], pads[1])
    fn = {"xla": conv2d_xla, "slices": conv2d_slices, "banded": conv2d_banded}[impl]
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
    if resolve_pool_impl(impl) == "reduce_window":
        _pooled_size(x, window)
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, window, window, 1), "VALID")
    return jnp.max(_pool_windows(x, window), axis=(2, 4))


def _pooled_size(x: jax.Array, window: int) -> tuple[int, int]:
    """(H // k, W // k), refusing a window larger than the input."""
    _, h, w, _ = x.shape
    if h // window < 1 or w // window < 1:
        raise ValueError(f"pooling window {window} is larger than the input {h}x{w}")
    return h // window, w // window


def _pool_windows(x: jax.Array, window: int) -> jax.Array:
    """(N, H//k, k, W//k, k, C): the non-overlapping k x k windows of NHWC inputs (trailing rows dropped)."""
    ho, wo = _pooled_size(x, window)
    n, c = x.shape[0], x.shape[3]
    return x[:, : ho * window, : wo * window, :].reshape(n, ho, window, wo, window, c)


def avg_pool2d(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping average pooling (stride = window, VALID) of NHWC inputs, like PyTorch's AvgPool2d(k).

    Args:
      x: (N, H, W, C).
      window: the pooling size k; trailing rows/columns that do not fill a window are dropped.

    Returns:
      (N, H // k, W // k, C).
    """
    return jnp.mean(_pool_windows(x, window), axis=(2, 4))


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
          conv_impl: "xla", "slices", "banded" or "auto" ("auto" reads `jax.default_backend()` now and
            picks per input shape when called; see the module docstring).
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
        self.conv_impl = check_conv_impl(conv_impl)
        self.backend = jax.default_backend()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the convolution to (N, H, W, C_in) inputs; returns (N, H_out, W_out, C_out)."""
        bias = None if self.bias is None else self.bias[...]
        return conv2d(x, self.kernel[...], bias, strides=self.strides, padding=self.padding, impl=self.conv_impl,
                      backend=self.backend)
