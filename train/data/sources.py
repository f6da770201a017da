"""Loading the paper's classification data sets from local files or from prepared tfds data.

Local layout, under the data root (`--data-dir` or HSPEC_DATA_DIR), as in the project's shared/data:

  mnist/          train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz   (IDX; .gz optional)
  fashion_mnist/  the same four IDX files
  cifar10/        cifar-10-batches-py/  (the official python archive, extracted)   or
                  cifar10.npz           (keys x_train uint8 NHWC, y_train, x_test, y_test[, label_names]) or
                  cifar10_subset.npz    (the same keys; the shared 4000/1000 subset)
  cifar100/       cifar-100-python/     (the official python archive, extracted; fine labels)  or
                  cifar100.npz          (the keys above)
  avila/          avila-tr.txt  avila-ts.txt  (UCI, comma-separated, class letter last)

The official CIFAR archives are Python pickles, which can run code when loaded: point the loader only
at archives you downloaded from the CIFAR page. Without local files, the data must be prepared for
tfds in array_record format (reading it needs no TensorFlow; preparing it does, once).
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from train.data.dataset import (
    ENV_DATA_DIR,
    DataNotFoundError,
    Dataset,
    resolve_data_dir,
    standardize_features,
    standardize_images,
    uint8_channel_stats,
)

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "avila")
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10", "cifar100": "cifar100"}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
AVILA_CLASSES = tuple("ABCDEFGHIWXY")
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "avila": AVILA_CLASSES,
}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "avila": 12}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ----------------------------------------------------------------------------------------- readers
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped if its name ends in .gz.

    Args:
      path: the file.

    Returns:
      The array, shaped by the header's dimensions.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {data.size} values (truncated download?)")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    """The IDX file `stem` in `folder`, gzipped or not, or None."""
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


def _read_mnist_like(folder: Path) -> dict[str, Any] | None:
    """The four MNIST-format IDX arrays from `folder`, or None when any file is missing."""
    paths = {k: _find(folder, stem) for k, stem in IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        return None
    arr = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        if arr[f"{split}_x"].shape[0] != arr[f"{split}_y"].shape[0]:
            raise ValueError(f"{folder}: {split} images and labels differ in number")
    return dict(x_train=arr["train_x"][..., None], y_train=arr["train_y"], x_test=arr["test_x"][..., None],
                y_test=arr["test_y"], source=f"local IDX files in {folder}")


def _read_npz(path: Path) -> dict[str, Any]:
    """Arrays x_train, y_train, x_test, y_test (and optional label_names) from an npz file."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)} (needs x_train, y_train, x_test, y_test)")
        out = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        if "label_names" in z.files:
            out["class_names"] = tuple(str(s) for s in z["label_names"])
    out["source"] = f"local npz {path}"
    return out


def _unpickle(path: Path) -> dict:
    """Load one batch of the official CIFAR python archive (a pickle with bytes keys)."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_rows_to_nhwc(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) rows, each the R, G, B 32x32 planes in turn, to uint8 (N, 32, 32, 3)."""
    return np.ascontiguousarray(np.asarray(rows, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_cifar10_pickles(folder: Path) -> dict[str, Any] | None:
    """CIFAR-10 from the extracted official python archive `cifar-10-batches-py/`, or None."""
    train = [folder / f"data_batch_{i}" for i in range(1, 6)]
    if not all(p.is_file() for p in train + [folder / "test_batch"]):
        return None
    batches = [_unpickle(p) for p in train]
    test = _unpickle(folder / "test_batch")
    out = dict(x_train=_cifar_rows_to_nhwc(np.concatenate([b[b"data"] for b in batches])),
               y_train=np.concatenate([np.asarray(b[b"labels"]) for b in batches]),
               x_test=_cifar_rows_to_nhwc(test[b"data"]), y_test=np.asarray(test[b"labels"]),
               source=f"local CIFAR-10 python archive {folder}")
    if (folder / "batches.meta").is_file():
        out["class_names"] = tuple(s.decode() for s in _unpickle(folder / "batches.meta")[b"label_names"])
    return out


def _read_cifar100_pickles(folder: Path) -> dict[str, Any] | None:
    """CIFAR-100 (fine labels) from the extracted official python archive `cifar-100-python/`, or None."""
    if not ((folder / "train").is_file() and (folder / "test").is_file()):
        return None
    train, test = _unpickle(folder / "train"), _unpickle(folder / "test")
    out = dict(x_train=_cifar_rows_to_nhwc(train[b"data"]), y_train=np.asarray(train[b"fine_labels"]),
               x_test=_cifar_rows_to_nhwc(test[b"data"]), y_test=np.asarray(test[b"fine_labels"]),
               source=f"local CIFAR-100 python archive {folder}")
    if (folder / "meta").is_file():
        out["class_names"] = tuple(s.decode() for s in _unpickle(folder / "meta")[b"fine_label_names"])
    return out


def _read_cifar(root: Path, name: str) -> dict[str, Any] | None:
    """CIFAR-10/100 from the first local layout present (official archive, full npz, subset npz)."""
    folder = root / name
    if name == "cifar10":
        out = _read_cifar10_pickles(folder / "cifar-10-batches-py")
        npz = [folder / "cifar10.npz", folder / "cifar10_subset.npz"]
    else:
        out = _read_cifar100_pickles(folder / "cifar-100-python")
        npz = [folder / "cifar100.npz"]
    if out is not None:
        return out
    for p in npz:
        if p.is_file():
            out = _read_npz(p)
            if p.name.endswith("_subset.npz"):
                out["source"] += f" (a subset: {len(out['y_train'])} train / {len(out['y_test'])} test images)"
            return out
    return None


def _read_avila_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 10) float64 and labels (N,) int of one Avila file; letters map to sorted order."""
    rows = [line.strip().split(",") for line in path.read_text().splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(AVILA_CLASSES)}
    bad = sorted({r[-1].strip() for r in rows} - set(index))
    if bad or any(len(r) != 11 for r in rows):
        raise ValueError(f"{path}: expected 10 numbers and a class in {AVILA_CLASSES} per row; found classes {bad}")
    x = np.array([[float(v) for v in r[:-1]] for r in rows])
    y = np.array([index[r[-1].strip()] for r in rows])
    return x, y


def _read_avila(root: Path) -> dict[str, Any] | None:
    """Avila from `avila/avila-tr.txt` and `avila/avila-ts.txt`, or None."""
    tr, ts = root / "avila" / "avila-tr.txt", root / "avila" / "avila-ts.txt"
    if not (tr.is_file() and ts.is_file()):
        return None
    x_train, y_train = _read_avila_file(tr)
    x_test, y_test = _read_avila_file(ts)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, source=f"local UCI files in {tr.parent}")


def read_local(name: str, root: Path) -> dict[str, Any] | None:
    """Raw arrays of a data set from the local data root, or None when its files are absent.

    Args:
      name: a data set name.
      root: the data root.

    Returns:
      dict with x_train, y_train, x_test, y_test (uint8 images or float features), source
      [, class_names], or None.
    """
    if name in ("mnist", "fashion_mnist"):
        return _read_mnist_like(root / name)
    if name in ("cifar10", "cifar100"):
        return _read_cifar(root, name)
    return _read_avila(root)


# -------------------------------------------------------------------------------------------- tfds
def _fetch_all(source) -> tuple[np.ndarray, np.ndarray]:
    """All (image, label) pairs of a tfds data source as stacked numpy arrays."""
    n, chunk = len(source), 4096
    images, labels = [], []
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        try:
            examples = source.__getitems__(keys)
        except TypeError:
            # tfds.testing.mock_data's sources only serve one example at a time.
            examples = [source[i] for i in keys]
        images.extend(np.asarray(e["image"]) for e in examples)
        labels.extend(int(e["label"]) for e in examples)
    return np.stack(images).astype(np.uint8), np.asarray(labels)


def tfds_builder_if_prepared(name: str, tfds_data_dir: str | os.PathLike | None):
    """The tfds builder of `name` when its data is prepared, else None; never downloads.

    `is_prepared()` answers at once; asking for unprepared data would start a download that, offline,
    retries for minutes before failing.

    Args:
      name: a data set name with a tfds counterpart.
      tfds_data_dir: tfds's data directory (None: tfds's default, honouring TFDS_DATA_DIR).

    Returns:
      A DatasetBuilder or None.
    """
    if name not in TFDS_NAMES:
        return None
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    builder = tfds.builder(TFDS_NAMES[name], data_dir=None if tfds_data_dir is None else str(tfds_data_dir))
    return builder if builder.is_prepared() else None


def read_tfds(builder) -> dict[str, Any]:
    """Raw arrays of both splits from a prepared tfds builder (array_record format, no TensorFlow).

    Args:
      builder: a prepared tfds DatasetBuilder.

    Returns:
      dict as `read_local`.
    """
    try:
        train, test = builder.as_data_source(split="train"), builder.as_data_source(split="test")
    except NotImplementedError as e:
        raise DataNotFoundError(
            f"tfds data for {builder.name} is prepared in a format that needs TensorFlow to read ({e}). Prepare it for "
            f"random access: python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{builder.name}').download_and_prepare(file_format='array_record')\""
        ) from e
    x_train, y_train = _fetch_all(train)
    x_test, y_test = _fetch_all(test)
    names = tuple(builder.info.features["label"].names)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, class_names=names,
                source=f"tfds {builder.name} {builder.version} in {builder.data_dir}")


# -------------------------------------------------------------------------------------------- load
def _expected_files(name: str) -> str:
    """A human-readable list of the local files a data set needs."""
    if name in ("mnist", "fashion_mnist"):
        return ", ".join(f"{name}/{s}.gz" for s in IDX_FILES.values())
    if name == "cifar10":
        return "cifar10/cifar-10-batches-py/ (the official python archive, extracted) or cifar10/cifar10.npz"
    if name == "cifar100":
        return "cifar100/cifar-100-python/ (the official python archive, extracted) or cifar100/cifar100.npz"
    return "avila/avila-tr.txt and avila/avila-ts.txt (UCI Avila data set)"


def not_found_message(name: str, root: Path | None, tfds_data_dir, allow_tfds: bool) -> str:
    """The DataNotFoundError message: where we looked and the two ways to provide the data."""
    looked = f"not found in {root}" if root is not None else f"no data directory given (--data-dir or {ENV_DATA_DIR})"
    msg = (f"{name}: {looked}. Set --data-dir/{ENV_DATA_DIR} to a directory containing {_expected_files(name)}")
    if name in TFDS_NAMES:
        tf_name = TFDS_NAMES[name]
        where = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        state = "tfds data not prepared" if allow_tfds else "tfds disabled (allow_tfds=False)"
        msg += (f", or install the tfds-prepare extra (`pip install 'hspec[tfds-prepare]'`, TensorFlow is needed "
                f"once to prepare) and run `python -c \"import tensorflow_datasets as tfds; "
                f"tfds.builder('{tf_name}').download_and_prepare(file_format='array_record')\"` "
                f"({state}; looked in {where}).")
    else:
        msg += " (it has no tfds version)."
    return msg


def _finish(name: str, raw: dict[str, Any]) -> Dataset:
    """Standardise raw arrays with training statistics and wrap them in a Dataset."""
    y_train, y_test = (np.asarray(raw[k]).astype(np.int32) for k in ("y_train", "y_test"))
    k = NUM_CLASSES[name]
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{name} {split} labels fall outside [0, {k}): min {y.min()}, max {y.max()}")
    if name == "avila":
        x_train, x_test, mean, std = standardize_features(raw["x_train"], raw["x_test"])
    else:
        xr, xs = np.asarray(raw["x_train"]), np.asarray(raw["x_test"])
        if xr.dtype != np.uint8 or xr.ndim != 4:
            raise ValueError(f"{name}: expected uint8 NHWC images, got {xr.dtype} {xr.shape}")
        mean, std = uint8_channel_stats(xr)
        x_train, x_test = standardize_images(xr, mean, std), standardize_images(xs, mean, std)
    names = raw.get("class_names") or CLASS_NAMES.get(name) or tuple(str(i) for i in range(k))
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=k,
                   class_names=tuple(names), source=raw["source"], mean=mean, std=std,
                   train_indices=np.arange(len(y_train), dtype=np.int64))


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    allow_tfds: bool = True,
    tfds_data_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load a data set, standardised with its training-split statistics.

    Images are scaled to [0, 1] and standardised per channel (one mean and std per colour channel,
    from all training pixels, applied to every pixel of both splits); Avila per feature.

    Args:
      name: "mnist", "fashion_mnist", "cifar10", "cifar100" or "avila".
      data_dir: local data root; None falls back to HSPEC_DATA_DIR, then to tfds.
      allow_tfds: whether to read prepared tfds data when the local files are absent.
      tfds_data_dir: tfds's data directory (None: its default, or TFDS_DATA_DIR).

    Returns:
      A Dataset (float32 inputs, int32 labels; images NHWC, Avila (N, 10)).

    Raises:
      DataNotFoundError: neither local files nor prepared tfds data; the message says what to do.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {list(DATASETS)}")
    root = resolve_data_dir(data_dir)
    raw = read_local(name, root) if root is not None else None
    if raw is None and allow_tfds:
        builder = tfds_builder_if_prepared(name, tfds_data_dir)
        if builder is not None:
            raw = read_tfds(builder)
    if raw is None:
        raise DataNotFoundError(not_found_message(name, root, tfds_data_dir, allow_tfds))
    return _finish(name, raw)
