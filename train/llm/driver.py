"""The LLM training driver: steps, checkpoints, metrics and resume, with the state held here and nowhere else.

Step s uses the batch fold_in(data_order, s) and the dropout key fold_in(dropout, s), nothing else, so any split of
the steps into segments (a kill and a resume between them) gives the same parameters, bit for bit. The losses are
brought to the host every CHECK_EVERY steps (the NaN window): a non-finite one stops the run before anything of it
is saved, naming the last good checkpoint. The checkpoint "epoch" of train.checkpoint is the step; metrics.jsonl
(step, loss, lr) is written through train.rundir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from train import checkpoint as ckpt
from train import rundir
from train.llm import data as data_lib
from train.llm import loop, sharding
from train.llm.build import LMRun
from train.llm.presets import LLMConfig, LLMConfigError, from_dict, to_dict
from train.loop import CHECK_EVERY, NonFiniteLossError

__all__ = ["SPECTRUM_FIELDS", "check_resume_config", "train_steps", "save_checkpoint", "load_params",
           "restore_or_start", "train_to"]

# Fields that only change how a checkpoint is measured: a resumed run may change them.
SPECTRUM_FIELDS = ("subset", "k", "num_starts", "combine", "lanczos_steps", "max_lanczos_steps", "lanczos_settle",
                   "hessian_sequences", "hessian_draw", "hessian_batch", "trace_samples", "eval_sequences", "eval_batch", "description",
                   "keep_checkpoints", "save_every", "data_parallel", "model_parallel")


def check_resume_config(stored: dict, cfg: LLMConfig) -> None:
    """A resumed run must train exactly as it started: only spectrum fields may change."""
    old = to_dict(from_dict(stored))
    new = to_dict(cfg)
    changed = [k for k in new if k not in SPECTRUM_FIELDS and old.get(k) != new[k]]
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise LLMConfigError(f"--resume with a different training setting ({diff}); only the spectrum fields "
                             f"{', '.join(SPECTRUM_FIELDS)} may change. Resume without --preset/--set, or start a "
                             "new run")


def _check_losses(window: list[tuple[int, Any]], last_checkpoint: str | None) -> list[float]:
    """Host values of a window of (step, loss); raise NonFiniteLossError at the first non-finite one."""
    losses = [float(v) for v in jax.device_get([l for _, l in window])]
    for (s, _), v in zip(window, losses):
        if not np.isfinite(v):
            raise NonFiniteLossError(0, s, v, last_checkpoint)
    return losses


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    steps = ckpt.list_epochs(ckpt_dir)
    return str(ckpt.epoch_path(ckpt_dir, steps[-1])) if steps else None


def _write_metrics(run: LMRun, work: Path | None, window: list[tuple[int, Any]], losses: list[float]) -> None:
    """Append a window's (step, loss, lr) lines to <work>/metrics.jsonl (one process writes)."""
    if work is None or jax.process_index() != 0:
        return
    schedule = loop.lr_schedule(run.optim)
    for (t, _), v in zip(window, losses):
        rundir.append_metrics(work, {"step": t + 1, "loss": v, "lr": float(schedule(t))})


def train_steps(run: LMRun, state: loop.TokenTrainState, start: int, stop: int, *, work: Path | None,
                last_checkpoint: str | None, progress: bool = True) -> tuple[loop.TokenTrainState, list[float]]:
    """Take optimiser steps start..stop-1 from `state` (donated); return the new state and the steps' losses.

    Args:
        run: the run.
        state: the state after step `start` (its arrays are donated to the first step).
        start, stop: the steps taken before and after.
        work: where metrics.jsonl is appended to (None: nowhere).
        last_checkpoint: named by the error if a loss is not finite.
        progress: a tqdm bar.

    Raises:
        NonFiniteLossError: a step's loss was NaN or infinite (nothing of it is saved).
    """
    from tqdm.auto import tqdm

    cfg = run.cfg
    step_fn = run.train_step
    window, losses = [], []
    bar = tqdm(range(start, stop), desc=f"steps {start}-{stop}", disable=not progress, leave=False, unit="step")
    for s in bar:
        xs, ys, ws = data_lib.train_batch(run.data.train, run.keys.data_order, s, cfg.micro_batch, cfg.grad_accum)
        if run.mesh is not None:
            xs, ys, ws = sharding.shard_batch((xs, ys, ws), run.mesh, axis=1)
        state, loss = step_fn(state, run.fixed, xs, ys, ws, jax.random.fold_in(run.keys.dropout, s))
        window.append((s, loss))
        if len(window) == CHECK_EVERY or s == stop - 1:
            values = _check_losses(window, last_checkpoint)
            losses += values
            bar.set_postfix(loss=f"{values[-1]:.4f}")
            _write_metrics(run, work, window, values)
            window = []
    return state, losses


def _tree(state: loop.TokenTrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state}


def save_checkpoint(run: LMRun, state: loop.TokenTrainState, ckpt_dir: Path, step: int) -> Path:
    """Write the state after `step` (gathered to the host) with the config and the step in its metadata."""
    meta = {"step": step, "config": to_dict(run.cfg), "tokens_seen": step * run.cfg.tokens_per_step}
    return ckpt.save(ckpt_dir, step, sharding.to_host(_tree(state)), meta)


def load_params(run: LMRun, ckpt_dir: Path, step: int) -> tuple[loop.TokenTrainState, dict]:
    """The state of checkpoint `step` (digest-checked), placed like the run's state."""
    # The run's state gives only the structure, shapes and dtypes: its arrays may have been donated to a step.
    template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), _tree(run.state))
    tree, meta = ckpt.restore(ckpt.epoch_path(ckpt_dir, step), template)
    state = loop.TokenTrainState(tree["params"], tree["opt_state"])
    if run.mesh is not None:
        state = loop.TokenTrainState(sharding.shard_params(state.params, run.mesh),
                                     sharding.shard_params(state.opt_state, run.mesh))
    return state, meta


def restore_or_start(run: LMRun, ckpt_dir: Path, work: Path, resume: bool) -> tuple[loop.TokenTrainState, int]:
    """(state, step): the newest checkpoint's on resume (metrics past it dropped), else the initialisation,
    saved as step 0."""
    if resume:
        step = ckpt.list_epochs(ckpt_dir)[-1]
        state, _ = load_params(run, ckpt_dir, step)
        if jax.process_index() == 0 and (work / rundir.METRICS).is_file():
            # Lines past the resumed checkpoint are recomputed, identically.
            rundir.write_metrics(work, [row for row in rundir.read_metrics(work) if row["step"] <= step])
        print(f"resumed from {ckpt.epoch_path(ckpt_dir, step)} (step {step})", flush=True)
        return state, step
    save_checkpoint(run, run.state, ckpt_dir, 0)
    return run.state, 0


def train_to(run: LMRun, state: loop.TokenTrainState, start: int, stop: int, ckpt_dir: Path, work: Path,
             progress: bool) -> loop.TokenTrainState:
    """Train from `start` to `stop`, saving resume checkpoints every save_every steps; checkpoint `stop`."""
    every = run.cfg.save_every
    marks = [s for s in range(start + 1, stop) if every and s % every == 0] + [stop]
    # Resume checkpoints between measured steps: only the newest of them is kept.
    keep = set(run.cfg.checkpoint_steps) if run.cfg.keep_checkpoints else set()
    for mark in marks:
        state, _ = train_steps(run, state, start, mark, work=work, last_checkpoint=_last_checkpoint(ckpt_dir),
                               progress=progress)
        save_checkpoint(run, state, ckpt_dir, mark)
        if jax.process_index() == 0:  # one process deletes; the others never read old checkpoints
            ckpt.prune(ckpt_dir, keep_last=1, keep=keep)
        start = mark
    return state
