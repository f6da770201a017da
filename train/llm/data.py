"""Language-model data: token streams cut into random windows, and MathQA as prompt/answer sequences.

Every source serves batches as three arrays of shape (sequences, block): input tokens `x`, next tokens `y`
and loss weights `w` (1 where the next token counts, 0 on padding and, for MathQA, on the prompt). The
loss of a batch is sum(w * cross-entropy) / sum(w).

- Character-level tiny Shakespeare (nanoGPT's shakespeare_char): `train.data.load_shakespeare`, 90/10.
- Shakespeare in GPT-2 tokens (nanoGPT's data/shakespeare): the same file split 90/10 by characters,
  each part encoded with GPT-2's BPE.
- OpenWebText: nanoGPT's `train.bin` / `val.bin` (uint16 GPT-2 tokens), memory-mapped, from
  `<data root>/openwebtext/`; prepared by the user with nanoGPT's data/openwebtext/prepare.py.
- MathQA for LoRA fine-tuning: `<data root>/mathqa/{train,dev,test}.json` (the official files), else a
  prepared tfds `math_qa`; one example per sequence, the loss on the answer (rationale and letter).

Randomness: the windows of step s come from `fold_in(data_order, s)` (a resumed run draws the same
batches), the fixed Hessian sample from the `hessian_sample` stream, the fixed held-out sample of the test
loss from `fold_in(data_options, 0)`. Positions are drawn as 64-bit integers from two 32-bit words, so
that a 9-billion-token OpenWebText file is indexed uniformly without jax's x64 mode.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from train.data.dataset import DataNotFoundError, resolve_data_dir
from train.data.text import SHAKESPEARE_FILE, TRAIN_FRACTION, load_shakespeare

__all__ = ["Batch", "Source", "Windows", "Examples", "LMData", "load", "uniform_indices", "sample",
           "train_batch", "fixed_batches", "format_mathqa", "mathqa_examples", "EVAL_TAG"]

OPENWEBTEXT_DIR = "openwebtext"
MATHQA_DIR = "mathqa"
MATHQA_SPLITS = {"train": "train.json", "dev": "dev.json", "validation": "dev.json", "val": "dev.json",
                 "test": "test.json"}
# fold_in(data_options, EVAL_TAG) draws the held-out sample of the test loss.
EVAL_TAG = 0

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, y, w): tokens, next tokens, loss weights


class Source(Protocol):
    """Something that serves `num` training sequences for a key (see Windows and Examples)."""

    @property
    def size(self) -> int: ...

    def take(self, index: np.ndarray) -> Batch: ...


def uniform_indices(key: jax.Array, num: int, high: int) -> np.ndarray:
    """`num` integers uniform in [0, high), reproducible from `key`, valid for any high < 2**63.

    Two 32-bit words make one 64-bit integer; its remainder mod `high` is uniform up to a bias below
    high / 2**64 (negligible for any corpus).

    Args:
        key: a PRNG key.
        num: how many.
        high: the exclusive upper bound (>= 1).

    Returns:
        int64 array of shape (num,).
    """
    if high < 1:
        raise ValueError(f"cannot draw indices below {high}")
    words = np.asarray(jax.random.bits(key, (num, 2), jnp.uint32)).astype(np.uint64)
    return (((words[:, 0] << np.uint64(32)) | words[:, 1]) % np.uint64(high)).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class Windows:
    """A token stream served as windows of block+1 tokens: x = t[i:i+B], y = t[i+1:i+B+1] (nanoGPT's get_batch)."""

    tokens: np.ndarray  # 1-D integer tokens (np.memmap for large files)
    block: int

    def __post_init__(self):
        if len(self.tokens) <= self.block:
            raise ValueError(f"{len(self.tokens)} tokens cannot give a window of {self.block} + 1")

    @property
    def size(self) -> int:
        """Number of distinct window starts."""
        return len(self.tokens) - self.block

    def take(self, index: np.ndarray) -> Batch:
        """The windows starting at `index`."""
        rows = np.asarray(self.tokens[np.asarray(index)[:, None] + np.arange(self.block + 1)], np.int32)
        return rows[:, :-1], rows[:, 1:], np.ones((len(index), self.block), np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Examples:
    """Fixed-length sequences (one example each, padded), with loss weights of their own."""

    x: np.ndarray  # (N, B) int32
    y: np.ndarray  # (N, B) int32
    w: np.ndarray  # (N, B) float32

    @property
    def size(self) -> int:
        """Number of examples."""
        return len(self.x)

    def take(self, index: np.ndarray) -> Batch:
        """The examples at `index`."""
        index = np.asarray(index)
        return self.x[index], self.y[index], self.w[index]


@dataclasses.dataclass(frozen=True, eq=False)
class LMData:
    """A data set ready for training: train and held-out sources, vocabulary size, provenance."""

    train: Any  # Source
    eval: Any  # Source
    vocab_size: int
    info: dict[str, Any]


def sample(source: Source, key: jax.Array, num: int) -> Batch:
    """`num` sequences drawn uniformly (with replacement) from a source.

    Args:
        source: Windows or Examples.
        key: PRNG key of this draw.
        num: sequences.

    Returns:
        (x, y, w), each (num, block).
    """
    return source.take(uniform_indices(key, num, source.size))


def train_batch(source: Source, data_order: jax.Array, step: int, micro_batch: int, accum: int) -> Batch:
    """The batch of optimiser step `step`: micro_batch x accum sequences from fold_in(data_order, step).

    Returns:
        (x, y, w), each (accum, micro_batch, block).
    """
    x, y, w = sample(source, jax.random.fold_in(data_order, step), micro_batch * accum)
    shape = (accum, micro_batch, x.shape[-1])
    return x.reshape(shape), y.reshape(shape), w.reshape(shape)


def fixed_batches(source: Source, key: jax.Array, num: int, batch: int) -> list[Batch]:
    """A fixed sample of `num` sequences drawn from `key`, cut into batches of `batch` (the last may be smaller).

    Used for the Hessian sample (hspec weights the batches by size) and the held-out test-loss sample.
    """
    x, y, w = sample(source, key, num)
    return [(x[i:i + batch], y[i:i + batch], w[i:i + batch]) for i in range(0, num, batch)]


# -------------------------------------------------------------------------------------------------- loaders


def _root(data_dir: str | os.PathLike | None) -> Path:
    return resolve_data_dir(data_dir)


def load_shakespeare_char(data_dir, block: int) -> LMData:
    """Character-level tiny Shakespeare, nanoGPT's 90/10 split (65 characters)."""
    corpus = load_shakespeare(data_dir, progress=False)
    info = {"dataset": "shakespeare_char", "source": corpus.source, "train_tokens": int(corpus.train.size),
            "eval_tokens": int(corpus.val.size), "tokenizer": "characters", "split": "first 90% / last 10%"}
    return LMData(Windows(corpus.train, block), Windows(corpus.val, block), corpus.vocab_size, info)


def encode_gpt2_split(text: str, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """nanoGPT's data/shakespeare/prepare.py: split the text 90/10 by characters, then encode each part."""
    n = int(len(text) * TRAIN_FRACTION)
    return (np.asarray(tokenizer.encode(text[:n]), np.uint16), np.asarray(tokenizer.encode(text[n:]), np.uint16))


def load_shakespeare_gpt2(data_dir, block: int, tokenizer) -> LMData:
    """Tiny Shakespeare in GPT-2 BPE tokens (for fine-tuning pre-trained GPT-2)."""
    path = _root(data_dir) / SHAKESPEARE_FILE
    if not path.is_file():
        load_shakespeare(data_dir, progress=False)  # downloads it, or raises the clear DataNotFoundError
    train, val = encode_gpt2_split(path.read_text(encoding="utf-8"), tokenizer)
    info = {"dataset": "shakespeare_gpt2", "source": str(path), "train_tokens": int(train.size),
            "eval_tokens": int(val.size), "tokenizer": "gpt2 bpe", "split": "first 90% / last 10% of characters"}
    return LMData(Windows(train, block), Windows(val, block), int(tokenizer.vocab_size), info)


def load_openwebtext(data_dir, block: int, vocab_size: int = 50257) -> LMData:
    """nanoGPT's OpenWebText token files, memory-mapped (uint16 GPT-2 tokens).

    Raises:
        DataNotFoundError: train.bin or val.bin is absent (the message names the path and how to make it).
    """
    root = _root(data_dir) / OPENWEBTEXT_DIR
    missing = [str(root / n) for n in ("train.bin", "val.bin") if not (root / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"OpenWebText: {', '.join(missing)} not found. Make them with nanoGPT's data/openwebtext/prepare.py "
            f"(uint16 GPT-2 tokens, about 17 GB) and put train.bin and val.bin in {root}, or pass --data-dir to "
            "the directory holding openwebtext/")
    train = np.memmap(root / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(root / "val.bin", dtype=np.uint16, mode="r")
    info = {"dataset": "openwebtext", "source": str(root), "train_tokens": int(train.size),
            "eval_tokens": int(val.size), "tokenizer": "gpt2 bpe", "split": "nanoGPT's train.bin / val.bin"}
    return LMData(Windows(train, block), Windows(val, block), vocab_size, info)


def format_mathqa(example: dict[str, str]) -> tuple[str, str]:
    """(prompt, answer) text of a MathQA problem; the loss is taken on the answer only.

    The prompt gives the problem and the five options; the answer is the rationale (MathQA stores it
    quoted) and the correct letter.
    """
    rationale = str(example["Rationale"]).strip().strip('"').strip()
    prompt = f"Question: {str(example['Problem']).strip()}\nOptions: {str(example['options']).strip()}\nAnswer:"
    return prompt, f" {rationale}\nThe answer is {str(example['correct']).strip()}."


def encode_example(prompt: str, answer: str, tokenizer, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[BOS] prompt answer [EOS], truncated or padded to block + 1 tokens, as (x, y, w) rows.

    The weight of a next-token target is 1 on the answer and the EOS, 0 on the prompt and the padding.
    """
    p = [tokenizer.bos_id] + list(tokenizer.encode(prompt))
    a = list(tokenizer.encode(answer)) + [tokenizer.eos_id]
    ids = (p + a)[: block + 1]
    target_is_answer = np.zeros(block + 1, np.float32)
    target_is_answer[len(p):len(ids)] = 1.0
    row = np.zeros(block + 1, np.int32)
    row[: len(ids)] = ids
    return row[:-1], row[1:], target_is_answer[1:]


def _read_mathqa_file(root: Path, split: str) -> list[dict] | None:
    """The examples of a local MathQA split file, or None when it is absent."""
    path = root / MATHQA_DIR / MATHQA_SPLITS[split]
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _read_mathqa_tfds(split: str) -> list[dict] | None:
    """The examples of a prepared tfds `math_qa` split (array_record, no TensorFlow), or None; never downloads."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    try:
        builder = tfds.builder("math_qa")
        if not builder.is_prepared():
            return None
        name = {"dev": "validation", "val": "validation"}.get(split, split)
        ds = tfds.data_source("math_qa", split=name)
    except Exception:  # a half-made tfds folder: treat as absent, the message below says what to do
        return None
    decode = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    return [{k: decode(v) for k, v in ds[i].items()} for i in range(len(ds))]


def mathqa_examples(data_dir, split: str) -> tuple[list[dict], str]:
    """The MathQA problems of a split: the local json file, else prepared tfds data.

    Args:
        data_dir: the data root (its mathqa/ folder holds the official train/dev/test json files).
        split: "train", "dev" (or "validation"/"val") or "test".

    Returns:
        (examples, where they came from).

    Raises:
        DataNotFoundError: the split is in neither place (naming the file and how to get it).
    """
    if split not in MATHQA_SPLITS:
        raise ValueError(f"MathQA split {split!r}: use one of {sorted(MATHQA_SPLITS)}")
    root = _root(data_dir)
    examples = _read_mathqa_file(root, split)
    if examples is not None:
        return examples, str(root / MATHQA_DIR / MATHQA_SPLITS[split])
    examples = _read_mathqa_tfds(split)
    if examples is not None:
        return examples, f"tfds math_qa/{split}"
    raise DataNotFoundError(
        f"MathQA {split}: {root / MATHQA_DIR / MATHQA_SPLITS[split]} not found, and no prepared tfds 'math_qa'. "
        f"Download MathQA.zip from https://math-qa.github.io/ and put {MATHQA_SPLITS[split]} in {root / MATHQA_DIR}, "
        "or prepare tfds's math_qa once (needs TensorFlow), or pass --data-dir")


def encode_mathqa(examples: list[dict], tokenizer, block: int) -> tuple[Examples, int]:
    """The examples encoded with `encode_example` and stacked, leaving out those whose prompt fills the block.

    An example whose answer starts beyond the block has no target with weight: it would add nothing to the
    loss but count in a batch. The number left out is returned (and recorded).

    Raises:
        ValueError: no example has an answer token within the block.
    """
    rows = [encode_example(*format_mathqa(e), tokenizer, block) for e in examples]
    kept = [row for row in rows if row[2].any()]
    if not kept:
        raise ValueError(f"block_size={block}: no MathQA prompt leaves room for its answer; raise block_size")
    x, y, w = (np.stack(col) for col in zip(*kept))
    return Examples(x, y, w), len(rows) - len(kept)


def load_mathqa(data_dir, block: int, tokenizer, train_split: str, eval_split: str) -> LMData:
    """MathQA as prompt/answer sequences for LoRA fine-tuning (SentencePiece tokenizer with BOS/EOS)."""
    train_ex, train_src = mathqa_examples(data_dir, train_split)
    eval_ex, eval_src = mathqa_examples(data_dir, eval_split)
    train, train_out = encode_mathqa(train_ex, tokenizer, block)
    held, held_out = encode_mathqa(eval_ex, tokenizer, block)
    truncated = int(np.sum(train.w[:, -1] > 0))
    info = {"dataset": "mathqa", "source": {"train": train_src, "eval": eval_src}, "train_examples": train.size,
            "eval_examples": held.size, "tokenizer": "sentencepiece", "format": "Question/Options/Answer; "
            "loss on the rationale, the letter and EOS", "train_truncated_at_block": truncated,
            "left_out_no_answer_in_block": {"train": train_out, "eval": held_out}}
    return LMData(train, held, int(tokenizer.vocab_size), info)


def load(dataset: str, *, data_dir=None, block: int, tokenizer=None, train_split: str = "train",
         eval_split: str = "val", vocab_size: int | None = None) -> LMData:
    """Load a data set by name (see the module docstring).

    Args:
        dataset: "shakespeare_char", "shakespeare_gpt2", "openwebtext" or "mathqa".
        data_dir: the data root (None: HSPEC_DATA_DIR, else ~/.cache/hspec/data).
        block: tokens per sequence.
        tokenizer: GPT-2 BPE (shakespeare_gpt2) or SentencePiece (mathqa); unused otherwise.
        train_split, eval_split: MathQA's splits (the others have one train and one held-out part).
        vocab_size: the model's vocabulary for openwebtext (nanoGPT pads GPT-2's 50257 to 50304).

    Returns:
        LMData.
    """
    if dataset == "shakespeare_char":
        return load_shakespeare_char(data_dir, block)
    if dataset == "shakespeare_gpt2":
        return load_shakespeare_gpt2(data_dir, block, tokenizer)
    if dataset == "openwebtext":
        return load_openwebtext(data_dir, block, vocab_size or 50257)
    if dataset == "mathqa":
        return load_mathqa(data_dir, block, tokenizer, train_split, eval_split)
    raise ValueError(f"unknown LLM data set {dataset!r}")


def first_train_tokens(data: LMData, num: int, block: int) -> LMData:
    """The data set with its training source cut to the first `num` tokens (a subset of the corpus; the
    held-out source is unchanged). Recorded in `info` as train_tokens_used (the full split's size stays in
    train_tokens).

    Raises:
        ValueError: the source is not a token stream, or `num` cannot give one window of block + 1.
    """
    if not isinstance(data.train, Windows):
        raise ValueError("a training subset by tokens needs a token-stream data set (not MathQA)")
    num = min(num, len(data.train.tokens))
    info = dict(data.info, train_tokens_used=int(num), train_subset=f"first {num} tokens of the training split")
    return dataclasses.replace(data, train=Windows(data.train.tokens[:num], block), info=info)
