"""Character-level tiny Shakespeare, as nanoGPT's shakespeare_char prepares it.

Local layout: `tinyshakespeare/input.txt` under the data root (--data-dir or HSPEC_DATA_DIR), the file
of karpathy/char-rnn (1,115,394 characters, 65 distinct). The vocabulary is the sorted set of its
characters; the first 90% of the encoded text is the training split, the rest validation.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from train.data.dataset import ENV_DATA_DIR, DataNotFoundError, resolve_data_dir

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


def load_shakespeare(data_dir: str | os.PathLike | None = None) -> CharCorpus:
    """Load character-level tiny Shakespeare from `<data root>/tinyshakespeare/input.txt`.

    Args:
      data_dir: local data root; None falls back to HSPEC_DATA_DIR.

    Returns:
      The CharCorpus (65 characters, 1,003,854 training and 111,540 validation tokens for the standard file).

    Raises:
      DataNotFoundError: the file is absent (there is no tfds fallback: tfds's tiny_shakespeare splits differ).
    """
    root = resolve_data_dir(data_dir)
    path = None if root is None else root / SHAKESPEARE_FILE
    if path is None or not path.is_file():
        where = f"not found at {path}" if path is not None else f"no data directory given (--data-dir or {ENV_DATA_DIR})"
        raise DataNotFoundError(
            f"tiny Shakespeare: {where}. Set --data-dir/{ENV_DATA_DIR} to a directory containing "
            f"{SHAKESPEARE_FILE} (download it from {SHAKESPEARE_URL})."
        )
    return char_corpus(path.read_text(encoding="utf-8"), source=str(path))
