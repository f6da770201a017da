"""One LLM run: assemble, train to each checkpoint step, measure its Hessian spectrum, track, resume.

    run(cfg, out="results/llm/<run>", work="runs/llm/<run>")

    build(cfg, weights, data_dir)      tokenizer, data, model (scratch, pre-trained, LoRA), split, keys
    train to checkpoint step c         jitted AdamW steps; batches fold_in(data_order, s), dropout fold_in(dropout, s)
    checkpoint c                       orbax (train.checkpoint) in <work>/checkpoints/epoch_<c>, digest-checked
    measure c                          train.measure on the chosen subset -> <out>/steps/<c>/results.json
    tracking                           <out>/tracking.json, tracking.png, table.txt (train.llm.track)

Layout of the outputs (results are small and meant for version control; checkpoints never go there):

    <out>/config.json, <out>/steps/<step>/results.json + spectrum.png, <out>/tracking.json + .png, table.txt
    <work>/config.json, <work>/metrics.jsonl (step, loss, lr), <work>/checkpoints/epoch_<step>/

`--resume` restores the newest checkpoint (the "epoch" number of train.checkpoint is the step), measures any
checkpoint whose results.json is missing, and trains on: the state, the batches and the dropout masks of
every later step are those of an uninterrupted run, so its parameters are bit-identical. On resume the
spectrum fields (K, Lanczos steps, ...) may change; the training fields may not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

import hspec
from train import checkpoint as ckpt
from train import keys as keys_lib
from train import measure, record, rundir
from train.llm import data as data_lib
from train.llm import loop, memory, sharding, track
from train.llm.presets import LLMConfig, LLMConfigError, departures, from_dict, to_dict
from train.loop import CHECK_EVERY, NonFiniteLossError

__all__ = ["run", "build", "Run", "subset_pattern", "capped_k", "SPECTRUM_FIELDS", "WeightsNotFoundError",
           "load_params"]

# Fields that only change how a checkpoint is measured: a resumed run may change them.
SPECTRUM_FIELDS = ("subset", "k", "num_starts", "combine", "lanczos_steps", "max_lanczos_steps", "hessian_sequences",
                   "hessian_draw", "hessian_batch", "trace_samples", "eval_sequences", "eval_batch", "description",
                   "keep_checkpoints", "save_every", "data_parallel", "model_parallel")
CONFIG = "config.json"
METRICS = "metrics.jsonl"


class WeightsNotFoundError(FileNotFoundError):
    """A preset needs pre-trained weights and none were given (or the directory is missing)."""


@dataclasses.dataclass
class Run:
    """Everything assembled for a run: config, data, split model, states, fixed samples, keys, mesh."""

    cfg: LLMConfig
    data: data_lib.LMData
    model_info: dict[str, Any]
    split: loop.SplitModel
    state: loop.TrainState
    fixed: Any
    keys: keys_lib.RunKeys
    hessian_batches: list
    eval_batches: list
    mesh: Any
    optim: loop.OptimSpec
    # Kept across the run's checkpoints, so that the Hessian programs are compiled once.
    hessian_factory: hspec.HessianFactory = dataclasses.field(default_factory=hspec.HessianFactory)


# -------------------------------------------------------------------------------------------------- assembling


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


def _without_root(info: Any, data_dir: str | None) -> Any:
    """The data record with the data root written as <data_dir> (committed results carry no machine paths)."""
    from train.data import resolve_data_dir

    root = str(resolve_data_dir(data_dir).absolute())
    if isinstance(info, dict):
        return {k: _without_root(v, data_dir) for k, v in info.items()}
    return info.replace(root, "<data_dir>") if isinstance(info, str) else info


def _arch_fields(model_cfg: Any) -> dict[str, Any]:
    """The built architecture as flat fields for the setting."""
    return {k: v for k, v in dataclasses.asdict(model_cfg).items()}


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


def subset_pattern(cfg: LLMConfig, model_cfg: Any) -> str | None:
    """The `wrt` regex of the measured parameter subset (None: every parameter).

    "last_block" is the last transformer block (the paper's "last layer"; see gpt2.last_block_pattern),
    "block:<i>" block i, "lora" every adapter, "lora_last_block" the last block's adapters,
    "last_block_with_lora" the last block's weights and its adapters (the paper's Fig. 33: TinyLlama's last layer
    merged with the adapter), "re:<regex>" any.
    """
    from train.models import gpt2, llama, lora

    module = gpt2 if cfg.model == "gpt2" else llama
    n_blocks = model_cfg.n_layer if cfg.model == "gpt2" else model_cfg.num_layers
    if cfg.subset == "all":
        return None
    if cfg.subset == "last_block":
        return module.last_block_pattern(model_cfg)
    if cfg.subset.startswith("block:"):
        index = int(cfg.subset.split(":", 1)[1])
        if not -n_blocks <= index < n_blocks:
            raise LLMConfigError(f"subset={cfg.subset!r}: the model has blocks 0..{n_blocks - 1}")
        return "^" + module.block_prefix(index % n_blocks)
    if cfg.subset == "lora":
        return lora.adapter_pattern()
    if cfg.subset == "lora_last_block":
        return lora.adapter_pattern(module.block_prefix(n_blocks - 1))
    if cfg.subset == "last_block_with_lora":
        last = module.last_block_pattern(model_cfg)
        return f"(?:{last})|(?:{lora.adapter_pattern(module.block_prefix(n_blocks - 1))})"
    return cfg.subset[len("re:"):]


def capped_k(k: int, subset_size: int) -> int:
    """K, capped by the number of parameters in the subset (a Hessian of n parameters has n eigenvalues)."""
    if k > subset_size:
        warnings.warn(f"K={k} exceeds the {subset_size} parameters of the measured subset: K={subset_size} is used "
                      "(recorded in the setting as k, with k_requested)", stacklevel=2)
    return min(k, subset_size)


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


def build(cfg: LLMConfig, *, weights: str | os.PathLike | None = None, data_dir: str | None = None) -> Run:
    """Assemble a run: tokenizer, data, model, its split, the optimiser state, the fixed samples and keys.

    Raises:
        WeightsNotFoundError, DataNotFoundError: missing inputs (the message names the path and the fix).
    """
    weights_dir = _require_weights(cfg, weights)
    tokenizer = _tokenizer(cfg, weights_dir)
    vocab = dict(cfg.model_overrides).get("vocab_size")
    data = data_lib.load(cfg.dataset, data_dir=data_dir, block=cfg.block_size, tokenizer=tokenizer,
                         train_split=cfg.train_split, eval_split=cfg.eval_split, vocab_size=vocab)
    data = dataclasses.replace(data, info=_without_root(data.info, data_dir))
    if cfg.train_tokens:
        data = data_lib.first_train_tokens(data, cfg.train_tokens, cfg.block_size)
    keys = keys_lib.run_keys(cfg.seed)
    model, mcfg = build_model(cfg, data.vocab_size, keys.init, weights_dir)
    if getattr(mcfg, "vocab_size", data.vocab_size) < data.vocab_size:
        raise LLMConfigError(f"the model's vocabulary ({mcfg.vocab_size}) is smaller than the data's "
                             f"({data.vocab_size})")
    split, trained, fixed = loop.split_model(model, lora=cfg.lora_rank > 0)
    mesh = _mesh(cfg)
    optim = loop.OptimSpec.from_config(cfg)
    trained, fixed = _place_params(trained, mesh), _place_params(fixed, mesh)
    state = loop.init_state(trained, optim)
    draw_key = keys.hessian_sample if not cfg.hessian_draw else jax.random.fold_in(keys.hessian_sample,
                                                                                   cfg.hessian_draw)
    hessian = data_lib.fixed_batches(data.train, draw_key, cfg.hessian_sequences, cfg.hessian_batch)
    held_out = data_lib.fixed_batches(data.eval, jax.random.fold_in(keys.data_options, data_lib.EVAL_TAG),
                                      cfg.eval_sequences, cfg.eval_batch)
    # The weights directory's name only: committed results carry no machine paths.
    info = {"arch": _arch_fields(mcfg), "arch_config": mcfg,
            "weights": None if weights_dir is None else weights_dir.name}
    return Run(cfg, data, info, split, state, fixed, keys, _place_batches(hessian, mesh),
               _place_batches(held_out, mesh), mesh, optim)


# -------------------------------------------------------------------------------------------------- settings


def run_setting(r: Run) -> dict[str, Any]:
    """The flat setting shared by every checkpoint of the run (every departure from the paper listed)."""
    cfg, arch = r.cfg, r.model_info["arch"]
    mesh = None if r.mesh is None else dict(r.mesh.shape)
    setting = {k: v for k, v in to_dict(cfg).items() if k not in ("model_overrides", "description")}
    setting.update({f"arch_{k}": v for k, v in arch.items()})
    setting.update(model=cfg.model, weights=r.model_info["weights"], devices=jax.device_count(),
                   processes=jax.process_count(), mesh=None if mesh is None else json.dumps(mesh),
                   sequences_per_step=cfg.sequences_per_step, hessian_block=cfg.block_size,
                   hessian_tokens=int(sum(float(np.sum(b[2])) for b in r.hessian_batches)),
                   departures=departures(cfg, arch), lr=cfg.learning_rate)
    return setting


def _subset_size(params: Any, pattern: str | None) -> int:
    import hspec

    selected, _, _ = hspec.select_parameters(params, pattern)
    return int(sum(np.size(x) for x in selected))


# -------------------------------------------------------------------------------------------------- measuring


def measure_state(r: Run, trained: Any, step: int, *, train_loss: float | None, checkpoint: str | None,
                  progress: bool = True, lanczos_state: str | os.PathLike | None = None) -> record.SpectrumResult:
    """Measure the spectrum of the subset at one state, and the test loss; assemble its record.

    Args:
        r: the run.
        trained: the trained parameters at this step (the fixed ones are the run's).
        step: the optimiser steps taken.
        train_loss: mean training loss of the last steps before it (None at step 0).
        checkpoint: the checkpoint measured (relative to the results file), recorded.
        progress: Lanczos progress bar.
        lanczos_state: a directory for the Krylov state, so that a killed measurement resumes (CPU).

    Returns:
        The SpectrumResult (setting flat: model, preset, step, tokens_per_step, lr, k, hessian_sequences,
        subset, num_starts, combine, departures, ...).
    """
    import hspec

    cfg, t0 = r.cfg, time.perf_counter()
    params = loop.full_params(trained, r.fixed)
    pattern = subset_pattern(cfg, r.model_info["arch_config"])
    n = _subset_size(params, pattern)
    k = capped_k(cfg.k, n)
    steps = None if cfg.lanczos_steps is None else min(cfg.lanczos_steps, n)
    max_steps = None if cfg.max_lanczos_steps is None else min(cfg.max_lanczos_steps, n)
    spec = measure.SpectrumSpec(k=k, lanczos_steps=steps, max_lanczos_steps=max_steps, trace_samples=cfg.trace_samples,
                                num_starts=cfg.num_starts, combine=cfg.combine)
    with jax.default_matmul_precision("highest"):
        m = measure.measure(loop.hessian_loss(r.split.eval_def), params, r.hessian_batches, spec,
                            lanczos_key=r.keys.lanczos_start, trace_key=r.keys.trace_probes, wrt=pattern,
                            progress=progress, lanczos_state=lanczos_state, factory=r.hessian_factory)
        test_loss = loop.evaluate(loop.make_eval_step(r.split.eval_def), trained, r.fixed, r.eval_batches)
    setting = dict(run_setting(r), step=step, tokens_seen=step * cfg.tokens_per_step, k=k, k_requested=cfg.k,
                   k_capped=k < cfg.k, subset_pattern=pattern, subset_size=n, lanczos_steps=m.spectrum["lanczos_steps"],
                   lanczos_steps_requested=cfg.lanczos_steps, trained=step > 0)
    return record.SpectrumResult(
        setting=setting, fit=m.fit, verdict=m.verdict, spectrum=m.spectrum, sharpness=m.sharpness,
        eigengap_fit=m.eigengap_fit,
        metrics={"test_loss": test_loss, "train_loss": train_loss, "hessian_loss": m.spectrum["loss"],
                 "eval_sequences": cfg.eval_sequences, "eval_split": cfg.eval_split},
        timing=measure.timing_since(m, t0),
        hessian_sample={"sequences": cfg.hessian_sequences, "draw": cfg.hessian_draw, "block": cfg.block_size,
                        "split": cfg.train_split,
                        "batch": cfg.hessian_batch, "tokens": setting["hessian_tokens"],
                        "stream": "hessian_sample (uniform window starts, with replacement)"},
        data=r.data.info, num_params=n, checkpoint=checkpoint, hspec_version=hspec.__version__,
        keys=dict(keys_lib.derivation(r.keys), llm=KEY_USE))


KEY_USE = {
    "init": "model initialisation; LoRA A matrices from fold_in(init, 1)",
    "data_order": "the sequences of step s: fold_in(data_order, s)",
    "dropout": "micro-batch i of step s: fold_in(fold_in(dropout, s), i)",
    "hessian_sample": "the fixed Hessian sequences (training split)",
    "data_options": "the fixed held-out sequences of the test loss: fold_in(data_options, 0)",
    "lanczos_start": "Lanczos start vectors (the same at every checkpoint)",
    "trace_probes": "Hutchinson probes for Tr(H)",
}


# -------------------------------------------------------------------------------------------------- training


def _check_losses(window: list[tuple[int, Any]], last_checkpoint: str | None) -> list[float]:
    """Host values of a window of (step, loss); raise NonFiniteLossError at the first non-finite one."""
    losses = [float(v) for v in jax.device_get([l for _, l in window])]
    for (s, _), v in zip(window, losses):
        if not np.isfinite(v):
            raise NonFiniteLossError(0, s, v, last_checkpoint)
    return losses


def train_steps(r: Run, start: int, stop: int, *, metrics_path: Path | None, last_checkpoint: str | None,
                progress: bool = True) -> list[float]:
    """Take optimiser steps start..stop-1 on r.state (in place); return their losses.

    Step s uses the batch fold_in(data_order, s) and the dropout key fold_in(dropout, s), nothing else, so
    any split of the steps into segments gives the same parameters.
    """
    from tqdm.auto import tqdm

    cfg = r.cfg
    step_fn = loop.make_train_step(r.split.train_def, r.optim)
    schedule = loop.lr_schedule(r.optim)
    window, losses = [], []
    bar = tqdm(range(start, stop), desc=f"steps {start}-{stop}", disable=not progress, leave=False, unit="step")
    for s in bar:
        xs, ys, ws = data_lib.train_batch(r.data.train, r.keys.data_order, s, cfg.micro_batch, cfg.grad_accum)
        if r.mesh is not None:
            xs, ys, ws = sharding.shard_batch((xs, ys, ws), r.mesh, axis=1)
        r.state, loss = step_fn(r.state, r.fixed, xs, ys, ws, jax.random.fold_in(r.keys.dropout, s))
        window.append((s, loss))
        if len(window) == CHECK_EVERY or s == stop - 1:
            values = _check_losses(window, last_checkpoint)
            losses += values
            bar.set_postfix(loss=f"{values[-1]:.4f}")
            if metrics_path is not None and jax.process_index() == 0:
                with open(metrics_path, "a") as f:
                    for (t, _), v in zip(window, values):
                        f.write(json.dumps({"step": t + 1, "loss": v, "lr": float(schedule(t))}) + "\n")
            window = []
    return losses


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop metrics lines past the resumed checkpoint (they are recomputed, identically)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in lines))


def _recent_train_loss(path: Path, step: int, n: int = 10) -> float | None:
    """Mean training loss (dropout on) over the last n steps up to `step`, from metrics.jsonl."""
    if step == 0 or not path.is_file():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    values = [row["loss"] for row in rows if step - n < row["step"] <= step]
    return float(np.mean(values)) if values else None


# -------------------------------------------------------------------------------------------------- checkpoints


def _tree(state: loop.TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state}


def save_checkpoint(r: Run, ckpt_dir: Path, step: int) -> Path:
    """Write the state after `step` (gathered to the host) with the config and the step in its metadata."""
    meta = {"step": step, "config": to_dict(r.cfg), "tokens_seen": step * r.cfg.tokens_per_step}
    return ckpt.save(ckpt_dir, step, sharding.to_host(_tree(r.state)), meta)


def load_params(r: Run, ckpt_dir: Path, step: int) -> tuple[loop.TrainState, dict]:
    """The state of checkpoint `step` (digest-checked), placed like the run's state."""
    tree, meta = ckpt.restore(ckpt.epoch_path(ckpt_dir, step), sharding.to_host(_tree(r.state)))
    state = loop.TrainState(tree["params"], tree["opt_state"])
    if r.mesh is not None:
        state = loop.TrainState(sharding.shard_params(state.params, r.mesh),
                                sharding.shard_params(state.opt_state, r.mesh))
    return state, meta


# -------------------------------------------------------------------------------------------------- the run


def _check_resume_config(stored: dict, cfg: LLMConfig) -> None:
    """A resumed run must train exactly as it started: only spectrum fields may change."""
    old = to_dict(from_dict(stored))
    new = to_dict(cfg)
    changed = [k for k in new if k not in SPECTRUM_FIELDS and old.get(k) != new[k]]
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise LLMConfigError(f"--resume with a different training setting ({diff}); only the spectrum fields "
                             f"{', '.join(SPECTRUM_FIELDS)} may change. Resume without --preset/--set, or start a "
                             "new run")


def _write_config(path: Path, cfg: LLMConfig) -> None:
    if jax.process_index() == 0:
        record.write_json(path / CONFIG, to_dict(cfg))


def _results_path(out: Path, step: int) -> Path:
    return out / "steps" / str(step) / "results.json"


def _measure_and_write(r: Run, out: Path, ckpt_dir: Path, step: int, trained: Any, work: Path,
                       progress: bool) -> record.SpectrumResult:
    """Measure one checkpoint, write its results.json and rank plot, and print one line."""
    # Relative to the results file: committed results carry no machine paths.
    where = os.path.relpath(ckpt.epoch_path(ckpt_dir, step).absolute(), _results_path(out, step).parent.absolute())
    result = measure_state(r, trained, step, train_loss=_recent_train_loss(work / METRICS, step),
                           checkpoint=where, progress=progress)
    if jax.process_index() == 0:
        record.save(result, _results_path(out, step))
        record.plot(result, _results_path(out, step).with_name("spectrum.png"), title=f"step {step}: {result.verdict}")
    print(f"step {step}: test loss {result.metrics['test_loss']:.4f}, {measure.format_fit(result)} "
          f"[{result.timing['spectrum_total_s']:.0f} s]", flush=True)
    return result


def _write_tracking(r: Run, out: Path) -> dict:
    """Rebuild tracking.json, the plot and table.txt from every results.json written so far."""
    results = [record.load(p) for p in sorted((out / "steps").glob("*/results.json"))]
    tracking = track.tracking_record(run_setting(r), results)
    if jax.process_index() == 0:
        track.write(tracking, out)
        (out / "table.txt").write_text(track.table(tracking) + "\n")
    return tracking


def run(cfg: LLMConfig, out: str | os.PathLike, *, work: str | os.PathLike | None = None, resume: bool = False,
        weights: str | os.PathLike | None = None, data_dir: str | None = None, progress: bool = True,
        until: int | None = None) -> dict:
    """Train, checkpoint and measure a run; write its tracking record.

    Args:
        cfg: the configuration.
        out: results directory (results/llm/<run>): per-step results.json, tracking.json/png, table.txt.
        work: work directory for checkpoints and metrics (default runs/llm/<out's name>).
        resume: continue the run in `work` from its newest checkpoint.
        weights: pre-trained checkpoint directory (HF safetensors layout) for pre-trained presets.
        data_dir: the data root.
        progress: progress bars.
        until: stop after the first checkpoint step >= until (as if killed there; for tests).

    Returns:
        The tracking record.
    """
    out, work = Path(out), Path(work) if work is not None else Path("runs") / "llm" / Path(out).name
    rundir.check_out_dir(work, resume=resume)
    if not resume and any((out / "steps").glob("*/results.json")):
        raise rundir.OutputDirError(f"{out} already holds spectra of a run; continue it with --resume, or choose "
                                    "another --out. Nothing there is overwritten")
    if resume and (work / CONFIG).is_file():
        _check_resume_config(json.loads((work / CONFIG).read_text()), cfg)
    r = build(cfg, weights=weights, data_dir=data_dir)
    # Before anything is trained or written: the spectra's Krylov basis must fit where it lives (one line if not).
    memory.check_params(cfg, loop.full_params(r.state.params, r.fixed), subset_pattern(cfg, r.model_info["arch_config"]))
    rundir.ensure_writable(work), rundir.ensure_writable(out)
    _write_config(work, cfg), _write_config(out, cfg)
    ckpt_dir = ckpt.checkpoint_dir(work)
    start = _restore_or_start(r, ckpt_dir, work, resume)
    _measure_missing(r, out, ckpt_dir, work, start, progress)
    targets = sorted(c for c in cfg.checkpoint_steps if c > start)
    for c in targets:
        start = _train_to(r, start, c, ckpt_dir, work, progress)
        _measure_and_write(r, out, ckpt_dir, c, r.state.params, work, progress)
        _write_tracking(r, out)
        if not cfg.keep_checkpoints and jax.process_index() == 0:
            ckpt.prune(ckpt_dir, keep_last=1)
        if until is not None and c >= until:
            break
    return _write_tracking(r, out)


def _restore_or_start(r: Run, ckpt_dir: Path, work: Path, resume: bool) -> int:
    """Resume from the newest checkpoint (returning its step), or save the initialisation as step 0."""
    if resume:
        step = ckpt.list_epochs(ckpt_dir)[-1]
        r.state, _ = load_params(r, ckpt_dir, step)
        if jax.process_index() == 0:
            _trim_metrics(work / METRICS, step)
        print(f"resumed from {ckpt.epoch_path(ckpt_dir, step)} (step {step})", flush=True)
        return step
    save_checkpoint(r, ckpt_dir, 0)
    return 0


def _measure_missing(r: Run, out: Path, ckpt_dir: Path, work: Path, start: int, progress: bool) -> None:
    """Measure every kept checkpoint step up to `start` whose results.json is missing (after a kill)."""
    kept = set(ckpt.list_epochs(ckpt_dir))
    for c in sorted(s for s in r.cfg.checkpoint_steps if s <= start):
        if _results_path(out, c).is_file():
            continue
        if c not in kept:
            warnings.warn(f"checkpoint {c} was pruned before it was measured: its spectrum is missing", stacklevel=2)
            continue
        trained = r.state.params if c == start else load_params(r, ckpt_dir, c)[0].params
        _measure_and_write(r, out, ckpt_dir, c, trained, work, progress)
    _write_tracking(r, out)


def _train_to(r: Run, start: int, stop: int, ckpt_dir: Path, work: Path, progress: bool) -> int:
    """Train from `start` to `stop`, saving resume checkpoints every save_every steps; checkpoint `stop`."""
    every = r.cfg.save_every
    marks = [s for s in range(start + 1, stop) if every and s % every == 0] + [stop]
    for mark in marks:
        last = ckpt.list_epochs(ckpt_dir)
        last_path = str(ckpt.epoch_path(ckpt_dir, last[-1])) if last else None
        train_steps(r, start, mark, metrics_path=work / METRICS, last_checkpoint=last_path, progress=progress)
        save_checkpoint(r, ckpt_dir, mark)
        # Resume checkpoints between measured steps: keep only the newest of them.
        keep = set(r.cfg.checkpoint_steps) if r.cfg.keep_checkpoints else set()
        if jax.process_index() == 0:  # one process deletes; the others never read old checkpoints
            ckpt.prune(ckpt_dir, keep_last=1, keep=keep)
        start = mark
    return stop
