"""Tests for train.data.download: downloads from a real HTTP server on 127.0.0.1 serving the shared data, with
checksum tables of our own (the shared MNIST files are not byte-for-byte tfds's), checksum mismatches, a
server that never answers, a refused connection, the mirror variable, CIFAR binary archives and their safe
extraction, and tfds's own checksum lists."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from train import data
from train.data import download

from tests.conftest import find_data_dir

SHARED = find_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data not found: set HSPEC_DATA_DIR or provide ../shared/data")

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
# Size and sha256 of ../shared/data/mnist, as SOURCES.md lists them.
SHARED_MNIST = {
    "train-images-idx3-ubyte.gz": (9630634, "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19"),
    "train-labels-idx1-ubyte.gz": (28902, "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a"),
    "t10k-images-idx3-ubyte.gz": (1602073, "cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209"),
    "t10k-labels-idx1-ubyte.gz": (4540, "e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920"),
}
MNIST_TABLE = {MNIST_URL + f: data.Checksum(*s) for f, s in SHARED_MNIST.items()}


@pytest.fixture(autouse=True)
def _no_proxy_no_mirror(monkeypatch):
    """Requests to 127.0.0.1 must not go through a proxy, and a mirror set in the caller's shell must not leak in."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(data.ENV_MIRROR, raising=False)


@contextlib.contextmanager
def serve(directory):
    """An HTTP server on 127.0.0.1 (a thread) serving `directory`; yields its base URL and the paths requested."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass  # keep the test output to the test's own

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    # A short poll interval: shutdown() waits for one poll.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextlib.contextmanager
def silent_server():
    """A socket that accepts connections (the kernel's backlog) and never answers; yields its base URL."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def refused_url() -> str:
    """The base URL of a port nothing listens on (bound, then closed)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------- checksum lists
def test_tfds_checksum_lists_give_the_original_urls():
    mnist, origin = download.tfds_checksums("mnist")
    assert origin == "tensorflow_datasets/url_checksums/mnist.txt"
    assert set(mnist) == {MNIST_URL + f for f in SHARED_MNIST}
    # LeCun's train-images-idx3-ubyte.gz: 9,912,422 bytes.
    assert mnist[MNIST_URL + "train-images-idx3-ubyte.gz"] == (
        9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609")
    cifar10, _ = download.tfds_checksums("cifar10")
    cifar100, _ = download.tfds_checksums("cifar100")
    # tfds's CIFAR builders use the binary archives: their URLs are the ones listed.
    assert list(cifar10) == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert list(cifar100) == ["https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"]
    assert cifar10["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"].size == 170052171
    shakespeare, origin = download.tfds_checksums("tiny_shakespeare")
    assert origin == "tensorflow_datasets/datasets/tiny_shakespeare/checksums.tsv"
    # The same file as ../shared/data/tinyshakespeare/input.txt (SOURCES.md's sha256).
    assert shakespeare == {"https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt":
                           (1115394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")}
    with pytest.raises(data.DownloadError, match="no checksum list for avila"):
        download.tfds_checksums("avila")


def test_parse_checksums_both_formats():
    text = "# a comment\n\nhttp://a/x.gz\t12\tABCDEF\tx.gz\nhttp://b/y.bin 7 0123\n"
    assert download.parse_checksums(text) == {"http://a/x.gz": (12, "abcdef"), "http://b/y.bin": (7, "0123")}
    with pytest.raises(ValueError, match="lacks url, size and sha256"):
        download.parse_checksums("http://a/x.gz 12\n")


def test_mirror_url_keeps_the_data_directory_layout():
    assert download.mirror_url(MNIST_URL + "t10k-labels-idx1-ubyte.gz", "http://m.example/data/", "fashion_mnist") == \
        "http://m.example/data/fashion_mnist/t10k-labels-idx1-ubyte.gz"


# --------------------------------------------------------------------------------- good downloads
@needs_shared
def test_mnist_download_matches_the_shared_files_and_happens_once(tmp_path):
    root = tmp_path / "root"
    with serve(SHARED) as (base, requests):
        ds = data.load("mnist", root, allow_tfds=False, mirror=base, checksums=MNIST_TABLE, progress=False)
        assert sorted(requests) == sorted(f"/mnist/{f}" for f in SHARED_MNIST)
        # Exactly the four files, with the shared bytes, and no temporary file left behind.
        assert files_under(root) == ["mnist"] + sorted(f"mnist/{f}" for f in SHARED_MNIST)
        for f, (size, digest) in SHARED_MNIST.items():
            assert (root / "mnist" / f).stat().st_size == size and sha256(root / "mnist" / f) == digest
            # Readable as any file the user writes (the umask's permissions), not private like a temp file.
            assert (root / "mnist" / f).stat().st_mode & 0o777 == 0o666 & ~umask()
        again = data.load("mnist", root, allow_tfds=False, mirror=base, checksums=MNIST_TABLE, progress=False)
        assert len(requests) == 4  # the second run downloads nothing
        # A file lost later is fetched alone.
        (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
        data.load("mnist", root, allow_tfds=False, mirror=base, checksums=MNIST_TABLE, progress=False)
        assert requests[4:] == ["/mnist/t10k-labels-idx1-ubyte.gz"]
    ref = data.load("mnist", SHARED)
    for field in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        np.testing.assert_array_equal(getattr(ds, field), getattr(ref, field), err_msg=field)
        np.testing.assert_array_equal(getattr(again, field), getattr(ref, field), err_msg=field)
    assert ds.source == f"local IDX files in {root / 'mnist'}"


@needs_shared
def test_mirror_variable_and_tfds_checksums_for_shakespeare(tmp_path, monkeypatch):
    """The shared input.txt is tfds's file byte for byte, so tfds's own checksum list verifies it here."""
    with serve(SHARED) as (base, requests):
        monkeypatch.setenv(data.ENV_MIRROR, base + "/")
        corpus = data.load_shakespeare(tmp_path, progress=False)
        assert requests == ["/tinyshakespeare/input.txt"]
    assert sha256(tmp_path / "tinyshakespeare" / "input.txt") == sha256(SHARED / "tinyshakespeare" / "input.txt")
    assert corpus.vocab_size == 65 and corpus.text == (SHARED / "tinyshakespeare" / "input.txt").read_text()


@needs_shared
def test_default_directory_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with serve(SHARED) as (base, _):
        corpus = data.load_shakespeare(mirror=base, progress=False)
    assert corpus.source == str(tmp_path / "cache" / "hspec" / "data" / "tinyshakespeare" / "input.txt")


# ----------------------------------------------------------------------------------- failures
@needs_shared
def test_checksum_mismatch_deletes_the_download_and_says_so(tmp_path):
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    bad = bytearray((SHARED / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes())
    bad[100] ^= 0xFF
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(bytes(bad))
    root = tmp_path / "root"
    with serve(tmp_path / "mirror") as (base, requests):
        with pytest.raises(data.DownloadError) as err:
            download.fetch("mnist", root, only=["train-labels-idx1-ubyte.gz"], mirror=base, checksums=MNIST_TABLE,
                           progress=False)
    assert requests == ["/mnist/train-labels-idx1-ubyte.gz"]
    msg = str(err.value)
    for part in (f"{base}/mnist/train-labels-idx1-ubyte.gz", "does not match its checksum",
                 f"got 28902 bytes with sha256 {hashlib.sha256(bytes(bad)).hexdigest()}",
                 f"expected 28902 bytes with sha256 {SHARED_MNIST['train-labels-idx1-ubyte.gz'][1]}",
                 "the checksum table given", "The download was deleted", "--data-dir", "HSPEC_DATA_DIR",
                 "mnist/train-labels-idx1-ubyte.gz"):
        assert part in msg, part
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, data.DataError)
    assert not root.exists()  # neither the download nor the folders made for it remain


@contextlib.contextmanager
def stalling_server(payload: bytes):
    """An HTTP server on 127.0.0.1 that sends the headers and the first half of `payload`, then nothing."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            release.wait(60)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@needs_shared
def test_a_download_killed_midway_leaves_nothing_after_the_next_run(tmp_path):
    """Issue 27, case 10: SIGKILL while the bytes arrive leaves the hidden .part file; the next run removes it."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    name = "train-images-idx3-ubyte.gz"  # half of it (4.8 MB) fills reads of 1 MiB: bytes reach the .part file
    payload = (SHARED / "mnist" / name).read_bytes()
    root = tmp_path / "root"
    script = ("import sys; from train.data import download; "
              "download.download_file(sys.argv[1], sys.argv[2], download.Checksum(int(sys.argv[3]), sys.argv[4]), "
              "progress=False)")
    with stalling_server(payload) as base:
        proc = subprocess.Popen([sys.executable, "-c", script, f"{base}/mnist/{name}", str(root / "mnist" / name),
                                 *map(str, SHARED_MNIST[name])], cwd=REPO)
        deadline = time.time() + 30
        while not [p for p in (root / "mnist").glob(".*.part") if p.stat().st_size] and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = files_under(root / "mnist")
    assert len(left) == 1 and left[0].startswith(f".{name}.") and left[0].endswith(".part")  # the killed one's
    # Another process's download still in progress (alive, written just now) is left alone.
    alive = root / "mnist" / f".{name}.{socket.gethostname()}.{os.getppid()}.0123456789ab.part"
    alive.write_bytes(b"partial")
    with serve(SHARED) as (base, requests):
        download.fetch("mnist", root, only=[name], mirror=base, checksums=MNIST_TABLE, progress=False)
    assert files_under(root / "mnist") == sorted([name, alive.name])
    assert sha256(root / "mnist" / name) == SHARED_MNIST[name][1]
    # Once not written for LEFTOVER_S, a leftover of any host is removed too.
    old = time.time() - download.LEFTOVER_S - 1
    os.utime(alive, (old, old))
    (root / "mnist" / name).unlink()
    with serve(SHARED) as (base, requests):
        download.fetch("mnist", root, only=[name], mirror=base, checksums=MNIST_TABLE, progress=False)
    assert files_under(root / "mnist") == [name]


def test_silent_server_fails_within_the_timeout(tmp_path):
    with silent_server() as base:
        t = time.perf_counter()
        with pytest.raises(data.DownloadError) as err:
            data.load("mnist", tmp_path, allow_tfds=False, mirror=base, checksums=MNIST_TABLE, timeout=0.5,
                      progress=False)
        elapsed = time.perf_counter() - t
    assert elapsed < 3, elapsed
    msg = str(err.value)
    for part in (f"{base}/mnist/train-images-idx3-ubyte.gz: no answer within 0.5 s", f"into {tmp_path} yourself",
                 "--data-dir or HSPEC_DATA_DIR", "HSPEC_DATA_MIRROR", *(f"mnist/{f}" for f in SHARED_MNIST)):
        assert part in msg, part
    assert files_under(tmp_path) == []


def test_refused_and_missing_files_fail_at_once(tmp_path):
    base = refused_url()
    t = time.perf_counter()
    with pytest.raises(data.DownloadError, match=r"mnist: could not download it: .*cannot connect \(.*refused"):
        data.load("mnist", tmp_path, allow_tfds=False, mirror=base, checksums=MNIST_TABLE, progress=False)
    assert time.perf_counter() - t < 3
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as (base, requests):
        with pytest.raises(data.DownloadError, match="train-images-idx3-ubyte.gz: the server answered 404"):
            data.load("mnist", tmp_path / "root", allow_tfds=False, mirror=base, checksums=MNIST_TABLE, progress=False)
    assert requests == ["/mnist/train-images-idx3-ubyte.gz"]  # one attempt, no retries


def test_avila_is_never_downloaded(tmp_path):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("avila", tmp_path, mirror=refused_url())
    assert type(err.value) is data.DataNotFoundError
    assert "not downloaded automatically: no checksum is published for it" in str(err.value)
    assert "https://archive.ics.uci.edu/dataset/459/avila" in str(err.value)


# ---------------------------------------------------------------------------------- CIFAR binary
def _cifar_rows(images, labels):
    """Binary-archive rows: the label bytes, then the R, G and B 32x32 planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return np.concatenate([np.asarray(labels, np.uint8).reshape(len(images), -1), planes], axis=1)


def _tar(path, members):
    """A .tar.gz at `path` holding {name: bytes}."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@needs_shared
def test_cifar10_binary_archive_download_matches_the_npz(tmp_path):
    with np.load(SHARED / "cifar10" / "cifar10_subset.npz") as z:
        x_train, y_train, x_test, y_test = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        names = z["label_names"]
    top = "cifar-10-batches-bin"
    members = {f"{top}/data_batch_{i + 1}.bin": _cifar_rows(x_train[800 * i: 800 * (i + 1)],
                                                           y_train[800 * i: 800 * (i + 1)]).tobytes() for i in range(5)}
    members[f"{top}/test_batch.bin"] = _cifar_rows(x_test, y_test).tobytes()
    members[f"{top}/batches.meta.txt"] = ("\n".join(str(n) for n in names) + "\n\n").encode()
    (tmp_path / "mirror" / "cifar10").mkdir(parents=True)
    archive = _tar(tmp_path / "mirror" / "cifar10" / "cifar-10-binary.tar.gz", members)
    table = {"https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz": (archive.stat().st_size, sha256(archive))}

    xs, ys = data.read_cifar_binary(_write(tmp_path / "t.bin", members[f"{top}/test_batch.bin"]), 1)
    np.testing.assert_array_equal(xs, x_test)
    np.testing.assert_array_equal(ys[:, 0], y_test)

    root = tmp_path / "root"
    with serve(tmp_path / "mirror") as (base, requests):
        ds = data.load("cifar10", root, allow_tfds=False, mirror=base, checksums=table, progress=False)
        data.load("cifar10", root, allow_tfds=False, mirror=base, checksums=table, progress=False)
    assert requests == ["/cifar10/cifar-10-binary.tar.gz"]
    # The downloaded archive is gone once extracted; the folder holds exactly the archive's files.
    assert files_under(root) == ["cifar10", f"cifar10/{top}"] + sorted(f"cifar10/{m}" for m in members)
    assert (root / "cifar10" / top).stat().st_mode & 0o777 == 0o777 & ~umask()
    ref = data.load("cifar10", SHARED)
    for field in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        np.testing.assert_array_equal(getattr(ds, field), getattr(ref, field), err_msg=field)
    assert ds.class_names == ref.class_names == tuple(str(n) for n in names)
    assert ds.source == f"local cifar10 binary archive {root / 'cifar10' / top}"


def _write(path, payload):
    path.write_bytes(payload)
    return path


def test_cifar100_archive_put_by_the_user_is_extracted_and_kept(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    coarse, fine = rng.integers(0, 20, 7), np.array([0, 99, 5, 17, 42, 99, 3])
    labels = np.stack([coarse, fine], axis=1)
    top = "cifar-100-binary"
    fine_names = [f"fine{i}" for i in range(100)]
    (tmp_path / "cifar100").mkdir()
    archive = _tar(tmp_path / "cifar100" / "cifar-100-binary.tar.gz", {
        f"{top}/train.bin": _cifar_rows(images[:4], labels[:4]).tobytes(),
        f"{top}/test.bin": _cifar_rows(images[4:], labels[4:]).tobytes(),
        f"{top}/fine_label_names.txt": "\n".join(fine_names).encode(),
    })
    before = sha256(archive)
    # A refusing mirror: any download attempt would fail the test.
    ds = data.load("cifar100", tmp_path, allow_tfds=False, mirror=refused_url(), progress=False)
    np.testing.assert_array_equal(ds.y_train, fine[:4])
    np.testing.assert_array_equal(ds.y_test, fine[4:])
    raw = images[:4] / 255.0
    mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
    np.testing.assert_allclose(ds.x_test, (images[4:] / 255.0 - mean) / std, atol=1e-5)
    assert ds.class_names == tuple(fine_names)
    assert sha256(archive) == before  # the user's archive is kept, untouched


def test_archive_members_that_escape_are_refused(tmp_path):
    (tmp_path / "cifar10").mkdir()
    evil = _tar(tmp_path / "evil.tar.gz", {"cifar-10-batches-bin/ok.bin": b"x",
                                           "cifar-10-batches-bin/../../escaped.txt": b"gotcha"})
    with pytest.raises(data.DataCorruptError) as err:
        download.extract_archive(evil, tmp_path / "cifar10", "cifar-10-batches-bin")
    assert f"{evil}: cannot extract it" in str(err.value)
    assert "'cifar-10-batches-bin/../../escaped.txt' would be written outside the folder" in str(err.value)
    linked = tmp_path / "link.tar"
    with tarfile.open(linked, "w") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(data.DataCorruptError, match="is a link or a device file"):
        download.extract_archive(linked, tmp_path / "cifar10", "cifar-10-batches-bin")
    # Nothing was written: no escaped file, no extracted or half-extracted folder.
    assert files_under(tmp_path) == ["cifar10", "evil.tar.gz", "link.tar"]


def test_downloaded_archive_that_cannot_be_extracted_is_deleted(tmp_path):
    (tmp_path / "mirror" / "cifar10").mkdir(parents=True)
    archive = _tar(tmp_path / "mirror" / "cifar10" / "cifar-10-binary.tar.gz", {"elsewhere/data_batch_1.bin": b"x"})
    table = {"https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz": (archive.stat().st_size, sha256(archive))}
    root = tmp_path / "root"
    with serve(tmp_path / "mirror") as (base, _):
        with pytest.raises(data.DownloadError) as err:
            data.load("cifar10", root, allow_tfds=False, mirror=base, checksums=table, progress=False)
    msg = str(err.value)
    assert "the download cifar-10-binary.tar.gz cannot be extracted (it holds no folder cifar-10-batches-bin/)" in msg
    assert "was deleted" in msg and "cifar10/cifar-10-binary.tar.gz (https://www.cs.toronto.edu" in msg
    assert not root.exists()
