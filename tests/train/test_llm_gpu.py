"""The paper's LLM runs made ready for one GPU: the Krylov memory guard, the GPU check's llm-nano part, and the
TinyLlama subset of the paper's Fig. 33 (the last layer merged with its adapters)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import hspec
from hspec import memory as hmem
from tests.conftest import REPO
from train.llm import cli, loop, presets, train
from train.llm import memory

NANO_BLOCK = 1_770_240  # GPT2-nano's last block (6/6/384, no biases), as the run reports it


def _sets(option: str) -> dict[str, str]:
    """The `--set key=value` pairs of one offered override."""
    return dict(kv.split("=", 1) for kv in re.findall(r"--set (\S+)", option))


def test_the_nano_preset_needs_255_gb_for_its_basis():
    """3 starts x 12,000 steps (hspec's rule for K = 1000: 3K, grown up to 4x) x 1,770,240 x 4 bytes, by hand."""
    cfg = presets.get("gpt2-nano-shakespeare")
    assert memory.lanczos_budget(cfg, NANO_BLOCK) == (1000, 3000, 12_000)
    mem = memory.krylov_memory(cfg, NANO_BLOCK, np.float32, available=80 * 10**9)
    assert mem.needed == 254_914_560_000 and not mem.fits
    small = memory.krylov_memory(presets.get("gpt2-nano-shakespeare-cpu"), 196_864, np.float32, available=10**10)
    assert small.needed == 1 * 2400 * 196_864 * 4 and small.fits  # the CPU preset: 1 start up to 2,400 steps


def test_the_refusal_names_the_memory_and_overrides_that_fit(monkeypatch):
    """On an 80 GB device (where the run needs its basis twice: the rows used are copied on their way back): one
    start with fewer steps, or the host basis (where the host has room); every override offered makes the check
    pass."""
    monkeypatch.setattr(hmem, "basis_location", lambda loop="auto", basis="auto": "device")
    monkeypatch.setattr(hmem, "host_available_bytes", lambda: 300 * 10**9)
    cfg, available = presets.get("gpt2-nano-shakespeare"), 80 * 10**9
    with pytest.raises(presets.LLMConfigError) as err:
        memory.check(cfg, NANO_BLOCK, np.float32, available=available)
    message = str(err.value)
    assert "\n" not in message and "254.9 GB of device memory" in message and "80.0 GB is available" in message
    assert "3 starts x 12,000 Lanczos steps x 1,770,240 parameters x 4 bytes, twice that with the copy" in message
    options = message.split("what fits: ")[1].split("; or ")
    # 3 starts: 72 GB usable / (2 x 3 x 7,080,960 bytes) = 1,694 rows, below the 3,000 that K = 1000 needs.
    assert options[0] == "--set num_starts=1 --set max_lanczos_steps=5000"  # 72 GB / (2 x 7,080,960) = 5,084
    assert options[1].startswith("the host basis") and "254.9 GB of host memory, 300.0 GB available" in options[1]
    assert len(options) == 2
    for option in options[:1]:
        fitted = presets.apply_overrides(cfg, _sets(option))
        assert memory.check(fitted, NANO_BLOCK, np.float32, available=available).fits
    monkeypatch.setattr(hmem, "host_available_bytes", lambda: 5 * 10**9)
    with pytest.raises(presets.LLMConfigError) as err:  # 5 GB: not even one start of K = 1000 fits
        memory.check(cfg, NANO_BLOCK, np.float32, available=5 * 10**9)
    message = str(err.value)
    assert ("no number of starts or steps fits K=1000 (one start of 3,000 steps, hspec's rule for K, needs 42.5 GB)"
            in message)
    # 4.5 GB / (2 x 7,080,960 bytes) = 317 rows: K = 105 (3K steps).
    option = message.split("what fits: ")[1].split("; or ")[0]
    assert option == "--set num_starts=1 --set k=105 --set max_lanczos_steps=317"
    assert memory.check(presets.apply_overrides(cfg, _sets(option)), NANO_BLOCK, np.float32, available=5 * 10**9).fits


def test_nano_preset_refuses_before_training(monkeypatch, tmp_path, capsys, data_dir):
    """`python -m train llm --preset gpt2-nano-shakespeare` on a 24 GB CPU machine: status 2, one line, nothing
    trained or written."""
    monkeypatch.setattr(hmem, "available_bytes", lambda where: 24 * 10**9)

    def trained(*args, **kwargs):
        raise AssertionError("the run trained or checkpointed before refusing")

    monkeypatch.setattr(train, "train_steps", trained)
    monkeypatch.setattr(train, "save_checkpoint", trained)
    out, work = tmp_path / "out", tmp_path / "work"
    rc = cli.main(["--preset", "gpt2-nano-shakespeare", "--out", str(out), "--work", str(work), "--data-dir",
                   str(data_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("error: the Krylov basis of the spectra needs 254.9 GB of host memory")
    assert "24.0 GB is available (21.6 GB usable)" in err
    option = err.split("what fits: ")[1].strip()
    assert option == "--set num_starts=1 --set max_lanczos_steps=3000"  # 21.6 GB / 7,080,960 bytes = 3,050 rows
    assert not out.exists() and not work.exists()


def test_last_block_with_lora_is_the_last_layer_and_its_adapters():
    """The paper's Fig. 33 subset on a tiny Llama with LoRA on q/v: every parameter of the last layer, base weights
    and adapters, and nothing else (no adapter of another layer, no head, no norm outside the layer)."""
    cfg = presets.apply_overrides(presets.get("tinyllama-lora-mathqa"), {
        "model_size": "tiny", "pretrained": "false", "lora_rank": "4", "block_size": "32",
        "subset": "last_block_with_lora"})
    model, mcfg = train.build_model(cfg, 50, jax.random.key(0), None)
    _, trained, fixed = loop.split_model(model, lora=True)
    params = loop.full_params(trained, fixed)
    paths = ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    pattern = train.subset_pattern(cfg, mcfg)
    selected = sorted(p for p in paths if re.search(pattern, p))
    last = f"layers/{mcfg.num_layers - 1}/"
    assert selected == sorted(p for p in paths if p.startswith(last))
    adapters = [p for p in selected if re.search(r"/lora_[ab]/", p)]
    assert len(adapters) == 4 and {p.split("/")[3] for p in adapters} == {"q_proj", "v_proj"}
    assert any(re.search(r"q_proj/base/", p) for p in selected)  # the adapted layer's own weights too
    leaves, _, _ = hspec.select_parameters(params, pattern)
    d, kv = mcfg.hidden_size, mcfg.num_kv_heads * mcfg.head_dim
    base = nnx.state(train.build_model(presets.apply_overrides(cfg, {"lora_rank": "0", "subset": "last_block"}), 50,
                                       jax.random.key(0), None)[0].layers[-1], nnx.Param)
    assert sum(x.size for x in leaves) == sum(x.size for x in jax.tree.leaves(base)) + 4 * ((d + d) + (d + kv))
    assert not any(d.startswith("subset:") for d in presets.departures(cfg))  # a subset of the paper's
    with pytest.raises(presets.LLMConfigError, match="needs LoRA adapters"):
        presets.apply_overrides(cfg, {"lora_rank": "0"})


# The tiny run the CPU test gives the GPU check's llm-nano part: 2 steps, spectra at 0 and 2.
TINY_SETS = ("model.n_layer=2 model.n_head=2 model.n_embd=32 block_size=32 micro_batch=4 grad_accum=1 steps=2 "
             "checkpoint_steps=0,2 save_every=0 k=8 num_starts=1 lanczos_steps=40 max_lanczos_steps=200 "
             "hessian_sequences=8 hessian_batch=4 eval_sequences=8 eval_batch=4 trace_samples=4")


@pytest.mark.slow  # ~40 s on 2 cores: a subprocess that imports jax, trains 2 steps and measures 2 spectra
def test_gpu_check_llm_nano_part_packs_parseable_records(tmp_path, data_dir):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PY=sys.executable, HSPEC_DATA_DIR=str(data_dir),
               LLM_NANO_SETS=TINY_SETS, LLM_NANO_DIR=str(tmp_path / "run"), JAX_PLATFORMS="cpu")
    (tmp_path / "out").mkdir()
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "llm-nano:300"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert "packed llm-nano-results.tgz" in done.stdout, done.stdout + done.stderr
    assert "llm-nano exit status 0" in done.stdout
    with tarfile.open(tmp_path / "out" / "llm-nano-results.tgz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    root = tmp_path / "unpacked"
    tracking = json.loads((root / "out" / "tracking.json").read_text())
    assert [row["step"] for row in tracking["checkpoints"]] == [0, 2]
    for step in (0, 2):
        res = json.loads((root / "out" / "steps" / str(step) / "results.json").read_text())
        assert res["setting"]["preset"] == "gpt2-nano-shakespeare" and res["setting"]["num_starts"] == 1
        assert res["spectrum"]["num_converged"] == 8
    assert [json.loads(ln)["step"] for ln in (root / "work" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((root / "work" / "config.json").read_text())["k"] == 8
    assert "gpt2-nano-shakespeare" in (root / "log.txt").read_text()
    assert not list(root.rglob("checkpoints"))  # no checkpoints come back
