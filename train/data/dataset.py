"""The Dataset record, the data errors, where data lives, and standardisation statistics."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ENV_DATA_DIR = "HSPEC_DATA_DIR"


class DataError(Exception):
    """Base of the data errors: the message names the file or URL, the problem and the fix.

    A command-line tool can catch this one class and print the message without a traceback.
    """


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set is neither in the local data directory nor prepared for tfds; the message says what to do."""


class DownloadError(DataNotFoundError):
    """A missing file could not be downloaded: no network, a refusing or silent server, or a checksum mismatch
    (the download is then deleted). Still a DataNotFoundError: the data remain missing."""


class DataCorruptError(DataError, ValueError):
    """A data file already in the user's directory cannot be read (truncated, damaged, wrong format).

    Such a file is never deleted for the user: the message names it and says to delete or replace it. A
    ValueError too, because the readers raised ValueError for malformed files before this class existed.
    """


REDOWNLOAD = "Delete it and run again to download it afresh, or put a good copy in its place."
# What reading a damaged file raises (gzip: EOFError when cut short, BadGzipFile or zlib.error when garbled).
# Not OSError as a whole: a permission error is not a damaged file.
_DAMAGE = (EOFError, ValueError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile, pickle.UnpicklingError,
           struct.error)


@contextlib.contextmanager
def reading(path: str | os.PathLike, fix: str = REDOWNLOAD):
    """Turn the errors of reading a damaged data file into a DataCorruptError that names it and the fix.

    Args:
      path: the file being read.
      fix: the sentence that says what to do.
    """
    try:
        yield
    except DataCorruptError:
        raise
    except _DAMAGE as err:
        raise DataCorruptError(f"{path} is damaged or incomplete ({type(err).__name__}: {err}). {fix}") from err


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set held in memory as numpy arrays.

    Attributes:
      name: "mnist", "fashion_mnist", "cifar10", "cifar100" or "avila".
      x_train, x_test: float32 inputs, standardised with training-split statistics; images NHWC.
      y_train, y_test: int32 labels in [0, num_classes).
      num_classes: number of classes.
      class_names: the label names, index i naming class i.
      source: where the arrays came from (local files or tfds), for the run record.
      mean, std: float64 per-channel (images, in [0, 1] pixel units) or per-feature (avila) statistics of
        the training split that were used to standardise both splits.
      train_indices: int64 indices of x_train's rows in the full training split as loaded (a subset
        made by `apply_options` keeps them, so a run can say exactly which examples it used).
      y_train_clean: the labels before label noise / random labels were applied, else None; the
        realised noise fraction is `np.mean(ds.y_train != ds.y_train_clean)`.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    source: str = ""
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    train_indices: np.ndarray | None = None
    y_train_clean: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])


def default_data_dir() -> Path:
    """The per-user cache directory for data: $XDG_CACHE_HOME/hspec/data, else ~/.cache/hspec/data.

    Returns:
      The directory as a Path (it may not exist yet).
    """
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    base = Path(cache) if cache and os.path.isabs(cache) else Path("~/.cache").expanduser()
    return base / "hspec" / "data"


def use_data_dir(path: str | os.PathLike | None) -> None:
    """A command's --data-dir, for the rest of the process: set $HSPEC_DATA_DIR to it (absolute); None: unchanged."""
    if path:
        os.environ[ENV_DATA_DIR] = os.path.abspath(path)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The local data root: the argument, else HSPEC_DATA_DIR, else the per-user cache directory.

    Args:
      data_dir: an explicit directory (e.g. from --data-dir), or None.

    Returns:
      The directory as an absolute Path (it may not exist yet; missing data are downloaded into it). A relative
      one is taken from the working directory here, where it is read: the data record then names its files
      under <data_dir> whatever the form given, and a process started elsewhere (a notebook's kernel) that is
      handed the path finds the same data.
    """
    if data_dir is not None and str(data_dir) != "":
        chosen = Path(data_dir)
    else:
        env = os.environ.get(ENV_DATA_DIR, "")
        chosen = Path(env) if env else default_data_dir()
    return Path(os.path.abspath(chosen.expanduser()))


def without_data_root(info: Any, data_dir: str | os.PathLike | None = None) -> Any:
    """A data record with the data root written as <data_dir>: committed results carry no machine paths.

    Args:
      info: a string, or a dict of them (nested dicts too; other values pass unchanged).
      data_dir: the data root as given to the loader (resolved as `resolve_data_dir` does).

    Returns:
      The same structure, every occurrence of the absolute data root replaced by "<data_dir>".
    """
    root = str(resolve_data_dir(data_dir).absolute())
    if isinstance(info, dict):
        return {k: without_data_root(v, data_dir) for k, v in info.items()}
    return info.replace(root, "<data_dir>") if isinstance(info, str) else info


def uint8_channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and (population) std of uint8 images, in [0, 1] pixel units.

    Counting the 256 possible values per channel gives exact float64 moments without making a
    float64 copy of the images (1.2 GB for CIFAR-10's training split).

    Args:
      x: uint8 images (N, H, W, C).

    Returns:
      (mean, std), each float64 of shape (C,).
    """
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {x.dtype} {x.shape}")
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[-1]):
        counts = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
        p = counts / counts.sum()
        m = float(p @ values)
        means.append(m)
        stds.append(float(np.sqrt(p @ (values - m) ** 2)))
    return np.array(means), np.array(stds)


def standardize_images(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Map uint8 images to float32 (x/255 - mean)/std with one mean/std per channel.

    Per-channel (not per-location) statistics: MNIST's border pixels are 0 in every training image, so
    a per-location std would be 0 there. This is torchvision's Normalize(mean, std) after ToTensor(),
    the usual reading of the paper's "per-pixel standardisation".

    Args:
      x: uint8 images (N, H, W, C).
      mean: (C,) channel means in [0, 1] units.
      std: (C,) channel standard deviations, all > 0.

    Returns:
      float32 images of the same shape.
    """
    if np.any(np.asarray(std) <= 0):
        raise ValueError(f"cannot standardise: a channel has zero variance (std={std})")
    scale = (1.0 / (255.0 * np.asarray(std))).astype(np.float32)
    shift = (np.asarray(mean) / np.asarray(std)).astype(np.float32)
    return x.astype(np.float32) * scale - shift


def standardize_features(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature standardisation of tabular data with training-split statistics.

    Args:
      x_train: (N, D) training features.
      x_test: (M, D) test features.

    Returns:
      (x_train, x_test) float32 standardised, then (mean, std) float64 (D,).
    """
    x_train = np.asarray(x_train, np.float64)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    if np.any(std <= 0):
        raise ValueError(f"cannot standardise: features {np.flatnonzero(std <= 0).tolist()} are constant")
    f = lambda a: ((np.asarray(a, np.float64) - mean) / std).astype(np.float32)
    return f(x_train), f(x_test), mean, std
