"""Pre-trained GPT-2 and Llama weights, offline, from a local directory in the HF safetensors layout.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or shards
``model-0000k-of-0000n.safetensors`` listed by ``model.safetensors.index.json``. Nothing here touches the
network: download a model once (e.g. ``huggingface-cli download openai-community/gpt2``) and pass its
directory.

The safetensors files are read with train.llm.safetensors_io (numpy, memory-mapped); `read_safetensors` and
`save_safetensors` are re-exported here.

Layouts. GPT-2 (``GPT2LMHeadModel``, optional "transformer." prefix): Conv1D weights are stored (in, out),
like our kernels, and load without a transpose; ``attn.bias``/``attn.masked_bias`` mask buffers and the tied
``lm_head.weight`` are ignored. Llama (``LlamaForCausalLM``): nn.Linear weights are (out, in) and are
transposed; ``rotary_emb.inv_freq`` buffers are ignored.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from train.llm import safetensors_io
from train.llm.safetensors_io import read_safetensors, read_safetensors_header, save_safetensors
from train.models.gpt2 import GPT2, GPT2Config
from train.models.llama import Llama, LlamaConfig

__all__ = [
    "WeightsError", "CheckpointError", "NonFiniteWeightsError", "read_safetensors", "read_safetensors_header",
    "save_safetensors", "load_tensors", "read_config",
    "gpt2_config_from_hf", "llama_config_from_hf", "gpt2_layout", "llama_layout", "load_gpt2", "load_llama",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

WeightsError = safetensors_io.WeightsError
CheckpointError = WeightsError  # the name before the LLM twins were named by what differs


class NonFiniteWeightsError(ValueError):
    """Pre-trained weights holding NaN or infinite values (exit status 3, as a non-finite loss): the message names
    the checkpoint and the tensors."""


# --------------------------------------------------------------------------------------------------
# Checkpoint directories


def _checkpoint_dir(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    return path


def read_config(directory: str | os.PathLike) -> dict:
    """The HF `config.json` of a checkpoint directory.

    Args:
      directory: the checkpoint directory.

    Returns:
      The parsed JSON.
    """
    path = _checkpoint_dir(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{CONFIG_FILE} not found in checkpoint directory {path.parent}")
    return json.loads(path.read_text())


def load_tensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory: `model.safetensors`, or the shards its index lists.

    Args:
      directory: the checkpoint directory.

    Returns:
      HF name -> numpy array (memory-mapped).
    """
    root = _checkpoint_dir(directory)
    if (root / SINGLE_FILE).is_file():
        return read_safetensors(root / SINGLE_FILE)
    if (root / INDEX_FILE).is_file():
        weight_map = json.loads((root / INDEX_FILE).read_text()).get("weight_map", {})
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            names = [k for k, v in weight_map.items() if v == shard]
            if not (root / shard).is_file():
                raise FileNotFoundError(f"shard {shard} (listed in {INDEX_FILE}) not found in {root}")
            tensors.update(read_safetensors(root / shard, names))
        return tensors
    others = sorted(p.name for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    hint = f"; it holds {others} (only safetensors is read: convert PyTorch .bin files first)" if others else ""
    raise FileNotFoundError(f"neither {SINGLE_FILE} nor {INDEX_FILE} found in {root}{hint}")


# --------------------------------------------------------------------------------------------------
# HF configs -> ours


def _require(hf: Mapping, key: str, expected, where: str) -> None:
    """Refuse a config option the model does not implement."""
    if hf.get(key, expected) != expected:
        raise NotImplementedError(f"{where}: {key}={hf[key]!r} is not supported (only {expected!r})")


def gpt2_config_from_hf(hf: Mapping, **overrides) -> GPT2Config:
    """Our GPT2Config from an HF GPT-2 `config.json`.

    Dropout (HF's resid/embd/attn_pdrop, 0.1 for OpenAI's models) is not taken over: it defaults to 0.0 as
    in nanoGPT's `from_pretrained`; pass dropout=... to change it.

    Args:
      hf: the parsed config.json.
      **overrides: GPT2Config fields to set (e.g. dropout, bias).

    Returns:
      The GPT2Config.
    """
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "exact"}
    act = hf.get("activation_function", "gelu_new")
    if act not in gelu:
        raise NotImplementedError(f"GPT-2 config: activation_function={act!r} is not supported ({sorted(gelu)})")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        _require(hf, key, False, "GPT-2 config")
    _require(hf, "scale_attn_weights", True, "GPT-2 config")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise NotImplementedError(f"GPT-2 config: n_inner={hf['n_inner']} (only 4 * n_embd)")
    fields = dict(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                  block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"], bias=True,
                  dropout=0.0, gelu=gelu[act], ln_eps=hf.get("layer_norm_epsilon", 1e-5))
    return GPT2Config(**{**fields, **overrides})


def llama_config_from_hf(hf: Mapping, **overrides) -> LlamaConfig:
    """Our LlamaConfig from an HF Llama `config.json` (TinyLlama's included).

    Args:
      hf: the parsed config.json.
      **overrides: LlamaConfig fields to set.

    Returns:
      The LlamaConfig.
    """
    where = "Llama config"
    _require(hf, "hidden_act", "silu", where)
    _require(hf, "attention_bias", False, where)
    _require(hf, "mlp_bias", False, where)
    _require(hf, "rope_scaling", None, where)
    heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        raise NotImplementedError(f"{where}: head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads")
    fields = dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
                  num_layers=hf["num_hidden_layers"], num_heads=heads,
                  num_kv_heads=hf.get("num_key_value_heads") or heads,
                  max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=float(hf.get("rope_theta", 10000.0)),
                  rms_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                  init_std=hf.get("initializer_range", 0.02))
    return LlamaConfig(**{**fields, **overrides})


# --------------------------------------------------------------------------------------------------
# Name maps: (HF name, our parameter path, transpose?)

Entry = tuple[str, tuple, bool]


def gpt2_layout(cfg: GPT2Config, prefix: str = "transformer.") -> list[Entry]:
    """Where every GPT-2 parameter lives in an HF checkpoint.

    Args:
      cfg: the architecture (bias decides whether biases are expected).
      prefix: "transformer." (GPT2LMHeadModel) or "" (GPT2Model, as OpenAI's own upload is saved).

    Returns:
      (HF name, our path, transpose) triples; GPT-2's Conv1D needs no transposes.
    """
    def layer(hf: str, ours: tuple, weight: str) -> list[Entry]:
        """A LayerNorm (weight -> scale) or Conv1D (weight -> kernel), with its bias if the model has biases."""
        entries = [(hf + ".weight", ours + (weight,), False)]
        return entries + [(hf + ".bias", ours + ("bias",), False)] if cfg.bias else entries

    entries = [(prefix + "wte.weight", ("wte", "embedding"), False),
               (prefix + "wpe.weight", ("wpe", "embedding"), False)]
    for i in range(cfg.n_layer):
        hf, ours = f"{prefix}h.{i}.", ("h", i)
        for name in ("ln_1", "ln_2"):
            entries += layer(hf + name, ours + (name,), "scale")
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            entries += layer(hf + name, ours + tuple(name.split(".")), "kernel")
    return entries + layer(prefix + "ln_f", ("ln_f",), "scale")


def llama_layout(cfg: LlamaConfig) -> list[Entry]:
    """Where every Llama parameter lives in an HF `LlamaForCausalLM` checkpoint.

    Args:
      cfg: the architecture.

    Returns:
      (HF name, our path, transpose) triples; every nn.Linear weight (out, in) is transposed.
    """
    entries = [("model.embed_tokens.weight", ("embed_tokens", "embedding"), False),
               ("model.norm.weight", ("norm", "scale"), False)]
    linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("layers", i)
        for name in ("input_layernorm", "post_attention_layernorm"):
            entries.append((f"{hf}{name}.weight", ours + (name, "scale"), False))
        for name in linears:
            entries.append((f"{hf}{name}.weight", ours + (*name.split("."), "kernel"), True))
    if not cfg.tie_embeddings:
        entries.append(("lm_head.weight", ("lm_head", "kernel"), True))
    return entries


# --------------------------------------------------------------------------------------------------
# Filling a model


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _check_tensors(tensors: Mapping[str, np.ndarray], layout: list[Entry], pure: dict, where: str) -> None:
    """Raise WeightsError naming every missing tensor or wrong shape (HF's shape expected vs found)."""
    missing = [hf for hf, _, _ in layout if hf not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise WeightsError(f"{where}: missing tensors {missing[:5]}{more}")
    for hf, path, transpose in layout:
        expected = tuple(_get(pure, path).shape)
        expected = expected[::-1] if transpose else expected
        if tuple(tensors[hf].shape) != expected:
            raise WeightsError(f"{where}: tensor {hf!r} has shape {tuple(tensors[hf].shape)}, expected {expected}")


def _warn_unused(tensors: Mapping[str, np.ndarray], layout: list[Entry], ignored: Callable[[str], bool],
                 where: str) -> None:
    """Warn about checkpoint tensors that the model does not use (other than known buffers)."""
    used = {hf for hf, _, _ in layout}
    unused = sorted(k for k in tensors if k not in used and not ignored(k))
    if unused:
        warnings.warn(f"{where}: {len(unused)} tensors not used by the model, e.g. {unused[:5]}", stacklevel=3)


def fill_model(build: Callable[[], nnx.Module], tensors: Mapping[str, np.ndarray], layout: list[Entry], *,
               dtype=jnp.float32, where: str = "checkpoint") -> nnx.Module:
    """Build a model abstractly (no random init) and set its parameters from checkpoint tensors.

    Args:
      build: () -> model, traced with `nnx.eval_shape` only.
      tensors: HF name -> array.
      layout: (HF name, our path, transpose) for every parameter of the model.
      dtype: parameter dtype.
      where: named in error messages.

    Returns:
      The model with the checkpoint's weights.

    Raises:
      WeightsError: a tensor missing or of the wrong shape.
      NonFiniteWeightsError: tensors holding NaN or infinite values (named): training from them would only
        end in a non-finite loss, far from its cause.
    """
    graphdef, state = nnx.split(nnx.eval_shape(build))
    pure = nnx.to_pure_dict(state)
    _check_tensors(tensors, layout, pure, where)
    non_finite = []
    for hf, path, transpose in layout:
        a = np.asarray(tensors[hf], dtype=dtype)
        if not np.isfinite(a).all():
            non_finite.append(hf)
        _set(pure, path, jnp.asarray(a.T if transpose else a))
    if non_finite:
        more = f" and {len(non_finite) - 5} more" if len(non_finite) > 5 else ""
        raise NonFiniteWeightsError(f"{where}: tensors {non_finite[:5]}{more} hold NaN or infinite values; the "
                                    "weights are damaged: download or convert them again")
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    unfilled = [jax.tree_util.keystr(p) for p, x in leaves if isinstance(x, jax.ShapeDtypeStruct)]
    if unfilled:  # the layout table and the model disagree: a bug here, not in the checkpoint
        raise RuntimeError(f"{where}: model parameters without a checkpoint tensor: {unfilled[:5]}")
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _gpt2_buffer(name: str) -> bool:
    """HF GPT-2's causal-mask buffers, and a head tied to wte anyway: in some files, not parameters here."""
    return name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight"


def _llama_buffer(name: str, *, tied: bool) -> bool:
    """Rotary tables stored by old Llama checkpoints, and a head tied to the embedding."""
    return name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight")


def _gpt2_prefix(tensors: Mapping[str, np.ndarray], where: str) -> str:
    for prefix in ("transformer.", ""):
        if prefix + "wte.weight" in tensors:
            return prefix
    raise WeightsError(f"{where}: no GPT-2 token embedding (transformer.wte.weight or wte.weight); "
                          "is this a GPT-2 checkpoint?")


def load_gpt2(directory: str | os.PathLike, *, dtype=jnp.float32, remat: bool = False,
              **overrides) -> tuple[GPT2, GPT2Config]:
    """A GPT-2 with pre-trained weights from a local HF checkpoint directory.

    Args:
      directory: holds config.json and model.safetensors (or shards with their index).
      dtype: parameter dtype (float32 by default, whatever the file stores).
      remat: passed to GPT2.
      **overrides: GPT2Config fields (e.g. dropout=0.1). `bias` is read from the checkpoint.

    Returns:
      (model, cfg), the model in training mode as every new model.
    """
    where = f"GPT-2 checkpoint {directory}"
    hf = read_config(directory)
    tensors = load_tensors(directory)
    prefix = _gpt2_prefix(tensors, where)
    has_bias = f"{prefix}h.0.attn.c_attn.bias" in tensors
    cfg = gpt2_config_from_hf(hf, **{"bias": has_bias, **overrides})
    layout = gpt2_layout(cfg, prefix)
    _warn_unused(tensors, layout, _gpt2_buffer, where)
    model = fill_model(lambda: GPT2(cfg, remat=remat, rngs=nnx.Rngs(0)), tensors, layout, dtype=dtype, where=where)
    return model, cfg


def load_llama(directory: str | os.PathLike, *, dtype=jnp.float32, remat: bool = False,
               **overrides) -> tuple[Llama, LlamaConfig]:
    """A Llama (e.g. TinyLlama-1.1B-Chat-v1.0) with pre-trained weights from a local HF checkpoint directory.

    Args:
      directory: holds config.json and model.safetensors (or shards with their index).
      dtype: parameter dtype (float32 by default; TinyLlama's file stores bfloat16).
      remat: passed to Llama.
      **overrides: LlamaConfig fields.

    Returns:
      (model, cfg).
    """
    where = f"Llama checkpoint {directory}"
    cfg = llama_config_from_hf(read_config(directory), **overrides)
    tensors = load_tensors(directory)
    layout = llama_layout(cfg)
    _warn_unused(tensors, layout, functools.partial(_llama_buffer, tied=cfg.tie_embeddings), where)
    model = fill_model(lambda: Llama(cfg, remat=remat, rngs=nnx.Rngs(0)), tensors, layout, dtype=dtype, where=where)
    return model, cfg
