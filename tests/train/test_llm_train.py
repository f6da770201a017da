"""LLM training and spectra on tiny configurations: optimiser, accumulation, LoRA, data, resume, the pipelines.

Every number is checked against something computed another way: nanoGPT's learning-rate formula, a hand
AdamW step, the full-batch gradient, numpy windows and cross-entropies, the dense float64 Hessian of the
measured subset (jax.hessian), and an uninterrupted run's checkpoint digest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hspec

from train import checkpoint as ckpt
from train import keys as keys_lib
from train.llm import cli, loop, presets, train
from train.llm import data as data_lib
from train.models import gpt2, lora

# Tiny: 2 layers, 2 heads, width 32, block 32; K=8 from 3 starts (distinct values); 8 Hessian sequences.
TINY = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "block_size": 32, "micro_batch": 4,
        "grad_accum": 2, "steps": 4, "checkpoint_steps": "0,2,4", "save_every": 1, "k": 8, "num_starts": 3,
        "lanczos_steps": 40,
        "max_lanczos_steps": 200, "hessian_sequences": 8, "hessian_batch": 4, "eval_sequences": 8, "eval_batch": 4,
        "trace_samples": 4, "dropout": 0.1}


def tiny(preset: str = "gpt2-nano-shakespeare-cpu", **extra) -> presets.LLMConfig:
    return presets.apply_overrides(presets.get(preset), {k: str(v) for k, v in {**TINY, **extra}.items()})


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


# -------------------------------------------------------------------------------------------------- optimiser


def _nanogpt_lr(it: int, lr: float, min_lr: float, warmup: int, decay: int) -> float:
    """nanoGPT train.py's get_lr, transcribed."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_schedules_are_nanogpts():
    spec = loop.OptimSpec(1e-4, 1e-5, 500, 1000, "cosine", 0.9, 0.95, 1e-8, 0.1, 1.0)
    schedule = loop.lr_schedule(spec)
    for it in (0, 1, 250, 499, 500, 501, 750, 999, 1000):
        assert float(schedule(it)) == pytest.approx(_nanogpt_lr(it, 1e-4, 1e-5, 500, 1000), rel=1e-5)
    constant = loop.lr_schedule(dataclasses.replace(spec, schedule="constant"))
    assert float(constant(0)) == float(constant(999)) == pytest.approx(1e-4)


def test_first_adamw_step_by_hand_clips_and_decays_matrices_only():
    spec = loop.OptimSpec(1e-2, 1e-3, 0, 10, "constant", 0.9, 0.95, 1e-8, 0.1, 1.0)
    params = {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "scale": jnp.array([2.0, -1.0])}
    grads = {"kernel": jnp.array([[3.0, 0.0], [-4.0, 1.0]]), "scale": jnp.array([2.0, -2.0])}
    tx = loop.make_optimizer(spec)
    updates, _ = tx.update(grads, tx.init(params), params)
    norm = math.sqrt(9 + 16 + 1 + 4 + 4)
    for name in params:
        g = np.asarray(grads[name]) / norm  # clipped to global norm 1
        # Adam's first step: m_hat = g, v_hat = g^2, so the step is g / (|g| + eps); decoupled decay on matrices.
        adam = g / (np.abs(g) + 1e-8)
        decay = 0.1 * np.asarray(params[name]) if name == "kernel" else 0.0
        np.testing.assert_allclose(np.asarray(updates[name]), -1e-2 * (adam + decay), rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------------------------------------- steps


@pytest.fixture(scope="module")
def tiny_model():
    cfg = gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, bias=False, dropout=0.0,
                          gelu="exact")
    return cfg, gpt2.GPT2(cfg, rngs=nnx.Rngs(0))


def _numpy_ce(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, y[..., None], -1)[..., 0]


def test_accumulated_gradient_is_the_full_batch_gradient(tiny_model):
    cfg, model = tiny_model
    split, params, fixed = loop.split_model(nnx.clone(model), lora=False)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (2, 3, 32)), rng.integers(0, 65, (2, 3, 32))
    w = rng.integers(0, 2, (2, 3, 32)).astype(np.float32)  # masked tokens, unequal per micro-batch
    loss, grads = jax.jit(loop.accumulated_grads(split.train_def))(params, fixed, x, y, w, jax.random.key(0))

    def full(p):  # one batch of all 6 sequences, the mean over the weighted tokens
        logits = nnx.merge(split.train_def, p, fixed)(x.reshape(6, 32), rngs=jax.random.key(1))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y.reshape(6, 32))
        return jnp.sum(ce * w.reshape(6, 32)) / w.sum()

    want_loss, want = jax.value_and_grad(full)(params)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_lora_step_trains_the_adapters_only(tiny_model):
    _, model = tiny_model
    model = nnx.clone(model)
    lora.apply_lora(model, targets=("attn.c_attn",), rank=2, alpha=4.0, dropout=0.1, rngs=nnx.Rngs(1))
    split, adapters, base = loop.split_model(model, lora=True)
    assert {p[-1] for p, _ in jax.tree_util.tree_flatten_with_path(adapters)[0]} and all(
        "lora_" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(adapters)[0])
    base_before = jax.tree.map(np.array, base)
    spec = loop.OptimSpec(1e-2, 1e-3, 0, 10, "constant", 0.9, 0.95, 1e-8, 0.1, 1.0)
    step = loop.make_train_step(split.train_def, spec)
    state = loop.init_state(adapters, spec)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 65, (1, 2, 32)), rng.integers(0, 65, (1, 2, 32))
    b_before = [np.array(v) for p, v in jax.tree_util.tree_flatten_with_path(adapters)[0] if "lora_b" in str(p)]
    for s in range(2):
        state, loss = step(state, base, x, y, np.ones((1, 2, 32), np.float32), jax.random.key(s))
    b_after = [np.array(v) for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0] if "lora_b" in str(p)]
    assert all(np.any(a != b) for a, b in zip(b_after, b_before))  # B starts at zero and moves
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(base_before)):
        np.testing.assert_array_equal(a, b)  # the base never changes


# -------------------------------------------------------------------------------------------------- data


def test_windows_are_shifted_slices_drawn_per_step():
    tokens = np.arange(1000, dtype=np.uint16)
    src = data_lib.Windows(tokens, 16)
    key = jax.random.key(3)
    x, y, w = data_lib.train_batch(src, key, 7, 4, 2)
    assert x.shape == y.shape == w.shape == (2, 4, 16) and np.all(w == 1)
    words = np.asarray(jax.random.bits(jax.random.fold_in(key, 7), (8, 2), jnp.uint32)).astype(np.uint64)
    starts = ((words[:, 0] << np.uint64(32)) | words[:, 1]) % np.uint64(1000 - 16)
    np.testing.assert_array_equal(x.reshape(8, 16)[:, 0], starts.astype(np.int64))
    np.testing.assert_array_equal(y, x + 1)  # the next token
    again = data_lib.train_batch(src, key, 7, 4, 2)[0]
    np.testing.assert_array_equal(again, x)
    assert not np.array_equal(data_lib.train_batch(src, key, 8, 4, 2)[0], x)
    big = data_lib.uniform_indices(key, 10_000, 9_000_000_000)  # OpenWebText-sized, past int32
    assert big.min() >= 0 and big.max() < 9_000_000_000 and big.max() > 2**31


def test_openwebtext_token_files_are_memory_mapped(tmp_path):
    root = tmp_path / "openwebtext"
    root.mkdir()
    with pytest.raises(data_lib.DataNotFoundError, match=r"openwebtext/train.bin.*prepare.py"):
        data_lib.load("openwebtext", data_dir=tmp_path, block=8)
    np.arange(500, dtype=np.uint16).tofile(root / "train.bin")
    (np.arange(100, dtype=np.uint16) + 50000).tofile(root / "val.bin")
    d = data_lib.load("openwebtext", data_dir=tmp_path, block=8, vocab_size=50304)
    assert isinstance(d.train.tokens, np.memmap) and d.vocab_size == 50304
    x, y, _ = d.eval.take(np.array([3]))
    np.testing.assert_array_equal(x[0], np.arange(50003, 50011))
    np.testing.assert_array_equal(y[0], np.arange(50004, 50012))


class CharTokenizer:
    """Characters as ids 3..; BOS 1, EOS 2 (a stand-in SentencePiece)."""

    bos_id, eos_id, vocab_size = 1, 2, 300

    def encode(self, text):
        return [3 + ord(c) % 290 for c in text]


def test_mathqa_examples_put_the_loss_on_the_answer(data_dir, tmp_path):
    examples, source = data_lib.mathqa_examples(data_dir, "dev")
    assert len(examples) == 4475 and source.endswith("mathqa/dev.json")
    prompt, answer = data_lib.format_mathqa(examples[0])
    assert prompt.startswith("Question: a multiple choice test") and prompt.endswith("Answer:")
    assert answer.endswith("The answer is c.") and '"' not in answer[:2]
    tok = CharTokenizer()
    x, y, w = data_lib.encode_example(prompt, answer, tok, 1024)
    ids = [1] + tok.encode(prompt) + tok.encode(answer) + [2]
    n_prompt = 1 + len(prompt)
    np.testing.assert_array_equal(x[: len(ids) - 1], ids[:-1])
    np.testing.assert_array_equal(y[: len(ids) - 1], ids[1:])
    # The weight of target j is 1 exactly when target j is an answer token or EOS.
    np.testing.assert_array_equal(np.flatnonzero(w), np.arange(n_prompt - 1, len(ids) - 1))
    short = data_lib.encode_example(prompt, answer, tok, 40)  # truncated inside the prompt: no loss at all
    assert short[0].shape == (40,) and short[2].sum() == 0
    with pytest.raises(data_lib.DataNotFoundError, match=r"mathqa/train.json.*math-qa.github.io"):
        data_lib.mathqa_examples(tmp_path, "train")


# -------------------------------------------------------------------------------------------------- presets


def test_presets_build_and_state_their_departures():
    for name, cfg in presets.PRESETS.items():
        assert cfg.preset == name and cfg.description and 0 in cfg.checkpoint_steps
    nano = presets.get("gpt2-nano-shakespeare")
    assert nano.tokens_per_step == 65536 and nano.steps == 1000 and nano.schedule == "constant"
    assert nano.checkpoint_steps == (0, 50, 100, 200, 500, 1000) and presets.departures(
        nano, {"n_layer": 6, "n_head": 6, "n_embd": 384}) == []
    cpu = presets.get("gpt2-nano-shakespeare-cpu")
    lines = presets.departures(cpu, {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0})
    for want in ("k: 200 (paper 1000)", "tokens_per_step: 4096 (paper 65536)", "block_size: 64 (paper 256)",
                 "n_embd: 128 (paper 384)", "hessian_sequences: 32 (paper 256)", "steps: 600 (paper 1000)",
                 "num_starts: 1 (paper 3)"):
        assert want in lines
    assert presets.get("gpt2-medium-finetune-shakespeare").tokens_per_step == 32768
    assert presets.get("gpt2-large-openwebtext").tokens_per_step == 65536
    lora_cfg = presets.get("tinyllama-lora-mathqa")
    assert (lora_cfg.lora_rank, lora_cfg.lora_alpha, lora_cfg.lora_dropout, lora_cfg.sequences_per_step) == (
        16, 32.0, 0.1, 32)
    changed = presets.apply_overrides(nano, {"k": "300", "model.n_layer": "2", "checkpoint_steps": "0,10",
                                             "steps": "10", "lanczos_steps": "none"})
    assert (changed.k, changed.model_fields(), changed.checkpoint_steps, changed.lanczos_steps) == (
        300, {"n_layer": 2}, (0, 10), None)
    assert presets.from_dict(json.loads(json.dumps(presets.to_dict(changed)))) == changed
    with pytest.raises(presets.LLMConfigError, match="did you mean k"):
        presets.apply_overrides(nano, {"kk": "3"})
    assert presets.COMBINES == hspec.COMBINES
    with pytest.raises(presets.LLMConfigError, match="'k' expects int"):
        presets.apply_overrides(nano, {"k": "many"})


def test_k_is_capped_by_the_subset_with_a_warning():
    with pytest.warns(UserWarning, match="K=1000 exceeds the 64 parameters"):
        assert train.capped_k(1000, 64) == 64
    assert train.capped_k(10, 64) == 10


# -------------------------------------------------------------------------------------------------- the run


def _dense_check(out: Path, data_dir, cfg: presets.LLMConfig, step: int) -> None:
    """The recorded top eigenvalues, lambda_max, Tr(H) and test loss against independent float64 numbers."""
    from jax.flatten_util import ravel_pytree

    where = out / "steps" / str(step)
    res = json.loads((where / "results.json").read_text())
    assert not Path(res["checkpoint"]).is_absolute() and res["data"]["source"] == "<data_dir>/tinyshakespeare/input.txt"
    r = train.build(cfg, data_dir=str(data_dir))
    state, _ = train.load_params(r, (where / res["checkpoint"]).parent, step)
    params = loop.full_params(state.params, r.fixed)
    tokens = data_lib.load("shakespeare_char", data_dir=data_dir, block=cfg.block_size)

    def windows(source, key, n):  # the fixed sample's starts, from the key's 64-bit draws
        words = np.asarray(jax.random.bits(key, (n, 2), jnp.uint32)).astype(np.uint64)
        starts = (((words[:, 0] << np.uint64(32)) | words[:, 1]) % np.uint64(source.tokens.size - cfg.block_size))
        rows = np.stack([source.tokens[s:s + cfg.block_size + 1] for s in starts.astype(np.int64)]).astype(np.int32)
        return rows[:, :-1], rows[:, 1:]

    keys = keys_lib.run_keys(cfg.seed)
    xe, ye = windows(tokens.eval, jax.random.fold_in(keys.data_options, 0), cfg.eval_sequences)
    logits = np.asarray(nnx.merge(r.split.eval_def, state.params, r.fixed)(xe))
    assert res["metrics"]["test_loss"] == pytest.approx(float(_numpy_ce(logits, ye).mean()), rel=1e-5)

    xh, yh = windows(tokens.train, keys.hessian_sample, cfg.hessian_sequences)
    pattern = res["setting"]["subset_pattern"]
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    selected, fixed, merge = hspec.select_parameters(params, pattern)
    with jax.enable_x64():
        sel64 = [np.asarray(a, np.float64) for a in selected]
        flat, unravel = ravel_pytree(sel64)

        def loss(v):
            p = merge(unravel(v), fixed)
            z = nnx.merge(r.split.eval_def, p)(xh).astype(jnp.float64)
            return optax.softmax_cross_entropy_with_integer_labels(z, yh).mean()

        h = np.asarray(jax.jit(jax.hessian(loss))(flat))
    dense = np.linalg.eigvalsh(h)[::-1]
    assert res["setting"]["subset_size"] == flat.size < len(names) * 10**6
    eig = np.asarray(res["spectrum"]["eigenvalues"])
    k = res["fit"]["k"]
    # combine="distinct" over 3 starts: each eigenvalue the starts converged to once, so the top k themselves.
    assert res["setting"]["combine"] == res["spectrum"]["combine"] == "distinct"
    np.testing.assert_allclose(eig, dense[:k], rtol=2e-3, atol=1e-5 * dense[0])
    assert res["spectrum"]["num_distinct"] == k
    assert res["sharpness"]["lambda_max"] == pytest.approx(dense[0], rel=1e-4)
    trace = np.trace(h)
    assert abs(res["sharpness"]["trace"] - trace) <= 5 * res["sharpness"]["trace_stderr"] + 1e-3 * abs(trace)
    assert len(eig) == k and res["spectrum"]["num_converged"] == k


@pytest.mark.slow  # ~50 s on 2 cores: three tiny runs, compiled once each
def test_tiny_run_measures_the_dense_hessian_and_resumes_bit_identically(data_dir, tmp_path, capsys):
    # The measured subset is small enough for a dense float64 Hessian: the last block's ln_2 and c_proj.
    cfg = tiny(subset="re:^h/1/(ln_2|attn/c_proj)/", k=12)
    straight = train.run(cfg, tmp_path / "a", work=tmp_path / "wa", data_dir=str(data_dir), progress=False)
    assert [r["step"] for r in straight["checkpoints"]] == [0, 2, 4]
    # Killed after checkpoint 2 (its spectrum written), then resumed from it.
    train.run(cfg, tmp_path / "b", work=tmp_path / "wb", data_dir=str(data_dir), progress=False, until=2)
    assert ckpt.list_epochs(tmp_path / "wb" / "checkpoints") == [0, 2]
    (tmp_path / "b" / "steps" / "2" / "results.json").unlink()  # as if killed before measuring step 2
    with pytest.raises(presets.LLMConfigError, match="learning_rate: 0.0006 -> 0.001"):  # training must not change
        train.run(dataclasses.replace(cfg, learning_rate=1e-3), tmp_path / "b", work=tmp_path / "wb", resume=True)
    with pytest.raises(train.rundir.OutputDirError, match="already holds a run"):
        train.run(cfg, tmp_path / "b", work=tmp_path / "wb")
    resumed = train.run(cfg, tmp_path / "b", work=tmp_path / "wb", data_dir=str(data_dir), progress=False, resume=True)
    digests = [ckpt.read_meta(ckpt.epoch_path(w / "checkpoints", 4))["digest"]
               for w in (tmp_path / "wa", tmp_path / "wb")]
    assert digests[0] == digests[1]
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "measure_s"} for r in rows]  # noqa: E731
    assert untimed(straight["checkpoints"]) == untimed(resumed["checkpoints"])
    assert straight["correlations"] == resumed["correlations"]
    assert ckpt.list_epochs(tmp_path / "wa" / "checkpoints") == [0, 2, 4]  # resume checkpoints 1, 3 pruned
    metrics = [json.loads(ln) for ln in (tmp_path / "wb" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    res = json.loads((tmp_path / "a" / "steps" / "4" / "results.json").read_text())
    s = res["setting"]
    assert (s["model"], s["preset"], s["step"], s["tokens_per_step"], s["lr"], s["k"]) == (
        "gpt2", "gpt2-nano-shakespeare-cpu", 4, 256, 6e-4, 12)
    assert (s["hessian_sequences"], s["num_starts"], s["combine"], s["subset"]) == (8, 3, "distinct", cfg.subset)
    assert any(d.startswith("subset:") for d in s["departures"]) and res["keys"]["llm"]["dropout"]
    tracking = json.loads((tmp_path / "a" / "tracking.json").read_text())
    assert {"setting", "checkpoints", "correlations", "claims"} <= set(tracking)
    assert all(isinstance(r["d_ks"], float) for r in tracking["checkpoints"])
    assert (tmp_path / "a" / "tracking.png").is_file() and (tmp_path / "a" / "table.txt").is_file()
    _dense_check(tmp_path / "a", data_dir, cfg, 4)


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_lists_presets_and_names_missing_inputs(tmp_path, capsys, data_dir):
    assert cli.main(["--list-presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in presets.PRESETS)
    rc = cli.main(["--preset", "gpt2-small-finetune-shakespeare", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--weights DIR" in capsys.readouterr().err
    rc = cli.main(["--preset", "gpt2-small-finetune-shakespeare", "--weights", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "o")])
    assert rc == 2 and str(tmp_path / "nope" / "config.json") in capsys.readouterr().err
    rc = cli.main(["--preset", "gpt2-small-openwebtext", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / "openwebtext" / "train.bin") in err and "prepare.py" in err
    rc = cli.main(["--preset", "gpt2-nano-shakespeare", "--set", "subset=lora"])
    assert rc == 2 and "lora_rank" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- pre-trained presets


def _export(model: nnx.Module, layout) -> dict[str, np.ndarray]:
    """Our model's parameters under their HF names (the inverse of train.llm.weights' loading)."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for hf, path, transpose in layout:
        node = pure
        for key in path:
            node = node[key]
        a = np.asarray(node, np.float32)
        out[hf] = a.T if transpose else a
    return out


def _write_hf(directory: Path, config: dict, tensors: dict) -> Path:
    from train.llm import weights

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    weights.save_safetensors(directory / "model.safetensors", tensors)
    return directory


SMALL_RUN = ["--no-progress", "--set", "steps=2", "--set", "checkpoint_steps=0,2", "--set", "warmup_steps=1",
             "--set", "micro_batch=2", "--set", "grad_accum=2", "--set", "k=6", "--set", "lanczos_steps=30",
             "--set", "hessian_sequences=4", "--set", "hessian_batch=2", "--set", "eval_sequences=4",
             "--set", "eval_batch=2", "--set", "trace_samples=2", "--set", "save_every=0"]


def test_damaged_weights_and_lora_targets_that_match_nothing_are_one_line(tmp_path, data_dir, capsys):
    """Issue 27, case 6: NaN in pre-trained weights exits 3 naming the tensor; LoRA targets that match no layer
    exit 2 naming the layers there are. Both stop before anything is trained."""
    from train.llm import weights

    hf = {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 32, "vocab_size": 50257, "layer_norm_epsilon": 1e-5,
          "activation_function": "gelu_new"}
    cfg = weights.gpt2_config_from_hf(hf)
    tensors = {k: v.copy() for k, v in _export(gpt2.GPT2(cfg, rngs=nnx.Rngs(5)), weights.gpt2_layout(cfg)).items()}
    tensors["transformer.h.0.mlp.c_fc.weight"][3, 4] = np.nan
    ckpt_dir = _write_hf(tmp_path / "gpt2", hf, tensors)
    (tmp_path / "data" / "tinyshakespeare").mkdir(parents=True)
    text = (Path(data_dir) / "tinyshakespeare" / "input.txt").read_text()[:4000]
    (tmp_path / "data" / "tinyshakespeare" / "input.txt").write_text(text)
    run = ["--preset", "gpt2-small-finetune-shakespeare", "--data-dir", str(tmp_path / "data"), "--out",
           str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--set", "block_size=16", *SMALL_RUN]
    rc = cli.main([*run, "--weights", str(ckpt_dir)])
    err = capsys.readouterr().err
    assert rc == 3 and err.startswith("error: ") and err.count("\n") == 1, err
    assert str(ckpt_dir) in err and "transformer.h.0.mlp.c_fc.weight" in err and "NaN" in err
    tensors["transformer.h.0.mlp.c_fc.weight"][3, 4] = 0.0
    weights.save_safetensors(ckpt_dir / "model.safetensors", tensors)
    rc = cli.main([*run, "--weights", str(ckpt_dir), "--set", "lora_rank=2", "--set", "lora_targets=q_proj,c_attn"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "['q_proj']" in err and "c_attn" in err and "c_fc" in err and "--set lora_targets=" in err


@pytest.mark.slow  # ~50 s on 2 cores: load, 2 steps, 2 spectra
def test_gpt2_finetune_preset_loads_weights_and_runs(tmp_path, data_dir, capsys):
    from train.llm import tokenizers, weights

    hf = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 50257, "layer_norm_epsilon": 1e-5,
          "activation_function": "gelu_new"}
    cfg = weights.gpt2_config_from_hf(hf)
    tensors = _export(gpt2.GPT2(cfg, rngs=nnx.Rngs(5)), weights.gpt2_layout(cfg))
    ckpt_dir = _write_hf(tmp_path / "gpt2", hf, tensors)
    text = (Path(data_dir) / "tinyshakespeare" / "input.txt").read_text()[:12000]
    (tmp_path / "data" / "tinyshakespeare").mkdir(parents=True)
    (tmp_path / "data" / "tinyshakespeare" / "input.txt").write_text(text)
    out, work = tmp_path / "out", tmp_path / "work"
    rc = cli.main(["--preset", "gpt2-small-finetune-shakespeare", "--weights", str(ckpt_dir), "--data-dir",
                   str(tmp_path / "data"), "--out", str(out), "--work", str(work), "--set", "block_size=32",
                   "--set", "remat=false", *SMALL_RUN])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "test loss" in printed.out and "lambda_max" in printed.out
    res = json.loads((out / "steps" / "2" / "results.json").read_text())
    s = res["setting"]
    assert (s["pretrained"], s["weights"], s["dataset"], s["schedule"], s["tokens_per_step"]) == (
        True, "gpt2", "shakespeare_gpt2", "cosine", 128)
    assert s["subset_pattern"] == "^h/1/" and s["arch_vocab_size"] == 50257 and s["arch_gelu"] == "tanh"
    bpe = tokenizers.GPT2BPE.from_package()
    assert res["data"]["train_tokens"] == len(bpe.encode(text[:10800]))  # 90% of the characters, then BPE
    # Step 0 is the checkpoint's weights, unchanged.
    r = train.build(presets.apply_overrides(presets.get("gpt2-small-finetune-shakespeare"),
                                            {"block_size": "32", "remat": "false"}),
                    weights=ckpt_dir, data_dir=str(tmp_path / "data"))
    state, _ = train.load_params(r, work / "checkpoints", 0)
    np.testing.assert_array_equal(np.asarray(state.params["wte"]["embedding"][...]), tensors["transformer.wte.weight"])
    lrs = [json.loads(ln)["lr"] for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([_nanogpt_lr(t, 1e-5, 1e-6, 1, 2) for t in (0, 1)], rel=1e-5)


@pytest.mark.slow  # ~50 s on 2 cores: load, 2 steps, 2 spectra
def test_tinyllama_lora_preset_trains_adapters_on_mathqa(tmp_path, data_dir, capsys):
    import sentencepiece as spm

    from train.llm import weights
    from train.models import llama

    mathqa = tmp_path / "data" / "mathqa"
    mathqa.mkdir(parents=True)
    dev = json.loads((Path(data_dir) / "mathqa" / "dev.json").read_text())[:24]
    test = json.loads((Path(data_dir) / "mathqa" / "test.json").read_text())[:8]
    (mathqa / "dev.json").write_text(json.dumps(dev)), (mathqa / "test.json").write_text(json.dumps(test))
    lines = [e["Problem"] + " " + e["Rationale"] + " " + e["options"] for e in dev]
    model_dir = tmp_path / "llama"
    hf = {"vocab_size": 120, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
          "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False}
    cfg = weights.llama_config_from_hf(hf)
    _write_hf(model_dir, hf, _export(llama.Llama(cfg, rngs=nnx.Rngs(6)), weights.llama_layout(cfg)))
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(model_dir / "tokenizer"),
                                   vocab_size=120, model_type="bpe", minloglevel=2)
    out, work = tmp_path / "out", tmp_path / "work"
    rc = cli.main(["--preset", "tinyllama-lora-mathqa", "--weights", str(model_dir), "--data-dir",
                   str(tmp_path / "data"), "--out", str(out), "--work", str(work), "--set", "block_size=256",
                   "--set", "train_split=dev", *SMALL_RUN])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "steps" / "2" / "results.json").read_text())
    s = res["setting"]
    # Every adapter: r * (in + out) for q_proj (32 -> 32) and v_proj (32 -> 16, 2 key/value heads), 2 layers.
    assert s["subset"] == "lora" and s["subset_size"] == res["num_params"] == 2 * 16 * ((32 + 32) + (32 + 16))
    assert (s["lora_rank"], s["lora_alpha"], s["lora_dropout"], s["eval_split"], s["train_split"]) == (
        16, 32.0, 0.1, "test", "dev")
    # Examples whose [BOS] + prompt fills the 256-token block have no answer target: left out, and counted.
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    kept = sum(1 + len(sp.encode(data_lib.format_mathqa(e)[0])) <= 256 for e in dev)
    assert res["data"]["train_examples"] == kept and res["data"]["left_out_no_answer_in_block"]["train"] == 24 - kept
    assert res["data"]["source"]["train"] == "<data_dir>/mathqa/dev.json"
    meta = ckpt.read_meta(work / "checkpoints" / "epoch_00002")
    assert meta["paths"] and all("lora_" in p or "count" in p or "mu" in p or "nu" in p or "opt_state" in p
                                 for p in meta["paths"])
    assert not any("base" in p for p in meta["paths"])  # the frozen base is never checkpointed or trained
    tracking = json.loads((out / "tracking.json").read_text())
    assert [r["step"] for r in tracking["checkpoints"]] == [0, 2]


@pytest.mark.slow  # ~30 s on 2 cores: 2 steps, 2 spectra
def test_openwebtext_preset_trains_from_scratch_on_token_files(tmp_path, capsys):
    root = tmp_path / "data" / "openwebtext"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rng.integers(0, 500, 5000).astype(np.uint16).tofile(root / "train.bin")
    rng.integers(0, 500, 1000).astype(np.uint16).tofile(root / "val.bin")
    out, work = tmp_path / "out", tmp_path / "work"
    sizes = ["--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32",
             "--set", "model.vocab_size=512", "--set", "model.block_size=32", "--set", "block_size=32"]
    rc = cli.main(["--preset", "gpt2-medium-openwebtext", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                   "--work", str(work), *sizes, *SMALL_RUN])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "steps" / "2" / "results.json").read_text())["setting"]
    assert (s["arch_vocab_size"], s["arch_bias"], s["arch_gelu"], s["remat"], s["dataset"]) == (
        512, False, "exact", True, "openwebtext")
    assert (s["schedule"], s["learning_rate"], s["min_lr"], s["subset_pattern"]) == ("cosine", 6e-4, 6e-5, "^h/1/")
