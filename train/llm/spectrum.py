"""One checkpoint of an LLM run measured: the subset's spectrum (train.measure), the test loss, and its record.

    measure_state(run, trained, step, ...) -> SpectrumResult       the record of one state
    measure_and_write(run, out, ckpt_dir, step, trained, work)     <out>/steps/<step>/results.json + spectrum.png
    write_tracking(run, out)                                       <out>/tracking.json + .png, table.txt
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from train import checkpoint as ckpt
from train import keys as keys_lib
from train import measure, record, rundir
from train.llm import loop, track
from train.llm.build import LMRun
from train.llm.presets import LLMConfig, LLMConfigError, departures, to_dict

__all__ = ["subset_pattern", "capped_k", "run_setting", "measure_state", "measure_and_write", "write_tracking",
           "results_path", "KEY_USE"]

KEY_USE = {
    "init": "model initialisation; LoRA A matrices from fold_in(init, 1)",
    "data_order": "the sequences of step s: fold_in(data_order, s)",
    "dropout": "micro-batch i of step s: fold_in(fold_in(dropout, s), i)",
    "hessian_sample": "the fixed Hessian sequences (training split)",
    "data_options": "the fixed held-out sequences of the test loss: fold_in(data_options, 0)",
    "lanczos_start": "Lanczos start vectors (the same at every checkpoint)",
    "trace_probes": "Hutchinson probes for Tr(H)",
}


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


def run_setting(run: LMRun) -> dict[str, Any]:
    """The flat setting shared by every checkpoint of the run (every departure from the paper listed)."""
    cfg, arch = run.cfg, run.model_info["arch"]
    mesh = None if run.mesh is None else dict(run.mesh.shape)
    setting = {k: v for k, v in to_dict(cfg).items() if k not in ("model_overrides", "description")}
    setting.update({f"arch_{k}": v for k, v in arch.items()})
    setting.update(model=cfg.model, weights=run.model_info["weights"], devices=jax.device_count(),
                   processes=jax.process_count(), mesh=None if mesh is None else json.dumps(mesh),
                   sequences_per_step=cfg.sequences_per_step, hessian_block=cfg.block_size,
                   hessian_tokens=int(sum(float(np.sum(b[2])) for b in run.hessian_batches)),
                   departures=departures(cfg, arch), lr=cfg.learning_rate)
    return setting


def _subset_size(params: Any, pattern: str | None) -> int:
    import hspec

    selected, _, _ = hspec.select_parameters(params, pattern)
    return int(sum(np.size(x) for x in selected))


def _spectrum_spec(cfg: LLMConfig, n: int) -> measure.SpectrumSpec:
    """The measurement of a subset of n parameters: K and the Lanczos steps capped by n."""
    k = capped_k(cfg.k, n)
    steps = None if cfg.lanczos_steps is None else min(cfg.lanczos_steps, n)
    max_steps = None if cfg.max_lanczos_steps is None else min(cfg.max_lanczos_steps, n)
    return measure.SpectrumSpec(k=k, lanczos_steps=steps, max_lanczos_steps=max_steps, trace_samples=cfg.trace_samples,
                                num_starts=cfg.num_starts, combine=cfg.combine, settle=cfg.lanczos_settle)


def measure_state(run: LMRun, trained: Any, step: int, *, train_loss: float | None, checkpoint: str | None,
                  progress: bool = True, lanczos_state: str | os.PathLike | None = None) -> record.SpectrumResult:
    """Measure the spectrum of the subset at one state, and the test loss; assemble its record.

    Args:
        run: the run.
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

    cfg, t0 = run.cfg, time.perf_counter()
    params = loop.full_params(trained, run.fixed)
    pattern = subset_pattern(cfg, run.model_info["arch_config"])
    n = _subset_size(params, pattern)
    spec = _spectrum_spec(cfg, n)
    with jax.default_matmul_precision("highest"):
        m = measure.measure(run.hessian_loss, params, run.hessian_batches, spec, lanczos_key=run.keys.lanczos_start,
                            trace_key=run.keys.trace_probes, wrt=pattern, progress=progress,
                            lanczos_state=lanczos_state, factory=run.hessian_factory)
        test_loss = loop.evaluate(run.eval_step, trained, run.fixed, run.eval_batches)
    setting = dict(run_setting(run), step=step, tokens_seen=step * cfg.tokens_per_step, k=spec.k, k_requested=cfg.k,
                   k_capped=spec.k < cfg.k, subset_pattern=pattern, subset_size=n,
                   lanczos_steps=m.spectrum["lanczos_steps"], lanczos_steps_requested=cfg.lanczos_steps,
                   trained=step > 0)
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
        data=run.data.info, num_params=n, checkpoint=checkpoint, hspec_version=hspec.__version__,
        keys=dict(keys_lib.derivation(run.keys), llm=KEY_USE))


def results_path(out: Path, step: int) -> Path:
    """Where the record of checkpoint `step` goes: <out>/steps/<step>/results.json."""
    return out / "steps" / str(step) / rundir.RESULTS


def recent_train_loss(work: Path, step: int, n: int = 10) -> float | None:
    """Mean training loss (dropout on) over the last n steps up to `step`, from metrics.jsonl."""
    if step == 0:
        return None
    values = [row["loss"] for row in rundir.read_metrics(work) if step - n < row["step"] <= step]
    return float(np.mean(values)) if values else None


def measure_and_write(run: LMRun, out: Path, ckpt_dir: Path, step: int, trained: Any, work: Path,
                      progress: bool) -> record.SpectrumResult:
    """Measure one checkpoint, write its results.json and rank plot, and print one line."""
    where = results_path(out, step)
    # Relative to the results file: committed results carry no machine paths.
    checkpoint = os.path.relpath(ckpt.epoch_path(ckpt_dir, step).absolute(), where.parent.absolute())
    result = measure_state(run, trained, step, train_loss=recent_train_loss(work, step), checkpoint=checkpoint,
                           progress=progress)
    if jax.process_index() == 0:
        record.save(result, where)
        record.plot(result, where.with_name(rundir.PLOT), title=f"step {step}: {result.verdict}")
    print(f"step {step}: test loss {result.metrics['test_loss']:.4f}, {measure.format_fit(result)} "
          f"[{result.timing['spectrum_total_s']:.0f} s]", flush=True)
    return result


def write_tracking(run: LMRun, out: Path) -> dict:
    """Rebuild tracking.json, the plot and table.txt from every results.json written so far."""
    results = [record.load(p) for p in sorted((out / "steps").glob("*/results.json"))]
    tracking = track.tracking_record(run_setting(run), results)
    if jax.process_index() == 0:
        track.write(tracking, out)
        (out / rundir.TABLE).write_text(track.table(tracking) + "\n")
    return tracking
