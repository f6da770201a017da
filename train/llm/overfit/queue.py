"""The overfitting queue's pieces: train with a loss curve, then the spectra, draws, sizes and the paper's procedure.

Each piece skips what is written already and resumes what a kill interrupted (checkpoints, the Krylov state of the
measurement under way in <work>/lanczos/); after each measurement the analysis is rebuilt (analysis.analyse). A
spectrum not converged within max_lanczos_steps is listed in <work>/not_converged.json and the queue goes on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from train.llm.overfit.analysis import analyse
from train.llm.overfit.plan import (DRAWS, EVAL_EVERY, PAPER_LITERAL, SIZE_FACTORS, Plan, checkpoint_losses, log,
                                    read_curve)
from train.llm.overfit.stats import key_steps

__all__ = ["train_piece", "spectra_piece", "draws_piece", "sizes_piece", "paper_piece", "paper_literal"]


def _build(p: Plan, **fields):
    """The run assembled for the preset, with spectrum fields replaced (a draw, a sample size)."""
    from train.llm.build import build

    return build(dataclasses.replace(p.cfg, **fields), data_dir=p.data_dir)


def _train_sample(run) -> list:
    """The fixed training-loss sample: eval_sequences windows of the (subset) training split, from
    fold_in(data_options, 1) (the held-out sample is fold_in(data_options, 0))."""
    import jax

    from train.llm import data as data_lib

    return data_lib.fixed_batches(run.data.train, jax.random.fold_in(run.keys.data_options, 1), run.cfg.eval_sequences,
                                  run.cfg.eval_batch)


def _losses(run, trained, train_batches) -> dict[str, float]:
    """Test and training loss (evaluation mode, fixed samples) of trained parameters, and their gap."""
    from train.llm import loop

    test = loop.evaluate(run.eval_step, trained, run.fixed, run.eval_batches)
    train_loss = loop.evaluate(run.eval_step, trained, run.fixed, train_batches)
    return {"test_loss": test, "train_loss": train_loss, "gap": test - train_loss}


def train_piece(p: Plan, progress: bool = False) -> None:
    """Train the preset to its last step, evaluating every EVAL_EVERY steps; resumes from the newest checkpoint."""
    from train import checkpoint as ckpt
    from train import record, rundir
    from train.llm import driver
    from train.llm.run import write_config

    cfg, ckpt_dir, curve_path = p.cfg, ckpt.checkpoint_dir(p.work), p.work / "curve.jsonl"
    done = ckpt.list_epochs(ckpt_dir)
    if done and done[-1] >= cfg.steps and (p.out / "curve.json").is_file():
        return
    p.work.mkdir(parents=True, exist_ok=True)
    run = _build(p)
    resume = bool(done)
    if resume and (p.work / rundir.CONFIG).is_file():
        driver.check_resume_config(json.loads((p.work / rundir.CONFIG).read_text()), cfg)
    write_config(p.work, cfg)
    state, start = driver.restore_or_start(run, ckpt_dir, p.work, resume)
    curve = read_curve(curve_path, start)
    curve_path.write_text("".join(json.dumps(row) + "\n" for row in curve))
    sample = _train_sample(run)
    if not curve:
        curve.append({"step": 0, **_losses(run, state.params, sample)})
        curve_path.write_text(json.dumps(curve[-1]) + "\n")
    marks = sorted({s for s in range(start + 1, cfg.steps + 1) if s % EVAL_EVERY == 0} |
                   {s for s in cfg.checkpoint_steps if s > start} | {cfg.steps})
    # Every resume checkpoint is kept too (2.4 MB each here): steps around the minimum stay measurable.
    keep = set(cfg.checkpoint_steps) | set(range(0, cfg.steps + 1, cfg.save_every or cfg.steps + 1))
    t0 = time.perf_counter()
    for mark in marks:
        last = ckpt.list_epochs(ckpt_dir)
        state, _ = driver.train_steps(run, state, start, mark, work=p.work,
                                      last_checkpoint=str(ckpt.epoch_path(ckpt_dir, last[-1])) if last else None,
                                      progress=progress)
        start = mark
        row = {"step": mark, **_losses(run, state.params, sample)}
        if mark in keep or (cfg.save_every and mark % cfg.save_every == 0) or mark == cfg.steps:
            driver.save_checkpoint(run, state, ckpt_dir, mark)
            ckpt.prune(ckpt_dir, keep_last=1, keep=keep)
        with open(curve_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"step {mark}: test {row['test_loss']:.4f}, train {row['train_loss']:.4f} "
             f"({time.perf_counter() - t0:.0f} s)")
    # The curve is kept only up to the newest checkpoint on resume, so it matches an uninterrupted run.
    record.write_json(p.out / "curve.json", {
        "eval_every": EVAL_EVERY, "eval_sequences": cfg.eval_sequences,
        "note": "test loss on the fixed held-out sample, training loss on a fixed sample of the training subset "
                "(fold_in(data_options, 1)), both in evaluation mode", "curve": read_curve(curve_path)})


def _measure_one(p: Plan, run, step: int, results: Path, state_name: str, progress: bool) -> None:
    """Measure one checkpoint with the assembled `run` (its Hessian sample) and write results.json + spectrum.png."""
    from train import checkpoint as ckpt
    from train import record
    from train.llm import driver, spectrum

    ckpt_dir = ckpt.checkpoint_dir(p.work)
    state, _ = driver.load_params(run, ckpt_dir, step)
    t0 = time.perf_counter()
    result = spectrum.measure_state(
        run, state.params, step, train_loss=spectrum.recent_train_loss(p.work, step),
        checkpoint=f"<work>/checkpoints/{ckpt.epoch_path(ckpt_dir, step).name}", progress=progress,
        lanczos_state=p.work / "lanczos" / state_name)
    fixed = _losses(run, state.params, _train_sample(run))
    result = dataclasses.replace(result, metrics=dict(result.metrics, train_loss_fixed=fixed["train_loss"],
                                                      gap=fixed["gap"]))
    record.save(result, results)
    record.plot(result, results.with_name("spectrum.png"), title=f"step {step}: {result.verdict}")
    log(f"{state_name}: step {step}: test loss {fixed['test_loss']:.4f}, {result.verdict}, "
         f"{result.spectrum['lanczos_steps']} Lanczos steps, {time.perf_counter() - t0:.0f} s")


def _try_measure(p: Plan, run, step: int, results: Path, state_name: str, progress: bool) -> bool:
    """_measure_one, except that a spectrum not converged within max_lanczos_steps is logged (and listed in
    <work>/not_converged.json) instead of stopping the queue; its Krylov state is kept, so that a run with a
    larger --set max_lanczos_steps=... continues it."""
    import hspec

    path = p.work / "not_converged.json"
    try:
        _measure_one(p, run, step, results, state_name, progress)
        if path.is_file():  # measured now, with a larger budget
            failed = json.loads(path.read_text())
            failed.pop(state_name, None)
            path.write_text(json.dumps(failed, indent=1))
        return True
    except hspec.NotConvergedError as err:
        log(f"{state_name}: step {step}: not converged ({err}); kept for a larger max_lanczos_steps")
        failed = json.loads(path.read_text()) if path.is_file() else {}
        failed[state_name] = {"step": step, "max_lanczos_steps": p.cfg.max_lanczos_steps, "error": str(err)}
        path.write_text(json.dumps(failed, indent=1))
        return False


def _spectrum_order(p: Plan) -> list[int]:
    """Checkpoint steps, the three key ones first (a partial queue already brackets the minimum)."""
    key = key_steps(checkpoint_losses(p))
    first = list(dict.fromkeys([key["before"], key["at"], key["after"]]))
    return first + [s for s in sorted(p.cfg.checkpoint_steps) if s not in first]


def spectra_piece(p: Plan, progress: bool = False, key_only: bool = False) -> None:
    """K = 1000 at every checkpoint (draw 0); with key_only, at the checkpoints before, at and after the minimum."""
    order = _spectrum_order(p)[:len(set(key_steps(checkpoint_losses(p)).values()))] if key_only else _spectrum_order(p)
    todo = [s for s in order if not (p.out / "steps" / str(s) / "results.json").is_file()]
    if todo:
        run = _build(p)
        for s in todo:
            _try_measure(p, run, s, p.out / "steps" / str(s) / "results.json", f"steps-{s}", progress)
            analyse(p)


def draws_piece(p: Plan, progress: bool = False) -> None:
    """Two more Hessian-sample draws at the checkpoints before, at and after the minimum."""
    key = key_steps(checkpoint_losses(p))
    runs = {}
    # At the minimum and after it first: the error bars of the turn come before those of the earlier checkpoint.
    for s in dict.fromkeys((key["at"], key["after"], key["before"])):
        for d in DRAWS:
            path = p.out / "draws" / f"draw-{d}" / "steps" / str(s) / "results.json"
            if not path.is_file():
                run = runs.setdefault(d, _build(p, hessian_draw=d))
                _try_measure(p, run, s, path, f"draw-{d}-{s}", progress)
                analyse(p)


def sizes_piece(p: Plan, progress: bool = False) -> None:
    """The Hessian sample at half and twice its size, before and after the minimum."""
    key = key_steps(checkpoint_losses(p))
    for factor in SIZE_FACTORS:
        seqs = max(1, int(round(p.cfg.hessian_sequences * factor)))
        name = f"sample-{seqs * p.cfg.block_size}"
        todo = [s for s in dict.fromkeys((key["before"], key["after"]))
                if not (p.out / "sensitivity" / name / "steps" / str(s) / "results.json").is_file()]
        if todo:
            run = _build(p, hessian_sequences=seqs)
            for s in todo:
                _try_measure(p, run, s, p.out / "sensitivity" / name / "steps" / str(s) / "results.json",
                             f"{name}-{s}", progress)
                analyse(p)


def paper_literal(p: Plan, run, step: int, progress: bool = False) -> dict[str, Any]:
    """The paper's literal procedure at one checkpoint (PAPER_LITERAL), its fit beside the converged one's."""
    import jax

    import hspec
    from train import checkpoint as ckpt
    from train import record
    from train.llm import driver, loop
    from train.llm.spectrum import subset_pattern

    state, _ = driver.load_params(run, ckpt.checkpoint_dir(p.work), step)
    params = loop.full_params(state.params, run.fixed)
    pattern = subset_pattern(run.cfg, run.model_info["arch_config"])
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):
        op = run.hessian_factory(run.hessian_loss, params, batches=run.hessian_batches, wrt=pattern)
        top = hspec.top_eigenvalues(op, k=run.cfg.k, key=run.keys.lanczos_start,
                                    num_steps=PAPER_LITERAL["lanczos_steps"], max_steps=PAPER_LITERAL["lanczos_steps"],
                                    num_starts=PAPER_LITERAL["num_starts"],
                                    combine=PAPER_LITERAL["combine"], strict=False, progress=progress,
                                    checkpoint_dir=p.work / "lanczos" / f"paper-literal-{step}")
    verdict = hspec.power_law_verdict(top.eigenvalues, run.cfg.k)
    spectrum = {k: v for k, v in top.to_dict().items() if k not in ("std",)}
    return {"step": step, "procedure": PAPER_LITERAL["procedure"], "fit": record.fit_block(verdict, 0.05),
            "verdict": verdict.verdict, "spectrum": dict(spectrum, num_positive=int(np.sum(top.eigenvalues > 0))),
            "hessian_tokens": int(sum(float(np.sum(b[2])) for b in run.hessian_batches)),
            "seconds": time.perf_counter() - t0 + top.lanczos.resumed_s}


def paper_piece(p: Plan, progress: bool = False) -> None:
    """The paper's literal procedure before and after the minimum."""
    from train import record

    key = key_steps(checkpoint_losses(p))
    for s in dict.fromkeys((key["before"], key["after"])):
        path = p.out / "sensitivity" / "paper-literal" / "steps" / str(s) / "results.json"
        if path.is_file():
            continue
        doc = paper_literal(p, _build(p), s, progress)
        record.write_json(path, doc)
        log(f"paper-literal: step {s}: {doc['verdict']} ({doc['spectrum']['num_converged']} of {p.cfg.k} "
             f"converged, {doc['spectrum']['num_distinct']} distinct, {doc['seconds']:.0f} s)")
        analyse(p)
