"""GPT-2 as nanoGPT builds it (METHOD.md section 5: GPT2-nano, GPT-2 small/medium/large).

Pre-LayerNorm transformer: token + position embeddings, n_layer blocks of
``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, a final LayerNorm ``ln_f``, and a language-model head
tied to the token embedding (logits = ln_f(x) @ wte^T). Module and parameter names follow HF's
``GPT2LMHeadModel`` (``wte``, ``wpe``, ``h/<i>/attn/c_attn``, ``ln_f`` ...), so that checkpoints map
name by name (train/llm/weights.py) and Hessian subsets are chosen by a regex on paths such as
``h/5/mlp/c_fc/kernel`` (see `last_block_pattern`).

Numerics that matter for parity: LayerNorm eps 1e-5 with the two-pass variance (flax's default is eps
1e-6 and E[x^2] - E[x]^2); exact GELU for nanoGPT trained from scratch, the tanh form ("gelu_new") for
OpenAI's weights; attention scores and softmax in float32 with jnp ops (no fused kernel), so that
forward-over-reverse Hessian-vector products go through plain XLA. Matmul precision is set by callers
(``jax.default_matmul_precision("highest")`` for the Hessian).

Dropout draws from an explicit stream: ``model(idx, rngs=key_or_Rngs)``; the model stores no RNG state,
so ``nnx.split(model, nnx.Param, ...)`` leaves nothing but parameters, and a training step can pass
``fold_in(key, step)``. After ``model.eval()`` dropout is off and no key is needed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from train.models.lora import Linear

GELU_FORMS = ("exact", "tanh")


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Architecture of a GPT-2 (nanoGPT's GPTConfig plus the GELU form and LayerNorm eps).

    Attributes:
      n_layer: number of transformer blocks.
      n_head: attention heads per block.
      n_embd: residual width (a multiple of n_head).
      block_size: longest sequence (number of learned positions).
      vocab_size: number of tokens.
      bias: biases in the linear layers and LayerNorms (OpenAI's weights have them; nanoGPT from
        scratch does not).
      dropout: rate on embeddings, attention probabilities, and residual branches (training only).
      gelu: "exact" (nanoGPT's nn.GELU()) or "tanh" (OpenAI's "gelu_new").
      ln_eps: LayerNorm epsilon.
    """

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    bias: bool = True
    dropout: float = 0.0
    gelu: Literal["exact", "tanh"] = "tanh"
    ln_eps: float = 1e-5

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.gelu not in GELU_FORMS:
            raise ValueError(f"gelu must be one of {GELU_FORMS}, got {self.gelu!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if min(self.n_layer, self.n_head, self.block_size, self.vocab_size) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


# nano: nanoGPT's config/train_shakespeare_char.py (6/6/384, block 256, 65 characters, no biases, exact
# GELU, dropout 0.2), the paper's GPT2-nano. small/medium/large: OpenAI's GPT-2 (HF layout, biases, tanh
# GELU, vocab 50257, no dropout as in nanoGPT's fine-tuning). nanoGPT pads the vocabulary to 50304 when
# it trains GPT-2 from scratch: use dataclasses.replace(PRESETS["small"], vocab_size=50304, bias=False).
PRESETS: dict[str, GPT2Config] = {
    "nano": GPT2Config(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False, dropout=0.2,
                       gelu="exact"),
    "small": GPT2Config(n_layer=12, n_head=12, n_embd=768),
    "medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),
    "large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),
}


def preset(name: str, **overrides) -> GPT2Config:
    """A named configuration, optionally with fields replaced.

    Args:
      name: "nano", "small", "medium" or "large".
      **overrides: GPT2Config fields to change (e.g. dropout=0.0, vocab_size=50304).

    Returns:
      The GPT2Config.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown GPT-2 preset {name!r}; valid names: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def block_prefix(index: int) -> str:
    """Path prefix of transformer block `index` in the parameter state, e.g. "h/5/"."""
    return f"h/{int(index)}/"


def last_block_pattern(cfg: GPT2Config) -> str:
    """Regex selecting the last transformer block's parameters (hspec's `wrt` on paths like "h/5/attn/...").

    The paper restricts the LLM Hessian to "the last layer". With tied embeddings the output layer is the
    token embedding, which is also the first layer and holds vocab*n_embd parameters, so we read "the last
    layer" as the last transformer block (for nano: 1.77M parameters). `last_layer_pattern` adds ln_f.

    Args:
      cfg: the model's configuration.

    Returns:
      A regex, anchored at the start of the path.
    """
    return "^" + block_prefix(cfg.n_layer - 1)


def last_layer_pattern(cfg: GPT2Config, *, include_final_norm: bool = False) -> str:
    """Regex for "the last layer": the last block, and optionally the final LayerNorm ln_f.

    Args:
      cfg: the model's configuration.
      include_final_norm: also select ln_f (n_embd scales, plus biases if cfg.bias).

    Returns:
      A regex on parameter paths.
    """
    block = block_prefix(cfg.n_layer - 1)
    return f"^({block}|ln_f/)" if include_final_norm else "^" + block


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, dropout: nnx.Dropout | None = None,
                     rngs: nnx.Rngs | None = None) -> jax.Array:
    """Softmax(q k^T / sqrt(d) + causal mask) v, in float32.

    Args:
      q, k, v: (B, T, H, D) queries, keys and values (as many key/value heads as query heads).
      dropout: applied to the attention probabilities (nanoGPT's attn_dropout); None for none.
      rngs: dropout stream.

    Returns:
      (B, T, H, D) in q's dtype.
    """
    t, d = q.shape[1], q.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) / math.sqrt(d)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    # The diagonal is never masked, so every row has a finite maximum and -inf is safe.
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    if dropout is not None:
        probs = dropout(probs, rngs=rngs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32)).astype(q.dtype)


def _normal(std: float):
    return jax.nn.initializers.normal(stddev=std)


def _layer_norm(cfg: GPT2Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance: E[x^2] - E[x]^2 loses digits against PyTorch's LayerNorm.
    return nnx.LayerNorm(cfg.n_embd, epsilon=cfg.ln_eps, use_bias=cfg.bias, use_fast_variance=False, rngs=rngs)


def _linear(n_in: int, n_out: int, std: float, cfg: GPT2Config, rngs: nnx.Rngs) -> Linear:
    return Linear(n_in, n_out, use_bias=cfg.bias, kernel_init=_normal(std), rngs=rngs)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention with a fused q,k,v projection (HF/nanoGPT `c_attn`)."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # nanoGPT's scaled init of residual projections
        self.c_attn = _linear(cfg.n_embd, 3 * cfg.n_embd, 0.02, cfg, rngs)
        self.c_proj = _linear(cfg.n_embd, cfg.n_embd, proj_std, cfg, rngs)
        self.attn_dropout = nnx.Dropout(cfg.dropout)
        self.resid_dropout = nnx.Dropout(cfg.dropout)
        self.n_head = cfg.n_head

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T, C) -> (B, T, C)."""
        b, t, c = x.shape
        q, k, v = jnp.split(self.c_attn(x, rngs=rngs), 3, axis=-1)
        heads = lambda a: a.reshape(b, t, self.n_head, c // self.n_head)  # noqa: E731
        y = causal_attention(heads(q), heads(k), heads(v), dropout=self.attn_dropout, rngs=rngs)
        return self.resid_dropout(self.c_proj(y.reshape(b, t, c), rngs=rngs), rngs=rngs)


class MLP(nnx.Module):
    """c_fc (4x wider) - GELU - c_proj - dropout."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        self.c_fc = _linear(cfg.n_embd, 4 * cfg.n_embd, 0.02, cfg, rngs)
        self.c_proj = _linear(4 * cfg.n_embd, cfg.n_embd, proj_std, cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout)
        self.approximate = cfg.gelu == "tanh"

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T, C) -> (B, T, C)."""
        h = jax.nn.gelu(self.c_fc(x, rngs=rngs), approximate=self.approximate)
        return self.dropout(self.c_proj(h, rngs=rngs), rngs=rngs)


class Block(nnx.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(cfg, rngs)
        self.attn = CausalSelfAttention(cfg, rngs=rngs)
        self.ln_2 = _layer_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln_1(x), rngs=rngs)
        return x + self.mlp(self.ln_2(x), rngs=rngs)


def _run_block(block: nnx.Module, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    return block(x, rngs=rngs)


def as_rngs(rngs: nnx.Rngs | jax.Array | None) -> nnx.Rngs | None:
    """An explicit dropout stream: a PRNG key becomes nnx.Rngs(dropout=key); Rngs and None pass through."""
    if rngs is None or isinstance(rngs, nnx.Rngs):
        return rngs
    return nnx.Rngs(dropout=rngs)


def check_dropout_stream(model: nnx.Module, rngs: nnx.Rngs | None) -> None:
    """Raise if some dropout (the model's or LoRA's) is active and no stream was given.

    Args:
      model: the model about to run.
      rngs: the stream passed to it.
    """
    if rngs is not None:
        return
    modules = (m for _, m in nnx.iter_modules(model))
    active = [m.rate for m in modules if isinstance(m, nnx.Dropout) and not m.deterministic and m.rate > 0]
    if active:
        raise ValueError(
            f"dropout (rate {max(active)}) is active in training mode but no rngs was given: call "
            "model(idx, rngs=key) with a PRNG key or nnx.Rngs(dropout=...), or model.eval() to turn dropout off"
        )


class GPT2(nnx.Module):
    """GPT-2 language model; `__call__(idx)` returns next-token logits."""

    def __init__(self, cfg: GPT2Config, *, remat: bool = False, rngs: nnx.Rngs):
        """Create the model with nanoGPT's initialisation.

        Linear and embedding weights are N(0, 0.02^2); the residual projections (attn.c_proj, mlp.c_proj)
        N(0, (0.02/sqrt(2 n_layer))^2); biases zero; LayerNorm scales one. The head is tied to wte.

        Args:
          cfg: the architecture.
          remat: recompute each block in the backward pass (`nnx.remat`) to save activation memory.
          rngs: NNX random streams (initialisation uses `rngs.params()`).
        """
        self.cfg = cfg
        self.remat = remat
        self.wte = nnx.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=_normal(0.02), rngs=rngs)
        self.wpe = nnx.Embed(cfg.block_size, cfg.n_embd, embedding_init=_normal(0.02), rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        self.h = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.ln_f = _layer_norm(cfg, rngs)

    def __call__(self, idx: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        """Logits of the next token at every position.

        Args:
          idx: (B, T) integer token ids, T <= block_size.
          rngs: dropout stream (a PRNG key or nnx.Rngs); needed only in training mode with dropout > 0.

        Returns:
          (B, T, vocab_size) float logits.
        """
        t = idx.shape[-1]
        if t > self.cfg.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.cfg.block_size}")
        rngs = as_rngs(rngs)
        check_dropout_stream(self, rngs)
        x = self.drop(self.wte(idx) + self.wpe(jnp.arange(t)), rngs=rngs)
        run = nnx.remat(_run_block) if self.remat else _run_block
        for block in self.h:
            x = run(block, x, rngs)
        return self.wte.attend(self.ln_f(x))  # tied head: x @ wte^T


def count_params(model: GPT2, *, non_embedding: bool = False) -> int:
    """Number of parameters, the tied head counted once.

    Args:
      model: a GPT2 (or an abstract one from `nnx.eval_shape`).
      non_embedding: subtract the position embedding, as nanoGPT's `get_num_params` prints it.

    Returns:
      The count.
    """
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return n - model.wpe.embedding.shape[0] * model.wpe.embedding.shape[1] if non_embedding else n
