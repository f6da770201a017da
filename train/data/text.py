"""Character-level tiny Shakespeare, as nanoGPT's shakespeare_char prepares it.

Local layout: `tinyshakespeare/input.txt` under the data root (--data-dir, else HSPEC_DATA_DIR, else
~/.cache/hspec/data), the file of karpathy/char-rnn (1,115,394 characters, 65 distinct). When it is absent it
is downloaded there, checked against the sha256 in tensorflow-datasets' tiny_shakespeare checksum list (the
same file). The vocabulary is the sorted set of its characters; the first 90% of the encoded text is the
training split, the rest validation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping

import numpy as np

from train.data.dataset import ENV_DATA_DIR, DataNotFoundError, reading, resolve_data_dir
from train.data.download import DEFAULT_TIMEOUT, ENV_MIRROR, Checksum, fetch

SHAKESPEARE_FILE = "tinyshakespeare/input.txt"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TRAIN_FRACTION = 0.9


@dataclasses.dataclass(frozen=True, eq=False)
class CharCorpus:
    """A text with its character vocabulary and nanoGPT's 90/10 train/validation split.

    Attributes:
      text: the whole text.
      vocab: the sorted distinct characters; token i is vocab[i].
      train: uint16 token ids of the first int(0.9 len) characters.
      val: uint16 token ids of the rest.
      source: the file read.
    """

    text: str
    vocab: tuple[str, ...]
    train: np.ndarray
    val: np.ndarray
    source: str = ""

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.vocab)

    @functools.cached_property
    def stoi(self) -> dict[str, int]:
        """Character -> token id."""
        return {ch: i for i, ch in enumerate(self.vocab)}

    def encode(self, s: str) -> np.ndarray:
        """Token ids (uint16) of a string made of vocabulary characters.

        Args:
          s: the string.

        Returns:
          uint16 array of len(s).
        """
        unknown = sorted(set(s) - set(self.stoi))
        if unknown:
            raise ValueError(f"characters {unknown!r} are not in the corpus vocabulary")
        return np.array([self.stoi[ch] for ch in s], dtype=np.uint16)

    def decode(self, ids) -> str:
        """The string of a sequence of token ids.

        Args:
          ids: ints in [0, vocab_size).

        Returns:
          The decoded text.
        """
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).ravel())


def char_corpus(text: str, source: str = "") -> CharCorpus:
    """Build a CharCorpus from text: sorted character vocabulary, 90/10 split as nanoGPT.

    Args:
      text: the corpus.
      source: a note on where it came from.

    Returns:
      The CharCorpus.
    """
    if len(text) < 2:
        raise ValueError("the corpus needs at least 2 characters")
    vocab = tuple(sorted(set(text)))
    if len(vocab) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(vocab)} distinct characters do not fit uint16 token ids")
    lut = {ch: i for i, ch in enumerate(vocab)}
    ids = np.fromiter((lut[ch] for ch in text), dtype=np.uint16, count=len(text))
    n = int(len(ids) * TRAIN_FRACTION)
    return CharCorpus(text=text, vocab=vocab, train=ids[:n], val=ids[n:], source=source)


def load_shakespeare(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    mirror: str | None = None,
    checksums: Mapping[str, Checksum] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> CharCorpus:
    """Load character-level tiny Shakespeare from `<data root>/tinyshakespeare/input.txt`, downloading it if absent.

    Args:
      data_dir: local data root; None falls back to HSPEC_DATA_DIR, then to ~/.cache/hspec/data.
      download: whether to download the file when it is absent.
      mirror: base URL replacing raw.githubusercontent.com (None: HSPEC_DATA_MIRROR if set).
      checksums: URL -> Checksum replacing tensorflow-datasets' list.
      timeout: seconds the download waits for a connection and for each read.
      progress: show a download progress bar.

    Returns:
      The CharCorpus (65 characters, 1,003,854 training and 111,540 validation tokens for the standard file).

    Raises:
      DataNotFoundError: the file is absent and downloading is disabled (there is no tfds fallback:
        tfds's tiny_shakespeare splits differ); DownloadError (a subclass) when the download failed.
      DataCorruptError: the file is not UTF-8 text.
    """
    root = resolve_data_dir(data_dir)
    path = root / SHAKESPEARE_FILE
    if not path.is_file() and download:
        fetch("tinyshakespeare", root, mirror=mirror, checksums=checksums, timeout=timeout, progress=progress)
    if not path.is_file():
        raise DataNotFoundError(
            f"tiny Shakespeare: not found at {path}. Set --data-dir/{ENV_DATA_DIR} to a directory containing "
            f"{SHAKESPEARE_FILE} (download it from {SHAKESPEARE_URL}), or allow the download into it (download=True; "
            f"network or {ENV_MIRROR} needed; disabled here)."
        )
    with reading(path):
        text = path.read_text(encoding="utf-8")
    return char_corpus(text, source=str(path))
