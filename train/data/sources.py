"""Loading the paper's classification data sets: local files, prepared tfds data, or a download.

Local layout, under the data root (`--data-dir`, else HSPEC_DATA_DIR, else ~/.cache/hspec/data, or
$XDG_CACHE_HOME/hspec/data), as in the project's shared/data:

  mnist/          train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz   (IDX; .gz optional)
  fashion_mnist/  the same four IDX files
  cifar10/        cifar-10-batches-py/   (the official python archive, extracted)            or
                  cifar-10-batches-bin/  (the official binary archive, extracted; downloaded) or
                  cifar10.npz            (keys x_train uint8 NHWC, y_train, x_test, y_test[, label_names]) or
                  cifar10_subset.npz     (the same keys; the shared 4000/1000 subset)
  cifar100/       cifar-100-python/      (the official python archive, extracted; fine labels) or
                  cifar-100-binary/      (the official binary archive, extracted; downloaded)  or
                  cifar100.npz           (the keys above)
  avila/          avila-tr.txt  avila-ts.txt  (UCI, comma-separated, class letter last)

Order of the sources: local files always win; then tfds data that is already prepared (array_record,
read without TensorFlow; asking `is_prepared()` is instant and needs no network); then a download into
the data root (train/data/download.py: MNIST, Fashion-MNIST, the CIFAR binary archives, verified against
tfds's checksum lists). Prepared tfds data comes before the download because it is already on the
machine; the download comes before asking tfds to prepare data because preparing needs TensorFlow.
Avila is never downloaded (no published checksum).

The official CIFAR python archives are pickles, which can run code when loaded: they are read only when
the user put them in the data root, and never downloaded. A file that is present but cannot be read
raises DataCorruptError naming it; it is never deleted for the user.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from train.catalog import DATASETS, NUM_CLASSES
from train.data.dataset import (
    ENV_DATA_DIR,
    DataCorruptError,
    DataNotFoundError,
    Dataset,
    reading,
    resolve_data_dir,
    standardize_features,
    standardize_images,
    uint8_channel_stats,
)
from train.data.download import DEFAULT_TIMEOUT, ENV_MIRROR, SOURCES, Checksum, fetch

TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10", "cifar100": "cifar100"}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
AVILA_CLASSES = tuple("ABCDEFGHIWXY")
AVILA_URL = "https://archive.ics.uci.edu/dataset/459/avila"
# The extracted binary archives: folder, training files, test files, label bytes per row, class-name file.
CIFAR_BINARY = {
    "cifar10": ("cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1,
                "batches.meta.txt"),
    "cifar100": ("cifar-100-binary", ("train.bin",), ("test.bin",), 2, "fine_label_names.txt"),
}
# A python archive or npz is the user's own copy: deleting it does not bring it back, a download brings
# the binary version.
_REPLACE = "Replace it with a good copy, or delete it to have the binary archive downloaded instead."
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "avila": AVILA_CLASSES,
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ----------------------------------------------------------------------------------------- readers
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped if its name ends in .gz.

    Args:
      path: the file.

    Returns:
      The array, shaped by the header's dimensions.

    Raises:
      DataCorruptError: the file is truncated, not gzip where named .gz, or not IDX; the message names it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with reading(path):
        with opener(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
            raise ValueError(f"not an IDX file: bad magic number {raw[:4].hex()}")
        ndim = raw[3]
        dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
        data = np.frombuffer(raw, np.dtype(_IDX_DTYPES[raw[2]]), offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"the header says {dims} but the file holds {data.size} values")
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
            raise DataCorruptError(f"{folder}: the {split} images and labels differ in number "
                                   f"({arr[f'{split}_x'].shape[0]} and {arr[f'{split}_y'].shape[0]}); one of the "
                                   f"files is from another data set. Delete the wrong one to download it afresh.")
    return dict(x_train=arr["train_x"][..., None], y_train=arr["train_y"], x_test=arr["test_x"][..., None],
                y_test=arr["test_y"], source=f"local IDX files in {folder}")


def _read_npz(path: Path) -> dict[str, Any]:
    """Arrays x_train, y_train, x_test, y_test (and optional label_names) from an npz file."""
    with reading(path, _REPLACE), np.load(path, allow_pickle=False) as z:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
        if missing:
            raise ValueError(f"it lacks the arrays {sorted(missing)} (needs x_train, y_train, x_test, y_test)")
        out = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        if "label_names" in z.files:
            out["class_names"] = tuple(str(s) for s in z["label_names"])
    out["source"] = f"local npz {path}"
    return out


def _unpickle(path: Path) -> dict:
    """Load one batch of the official CIFAR python archive (a pickle with bytes keys): only ever a file the
    user put in the data root, never a download, since unpickling runs whatever code the file holds."""
    with reading(path, _REPLACE), open(path, "rb") as f:
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


def read_cifar_binary(path: str | os.PathLike, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the official CIFAR binary archive.

    Each row is `label_bytes` label bytes (CIFAR-10: the label; CIFAR-100: coarse, then fine) followed by
    3072 pixel bytes, the R, G and B 32x32 planes in turn.

    Args:
      path: the .bin file.
      label_bytes: 1 for CIFAR-10, 2 for CIFAR-100.

    Returns:
      (images uint8 (N, 32, 32, 3), labels uint8 (N, label_bytes)).

    Raises:
      DataCorruptError: the file is empty or not a whole number of rows (truncated).
    """
    row = label_bytes + 3072
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % row:
        raise DataCorruptError(f"{path} is damaged or incomplete: its {raw.size} bytes are not a whole number of "
                               f"{row}-byte CIFAR rows. Delete its folder and run again to download it afresh.")
    rows = raw.reshape(-1, row)
    return _cifar_rows_to_nhwc(rows[:, label_bytes:]), rows[:, :label_bytes]


def _read_names(path: Path, k: int) -> tuple[str, ...] | None:
    """Class names, one per line, from an archive's text file; None if absent or not k names."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    names = tuple(line.strip() for line in lines if line.strip())
    return names if len(names) == k else None


def _read_cifar_binary_folder(root: Path, name: str) -> dict[str, Any] | None:
    """CIFAR-10/100 (fine labels) from the extracted binary archive, or None if its folder is absent."""
    sub, train_files, test_files, label_bytes, names_file = CIFAR_BINARY[name]
    folder = root / name / sub
    if not folder.is_dir():
        return None
    lacking = [f for f in train_files + test_files if not (folder / f).is_file()]
    if lacking:
        raise DataCorruptError(f"{folder} is incomplete: it lacks {', '.join(lacking)}. Delete the folder and run "
                               f"again to download it afresh.")
    split = lambda files: [read_cifar_binary(folder / f, label_bytes) for f in files]
    train, test = split(train_files), split(test_files)
    out = dict(x_train=np.concatenate([x for x, _ in train]), y_train=np.concatenate([y[:, -1] for _, y in train]),
               x_test=np.concatenate([x for x, _ in test]), y_test=np.concatenate([y[:, -1] for _, y in test]),
               source=f"local {name} binary archive {folder}")
    names = _read_names(folder / names_file, NUM_CLASSES[name])
    if names is not None:
        out["class_names"] = names
    return out


def _read_cifar(root: Path, name: str) -> dict[str, Any] | None:
    """CIFAR-10/100 from the first local layout present (python archive, binary archive, full npz, subset npz)."""
    folder = root / name
    if name == "cifar10":
        out = _read_cifar10_pickles(folder / "cifar-10-batches-py")
        npz = [folder / "cifar10.npz", folder / "cifar10_subset.npz"]
    else:
        out = _read_cifar100_pickles(folder / "cifar-100-python")
        npz = [folder / "cifar100.npz"]
    if out is None:
        out = _read_cifar_binary_folder(root, name)
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
    with reading(path, f"Replace it with a good copy of the UCI file ({AVILA_URL})."):
        rows = [line.strip().split(",") for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
        index = {c: i for i, c in enumerate(AVILA_CLASSES)}
        bad = sorted({r[-1].strip() for r in rows} - set(index))
        if bad or any(len(r) != 11 for r in rows):
            raise ValueError(f"expected 10 numbers and a class in {AVILA_CLASSES} per row; found classes {bad}")
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
    with _quiet_absl():
        builder = tfds.builder(TFDS_NAMES[name], data_dir=None if tfds_data_dir is None else str(tfds_data_dir))
        return builder if builder.is_prepared() else None


@contextlib.contextmanager
def _quiet_absl():
    """Hold the 'absl' logger at ERROR for the duration, then restore its level.

    Asked whether data is prepared, tfds warns "Variant folder ... has no dataset_info.json" about folders
    it half-made earlier; printed before our own message, the warning only misleads.
    """
    logger = logging.getLogger("absl")  # tfds imports absl.logging first, which registers its logger class
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    if name in ("cifar10", "cifar100"):
        sub, train, test, _, _ = CIFAR_BINARY[name]
        py = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        return (f"{name}/{sub}/ ({', '.join(train + test)}; the binary archive {SOURCES[name].files[0]} extracted, "
                f"or the archive itself in {name}/), {name}/{py}/ (the python archive, extracted) or {name}/{name}.npz")
    return f"avila/avila-tr.txt and avila/avila-ts.txt (the UCI Avila data set, {AVILA_URL})"


def not_found_message(name: str, root: Path, tfds_data_dir, allow_tfds: bool, download: bool = False) -> str:
    """The DataNotFoundError message: where we looked and the ways to provide the data."""
    msg = (f"{name}: not found in {root}. Set --data-dir/{ENV_DATA_DIR} to a directory containing "
           f"{_expected_files(name)}")
    if name in SOURCES and not download:
        msg += f", or allow the download into it (download=True; network or {ENV_MIRROR} needed; disabled here)"
    if name in TFDS_NAMES:
        tf_name = TFDS_NAMES[name]
        where = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        state = "tfds data not prepared" if allow_tfds else "tfds disabled (allow_tfds=False)"
        msg += (f", or install the tfds-prepare extra (`pip install 'hspec[tfds-prepare]'`, TensorFlow is needed "
                f"once to prepare) and run `python -c \"import tensorflow_datasets as tfds; "
                f"tfds.builder('{tf_name}').download_and_prepare(file_format='array_record')\"` "
                f"({state}; looked in {where}).")
    else:
        msg += (". It has no tfds version and is not downloaded automatically: no checksum is published for it, "
                "and only files that can be verified are downloaded.")
    return msg


def _download_missing(name: str, root: Path, **options) -> None:
    """Fetch what the local layout of `name` lacks: the absent IDX files, or the CIFAR binary archive."""
    only = None
    if name in ("mnist", "fashion_mnist"):
        only = [f"{stem}.gz" for stem in IDX_FILES.values() if _find(root / name, stem) is None]
    fetch(name, root, only=only, **options)


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
    download: bool = True,
    mirror: str | None = None,
    checksums: Mapping[str, Checksum] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Dataset:
    """Load a data set, standardised with its training-split statistics.

    Sources in order: local files, prepared tfds data, a download into the data root (module docstring).
    Images are scaled to [0, 1] and standardised per channel (one mean and std per colour channel,
    from all training pixels, applied to every pixel of both splits); Avila per feature.

    Args:
      name: "mnist", "fashion_mnist", "cifar10", "cifar100" or "avila".
      data_dir: local data root; None falls back to HSPEC_DATA_DIR, then to ~/.cache/hspec/data.
      allow_tfds: whether to read prepared tfds data when the local files are absent.
      tfds_data_dir: tfds's data directory (None: its default, or TFDS_DATA_DIR).
      download: whether to download missing files into the data root (not Avila).
      mirror: base URL replacing the public hosts (None: HSPEC_DATA_MIRROR if set); see train.data.download.
      checksums: URL -> Checksum replacing tensorflow-datasets' checksum lists.
      timeout: seconds a download waits for a connection and for each read.
      progress: show download progress bars.

    Returns:
      A Dataset (float32 inputs, int32 labels; images NHWC, Avila (N, 10)).

    Raises:
      DataNotFoundError: no local files, no prepared tfds data, and no download; the message says what to do.
      DownloadError: the download failed (a DataNotFoundError); the message names the URL and the problem.
      DataCorruptError: a local file cannot be read; the message names it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {list(DATASETS)}")
    root = resolve_data_dir(data_dir)
    raw = read_local(name, root)
    if raw is None and allow_tfds:
        builder = tfds_builder_if_prepared(name, tfds_data_dir)
        if builder is not None:
            raw = read_tfds(builder)
    if raw is None and download and name in SOURCES:
        _download_missing(name, root, mirror=mirror, checksums=checksums, timeout=timeout, progress=progress)
        raw = read_local(name, root)
    if raw is None:
        raise DataNotFoundError(not_found_message(name, root, tfds_data_dir, allow_tfds, download))
    return _finish(name, raw)
