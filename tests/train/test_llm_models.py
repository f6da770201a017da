"""GPT-2, Llama and LoRA in NNX: sizes, nanoGPT's initialisation, causality, dropout streams, remat, adapters."""

from __future__ import annotations

import dataclasses
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hspec import select_parameters
from train.models import gpt2, llama, lora

TINY_GPT2 = gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=True, gelu="exact")
TINY_LLAMA = llama.PRESETS["tiny"]


@pytest.fixture(autouse=True)
def _highest_precision():
    """Exact float32 matmuls on every backend (GPU would otherwise use TF32)."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def tiny_gpt2_model() -> gpt2.GPT2:
    """TINY_GPT2, built once per module (eager initialisation compiles op by op: seconds on 2 cores)."""
    return gpt2.GPT2(TINY_GPT2, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tiny_llama_model() -> llama.Llama:
    """TINY_LLAMA, built once per module."""
    return llama.Llama(TINY_LLAMA, rngs=nnx.Rngs(0))


@pytest.fixture
def tiny_gpt2(tiny_gpt2_model) -> gpt2.GPT2:
    """A private copy of the tiny GPT-2, free to mutate."""
    return nnx.clone(tiny_gpt2_model)


@pytest.fixture
def tiny_llama(tiny_llama_model) -> llama.Llama:
    """A private copy of the tiny Llama, free to mutate."""
    return nnx.clone(tiny_llama_model)


def _rebuild(model: nnx.Module, cls, cfg, **kwargs) -> nnx.Module:
    """The same parameters in a model of another (shape-compatible) configuration, e.g. with dropout or remat."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), **kwargs)))
    return nnx.merge(graphdef, nnx.state(nnx.clone(model)))


def _paths(state) -> list[str]:
    """Leaf paths as hspec's `wrt` regexes see them ("h/1/attn/c_attn/kernel/value")."""
    def part(k):
        return str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)))
    return ["/".join(part(k) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]


def _tokens(key: int, shape=(2, 12), vocab=50) -> jax.Array:
    return jax.random.randint(jax.random.key(key), shape, 0, vocab)


# --------------------------------------------------------------------------------------------------
# Sizes


def test_gpt2_parameter_counts_match_nanogpt():
    # nanoGPT prints get_num_params() (position embedding excluded): 10.65M for shakespeare_char, 123.65M for gpt2.
    nano = nnx.eval_shape(lambda: gpt2.GPT2(gpt2.PRESETS["nano"], rngs=nnx.Rngs(0)))
    assert gpt2.count_params(nano) == 10_745_088
    assert gpt2.count_params(nano, non_embedding=True) == 10_646_784
    small = nnx.eval_shape(lambda: gpt2.GPT2(gpt2.PRESETS["small"], rngs=nnx.Rngs(0)))
    assert gpt2.count_params(small) == 124_439_808  # OpenAI's GPT-2 small, head tied


def test_tinyllama_parameter_count():
    model = nnx.eval_shape(lambda: llama.Llama(llama.PRESETS["tinyllama-1.1b"], rngs=nnx.Rngs(0)))
    assert llama.count_params(model) == 1_100_048_384
    # PEFT's count for r=16 on q_proj, v_proj: 22 * 16 * ((2048 + 2048) + (2048 + 256)).
    assert 22 * 16 * (4096 + 2304) == 2_252_800


def test_forward_shapes_and_length_check(tiny_gpt2, tiny_llama):
    chex.assert_shape(tiny_gpt2(_tokens(0)), (2, 12, 50))
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt2(_tokens(0, (1, 17)))
    chex.assert_shape(tiny_llama(_tokens(0)), (2, 12, 50))


# --------------------------------------------------------------------------------------------------
# nanoGPT's initialisation and the tied head


def test_gpt2_init_statistics(tiny_gpt2):
    # 10,240 residual-projection weights: the sample std is within ~1% of the truth, and 0.02/sqrt(2L) = 0.01 here.
    cfg, model = TINY_GPT2, tiny_gpt2
    flat = lambda arrays: np.concatenate([np.ravel(a[...]) for a in arrays])  # noqa: E731
    resid = flat([b.attn.c_proj.kernel for b in model.h] + [b.mlp.c_proj.kernel for b in model.h])
    np.testing.assert_allclose(resid.std(), 0.02 / math.sqrt(2 * cfg.n_layer), rtol=0.03)
    others = flat([b.attn.c_attn.kernel for b in model.h] + [model.wte.embedding])
    np.testing.assert_allclose(others.std(), 0.02, rtol=0.03)
    np.testing.assert_allclose(np.ravel(model.wpe.embedding[...]).std(), 0.02, rtol=0.1)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for path, leaf in zip(_paths(state), jax.tree.leaves(state)):
        if path.endswith("bias"):
            assert not np.any(leaf), path
        if re.search(r"ln_\w+/scale", path):
            assert np.all(leaf == 1), path


def test_gpt2_head_is_tied_to_wte(tiny_gpt2):
    model = tiny_gpt2
    assert not any("lm_head" in p for p in _paths(nnx.state(model, nnx.Param)))
    idx = _tokens(1)
    x = model.wte(idx) + model.wpe(jnp.arange(idx.shape[1]))
    for block in model.h:
        x = block(x)
    chex.assert_trees_all_close(model(idx), model.ln_f(x) @ model.wte.embedding[...].T, rtol=1e-6, atol=1e-6)


def test_no_bias_config_has_no_biases():
    model = nnx.eval_shape(lambda: gpt2.GPT2(dataclasses.replace(TINY_GPT2, bias=False), rngs=nnx.Rngs(0)))
    assert not any("bias" in p for p in _paths(nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------------------------------
# Causality, dropout, remat


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_causal_masking(name, request):
    model, t = request.getfixturevalue(name), 7
    idx = _tokens(2)
    changed = idx.at[:, t:].set((idx[:, t:] + 1) % 50)
    a, b = model(idx), model(changed)
    chex.assert_trees_all_close(a[:, :t], b[:, :t], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[:, t:], b[:, t:])


def test_dropout_needs_a_stream_in_training_and_none_in_eval(tiny_gpt2):
    model = _rebuild(tiny_gpt2, gpt2.GPT2, dataclasses.replace(TINY_GPT2, dropout=0.3))
    idx = _tokens(3)
    with pytest.raises(ValueError, match="no rngs was given"):
        model(idx)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    chex.assert_trees_all_equal(model(idx, rngs=k1), model(idx, rngs=nnx.Rngs(dropout=k1)))
    assert not np.allclose(model(idx, rngs=k1), model(idx, rngs=k2))
    model.eval()
    chex.assert_trees_all_equal(model(idx), tiny_gpt2(idx))  # the same parameters without dropout


def _loss(graphdef, params, idx, key):
    logits = nnx.merge(graphdef, params)(idx[:, :-1], rngs=key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, idx[:, 1:]).mean()


def test_remat_gives_the_same_loss_and_gradient():
    # One block, parameters drawn in numpy (no eager init to compile), no dropout: the compilations dominate.
    cfg = dataclasses.replace(TINY_GPT2, n_layer=1)
    idx, key = _tokens(4), jax.random.key(5)
    rng, results = np.random.default_rng(0), []
    for remat in (False, True):
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: gpt2.GPT2(cfg, remat=remat, rngs=nnx.Rngs(0))))
        draw = lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype)  # noqa: E731
        params = results[0][2] if results else jax.tree.map(draw, abstract)
        loss, grads = jax.jit(jax.value_and_grad(_loss, argnums=1), static_argnums=0)(graphdef, params, idx, key)
        results.append((loss, grads, params))
    chex.assert_trees_all_close(results[0][:2], results[1][:2], rtol=1e-5, atol=1e-7)


def test_remat_threads_the_dropout_stream(tiny_gpt2):
    # Each block must draw fresh keys from the stream, with or without remat: the same masks either way.
    cfg = dataclasses.replace(TINY_GPT2, dropout=0.2)
    idx, key = _tokens(4), jax.random.key(6, impl="rbg")  # threefry's bit generator is slow to compile on CPU
    forward = nnx.jit(lambda model, idx, key: model(idx, rngs=key))  # eager remat would compile per call
    plain, rematted = (forward(_rebuild(tiny_gpt2, gpt2.GPT2, cfg, remat=r), idx, key) for r in (False, True))
    chex.assert_trees_all_close(plain, rematted, rtol=1e-6, atol=1e-6)


def test_last_block_patterns_select_the_last_block(tiny_gpt2, tiny_llama):
    paths = _paths(nnx.state(tiny_gpt2, nnx.Param))
    selected = [p for p in paths if re.search(gpt2.last_block_pattern(TINY_GPT2), p)]
    assert selected and all(p.startswith("h/1/") for p in selected)
    assert len(selected) == 12  # ln_1, ln_2 (scale, bias), c_attn, attn.c_proj, c_fc, mlp.c_proj (kernel, bias)
    with_norm = [p for p in paths if re.search(gpt2.last_layer_pattern(TINY_GPT2, include_final_norm=True), p)]
    assert sorted(set(with_norm) - set(selected)) == ["ln_f/bias/value", "ln_f/scale/value"]
    lpaths = _paths(nnx.state(tiny_llama, nnx.Param))
    lsel = [p for p in lpaths if re.search(llama.last_block_pattern(TINY_LLAMA), p)]
    assert len(lsel) == 9 and all(p.startswith("layers/1/") for p in lsel)


def test_patterns_select_with_hspec(tiny_gpt2, tiny_llama):
    # The consumer of the patterns: hspec's parameter subsets on the nnx.Param state, as train.hessian splits it.
    _, params, _ = nnx.split(tiny_gpt2, nnx.Param, ...)
    selected, _, _ = select_parameters(params, gpt2.last_block_pattern(TINY_GPT2))
    block = tiny_gpt2.h[TINY_GPT2.n_layer - 1]
    assert sum(x.size for x in selected) == sum(x.size for x in jax.tree.leaves(nnx.state(block, nnx.Param)))
    model, _ = _lora_llama(tiny_llama, rank=4)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    selected, _, _ = select_parameters(params, lora.adapter_pattern(llama.block_prefix(TINY_LLAMA.num_layers - 1)))
    d, kv = TINY_LLAMA.hidden_size, TINY_LLAMA.num_kv_heads * TINY_LLAMA.head_dim
    assert sum(x.size for x in selected) == 4 * ((d + d) + (d + kv))  # q_proj and v_proj adapters of the last layer


# --------------------------------------------------------------------------------------------------
# LoRA


def _lora_llama(base: llama.Llama, rank=4, alpha=8.0, dropout=0.0, targets=lora.DEFAULT_TARGETS):
    model = nnx.clone(base)
    adapted = lora.apply_lora(model, targets=targets, rank=rank, alpha=alpha, dropout=dropout, rngs=nnx.Rngs(7))
    return model, adapted


def test_lora_starts_at_the_base_model(tiny_llama):
    base = tiny_llama
    model, adapted = _lora_llama(base)
    assert adapted == [f"layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    idx = _tokens(6)
    chex.assert_trees_all_equal(model(idx), base(idx))
    a = np.asarray(model.layers[0].self_attn.q_proj.lora_a[...])
    assert np.abs(a).max() <= 1 / math.sqrt(TINY_LLAMA.hidden_size) and a.std() > 0  # PEFT's kaiming-uniform bound


def _randomise_b(model, key=0):
    for i, (_, layer) in enumerate(m for m in nnx.iter_modules(model) if isinstance(m[1], lora.LoRALinear)):
        layer.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(key + i), layer.lora_b[...].shape)


def test_lora_update_is_scaled_low_rank_product(tiny_llama):
    rank, alpha = 4, 8.0
    model, _ = _lora_llama(tiny_llama, rank, alpha)
    _randomise_b(model)
    q = model.layers[0].self_attn.q_proj
    x = jax.random.normal(jax.random.key(1), (3, TINY_LLAMA.hidden_size))
    by_hand = x @ q.base.kernel[...] + (alpha / rank) * (x @ q.lora_a[...] @ q.lora_b[...])
    chex.assert_trees_all_close(q(x), by_hand, rtol=1e-5, atol=1e-6)
    # The whole model equals the base model with merged weights W + (alpha/r) A B.
    merged = tiny_llama
    for layer, target in zip(model.layers, merged.layers):
        for name in ("q_proj", "v_proj"):
            ad = getattr(layer.self_attn, name)
            delta = (alpha / rank) * ad.lora_a[...] @ ad.lora_b[...]
            getattr(target.self_attn, name).kernel[...] = ad.base.kernel[...] + delta
    idx = _tokens(7)
    chex.assert_trees_all_close(model(idx), merged(idx), rtol=1e-5, atol=1e-5)


def test_split_takes_only_the_adapters(tiny_llama):
    rank = 4
    model, adapted = _lora_llama(tiny_llama, rank)
    _, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
    leaves, paths = jax.tree.leaves(adapters), _paths(adapters)
    assert len(leaves) == 2 * len(adapted) and all(re.search(lora.adapter_pattern(), p) for p in paths)
    d, kv = TINY_LLAMA.hidden_size, TINY_LLAMA.num_kv_heads * TINY_LLAMA.head_dim
    expected = TINY_LLAMA.num_layers * rank * ((d + d) + (d + kv))
    assert sum(x.size for x in leaves) == lora.count_adapter_params(model) == expected
    assert not any("lora" in p for p in _paths(rest))
    last = [p for p in paths if re.search(lora.adapter_pattern(llama.block_prefix(1)), p)]
    assert len(last) == 4 and all(p.startswith("layers/1/") for p in last)


def test_training_over_adapters_leaves_the_base_unchanged(tiny_llama):
    model, _ = _lora_llama(tiny_llama, dropout=0.1)
    graphdef, adapters, rest = lora.split_adapters(model)
    idx = _tokens(8)

    def loss(a, key):
        logits = nnx.merge(graphdef, a, rest)(idx[:, :-1], rngs=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, idx[:, 1:]).mean()

    grads = jax.jit(jax.grad(loss))(adapters, jax.random.key(0))
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)  # gradients of adapters only
    b_grads = [g for p, g in zip(_paths(grads), jax.tree.leaves(grads)) if "lora_b" in p]
    assert all(np.abs(g).max() > 0 for g in b_grads)  # with B = 0, only B gets a gradient at first
    tx = optax.adam(1e-2)
    new_adapters = optax.apply_updates(adapters, tx.update(grads, tx.init(adapters), adapters)[0])
    trained = nnx.merge(graphdef, new_adapters, rest)
    base_before = nnx.state(model, nnx.Not(nnx.LoRAParam))
    chex.assert_trees_all_equal(nnx.state(trained, nnx.Not(nnx.LoRAParam)), base_before)
    assert not np.allclose(trained.layers[0].self_attn.q_proj.lora_b[...], 0)


def test_lora_dropout_and_targets_on_gpt2(tiny_gpt2, tiny_gpt2_model):
    model = tiny_gpt2
    adapted = lora.apply_lora(model, targets=("c_attn", "attn.c_proj"), rank=2, alpha=4, dropout=0.5, rngs=nnx.Rngs(1))
    assert adapted == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.attn.c_attn", "h.1.attn.c_proj"]
    idx = _tokens(9)
    with pytest.raises(ValueError, match="no rngs was given"):
        model(idx)
    chex.assert_shape(model(idx, rngs=jax.random.key(0)), (2, 12, 50))
    model.eval()
    chex.assert_trees_all_equal(model(idx), tiny_gpt2_model(idx))
    with pytest.raises(ValueError, match="already adapted"):
        lora.apply_lora(model, targets=("c_attn",), rank=2, alpha=4, rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match="match no linear layer"):
        lora.apply_lora(model, targets=("q_proj",), rngs=nnx.Rngs(3))
