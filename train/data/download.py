"""Downloading the public data sets into the data directory on first use.

What: MNIST, Fashion-MNIST, the binary CIFAR-10 and CIFAR-100 archives and tiny Shakespeare, the files
tensorflow-datasets itself downloads, from the URLs and with the sha256 that its installed checksum lists
give (`url_checksums/<name>.txt` or `datasets/<name>/checksums.tsv` inside the package, read at run time
and never copied here). Avila is not downloaded: tfds lists no checksum for it, and we fetch only files we
can verify. CIFAR comes as the binary archives (label bytes + 3072 pixel bytes per row), never as the
python archives: unpickling a downloaded file would run whatever code it holds.

Where: into the data root (`--data-dir`, HSPEC_DATA_DIR, else ~/.cache/hspec/data) in the layout the local
loader reads (train/data/sources.py). A CIFAR archive is extracted into `cifar10/cifar-10-batches-bin/` or
`cifar100/cifar-100-binary/` (regular files under the archive's own folder only; links and names that
leave the folder are refused) and then deleted; an archive the user put there is extracted and kept.

How: one attempt per file with a connect/read timeout of 10 s, so that no network or a silent server
fails within seconds (tfds retries for minutes); a tqdm bar; the bytes go to a temporary name beside the
target and are renamed into place only after their size and sha256 match. Only what was just downloaded is
verified, and deleted on a mismatch; a file already in the directory is the user's and is never deleted. The
temporary name (`.<file>.<host>.<pid>.<random>.part`) of a download killed midway is removed by the next run: at
once when its process is gone from this host, else once it has not been written for ten minutes.

HSPEC_DATA_MIRROR=<base URL> (or `mirror=`) replaces the public hosts. A file is then fetched from
`<base>/<folder>/<file name>`, the data directory's own layout (`<base>/mnist/train-images-idx3-ubyte.gz`,
`<base>/cifar10/cifar-10-binary.tar.gz`): MNIST and Fashion-MNIST files share names, so a flat
`<base>/<file name>` could not hold both, and a data directory served over HTTP is a mirror as it is. The
files must still match the checksums (pass `checksums=` for a mirror whose files differ from the originals).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import http.client
import importlib.resources
import os
import posixpath
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

from tqdm.auto import tqdm

from train.data.dataset import ENV_DATA_DIR, DataCorruptError, DownloadError

ENV_MIRROR = "HSPEC_DATA_MIRROR"
DEFAULT_TIMEOUT = 10.0
# A hidden `.part` file not written for this long belongs to a killed process (on any host) and is removed.
LEFTOVER_S = 600.0
_CHUNK = 1 << 20
# Where tfds keeps a data set's checksum list; it has moved between releases.
_TFDS_CHECKSUM_PLACES = ("url_checksums/{}.txt", "datasets/{}/checksums.tsv",
                         "image_classification/{}/checksums.tsv", "text/{}/checksums.tsv")


class Checksum(NamedTuple):
    """What a downloaded file must be: its size in bytes (None: not checked) and its sha256 hex digest."""

    size: int | None
    sha256: str


@dataclasses.dataclass(frozen=True)
class Source:
    """What to fetch for one data set, and where it goes.

    Attributes:
      tfds_name: the tfds data set whose checksum list names the URLs and their sha256.
      files: the base names of the URLs to fetch.
      folder: the folder under the data root that receives them.
      extract: for an archive, the folder it holds, extracted into `folder`; None for plain files.
    """

    tfds_name: str
    files: tuple[str, ...]
    folder: str
    extract: str | None = None


_IDX_GZ = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
           "t10k-labels-idx1-ubyte.gz")
SOURCES = {
    "mnist": Source("mnist", _IDX_GZ, "mnist"),
    "fashion_mnist": Source("fashion_mnist", _IDX_GZ, "fashion_mnist"),
    "cifar10": Source("cifar10", ("cifar-10-binary.tar.gz",), "cifar10", extract="cifar-10-batches-bin"),
    "cifar100": Source("cifar100", ("cifar-100-binary.tar.gz",), "cifar100", extract="cifar-100-binary"),
    "tinyshakespeare": Source("tiny_shakespeare", ("input.txt",), "tinyshakespeare"),
}


# ------------------------------------------------------------------------------------ checksum lists
def parse_checksums(text: str) -> dict[str, Checksum]:
    """Parse a tfds checksum list: one `url<TAB>size<TAB>sha256[<TAB>file name]` per line.

    Args:
      text: the list (older lists separate the fields by spaces; lines starting with # are comments).

    Returns:
      URL -> Checksum.
    """
    table = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 3:
            raise ValueError(f"checksum line {line!r} lacks url, size and sha256")
        table[fields[0]] = Checksum(int(fields[1]), fields[2].lower())
    return table


def tfds_checksums(tfds_name: str) -> tuple[dict[str, Checksum], str]:
    """The URLs and checksums that the installed tensorflow-datasets lists for one of its data sets.

    Args:
      tfds_name: the tfds name, e.g. "mnist" or "tiny_shakespeare".

    Returns:
      (URL -> Checksum, the list's path inside the package, for messages).

    Raises:
      DownloadError: tensorflow-datasets is not installed or has no list for the data set.
    """
    try:
        package = importlib.resources.files("tensorflow_datasets")
    except ModuleNotFoundError as err:
        raise DownloadError("downloading needs tensorflow-datasets, whose checksum lists give the URLs and their "
                            "sha256: pip install tensorflow-datasets") from err
    places = [p.format(tfds_name) for p in _TFDS_CHECKSUM_PLACES]
    for place in places:
        resource = package
        for part in place.split("/"):
            resource = resource / part
        if resource.is_file():
            return parse_checksums(resource.read_text(encoding="utf-8")), f"tensorflow_datasets/{place}"
    raise DownloadError(f"the installed tensorflow-datasets has no checksum list for {tfds_name} "
                        f"(looked for {', '.join(places)})")


def _entries(source: Source, table: Mapping[str, Checksum], origin: str, only: Iterable[str] | None):
    """(url, Checksum) of each wanted file of `source`, found in `table` by the URL's base name."""
    by_name = {posixpath.basename(urllib.parse.urlparse(url).path): url for url in table}
    wanted = source.files if only is None else [f for f in source.files if f in set(only)]
    missing = [f for f in wanted if f not in by_name]
    if missing:
        raise DownloadError(f"{origin} lists no URL for {', '.join(missing)}")
    return [(by_name[f], Checksum(*table[by_name[f]])) for f in wanted]


def mirror_url(url: str, mirror: str, folder: str) -> str:
    """The URL of `url`'s file on a mirror: `<mirror>/<folder>/<base name of url>`.

    Args:
      url: the original URL.
      mirror: the mirror's base URL.
      folder: the data set's folder in the data directory (e.g. "mnist").

    Returns:
      The mirror URL.
    """
    return f"{mirror.rstrip('/')}/{folder}/{posixpath.basename(urllib.parse.urlparse(url).path)}"


# ----------------------------------------------------------------------------------- one file
def _stream(url: str, out: BinaryIO, *, timeout: float, progress: bool, label: str, size: int | None):
    """Copy the body at `url` into `out` under a progress bar; (bytes, sha256 hex) of what arrived.

    urllib's timeout bounds the connection and every read, so a server that accepts and then says nothing
    fails after `timeout` seconds rather than hanging.
    """
    sha, n = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or size
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                      disable=not progress) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    sha.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: the server answered {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise DownloadError(f"{url}: no answer within {timeout:g} s") from None
        raise DownloadError(f"{url}: cannot connect ({err.reason})") from None
    except TimeoutError:
        after = f" (after {n} of its bytes)" if n else ""
        raise DownloadError(f"{url}: no answer within {timeout:g} s{after}") from None
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"{url}: the download failed after {n} bytes ({type(err).__name__}: {err})") from None
    return n, sha.hexdigest()


def _part_name(folder: Path, name: str) -> Path:
    """A fresh hidden name beside `folder/name` for a file or folder still being written:
    `.<name>.<host>.<pid>.<random>.part`, so that a later run can tell the leftover of a killed process."""
    _remove_leftovers(folder, name)
    return folder / f".{name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}.part"


def _abandoned(part: Path, name: str) -> bool:
    """Whether a `.part` of `name` was left by a killed process: its pid is gone on this host, or nothing wrote to
    it for LEFTOVER_S seconds (a live download writes at least every `timeout` seconds or fails and removes it)."""
    fields = part.name[len(name) + 2:-len(".part")].rsplit(".", 2)  # host, pid, random (older names: random)
    if len(fields) == 3 and fields[0] == socket.gethostname() and fields[1].isdigit():
        try:
            os.kill(int(fields[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    try:
        return time.time() - part.stat().st_mtime > LEFTOVER_S
    except FileNotFoundError:
        return False


def _remove_leftovers(folder: Path, name: str) -> None:
    """Remove the hidden `.part` files (and extraction folders) of `name` that a killed run left in `folder`."""
    if not folder.is_dir():
        return
    for part in folder.glob(f".{glob.escape(name)}.*.part"):
        if _abandoned(part, name):
            if part.is_dir():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)


def _temp_beside(dest: Path) -> tuple[int, str]:
    """A new temporary file in dest's folder (created if need be), so that the final rename is atomic.

    Not tempfile.mkstemp: its files are private (0600), and the data directory may be shared; os.open
    with 0o666 gives the permissions the user's umask asks for.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _part_name(dest.parent, dest.name)
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
    except OSError as err:
        raise DownloadError(f"cannot write into {dest.parent} ({err.strerror or err})") from None


def download_file(url: str, dest: str | os.PathLike, expected: Checksum, *, timeout: float = DEFAULT_TIMEOUT,
                  progress: bool = True, origin: str = "the checksum table") -> Path:
    """Download `url` to `dest` atomically, keeping it only if its size and sha256 are as expected.

    Args:
      url: where to fetch it from.
      dest: the file to create.
      expected: the size and sha256 the bytes must have.
      timeout: seconds to wait for the connection and for each read.
      progress: show a tqdm bar.
      origin: where `expected` comes from, for the mismatch message.

    Returns:
      dest as a Path.

    Raises:
      DownloadError: the server could not be reached, refused, went silent, or sent other bytes (the
        download is then deleted; nothing is left at dest).
    """
    dest = Path(dest)
    fd, tmp = _temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as out:
            label = f"{dest.parent.name}/{dest.name}"
            n, digest = _stream(url, out, timeout=timeout, progress=progress, label=label, size=expected.size)
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name says the file is complete
        if digest != expected.sha256.lower() or (expected.size is not None and n != expected.size):
            raise DownloadError(
                f"{url}: the download does not match its checksum: got {n} bytes with sha256 {digest}, expected "
                f"{expected.size} bytes with sha256 {expected.sha256} ({origin}). The download was deleted")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


# ------------------------------------------------------------------------------------- archives
def _member_path(member: tarfile.TarInfo, top: str) -> PurePosixPath | None:
    """Where a tar member goes relative to the extraction folder, or None to skip it.

    Raises ValueError for links, devices and names that would leave the folder: a checksum only vouches
    for an archive the checksum list names, and a mirror with its own table could serve anything.
    """
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ValueError(f"member {member.name!r} would be written outside the folder")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"member {member.name!r} is a link or a device file")
    if member.isdir() or name.parts[:1] != (top,):
        return None
    return name


def extract_archive(archive: str | os.PathLike, folder: str | os.PathLike, top: str) -> Path:
    """Extract the regular files under `top/` of a tar archive into `folder/top`, safely and atomically.

    Args:
      archive: the .tar/.tar.gz file.
      folder: where `top` is created.
      top: the archive's folder to extract (e.g. "cifar-10-batches-bin"); other members are skipped.

    Returns:
      The extracted folder.

    Raises:
      DataCorruptError: the archive is damaged, lacks `top/`, or has a link or a path leaving the folder;
        nothing is left in `folder`.
    """
    archive, folder = Path(archive), Path(folder)
    tmp = _part_name(folder, top)
    try:
        tmp.mkdir()  # not tempfile.mkdtemp, whose 0700 would become the extracted folder's permissions
    except OSError as err:
        raise DownloadError(f"cannot extract {archive} into {folder} ({err.strerror or err})") from None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                rel = _member_path(member, top)
                if rel is not None:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(tmp / rel, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        if not (tmp / top).is_dir():
            raise ValueError(f"it holds no folder {top}/")
        os.replace(tmp / top, folder / top)
    except (ValueError, EOFError, zlib.error, tarfile.TarError, OSError) as err:
        raise DataCorruptError(f"{archive}: cannot extract it ({type(err).__name__}: {err}). Delete it and run "
                               f"again to download it afresh") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / top


def _install_archive(archive: Path, top: str, downloaded: bool) -> None:
    """Extract an archive next to itself; delete it afterwards, or on failure, only if we downloaded it."""
    try:
        extract_archive(archive, archive.parent, top)
    except DataCorruptError as err:
        if not downloaded:
            raise  # the user's file: name it, never delete it
        archive.unlink(missing_ok=True)
        raise DownloadError(f"the download {archive.name} cannot be extracted ({err.__cause__}) and was "
                            f"deleted") from err
    if downloaded:
        # The loader reads the extracted folder; keeping the archive too would double the disk space.
        archive.unlink()


# ------------------------------------------------------------------------------------- data sets
def how_to_provide(name: str, root: Path, table: Mapping[str, Checksum] | None = None) -> str:
    """The sentence that tells a user how to provide a data set's files without our download."""
    source = SOURCES[name]
    urls = {posixpath.basename(urllib.parse.urlparse(u).path): u for u in (table or {})}
    files = ", ".join(f"{source.folder}/{f}" + (f" ({urls[f]})" if f in urls else "") for f in source.files)
    return (f"Put {files} into {root} yourself (choose that directory with --data-dir or {ENV_DATA_DIR}), or set "
            f"{ENV_MIRROR} to a server that has them as <base>/{source.folder}/<file name>.")


def fetch(name: str, root: str | os.PathLike, *, only: Iterable[str] | None = None, mirror: str | None = None,
          checksums: Mapping[str, Checksum] | None = None, timeout: float = DEFAULT_TIMEOUT,
          progress: bool = True) -> list[Path]:
    """Download the files of a data set that `root` lacks, in the local loader's layout.

    Args:
      name: a key of SOURCES ("mnist", "fashion_mnist", "cifar10", "cifar100", "tinyshakespeare").
      root: the data root.
      only: base names of the files to fetch (default: all of the data set's files that are absent).
      mirror: base URL replacing the public hosts (None: HSPEC_DATA_MIRROR if set).
      checksums: URL -> Checksum replacing tfds's list (for mirrors with other files, and tests).
      timeout: seconds to wait for a connection and for each read.
      progress: show tqdm bars.

    Returns:
      The files downloaded (an archive that was extracted and deleted included).

    Raises:
      DownloadError: a file could not be downloaded or did not match its checksum; the message says how
        to provide the files by hand.
      DataCorruptError: an archive already in `root` cannot be extracted.
    """
    source, root = SOURCES[name], Path(root)
    table, origin = (checksums, "the checksum table given") if checksums is not None else (None, "")
    mirror = (os.environ.get(ENV_MIRROR) or None) if mirror is None else mirror
    created = [p for p in (root / source.folder, root) if not p.exists()]
    written = []
    try:
        if table is None:
            table, origin = tfds_checksums(source.tfds_name)
        if source.extract and (root / source.folder / source.extract).is_dir():
            return written
        for url, expected in _entries(source, table, origin, only):
            dest = root / source.folder / posixpath.basename(urllib.parse.urlparse(url).path)
            if not dest.exists():
                where = mirror_url(url, mirror, source.folder) if mirror else url
                written.append(download_file(where, dest, expected, timeout=timeout, progress=progress, origin=origin))
            if source.extract:
                _install_archive(dest, source.extract, downloaded=dest in written)
    except DownloadError as err:
        _remove_empty(created)
        raise DownloadError(f"{name}: could not download it: {err}. {how_to_provide(name, root, table)}") from err
    return written


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove the folders a failed download created, innermost first, as long as they are empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
