"""Tests for train.data: loaders (shared data, synthetic local layouts, the tfds mock), the missing-data error,
the paper's data options, batching, CIFAR augmentation, the Hessian sample and the character corpus."""

import gzip
import os
import pickle
import struct
import time
from pathlib import Path
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import data

from tests.conftest import find_data_dir

SHARED = find_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data not found: set HSPEC_DATA_DIR or provide ../shared/data")


def _channel_moments(x):
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes, dtype=np.float64), x.std(axis=axes, dtype=np.float64)


# ------------------------------------------------------------------------------------- shared data
@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist", SHARED)


@needs_shared
def test_mnist(mnist):
    chex.assert_shape([mnist.x_train, mnist.x_test], [(60000, 28, 28, 1), (10000, 28, 28, 1)])
    assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int32
    assert mnist.num_classes == 10 and mnist.input_shape == (28, 28, 1)
    # Published MNIST class counts (SOURCES.md gives the first and last).
    np.testing.assert_array_equal(np.bincount(mnist.y_train), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    np.testing.assert_array_equal(np.bincount(mnist.y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    np.testing.assert_allclose([mnist.mean[0], mnist.std[0]], [0.1307, 0.3081], atol=1e-4)
    m, s = _channel_moments(mnist.x_train)
    np.testing.assert_allclose(m, 0, atol=1e-5)
    np.testing.assert_allclose(s, 1, atol=1e-5)
    # Per channel, not per location: the always-black corner pixel is one value, -mean/std.
    np.testing.assert_allclose(mnist.x_train[:, 0, 0, 0], -0.1307 / 0.3081, atol=1e-3)


@needs_shared
def test_fashion_mnist_cifar10_avila():
    fashion = data.load("fashion_mnist", SHARED)
    np.testing.assert_array_equal(np.bincount(fashion.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion.y_test), [1000] * 10)

    c = data.load("cifar10", SHARED)
    chex.assert_shape([c.x_train, c.x_test], [(4000, 32, 32, 3), (1000, 32, 32, 3)])
    np.testing.assert_array_equal(c.y_train[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
    np.testing.assert_array_equal(c.y_test[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
    np.testing.assert_allclose(c.mean, [0.49, 0.48, 0.44], atol=0.01)
    m, s = _channel_moments(c.x_train)
    np.testing.assert_allclose(m, 0, atol=1e-5)
    np.testing.assert_allclose(s, 1, atol=1e-5)
    assert "subset" in c.source and c.class_names[0] == "airplane"

    a = data.load("avila", SHARED)
    chex.assert_shape([a.x_train, a.x_test], [(10430, 10), (10437, 10)])
    assert a.num_classes == 12 and a.class_names == tuple("ABCDEFGHIWXY")
    counts = np.bincount(a.y_train, minlength=12)
    assert counts[0] == 4286 and counts[-1] == 266 and counts.sum() == 10430  # UCI: A 4286 ... Y 266
    m, s = _channel_moments(a.x_train)
    np.testing.assert_allclose(m, 0, atol=1e-6)
    np.testing.assert_allclose(s, 1, atol=1e-6)


@needs_shared
def test_shakespeare():
    c = data.load_shakespeare(SHARED)
    assert c.vocab_size == 65 and len(c.text) == 1_115_394
    assert (len(c.train), len(c.val)) == (1_003_854, 111_540)  # nanoGPT's shakespeare_char split
    assert c.decode(c.train[:14]) == "First Citizen:"
    assert c.decode(c.encode(c.text[-500:])) == c.text[-500:]


# ------------------------------------------------------------------------------- synthetic layouts
def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_layout_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xs = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 7), ("t10k", 3))}
    ys = {"train": np.array([0, 1, 2, 3, 4, 5, 9]), "t10k": np.array([9, 8, 7])}
    (tmp_path / "mnist").mkdir()
    for s in ("train", "t10k"):
        _write_idx(tmp_path / "mnist" / f"{s}-images-idx3-ubyte.gz", xs[s])
        _write_idx(tmp_path / "mnist" / f"{s}-labels-idx1-ubyte.gz", ys[s])
    ds = data.load("mnist", tmp_path, allow_tfds=False)
    raw = xs["train"] / 255.0
    mean, std = raw.mean(), raw.std()
    np.testing.assert_allclose(ds.x_train[..., 0], (raw - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.x_test[..., 0], (xs["t10k"] / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(ds.y_test, [9, 8, 7])


def _cifar_rows(images):
    """The official archive's row format: R plane, G plane, B plane, each 32x32 row-major."""
    return np.stack([np.concatenate([im[:, :, c].ravel() for c in range(3)]) for im in images])


def test_cifar_python_archives(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 12)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(5):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": _cifar_rows(images[2 * i : 2 * i + 2]), b"labels": list(labels[2 * i : 2 * i + 2])}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _cifar_rows(images[10:]), b"labels": list(labels[10:])}, f)
    ds = data.load("cifar10", tmp_path, allow_tfds=False)
    raw = images[:10] / 255.0
    mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
    np.testing.assert_allclose(ds.x_train, (raw - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(ds.y_test, labels[10:])

    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = np.array([0, 99, 50, 7])
    for split, sl in (("train", slice(0, 2)), ("test", slice(2, 4))):
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": _cifar_rows(images[sl]), b"fine_labels": list(fine[sl]), b"coarse_labels": [0, 1]}, f)
    ds = data.load("cifar100", tmp_path, allow_tfds=False)
    assert ds.num_classes == 100
    np.testing.assert_array_equal(ds.y_train, [0, 99])
    np.testing.assert_allclose(ds.x_test[1], (images[3] / 255.0 - images[:2].mean((0, 1, 2)) / 255.0) / (images[:2] / 255.0).std((0, 1, 2)), atol=1e-5)


def test_missing_data_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("HSPEC_DATA_DIR", raising=False)
    t = time.perf_counter()
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("mnist", tmp_path, tfds_data_dir=tmp_path / "tfds", download=False)
    assert time.perf_counter() - t < 20  # no offline download retries
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, data.DataError)
    for part in ("HSPEC_DATA_DIR", "mnist/train-images-idx3-ubyte.gz", "pip install 'hspec[tfds-prepare]'",
                 "tfds.builder('mnist').download_and_prepare(file_format='array_record')", str(tmp_path),
                 "allow the download into it (download=True; network or HSPEC_DATA_MIRROR needed; disabled here)"):
        assert part in msg, part
    with pytest.raises(data.DataNotFoundError, match="no tfds version"):
        data.load("avila", tmp_path)
    with pytest.raises(data.DataNotFoundError, match="tinyshakespeare/input.txt"):
        data.load_shakespeare(tmp_path, download=False)
    with pytest.raises(ValueError, match="valid names"):
        data.load("svhn", tmp_path)
    assert list(tmp_path.iterdir()) == []  # looking created nothing


def test_data_directory_defaults_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HSPEC_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_data_dir() == tmp_path / "xdg" / "hspec" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says to ignore a relative path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_data_dir() == tmp_path / "home" / ".cache" / "hspec" / "data"
    monkeypatch.setenv("HSPEC_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


@needs_shared
def test_a_relative_data_directory_is_made_absolute_where_it_is_read(tmp_path, monkeypatch):
    """The README's `HSPEC_DATA_DIR=../shared/data`, as an argument or in the environment: the root is absolute,
    so the data record names its files under <data_dir> and a process started elsewhere finds the same data."""
    from train.experiment import data_record
    from train.data import without_data_root

    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    relative = os.path.relpath(SHARED, tmp_path / "repo")
    assert not os.path.isabs(relative)
    assert data.resolve_data_dir(relative) == SHARED
    monkeypatch.setenv("HSPEC_DATA_DIR", relative)
    assert data.resolve_data_dir() == SHARED and data.resolve_data_dir("~") == Path.home()
    corpus = data.load_shakespeare(relative, download=False, progress=False)
    assert corpus.source == str(SHARED / "tinyshakespeare" / "input.txt")
    assert without_data_root(corpus.source, relative) == without_data_root(corpus.source, None) == \
        "<data_dir>/tinyshakespeare/input.txt"
    ds = data.load("mnist", relative, download=False, progress=False)
    assert data_record(ds, relative)["source"] == "local IDX files in <data_dir>/mnist"


def test_tfds_probe_prints_no_absl_warning(tmp_path, monkeypatch, caplog, capfd):
    tfds = pytest.importorskip("tensorflow_datasets")
    import logging

    monkeypatch.delenv("HSPEC_DATA_DIR", raising=False)
    absl = logging.getLogger("absl")
    level = absl.level
    # The probe alone warns (so this test can fail) ...
    with caplog.at_level(logging.WARNING):
        tfds.builder("mnist", data_dir=str(tmp_path / "tfds")).is_prepared()
    assert any("has no dataset_info.json" in r.getMessage() for r in caplog.records)
    caplog.clear()
    capfd.readouterr()
    # ... and our load, which probes the same way, does not.
    with caplog.at_level(logging.WARNING), pytest.raises(data.DataNotFoundError):
        data.load("mnist", tmp_path, tfds_data_dir=tmp_path / "tfds", download=False)
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == []
    assert "dataset_info.json" not in capfd.readouterr().err
    assert absl.level == level


# --------------------------------------------------------------------------------- damaged files
def _tiny_mnist(root, n=5):
    """A tiny MNIST layout under root/mnist; returns the folder."""
    rng = np.random.default_rng(2)
    (root / "mnist").mkdir(parents=True)
    for s in ("train", "t10k"):
        _write_idx(root / "mnist" / f"{s}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / "mnist" / f"{s}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root / "mnist"


@pytest.mark.parametrize("damage, what", [
    (lambda b: b[: len(b) // 2], "EOFError: Compressed file ended before the end-of-stream marker was reached"),
    (lambda b: b"not gzip at all", "BadGzipFile: Not a gzipped file (b'no')"),
    (lambda b: gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 9) + bytes(5)),
     "ValueError: the header says (9,) but the file holds 5 values"),
])
def test_damaged_local_file_is_named_and_kept(tmp_path, damage, what):
    folder = _tiny_mnist(tmp_path)
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(data.DataCorruptError) as err:
        # A refusing mirror: the damaged file must not be replaced by a download either.
        data.load("mnist", tmp_path, allow_tfds=False, mirror="http://127.0.0.1:9")
    assert str(err.value) == (f"{path} is damaged or incomplete ({what}). Delete it and run again to download it "
                              f"afresh, or put a good copy in its place.")
    assert isinstance(err.value, data.DataError) and not isinstance(err.value, FileNotFoundError)
    assert path.read_bytes() == before  # never deleted or rewritten for the user


def test_damaged_cifar_binary_and_text_files(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    row = np.zeros(3073, np.uint8).tobytes()
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)]:
        (folder / f).write_bytes(row * 2)
    with pytest.raises(data.DataCorruptError) as err:
        data.load("cifar10", tmp_path, allow_tfds=False, download=False)
    assert str(err.value) == (f"{folder} is incomplete: it lacks test_batch.bin. Delete the folder and run again to "
                              f"download it afresh.")
    (folder / "test_batch.bin").write_bytes(row + row[:100])
    with pytest.raises(data.DataCorruptError) as err:
        data.load("cifar10", tmp_path, allow_tfds=False, download=False)
    assert str(err.value).startswith(f"{folder / 'test_batch.bin'} is damaged or incomplete: its 3173 bytes are "
                                     f"not a whole number of 3073-byte CIFAR rows.")
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(b"First \xff\xfe Citizen")
    with pytest.raises(data.DataCorruptError, match=r"input.txt is damaged or incomplete \(UnicodeDecodeError"):
        data.load_shakespeare(tmp_path, download=False)
    (tmp_path / "cifar100").mkdir()
    (tmp_path / "cifar100" / "cifar100.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(data.DataCorruptError) as err:
        data.load("cifar100", tmp_path, allow_tfds=False, download=False)
    assert str(err.value).startswith(f"{tmp_path / 'cifar100' / 'cifar100.npz'} is damaged or incomplete (")
    assert str(err.value).endswith("Replace it with a good copy, or delete it to have the binary archive downloaded "
                                   "instead.")


def test_tfds_mock_path(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv("HSPEC_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty default data directory: tfds is the source
    # mock_data serves fake examples but leaves is_prepared() False; pretend the data was prepared.
    with tfds.testing.mock_data(num_examples=6), \
            mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        ds = data.load("mnist")
        src = tfds.data_source("mnist", split="train")
        raw = np.stack([np.asarray(src[i]["image"]) for i in range(6)])
        labels = np.array([int(src[i]["label"]) for i in range(6)])
    assert ds.source.startswith("tfds mnist")
    chex.assert_shape(ds.x_train, (6, 28, 28, 1))
    scaled = raw / 255.0
    np.testing.assert_allclose(ds.x_train, (scaled - scaled.mean()) / scaled.std(), atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, labels)
    assert ds.class_names == tuple(str(i) for i in range(10))


# --------------------------------------------------------------------------------------- options
def _toy(n=20000, k=10):
    y = np.arange(n, dtype=np.int32) % k
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1)  # row i holds i: subsets are traceable
    return data.Dataset("toy", x, y, x[:5], y[:5], k, train_indices=np.arange(n))


def test_subset_is_deterministic_and_traceable():
    ds = _toy()
    a, b, c = (data.apply_options(ds, train_size=600, key=jax.random.key(s)) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    assert not np.array_equal(a.train_indices, c.train_indices)
    assert len(np.unique(a.train_indices)) == 600 and a.num_train == 600
    np.testing.assert_array_equal(a.x_train[:, 0], a.train_indices)  # rows are the original rows
    np.testing.assert_array_equal(a.y_train, ds.y_train[a.train_indices])
    assert a.y_train_clean is None
    with pytest.raises(data.DataError, match="train_size=20001 exceeds the 20000 training examples of toy"):
        data.apply_options(ds, train_size=20001, key=jax.random.key(0))


@pytest.mark.parametrize("p", [0.4, 0.8])
def test_label_noise(p):
    n, k = 200_000, 10
    ds = _toy(n, k)
    a = data.apply_options(ds, label_noise=p, key=jax.random.key(3))
    changed = a.y_train != a.y_train_clean
    np.testing.assert_array_equal(a.y_train_clean, ds.y_train)
    # Realised fraction within 5 binomial standard deviations of p.
    assert abs(changed.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    # A noisy label is uniform over the K-1 other classes: the shift (new - old) mod K is uniform on 1..K-1.
    shift = (a.y_train[changed] - a.y_train_clean[changed]) % k
    counts = np.bincount(shift, minlength=k)
    assert counts[0] == 0
    expected = changed.sum() / (k - 1)
    assert np.all(np.abs(counts[1:] - expected) < 5 * np.sqrt(expected))
    np.testing.assert_array_equal(data.apply_options(ds, label_noise=p, key=jax.random.key(3)).y_train, a.y_train)
    assert not np.array_equal(data.apply_options(ds, label_noise=p, key=jax.random.key(4)).y_train, a.y_train)
    np.testing.assert_array_equal(a.x_train, ds.x_train)


def test_random_labels_and_gaussian_inputs():
    n, k = 100_000, 10
    ds = _toy(n, k)
    r = data.apply_options(ds, random_labels=True, key=jax.random.key(0))
    assert abs(np.mean(r.y_train == ds.y_train) - 1 / k) < 5 * np.sqrt(0.09 / n)  # independent of the old labels
    counts = np.bincount(r.y_train, minlength=k)
    assert np.all(np.abs(counts - n / k) < 5 * np.sqrt(n / k))
    g = data.apply_options(ds, gaussian_inputs=True, train_size=5000, key=jax.random.key(0))
    assert g.x_train.shape == (5000, 3) and g.x_train.dtype == np.float32
    assert abs(g.x_train.mean()) < 0.05 and abs(g.x_train.std() - 1) < 0.05
    assert g.y_train_clean is not None and np.mean(g.y_train == g.y_train_clean) < 0.2
    np.testing.assert_array_equal(g.x_test, ds.x_test)  # the test split is never changed
    with pytest.raises(ValueError, match="cannot be combined"):
        data.apply_options(ds, label_noise=0.4, random_labels=True, key=jax.random.key(0))


def test_hessian_sample():
    ds = data.apply_options(_toy(), train_size=3000, key=jax.random.key(0))
    h = data.hessian_sample(ds, 1000, jax.random.key(0))
    x, y, idx = h
    assert len(np.unique(idx)) == 1000 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(x, ds.x_train[idx])
    np.testing.assert_array_equal(y, ds.y_train[idx])
    np.testing.assert_array_equal(data.hessian_sample(ds, 1000, jax.random.key(0)).indices, idx)
    assert not np.array_equal(data.hessian_sample(ds, 1000, jax.random.key(1)).indices, idx)


# -------------------------------------------------------------------------------------- batching
def test_epoch_permutation_and_batches():
    n, bs = 1003, 128
    k5 = jax.random.key(5)
    p1, p1b, p2 = (data.epoch_permutation(n, k5, e) for e in (1, 1, 2))
    np.testing.assert_array_equal(np.sort(p1), np.arange(n))
    np.testing.assert_array_equal(p1, p1b)
    assert not np.array_equal(p1, p2)
    assert not np.array_equal(p1, data.epoch_permutation(n, jax.random.key(6), 1))
    x, y = np.arange(n * 2).reshape(n, 2), np.arange(n)
    for drop_last, expected in ((False, 8), (True, 7)):
        got = list(data.batches(x, y, bs, p1, drop_last=drop_last))
        assert len(got) == data.num_batches(n, bs, drop_last) == expected
        served = np.concatenate([b[1] for b in got])
        np.testing.assert_array_equal(served, p1[: len(served)])
        np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x[served])
        assert len(served) == (n if not drop_last else 7 * bs)
    resumed = list(data.batches(x, y, bs, p1, start_step=5))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in resumed]), p1[5 * bs :])
    with pytest.raises(ValueError, match="outside the epoch"):
        data.batches(x, y, bs, p1, start_step=9)


def _np_augment(x, flip, dy, dx, pad):
    """Reference: zero-pad with numpy, crop each image at (dy, dx), then mirror the flipped ones."""
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    out = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(len(x))])
    return np.where(flip[:, None, None, None], out[:, :, ::-1], out)


def test_augment_cifar_matches_numpy():
    x = np.asarray(jax.random.normal(jax.random.key(0), (64, 32, 32, 3)))
    key = jax.random.key(11)
    out = jax.jit(data.augment_cifar)(key, jnp.asarray(x))
    flip, dy, dx = (np.asarray(a) for a in data.augment_draws(key, 64, 4))
    np.testing.assert_array_equal(np.asarray(out), _np_augment(x, flip, dy, dx, 4))
    assert 0 < flip.sum() < 64 and set(np.unique(dy)) <= set(range(9)) and len(np.unique(dx)) > 4


def test_augment_cifar_known_image():
    """Exact cases: offset (4, 4) unflipped is the identity; offset (0, 0) shifts by 4 with a zero border."""
    img = np.arange(32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3) + 1
    draws = lambda flip, dy, dx: (jnp.array([flip]), jnp.array([dy], jnp.int32), jnp.array([dx], jnp.int32))
    with mock.patch("train.data.batching.augment_draws", return_value=draws(False, 4, 4)):
        np.testing.assert_array_equal(data.augment_cifar(jax.random.key(0), img), img)
    with mock.patch("train.data.batching.augment_draws", return_value=draws(True, 0, 0)):
        out = np.asarray(data.augment_cifar(jax.random.key(0), img))
    unflipped = out[:, :, ::-1]
    assert np.all(unflipped[0, :4] == 0) and np.all(unflipped[0, :, :4] == 0)
    np.testing.assert_array_equal(unflipped[0, 4:, 4:], img[0, :28, :28])


def test_char_corpus_small():
    c = data.char_corpus("hello world, hello!")
    assert c.vocab == tuple(sorted(set("hello world, hello!")))
    n = int(19 * 0.9)
    assert len(c.train) == n and len(c.val) == 19 - n
    assert c.decode(np.concatenate([c.train, c.val])) == "hello world, hello!"
    np.testing.assert_array_equal(c.encode("lo"), [c.vocab.index("l"), c.vocab.index("o")])
    with pytest.raises(ValueError, match="not in the corpus vocabulary"):
        c.encode("z")
