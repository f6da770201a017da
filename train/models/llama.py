"""Llama (HF `LlamaForCausalLM`) with the TinyLlama-1.1B configuration (METHOD.md section 5: TinyLlama + LoRA).

Pre-RMSNorm decoder: x + attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)); grouped-query
attention (num_kv_heads key/value heads shared by groups of query heads), rotary position embeddings on
queries and keys, a SwiGLU MLP down(silu(gate(x)) * up(x)), no biases, a final RMSNorm `norm` and an untied
head `lm_head`. Module names follow HF (``layers/<i>/self_attn/q_proj`` ...) without the "model." prefix.

RoPE is HF's "rotate_half" form: the head's first and second halves are the two coordinates of each
rotated pair (x_i, x_{i+D/2}) with frequency theta^(-2i/D). The GPT-NeoX/Meta "interleaved" form pairs
(x_{2i}, x_{2i+1}) instead; HF's checkpoints permute q_proj/k_proj rows for the half form, so using the
other form with HF weights silently gives a different model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from train.models.gpt2 import as_rngs, causal_attention, check_dropout_stream
from train.models.lora import Linear


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama decoder (HF LlamaConfig fields under shorter names).

    Attributes:
      vocab_size: number of tokens.
      hidden_size: residual width.
      intermediate_size: SwiGLU hidden width.
      num_layers: decoder layers (HF num_hidden_layers).
      num_heads: query heads.
      num_kv_heads: key/value heads (a divisor of num_heads; grouped-query attention when smaller).
      max_seq_len: longest sequence (HF max_position_embeddings); RoPE needs no table, this is a check.
      rope_theta: RoPE base.
      rms_eps: RMSNorm epsilon.
      tie_embeddings: share lm_head with embed_tokens (False for TinyLlama).
      init_std: normal initialiser std of linear and embedding weights (HF initializer_range).
    """

    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_layers: int = 22
    num_heads: int = 32
    num_kv_heads: int = 4
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads


PRESETS: dict[str, LlamaConfig] = {
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0's config.json: 1,100,048,384 parameters.
    "tinyllama-1.1b": LlamaConfig(),
    # For tests: GQA with 2 query heads per key/value head.
    "tiny": LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_seq_len=64),
}


def preset(name: str, **overrides) -> LlamaConfig:
    """A named configuration ("tinyllama-1.1b" or "tiny"), optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown Llama preset {name!r}; valid names: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def block_prefix(index: int) -> str:
    """Path prefix of decoder layer `index` in the parameter state, e.g. "layers/21/"."""
    return f"layers/{int(index)}/"


def last_block_pattern(cfg: LlamaConfig) -> str:
    """Regex selecting the last decoder layer's parameters ("the last layer"; the untied lm_head is left out).

    Combine with `lora.adapter_pattern(block_prefix(n - 1))` to take only that layer's adapters.
    """
    return "^" + block_prefix(cfg.num_layers - 1)


def last_layer_pattern(cfg: LlamaConfig, *, include_final_norm: bool = False, include_head: bool = False) -> str:
    """Regex for the last decoder layer, optionally with the final RMSNorm and the head.

    Args:
      cfg: the model's configuration.
      include_final_norm: also select `norm`.
      include_head: also select `lm_head` (vocab_size * hidden_size parameters; ignored when tied).

    Returns:
      A regex on parameter paths.
    """
    parts = [block_prefix(cfg.num_layers - 1)]
    parts += ["norm/"] if include_final_norm else []
    parts += ["lm_head/"] if include_head and not cfg.tie_embeddings else []
    return "^(" + "|".join(parts) + ")"


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles, HF's layout: angles = pos * theta^(-2i/D), repeated over both halves.

    Args:
      positions: (T,) positions.
      head_dim: D.
      theta: RoPE base.

    Returns:
      (cos, sin), each (T, D) float32.
    """
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate_half(x: jax.Array) -> jax.Array:
    """(x1, x2) -> (-x2, x1) on the last axis split in halves."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (B, T, H, D) queries or keys by the (T, D) tables: x cos + rotate_half(x) sin."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (x.astype(jnp.float32) * cos + rotate_half(x.astype(jnp.float32)) * sin).astype(x.dtype)


def _linear(n_in: int, n_out: int, cfg: LlamaConfig, rngs: nnx.Rngs) -> Linear:
    init = jax.nn.initializers.normal(stddev=cfg.init_std)
    return Linear(n_in, n_out, use_bias=False, kernel_init=init, rngs=rngs)


def _rms_norm(cfg: LlamaConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(cfg.hidden_size, epsilon=cfg.rms_eps, rngs=rngs)


class Attention(nnx.Module):
    """Grouped-query causal self-attention with RoPE."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = _linear(d, cfg.num_heads * hd, cfg, rngs)
        self.k_proj = _linear(d, cfg.num_kv_heads * hd, cfg, rngs)
        self.v_proj = _linear(d, cfg.num_kv_heads * hd, cfg, rngs)
        self.o_proj = _linear(cfg.num_heads * hd, d, cfg, rngs)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T, C) -> (B, T, C), given the RoPE tables of positions 0..T-1."""
        b, t, _ = x.shape
        q = self.q_proj(x, rngs=rngs).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, rngs=rngs).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, rngs=rngs).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # HF's repeat_kv: query head h reads key/value head h // (num_heads / num_kv_heads).
        groups = self.num_heads // self.num_kv_heads
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
        y = causal_attention(q, k, v)
        return self.o_proj(y.reshape(b, t, self.num_heads * self.head_dim), rngs=rngs)


class MLP(nnx.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.gate_proj = _linear(cfg.hidden_size, cfg.intermediate_size, cfg, rngs)
        self.up_proj = _linear(cfg.hidden_size, cfg.intermediate_size, cfg, rngs)
        self.down_proj = _linear(cfg.intermediate_size, cfg.hidden_size, cfg, rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T, C) -> (B, T, C)."""
        h = jax.nn.silu(self.gate_proj(x, rngs=rngs)) * self.up_proj(x, rngs=rngs)
        return self.down_proj(h, rngs=rngs)


class DecoderLayer(nnx.Module):
    """Pre-RMSNorm decoder layer."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = _rms_norm(cfg, rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = _rms_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, rngs=rngs)
        return x + self.mlp(self.post_attention_layernorm(x), rngs=rngs)


def _run_layer(layer: nnx.Module, x: jax.Array, cos: jax.Array, sin: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    return layer(x, cos, sin, rngs=rngs)


class Llama(nnx.Module):
    """Llama causal language model; `__call__(idx)` returns next-token logits."""

    def __init__(self, cfg: LlamaConfig, *, remat: bool = False, rngs: nnx.Rngs):
        """Create the model with HF's initialisation (weights N(0, init_std^2), RMSNorm scales one).

        Args:
          cfg: the architecture.
          remat: recompute each decoder layer in the backward pass (`nnx.remat`).
          rngs: NNX random streams (initialisation uses `rngs.params()`).
        """
        self.cfg = cfg
        self.remat = remat
        init = jax.nn.initializers.normal(stddev=cfg.init_std)
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = _rms_norm(cfg, rngs)
        self.lm_head = None if cfg.tie_embeddings else _linear(cfg.hidden_size, cfg.vocab_size, cfg, rngs)

    def __call__(self, idx: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        """Logits of the next token at every position.

        Args:
          idx: (B, T) integer token ids.
          rngs: dropout stream (a PRNG key or nnx.Rngs) for LoRA dropout in training mode; the base model
            has no dropout.

        Returns:
          (B, T, vocab_size) float logits.
        """
        t = idx.shape[-1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len {self.cfg.max_seq_len}")
        rngs = as_rngs(rngs)
        check_dropout_stream(self, rngs)
        cos, sin = rope_tables(jnp.arange(t), self.cfg.head_dim, self.cfg.rope_theta)
        x = self.embed_tokens(idx)
        run = nnx.remat(_run_layer) if self.remat else _run_layer
        for layer in self.layers:
            x = run(layer, x, cos, sin, rngs)
        x = self.norm(x)
        return self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x, rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Number of nnx.Param scalars (LoRA adapters included, as `nnx.LoRAParam` is a Param)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
