"""Epoch orders, minibatches and CIFAR augmentation, all deterministic from a key and (epoch or step).

A run resumed at (epoch, step) sees exactly the batches an uninterrupted run would: the order of epoch
e is `epoch_permutation(n, key, e)` and `batches(..., start_step=s)` skips the first s batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def epoch_permutation(num_examples: int, key: jax.Array, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the training set.

    Args:
      num_examples: training-set size n.
      key: the run's `data_order` stream (train.keys).
      epoch: epoch number (any int; the loop counts from 1).

    Returns:
      A permutation of range(n) (numpy int64), from `fold_in(key, epoch)`.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)).astype(np.int64)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of minibatches in one pass over n examples.

    Args:
      n: number of examples.
      batch_size: examples per batch.
      drop_last: drop a final partial batch.

    Returns:
      floor(n / batch_size) if drop_last else ceil(n / batch_size).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    perm: np.ndarray,
    drop_last: bool = False,
    *,
    start_step: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) minibatches in the order `perm`.

    Args:
      x: inputs (N, ...).
      y: labels (N,).
      batch_size: examples per batch.
      perm: the visiting order, indices into x (usually `epoch_permutation`).
      drop_last: skip a final batch smaller than batch_size.
      start_step: skip this many batches first (resuming mid-epoch).

    Returns:
      An iterator of numpy (x_batch, y_batch) pairs.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    perm = np.asarray(perm)
    if perm.ndim != 1 or (perm.size and (perm.min() < 0 or perm.max() >= len(x))):
        raise ValueError(f"perm must be a 1-D array of indices into the {len(x)} examples")
    total = num_batches(len(perm), batch_size, drop_last)
    if not 0 <= start_step <= total:
        raise ValueError(f"start_step={start_step} is outside the epoch's {total} batches")
    return _generate(x, y, batch_size, perm, start_step, total)


def _generate(x, y, batch_size, perm, first, total):
    """The generator behind `batches` (kept separate so that argument errors are raised at the call)."""
    for b in range(first, total):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        yield x[idx], y[idx]


def augment_draws(key: jax.Array, n: int, pad: int = 4) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The random choices of `augment_cifar`: per image a flip bit and a crop offset.

    Args:
      key: PRNG key.
      n: batch size.
      pad: padding width; offsets are uniform on {0, ..., 2 pad}.

    Returns:
      (flip bool (n,), dy int32 (n,), dx int32 (n,)).
    """
    k_flip, k_crop = jax.random.split(key)
    flip = jax.random.bernoulli(k_flip, 0.5, (n,))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    return flip, offsets[:, 0], offsets[:, 1]


def augment_cifar(key: jax.Array, x: jax.Array, *, pad: int = 4, pad_value: float = 0.0) -> jax.Array:
    """Random 4-pixel-pad crop, then random horizontal flip, of each image in an NHWC batch (jit-able).

    This is torchvision's RandomCrop(32, padding=4) then RandomHorizontalFlip(). The images here are
    already standardised, so the default padding value 0 is the training mean colour; torchvision's
    usual pipeline pads before Normalize, i.e. with black (pass pad_value=-mean/std per channel for that).

    Args:
      key: PRNG key (the loop uses fold_in(run_key, step)).
      x: (N, H, W, C) images.
      pad: padding width in pixels.
      pad_value: scalar or (C,) value of the padding.

    Returns:
      Augmented images, same shape and dtype.
    """
    n, h, w, c = x.shape
    flip, dy, dx = augment_draws(key, n, pad)
    fill = jnp.broadcast_to(jnp.asarray(pad_value, x.dtype), (c,))
    padded = jnp.broadcast_to(fill, (n, h + 2 * pad, w + 2 * pad, c))
    padded = lax.dynamic_update_slice(padded, x, (0, pad, pad, 0))
    crop = jax.vmap(lambda img, i, j: lax.dynamic_slice(img, (i, j, 0), (h, w, c)))(padded, dy, dx)
    return jnp.where(flip[:, None, None, None], crop[:, :, ::-1, :], crop)
