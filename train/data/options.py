"""The paper's data manipulations (training subsets, label noise, random labels, Gaussian inputs) and the
fixed Hessian sample. All randomness comes from the `jax.random` key of its purpose (train.keys: the
`data_options` and `hessian_sample` streams), so the same seed gives the same data on every machine;
results are numpy arrays.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from train.data.dataset import DataError, Dataset


class HessianSample(NamedTuple):
    """A fixed subset of the training set on which the Hessian is computed."""

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray


def subset_indices(key: jax.Array, n: int, size: int) -> np.ndarray:
    """`size` distinct indices drawn uniformly from range(n), returned sorted (int64).

    Args:
      key: PRNG key.
      n: population size.
      size: how many to draw, 1 <= size <= n.

    Returns:
      Sorted int64 indices.
    """
    if not 1 <= size <= n:
        raise ValueError(f"cannot draw {size} of {n} examples: use a size between 1 and {n}")
    return np.sort(np.asarray(jax.random.permutation(key, n)[:size])).astype(np.int64)


def symmetric_label_noise(key: jax.Array, y: np.ndarray, num_classes: int, p: float) -> np.ndarray:
    """Replace each label, independently with probability p, by a label drawn uniformly from the OTHER classes.

    "Other classes" semantics: a noisy label never equals the clean one, so the realised fraction of
    changed labels is p (up to sampling error). Some papers instead draw uniformly over all classes,
    which changes only p (K-1)/K of the labels; this project uses the former throughout.

    Args:
      key: PRNG key.
      y: int labels (N,) in [0, num_classes).
      num_classes: K >= 2.
      p: noise probability in [0, 1].

    Returns:
      int32 labels (N,).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_noise must be a probability in [0, 1], got {p}")
    if num_classes < 2:
        raise ValueError("label noise needs at least 2 classes")
    k_flip, k_shift = jax.random.split(key)
    y = jnp.asarray(y, jnp.int32)
    flip = jax.random.uniform(k_flip, y.shape) < p
    # y + s mod K with s uniform on {1, ..., K-1} is uniform over the K-1 other classes.
    shift = jax.random.randint(k_shift, y.shape, 1, num_classes, dtype=jnp.int32)
    return np.asarray(jnp.where(flip, (y + shift) % num_classes, y), np.int32)


def draw_random_labels(key: jax.Array, n: int, num_classes: int) -> np.ndarray:
    """`n` labels drawn uniformly from all classes, independent of the inputs.

    Args:
      key: PRNG key.
      n: number of labels.
      num_classes: K.

    Returns:
      int32 labels (n,).
    """
    return np.asarray(jax.random.randint(key, (n,), 0, num_classes, dtype=jnp.int32))


def apply_options(
    ds: Dataset,
    *,
    train_size: int | None = None,
    label_noise: float = 0.0,
    random_labels: bool = False,
    gaussian_inputs: bool = False,
    key: jax.Array,
) -> Dataset:
    """Apply the paper's training-set manipulations, deterministically from `key`.

    Order: subset first, then labels, then inputs. The subset draw does not depend on the other
    options, so runs that differ only in label noise train on the same examples. The test split is
    never changed (with Gaussian inputs or random labels its metrics measure chance, as intended).

    Args:
      ds: a Dataset from `load`.
      train_size: keep this many training examples (uniform without replacement), or None for all.
      label_noise: symmetric label noise probability p (noisy labels uniform over the other classes).
      random_labels: replace every training label by one uniform over all classes.
      gaussian_inputs: replace the training inputs by standard normal noise of the same shape, with
        random labels (implies random_labels).
      key: the run's `data_options` stream; `split(key, 3)` gives the subset, labels and inputs keys.

    Returns:
      A new Dataset; `y_train_clean` holds the labels before they were changed (None if unchanged),
      `train_indices` the surviving rows of the original training split.

    Raises:
      DataError: a train_size larger than the training split.
    """
    if label_noise and (random_labels or gaussian_inputs):
        raise ValueError("label_noise cannot be combined with random_labels or gaussian_inputs (those replace every label)")
    if (label_noise or random_labels or gaussian_inputs) and ds.y_train_clean is not None:
        raise ValueError("these training labels were already changed; apply label options to a freshly loaded Dataset")
    k_subset, k_labels, k_inputs = jax.random.split(key, 3)
    x, y, idx, clean = ds.x_train, ds.y_train, ds.train_indices, ds.y_train_clean
    idx = np.arange(len(y), dtype=np.int64) if idx is None else idx
    if train_size is not None and train_size > len(y):
        raise DataError(f"train_size={train_size} exceeds the {len(y)} training examples of {ds.name}; use "
                        f"train_size <= {len(y)}, or train_size=none for all of them")
    if train_size is not None and train_size != len(y):
        keep = subset_indices(k_subset, len(y), int(train_size))
        x, y, idx = x[keep], y[keep], idx[keep]
        clean = None if clean is None else clean[keep]
    if random_labels or gaussian_inputs:
        clean, y = y, draw_random_labels(k_labels, len(y), ds.num_classes)
    elif label_noise > 0:
        clean, y = y, symmetric_label_noise(k_labels, y, ds.num_classes, float(label_noise))
    if gaussian_inputs:
        x = np.asarray(jax.random.normal(k_inputs, x.shape, jnp.float32))
    return dataclasses.replace(ds, x_train=x, y_train=y, train_indices=idx, y_train_clean=clean)


def hessian_sample(ds: Dataset, size: int, key: jax.Array) -> HessianSample:
    """A fixed, deterministic subset of the training set (with its training labels) for the Hessian.

    Args:
      ds: the Dataset the network is trained on (after `apply_options`).
      size: number of examples. The paper defines H on the training loss and names no subsample; this project's
        presets use 1000 (the Hessian-sample study measures what that choice does), and `hessian_samples=all`
        gives the whole training set.
      key: the run's `hessian_sample` stream (used by nothing else: the sample is independent of the
        epoch orders and of the data options).

    Returns:
      HessianSample(x, y, indices): indices are sorted rows of ds.x_train.
    """
    idx = subset_indices(key, len(ds.y_train), int(size))
    return HessianSample(ds.x_train[idx], ds.y_train[idx], idx)
