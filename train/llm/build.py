"""Assemble an LLM run, frozen: tokenizer, data, model (scratch, pre-trained, LoRA), its split, keys, fixed samples.

    build(cfg, weights=..., data_dir=...) -> LMRun

Everything here is decided once, before the first step, and never changes: the driver (train.llm.driver) keeps the
one thing that does, the training state, to itself.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import jax
from flax import nnx

import hspec
from train import hessian
from train import keys as keys_lib
from train.data import without_data_root
from train.llm import data as data_lib
from train.llm import loop, sharding
from train.llm.presets import LLMConfig, LLMConfigError

__all__ = ["LMRun", "Run", "WeightsNotFoundError", "build", "build_model"]


class WeightsNotFoundError(FileNotFoundError):
    """A preset needs pre-trained weights and none were given (or the directory is missing)."""


@dataclasses.dataclass(frozen=True)
class LMRun:
    """Everything assembled for a run: config, data, split model, fixed samples, keys, mesh, the Hessian loss.

    Attributes:
        state: the state before step 0. The driver trains from it (or from a checkpoint) and keeps the state it
            trains to itself; the first step is donated the arrays of this one, so read only its shapes after.
        hessian_loss: the run's one Hessian loss (train.hessian), the same function at every checkpoint.
        train_step, eval_step: the run's compiled optimiser and evaluation steps, built once with the run.
        hessian_factory: the run's hspec.HessianFactory: every checkpoint's Hessian operator comes from it, so that
            hspec compiles its programs once per run (no module-level cache keeps them).
    """

    cfg: LLMConfig
    data: data_lib.LMData
    model_info: dict[str, Any]
    split: loop.SplitModel
    state: loop.TokenTrainState
    fixed: Any
    keys: keys_lib.RunKeys
    hessian_batches: list
    eval_batches: list
    mesh: Any
    optim: loop.OptimSpec
    hessian_loss: Callable
    train_step: Callable
    eval_step: Callable
    hessian_factory: hspec.HessianFactory = dataclasses.field(default_factory=hspec.HessianFactory)


Run = LMRun  # the name before the run was frozen


def _require_weights(cfg: LLMConfig, weights: str | os.PathLike | None) -> Path | None:
    """The pre-trained weights directory a preset needs, checked; None for runs from scratch."""
    if not cfg.pretrained:
        return None
    fix = ("pass --weights DIR: an HF checkpoint directory with config.json and model.safetensors, e.g. "
           "`huggingface-cli download openai-community/gpt2 --local-dir DIR` (gpt2-medium, gpt2-large) or "
           "TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    if weights is None:
        raise WeightsNotFoundError(f"preset {cfg.preset!r} starts from pre-trained weights: {fix}")
    path = Path(weights).expanduser()
    if not (path / "config.json").is_file():
        raise WeightsNotFoundError(f"pre-trained weights: {path / 'config.json'} not found; {fix}")
    return path


def _tokenizer(cfg: LLMConfig, weights: Path | None):
    """The tokenizer a data set needs: GPT-2 BPE (the checkpoint's files, else the package's) or SentencePiece."""
    from train.llm import tokenizers

    if cfg.dataset == "shakespeare_gpt2":
        has_files = weights is not None and (weights / "vocab.json").is_file() and (weights / "merges.txt").is_file()
        return tokenizers.load_tokenizer("gpt2", directory=weights if has_files else None)
    if cfg.dataset == "mathqa":
        if weights is None:
            raise WeightsNotFoundError("MathQA is tokenised with the Llama checkpoint's tokenizer.model: "
                                       "pass --weights")
        return tokenizers.load_tokenizer("sentencepiece", directory=weights)
    return None


def build_model(cfg: LLMConfig, vocab_size: int, init_key: jax.Array, weights: Path | None) -> tuple[nnx.Module, Any]:
    """The model of a run: from scratch (init stream) or pre-trained weights, then LoRA adapters if asked.

    Args:
        cfg: the run's configuration.
        vocab_size: the data's vocabulary (scratch GPT-2/Llama unless model.vocab_size overrides it).
        init_key: the run's init stream; LoRA's A matrices use fold_in(init, 1).
        weights: the pre-trained checkpoint directory, or None.

    Returns:
        (model in training mode, its architecture config).
    """
    from train.llm import weights as weights_lib
    from train.models import gpt2, llama, lora

    fields = cfg.model_fields()
    if cfg.model == "gpt2" and cfg.pretrained:
        model, mcfg = weights_lib.load_gpt2(weights, remat=cfg.remat, **{"dropout": cfg.dropout, **fields})
    elif cfg.model == "gpt2":
        fields = {"vocab_size": vocab_size, "block_size": cfg.block_size, "dropout": cfg.dropout, **fields}
        mcfg = gpt2.preset(cfg.model_size, **fields)
        model = gpt2.GPT2(mcfg, remat=cfg.remat, rngs=nnx.Rngs(params=init_key))
    elif cfg.pretrained:
        model, mcfg = weights_lib.load_llama(weights, remat=cfg.remat, **fields)
    else:
        mcfg = llama.preset(cfg.model_size, **{"vocab_size": vocab_size, **fields})
        model = llama.Llama(mcfg, remat=cfg.remat, rngs=nnx.Rngs(params=init_key))
    longest = mcfg.block_size if cfg.model == "gpt2" else mcfg.max_seq_len
    if cfg.block_size > longest:
        raise LLMConfigError(f"block_size={cfg.block_size} exceeds the model's {longest} positions")
    if cfg.lora_rank:
        try:
            lora.apply_lora(model, targets=cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                            dropout=cfg.lora_dropout, rngs=nnx.Rngs(params=jax.random.fold_in(init_key, 1)))
        except lora.LoRATargetError as err:
            raise LLMConfigError(f"{err}; choose among them with --set lora_targets=NAME,NAME (a dotted suffix "
                                 "such as attn.c_proj picks one of several)") from None
    return model, mcfg


def _mesh(cfg: LLMConfig):
    """The device mesh, or None on one device."""
    n = jax.device_count()
    data, model = sharding.mesh_shape(cfg.data_parallel, cfg.model_parallel, n)
    if n == 1:
        return None
    for name in ("micro_batch", "hessian_batch", "eval_batch"):
        if getattr(cfg, name) % data:
            raise LLMConfigError(f"{name}={getattr(cfg, name)} must be a multiple of the {data} data-parallel devices")
    return sharding.make_mesh(data, model)


def _place_batches(batches: list, mesh, axis: int = 0) -> list:
    return batches if mesh is None else [sharding.shard_batch(b, mesh, axis) for b in batches]


def _place_params(tree: Any, mesh) -> Any:
    return tree if mesh is None else sharding.shard_params(tree, mesh)


def _load_data(cfg: LLMConfig, weights_dir: Path | None, data_dir: str | None) -> data_lib.LMData:
    """The run's token data (the data root written as <data_dir> in its record), cut to train_tokens if asked."""
    vocab = dict(cfg.model_overrides).get("vocab_size")
    data = data_lib.load(cfg.dataset, data_dir=data_dir, block=cfg.block_size, tokenizer=_tokenizer(cfg, weights_dir),
                         train_split=cfg.train_split, eval_split=cfg.eval_split, vocab_size=vocab)
    data = dataclasses.replace(data, info=without_data_root(data.info, data_dir))
    return data_lib.first_train_tokens(data, cfg.train_tokens, cfg.block_size) if cfg.train_tokens else data


def _fixed_samples(cfg: LLMConfig, data: data_lib.LMData, keys: keys_lib.RunKeys) -> tuple[list, list]:
    """The fixed Hessian sequences (training split; draw d > 0 from fold_in(hessian_sample, d)) and the fixed
    held-out sequences of the test loss (fold_in(data_options, EVAL_TAG))."""
    draw_key = keys.hessian_sample if not cfg.hessian_draw else jax.random.fold_in(keys.hessian_sample,
                                                                                   cfg.hessian_draw)
    hessian_batches = data_lib.fixed_batches(data.train, draw_key, cfg.hessian_sequences, cfg.hessian_batch)
    held_out = data_lib.fixed_batches(data.eval, jax.random.fold_in(keys.data_options, data_lib.EVAL_TAG),
                                      cfg.eval_sequences, cfg.eval_batch)
    return hessian_batches, held_out


def build(cfg: LLMConfig, *, weights: str | os.PathLike | None = None, data_dir: str | None = None) -> LMRun:
    """Assemble a run: tokenizer, data, model, its split, the optimiser state, the fixed samples and keys.

    Raises:
        WeightsNotFoundError, DataNotFoundError: missing inputs (the message names the path and the fix).
    """
    weights_dir = _require_weights(cfg, weights)
    data = _load_data(cfg, weights_dir, data_dir)
    keys = keys_lib.run_keys(cfg.seed)
    model, mcfg = build_model(cfg, data.vocab_size, keys.init, weights_dir)
    if getattr(mcfg, "vocab_size", data.vocab_size) < data.vocab_size:
        raise LLMConfigError(f"the model's vocabulary ({mcfg.vocab_size}) is smaller than the data's "
                             f"({data.vocab_size})")
    split, trained, fixed = loop.split_model(model, lora=cfg.lora_rank > 0)
    mesh = _mesh(cfg)
    optim = loop.OptimSpec.from_config(cfg)
    trained, fixed = _place_params(trained, mesh), _place_params(fixed, mesh)
    hessian_batches, held_out = _fixed_samples(cfg, data, keys)
    # The weights directory's name only: committed results carry no machine paths.
    info = {"arch": dataclasses.asdict(mcfg), "arch_config": mcfg,
            "weights": None if weights_dir is None else weights_dir.name}
    return LMRun(cfg, data, info, split, loop.init_state(trained, optim), fixed, keys,
                 _place_batches(hessian_batches, mesh), _place_batches(held_out, mesh), mesh, optim,
                 hessian.token_hessian_loss(split.eval_def), loop.lm_train_step(split.train_def, optim),
                 loop.make_eval_step(split.eval_def))
