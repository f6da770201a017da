"""One LLM run, top to bottom: assemble, train to each checkpoint step, measure its spectrum, track, resume.

    run(cfg, out="results/llm/<run>", work="runs/llm/<run>")

    build(cfg, weights, data_dir)      tokenizer, data, model (scratch, pre-trained, LoRA), split, keys   (build)
    train to checkpoint step c         jitted AdamW steps; batches fold_in(data_order, s), dropout
                                       fold_in(dropout, s); the NaN window                                  (driver)
    checkpoint c                       orbax (train.checkpoint) in <work>/checkpoints/epoch_<c>, digest-checked
    measure c                          train.measure on the chosen subset -> <out>/steps/<c>/results.json (spectrum)
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

import json
import os
import warnings
from pathlib import Path

import jax

from train import checkpoint as ckpt
from train import record, rundir
from train.llm import driver, loop, memory
from train.llm.build import LMRun, build
from train.llm.presets import LLMConfig, to_dict
from train.llm.spectrum import measure_and_write, results_path, subset_pattern, write_tracking

__all__ = ["run", "write_config"]


def write_config(path: Path, cfg: LLMConfig) -> None:
    """<path>/config.json: the config the run trains with (one process writes)."""
    if jax.process_index() == 0:
        record.write_json(path / rundir.CONFIG, to_dict(cfg))


def _check_dirs(cfg: LLMConfig, out: Path, work: Path, resume: bool) -> None:
    """Refuse to overwrite a run's checkpoints or spectra, and a resume that would train differently."""
    rundir.check_out_dir(work, resume=resume)
    if not resume and any((out / "steps").glob("*/results.json")):
        raise rundir.OutputDirError(f"{out} already holds spectra of a run; continue it with --resume, or choose "
                                    "another --out. Nothing there is overwritten")
    if resume and (work / rundir.CONFIG).is_file():
        driver.check_resume_config(json.loads((work / rundir.CONFIG).read_text()), cfg)


def _measure_missing(run: LMRun, state: loop.TokenTrainState, out: Path, ckpt_dir: Path, work: Path, start: int,
                     progress: bool) -> None:
    """Measure every kept checkpoint step up to `start` whose results.json is missing (after a kill)."""
    kept = set(ckpt.list_epochs(ckpt_dir))
    for c in sorted(s for s in run.cfg.checkpoint_steps if s <= start):
        if results_path(out, c).is_file():
            continue
        if c not in kept:
            warnings.warn(f"checkpoint {c} was pruned before it was measured: its spectrum is missing", stacklevel=2)
            continue
        trained = state.params if c == start else driver.load_params(run, ckpt_dir, c)[0].params
        measure_and_write(run, out, ckpt_dir, c, trained, work, progress)
    write_tracking(run, out)


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
    _check_dirs(cfg, out, work, resume)
    assembled = build(cfg, weights=weights, data_dir=data_dir)
    # Before anything is trained or written: the spectra's Krylov basis must fit where it lives (one line if not).
    params = loop.full_params(assembled.state.params, assembled.fixed)
    memory.check_params(cfg, params, subset_pattern(cfg, assembled.model_info["arch_config"]))
    rundir.ensure_writable(work), rundir.ensure_writable(out)
    write_config(work, cfg), write_config(out, cfg)
    ckpt_dir = ckpt.checkpoint_dir(work)
    state, step = driver.restore_or_start(assembled, ckpt_dir, work, resume)
    _measure_missing(assembled, state, out, ckpt_dir, work, step, progress)
    for c in sorted(c for c in cfg.checkpoint_steps if c > step):
        state, step = driver.train_to(assembled, state, step, c, ckpt_dir, work, progress), c
        measure_and_write(assembled, out, ckpt_dir, c, state.params, work, progress)
        write_tracking(assembled, out)
        if not cfg.keep_checkpoints and jax.process_index() == 0:
            ckpt.prune(ckpt_dir, keep_last=1)
        if until is not None and c >= until:
            break
    return write_tracking(assembled, out)
