"""Low-rank adapters (LoRA, Hu et al. 2021) as HF PEFT applies them: y = W x + (alpha/r) B A dropout(x).

The adapters are `nnx.LoRAParam` variables, so ``nnx.split(model, nnx.LoRAParam, ...)`` takes them alone:
train over the adapters with the base held fixed, or restrict the Hessian to them (METHOD.md section 1).
flax's own `nnx.LoRA` has neither the alpha/r scaling nor the input dropout, hence this small module.

PEFT's initialisation: A (in, r) kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B (r, out)
zero, so that a freshly adapted model computes exactly the base model.

`nnx.LoRAParam` subclasses `nnx.Param`: a filter `nnx.Param` selects base and adapter weights together
(e.g. `train.models.count_params` counts both); put `nnx.LoRAParam` first to separate them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_TARGETS = ("q_proj", "v_proj")


class Linear(nnx.Linear):
    """`nnx.Linear` whose call accepts (and ignores) a dropout stream.

    The GPT-2 and Llama models call every projection as ``proj(x, rngs=rngs)``, so that `apply_lora` can
    replace any of them by a `LoRALinear`, whose input dropout needs the stream.
    """

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """x @ kernel (+ bias)."""
        del rngs
        return super().__call__(x)


def kaiming_uniform_a(key: jax.Array, n_in: int, rank: int, dtype=jnp.float32) -> jax.Array:
    """PEFT's init of A: torch's kaiming_uniform_(a=sqrt(5)) on fan_in = n_in, i.e. U(-1/sqrt(n_in), 1/sqrt(n_in)).

    Args:
      key: PRNG key.
      n_in: input features (the fan-in).
      rank: LoRA rank r.
      dtype: parameter dtype.

    Returns:
      (n_in, rank) array.
    """
    bound = 1.0 / math.sqrt(n_in)  # gain sqrt(2/(1+5)) times sqrt(3/fan_in)
    return jax.random.uniform(key, (n_in, rank), dtype=dtype, minval=-bound, maxval=bound)


class LoRALinear(nnx.Module):
    """A frozen linear layer plus a trainable low-rank update: base(x) + (alpha/r) dropout(x) A B."""

    def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, dropout: float = 0.0, rngs: nnx.Rngs):
        """Wrap `base`.

        Args:
          base: the layer to adapt (kept as it is, its weights nnx.Param).
          rank: r, the adapter rank.
          alpha: the scale numerator; the update is multiplied by alpha / r.
          dropout: rate on the adapter's input (training mode only).
          rngs: initialises A (`rngs.params()`).
        """
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.rank, self.alpha, self.scaling = int(rank), float(alpha), float(alpha) / int(rank)
        dtype = base.kernel[...].dtype
        self.lora_a = nnx.LoRAParam(kaiming_uniform_a(rngs.params(), base.in_features, self.rank, dtype))
        self.lora_b = nnx.LoRAParam(jnp.zeros((self.rank, base.out_features), dtype))
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """base(x) + scaling * dropout(x) @ A @ B."""
        update = self.dropout(x, rngs=rngs) @ self.lora_a[...] @ self.lora_b[...]
        return self.base(x) + self.scaling * update


def _matches(path: str, targets: Sequence[str]) -> bool:
    """Does a dotted module path ("h.0.attn.c_proj") equal a target or end with ".<target>"?"""
    return any(path == t or path.endswith("." + t) for t in targets)


def _linear_layers(model: nnx.Module) -> tuple[list[tuple[tuple, nnx.Linear]], list[str]]:
    """(path, layer) of every plain nnx.Linear of the model, and the dotted paths of its LoRALinear layers."""
    modules = [(tuple(path), module) for path, module in nnx.iter_modules(model)]
    lora_paths = [path for path, module in modules if isinstance(module, LoRALinear)]
    wrapped = {path + ("base",) for path in lora_paths}
    plain = [(p, m) for p, m in modules if p and isinstance(m, nnx.Linear) and p not in wrapped]
    return plain, [".".join(map(str, p)) for p in lora_paths]


def _parent(model: nnx.Module, path: tuple) -> nnx.Module:
    node = model
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


class LoRATargetError(ValueError):
    """LoRA targets that name no linear layer of the model, or layers already adapted: the message lists the
    model's layer names."""


def apply_lora(model: nnx.Module, *, targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 16, alpha: float = 32.0,
               dropout: float = 0.0, rngs: nnx.Rngs) -> list[str]:
    """Replace the named projections of a built model by LoRA-adapted ones, in place.

    The base weights stay `nnx.Param`; they are frozen by training over `nnx.LoRAParam` only, e.g. gradients
    of `split_adapters(model)[1]`, or ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)``.

    Args:
      model: a GPT2 or Llama (any NNX module whose projections are nnx.Linear attributes).
      targets: projection names, matched against the end of the dotted module path: "q_proj" adapts every
        layer's q_proj; "attn.c_proj" only GPT-2's attention output (plain "c_proj" would also take the MLP's).
      rank: r.
      alpha: the update is scaled by alpha / r.
      dropout: rate on the adapters' inputs (training mode only; pass rngs to the model's call).
      rngs: initialises the A matrices.

    Returns:
      The dotted paths of the adapted layers, in model order.

    Raises:
      LoRATargetError: a target matches no linear layer (the model's layer names are listed), or matches a
        layer that is already adapted.
    """
    if isinstance(targets, str):
        targets = (targets,)
    layers, already = _linear_layers(model)
    twice = [t for t in targets if any(_matches(d, [t]) for d in already)]
    if twice:
        raise LoRATargetError(f"LoRA targets {twice} are already adapted (layers {already})")
    dotted = {path: ".".join(map(str, path)) for path, _ in layers}
    unmatched = [t for t in targets if not any(_matches(d, [t]) for d in dotted.values())]
    if unmatched:
        names = sorted({d.split(".")[-1] for d in dotted.values()})
        raise LoRATargetError(f"LoRA targets {unmatched} match no linear layer; layer names are {names}")
    adapted = []
    for path, layer in layers:
        if _matches(dotted[path], targets):
            wrapper = LoRALinear(layer, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs)
            parent, key = _parent(model, path), path[-1]
            if isinstance(key, int):
                parent[key] = wrapper
            else:
                setattr(parent, key, wrapper)
            adapted.append(dotted[path])
    return adapted


def split_adapters(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, adapters, rest): the LoRA parameters apart from everything else (base weights included).

    Train over `adapters` only (gradients w.r.t. them; `rest` closed over) and merge with
    ``nnx.merge(graphdef, adapters, rest)``.
    """
    return nnx.split(model, nnx.LoRAParam, ...)


def count_adapter_params(model: nnx.Module) -> int:
    """Number of LoRA parameters (r * (in + out) per adapted layer)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def adapter_pattern(block_prefix: str | None = None) -> str:
    """Regex on parameter paths selecting LoRA matrices, optionally of one block only.

    Args:
      block_prefix: e.g. "layers/21/" (`llama.block_prefix(21)`) or "h/5/"; None for all adapters.

    Returns:
      A regex for hspec's `wrt` (paths look like "layers/21/self_attn/q_proj/lora_a/value").
    """
    leaf = r"/lora_[ab](/|$)"
    return leaf if block_prefix is None else "^" + re.escape(block_prefix) + ".*" + leaf
