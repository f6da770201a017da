"""The training driver: epochs, checkpoints and resume, for one Experiment in one run directory.

A run resumed from its newest checkpoint is bit-identical to an uninterrupted one: epoch orders come
from `fold_in(data_order, epoch)`, augmentation from `fold_in(augment, step)` (train.keys), and the
state, step and metrics history come back from the checkpoint. A crash or kill loses at most the work
since the last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from train import checkpoint as ckpt
from train import config as config_lib
from train import loop, rundir
from train.experiment import Experiment


def initial_metrics(exp: Experiment, eval_step: Callable, state: loop.TrainState) -> dict:
    """Epoch 0: train and test loss/accuracy of the initialisation, both in eval mode."""
    tr_loss, tr_acc = loop.evaluate(eval_step, state.params, state.rest, exp.ds.x_train, exp.ds.y_train)
    te_loss, te_acc = loop.evaluate(eval_step, state.params, state.rest, exp.ds.x_test, exp.ds.y_test)
    return {"epoch": 0, "step": 0, "lr": exp.cfg.learning_rate, "train_loss": tr_loss, "train_acc": tr_acc,
            "test_loss": te_loss, "test_acc": te_acc, "train_metrics": "eval pass", "time_s": 0.0}


def save_checkpoint(exp: Experiment, run: Path, epoch: int, step: int, state: loop.TrainState,
                    history: list[dict]) -> Path:
    """Checkpoint after `epoch` (refusing non-finite parameters), then prune old checkpoints.

    Raises:
        NonFiniteLossError: the parameters are not finite (the last good checkpoint is named).
        CheckpointError: the checkpoint could not be written (full disk...): the message names the
            directory, says the last checkpoint is intact and that --resume continues from it.
    """
    if not loop.tree_is_finite(state.params):
        raise loop.NonFiniteLossError(epoch, step, float("nan"), _last(run))
    last = _last(run)
    try:
        path = ckpt.save(ckpt.checkpoint_dir(run), epoch, state,
                         {"step": step, "config": config_lib.to_dict(exp.cfg), "metrics": history})
    except ckpt.CheckpointWriteError as err:
        intact = f"the last checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"
        raise ckpt.CheckpointError(f"{err}; {intact}. Free space (or fix the directory), then continue with "
                                   "--resume") from None
    ckpt.prune(ckpt.checkpoint_dir(run), keep_last=exp.cfg.keep_checkpoints,
               keep={0, exp.num_epochs, *exp.cfg.spectrum_epochs})
    return path


def _last(run: Path) -> str | None:
    path = rundir.last_checkpoint(run)
    return None if path is None else str(path)


def starting_state(exp: Experiment, run: Path, eval_step: Callable,
                   resume: bool) -> tuple[loop.TrainState, int, int, list]:
    """The state to train from: a fresh initialisation (saved as epoch 0) or the newest checkpoint.

    Returns:
        (state, epoch, step, metrics history).
    """
    if resume:
        epoch = rundir.checkpoint_epochs(run)[-1]
        state, meta = ckpt.restore(rundir.checkpoint_path(run, epoch), exp.template)
        history = meta["metrics"]
        rundir.write_metrics(run, history)  # drops lines of an epoch lost when the process died
        return loop.TrainState(*state), epoch, meta["step"], history
    history = [initial_metrics(exp, eval_step, exp.template)]
    rundir.write_metrics(run, history)
    save_checkpoint(exp, run, 0, 0, exp.template, history)
    return exp.template, 0, 0, history


def epoch_line(r: dict, num_epochs: int) -> str:
    """One human-readable line of per-epoch metrics."""
    return (f"epoch {r['epoch']}/{num_epochs}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
            f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%  lr {r['lr']:.3g}  {r['time_s']:.1f} s")


def _epoch_record(exp: Experiment, eval_step: Callable, state: loop.TrainState, stats: dict, *, epoch: int,
                  step: int, t0: float) -> dict:
    """The metrics.jsonl record of an epoch: its running train metrics, a test evaluation, the rate, the time."""
    te_loss, te_acc = loop.evaluate(eval_step, state.params, state.rest, exp.ds.x_test, exp.ds.y_test)
    return {"epoch": epoch, "step": step, "lr": loop.current_lr(state.opt_state), "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"], "test_loss": te_loss, "test_acc": te_acc, "train_metrics": "running mean",
            "time_s": time.perf_counter() - t0}


def _run_epoch(exp: Experiment, step_fn: Callable, state: loop.TrainState, epoch: int, step: int, run: Path,
               progress: bool) -> tuple[loop.TrainState, dict]:
    """One epoch in the order `fold_in(data_order, epoch)`, naming the last checkpoint on a NaN."""
    from train import data

    cfg = exp.cfg
    perm = data.epoch_permutation(len(exp.ds.y_train), exp.keys.data_order, epoch)
    batches = data.batches(exp.ds.x_train, exp.ds.y_train, cfg.batch_size, perm, drop_last=cfg.drop_last)
    try:
        return loop.train_epoch(step_fn, state, batches, key=exp.keys.augment, epoch=epoch, first_step=step,
                                num_steps=min(exp.steps_per_epoch, exp.total_steps - step), progress=progress)
    except loop.NonFiniteLossError as err:
        raise loop.NonFiniteLossError(err.epoch, err.step, err.loss, _last(run)) from None


def train(exp: Experiment, run: Path, *, resume: bool, progress: bool,
          echo: Callable[[str], Any] = print) -> loop.TrainState:
    """Train from the initialisation or the newest checkpoint to the end, checkpointing as configured.

    Args:
        exp: the experiment.
        run: the run directory.
        resume: continue from the newest checkpoint.
        progress: show tqdm bars.
        echo: where per-epoch lines go.

    Returns:
        The final training state.

    Raises:
        NonFiniteLossError: naming the epoch, step and the last good checkpoint (left intact).
        CheckpointError: a checkpoint could not be written (the previous one is intact).
    """
    from train import data

    cfg = exp.cfg
    eval_step = loop.make_eval_step(exp.model_defs)
    step_fn = loop.make_train_step(exp.model_defs, exp.tx, data.augment_cifar if cfg.augment else None, cfg.micro_batch)
    state, start, step, history = starting_state(exp, run, eval_step, resume)
    for epoch in range(start + 1, exp.num_epochs + 1):
        t0 = time.perf_counter()
        state, stats = _run_epoch(exp, step_fn, state, epoch, step, run, progress)
        step += stats["steps"]
        record = _epoch_record(exp, eval_step, state, stats, epoch=epoch, step=step, t0=t0)
        history = history + [record]
        rundir.append_metrics(run, record)
        echo(epoch_line(record, exp.num_epochs))
        if epoch % cfg.checkpoint_every == 0 or epoch == exp.num_epochs or epoch in cfg.spectrum_epochs:
            save_checkpoint(exp, run, epoch, step, state, history)
    return state
