"""The LLM claim on one CPU core: a small GPT-2 trained past its test-loss minimum, K = 1000 at every checkpoint.

    python -m train.llm.overfit                       (re)start the whole queue; finished pieces are skipped
    python -m train.llm.overfit --status              what is finished and what is left
    python -m train.llm.overfit --only tracking       rebuild tracking.json, the figure and sensitivity.json

The queue, in order (each piece resumable: a killed process started again continues where it saved):

1. train      the preset's training run, with the test loss and the training loss (both in evaluation mode,
              on fixed samples) every `EVAL_EVERY` steps (<out>/curve.json); checkpoints in <work>/checkpoints
              (the measured steps kept, resume points every save_every steps).
2. key        K = 1000 of the last block, every value converged, at the checkpoints before, at and after the
              test-loss minimum (<out>/steps/<step>/results.json, the layout of `python -m train llm`); the Krylov
              state of the measurement under way is kept in <work>/lanczos/, so that a kill loses a minute, not
              the spectrum.
3. draws      two more Hessian-sample draws (independent samples of the same size) at those three checkpoints
              (<out>/draws/draw-<d>/steps/<step>/): the error bars of the turn at the minimum come early.
4. spectra    the same at every other checkpoint step.
5. sizes      the Hessian sample at half and twice its size, before and after the minimum
              (<out>/sensitivity/sample-<tokens>/steps/<step>/).
6. paper      the paper's literal procedure before and after the minimum: 3 Lanczos runs of 1000 steps, their
              Ritz values pooled, top 1000 of the 3000, unconverged values kept
              (<out>/sensitivity/paper-literal/steps/<step>/results.json).
After each piece: <out>/tracking.json (rows, draws' mean and sd, correlations with the test loss and the
generalisation gap, partial on the step), tracking.png, sensitivity.json and table.txt.

The checkpoints "before, at and after the minimum" are found from the test losses at the checkpoint steps: at =
the lowest, before = the checkpoint halfway (by index) between step 0 and it, after = the last.

Run it on one core: `taskset -c 1` with XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1" (results/llm/<preset>/README.md has the exact command).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["PRESET", "Plan", "plan", "key_steps", "partial_pearson", "partial_kendall", "correlation_views",
           "analyse", "main", "PIECES"]

PRESET = "gpt2-overfit-shakespeare-cpu"
EVAL_EVERY = 50
DRAWS = (1, 2)
SIZE_FACTORS = (0.5, 2.0)
K_PREFIXES = (100, 200, 300, 500, 1000)
PAPER_LITERAL = {"num_starts": 3, "lanczos_steps": 1000, "combine": "pool",
                 "procedure": "3 Lanczos runs of 1000 steps from independent starts, their 3000 Ritz values pooled, "
                              "the top 1000 fitted as they are (unconverged values and repeats kept)"}
PIECES = ("train", "key", "draws", "spectra", "sizes", "paper", "tracking")
MEASURES = ("d_ks", "s", "lambda_max", "trace")
TARGETS = ("test_loss", "gap")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a queue reads and writes: its config, results directory and (outside the work tree) work directory."""

    cfg: Any
    out: Path
    work: Path
    data_dir: str | None = None


def plan(preset: str = PRESET, out: str | os.PathLike | None = None, work: str | os.PathLike | None = None,
         data_dir: str | None = None, sets: Sequence[str] = ()) -> Plan:
    """The queue of a preset: results in results/llm/<preset>, work in ~/.cache/hspec/work/llm/<preset>."""
    from train.llm import presets

    cfg = presets.apply_overrides(presets.get(preset), presets.parse_assignments(list(sets)))
    out = Path(out) if out else Path("results") / "llm" / preset
    work = Path(work) if work else Path.home() / ".cache" / "hspec" / "work" / "llm" / preset
    return Plan(cfg, out, work, data_dir)


# -------------------------------------------------------------------------------------------------- statistics


def _clean(xs: Iterable, ys: Iterable, zs: Iterable | None = None) -> tuple[np.ndarray, ...]:
    """Rows where every value is a finite number."""
    cols = [list(xs), list(ys)] + ([list(zs)] if zs is not None else [])
    keep = [i for i in range(len(cols[0]))
            if all(c[i] is not None and math.isfinite(float(c[i])) for c in cols)]
    return tuple(np.array([float(c[i]) for i in keep], np.float64) for c in cols)


def _residuals(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """y less its least-squares line on z (with an intercept)."""
    design = np.stack([np.ones_like(z), z], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ coef


def partial_pearson(x: Iterable, y: Iterable, z: Iterable) -> dict[str, Any]:
    """Pearson's partial correlation of x and y given z: the correlation of their residuals on z (a line).

    The p-value is the t-test with n - 3 degrees of freedom. None where undefined (n < 4 or a constant residual).
    """
    from scipy import stats

    x, y, z = _clean(x, y, z)
    out = {"r": None, "p": None, "n": int(x.size)}
    if x.size < 4:
        return out
    rx, ry = _residuals(x, z), _residuals(y, z)
    if np.allclose(rx, 0) or np.allclose(ry, 0):
        return out
    r = float(np.corrcoef(rx, ry)[0, 1])
    dof = x.size - 3
    t = r * math.sqrt(dof / max(1e-300, 1 - r * r))
    return dict(out, r=r, p=float(2 * stats.t.sf(abs(t), dof)))


def partial_kendall(x: Iterable, y: Iterable, z: Iterable) -> dict[str, Any]:
    """Kendall's partial tau of x and y given z: (τxy − τxz τyz) / sqrt((1 − τxz²)(1 − τyz²)) (Kendall).

    No p-value (its distribution has no closed form). None where undefined.
    """
    from scipy import stats

    x, y, z = _clean(x, y, z)
    out = {"tau": None, "n": int(x.size)}
    if x.size < 4 or min(np.ptp(x), np.ptp(y), np.ptp(z)) == 0:
        return out
    txy, txz, tyz = (float(stats.kendalltau(a, b).statistic) for a, b in ((x, y), (x, z), (y, z)))
    denom = math.sqrt(max(0.0, (1 - txz ** 2) * (1 - tyz ** 2)))
    return out if denom == 0 else dict(out, tau=(txy - txz * tyz) / denom)


def correlation_views(rows: list[dict[str, Any]], measures: Sequence[str] = MEASURES,
                      targets: Sequence[str] = TARGETS) -> dict[str, Any]:
    """Each measure against each target: over all checkpoints, without step 0, partial on the step; and the
    measure's and the target's own correlation with the step (the time confound).

    Returns:
        {target: {measure: {"all": {pearson, pearson_p, kendall, kendall_p, n}, "after_init": {...},
        "partial_step": {"pearson", "pearson_p", "kendall", "n"}}}, "with_step": {name: {...}}}.
    """
    from train.llm.track import correlation

    later = [r for r in rows if r["step"] > 0]
    out: dict[str, Any] = {}
    for target in targets:
        out[target] = {}
        for m in measures:
            pp = partial_pearson([r[m] for r in rows], [r[target] for r in rows], [r["step"] for r in rows])
            pk = partial_kendall([r[m] for r in rows], [r[target] for r in rows], [r["step"] for r in rows])
            out[target][m] = {
                "all": correlation([r[m] for r in rows], [r[target] for r in rows]),
                "after_init": correlation([r[m] for r in later], [r[target] for r in later]),
                "partial_step": {"pearson": pp["r"], "pearson_p": pp["p"], "kendall": pk["tau"], "n": pp["n"]}}
    out["with_step"] = {name: correlation([r[name] for r in rows], [r["step"] for r in rows])
                        for name in (*measures, *targets)}
    return out


def key_steps(losses: dict[int, float]) -> dict[str, int]:
    """The checkpoints before, at and after the test-loss minimum, from the test loss at each checkpoint step.

    at: the lowest test loss; before: halfway by index between the first step after 0 and it; after: the last.
    """
    steps = sorted(losses)
    i = min(range(len(steps)), key=lambda j: losses[steps[j]])
    before = steps[max(1, i // 2)] if i > 1 else steps[max(0, i - 1)]
    return {"before": before, "at": steps[i], "after": steps[-1]}


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None with fewer than 2 values)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


# -------------------------------------------------------------------------------------------------- the queue


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _build(p: Plan, **fields):
    """The run assembled for the preset, with spectrum fields replaced (a draw, a sample size)."""
    from train.llm import train

    return train.build(dataclasses.replace(p.cfg, **fields), data_dir=p.data_dir)


def _train_sample(r) -> list:
    """The fixed training-loss sample: eval_sequences windows of the (subset) training split, from
    fold_in(data_options, 1) (the held-out sample is fold_in(data_options, 0))."""
    import jax

    from train.llm import data as data_lib

    return data_lib.fixed_batches(r.data.train, jax.random.fold_in(r.keys.data_options, 1), r.cfg.eval_sequences,
                                  r.cfg.eval_batch)


def _losses(r, trained, train_batches) -> dict[str, float]:
    """Test and training loss (evaluation mode, fixed samples) of trained parameters, and their gap."""
    from train.llm import loop

    step = loop.make_eval_step(r.split.eval_def)
    test = loop.evaluate(step, trained, r.fixed, r.eval_batches)
    train_loss = loop.evaluate(step, trained, r.fixed, train_batches)
    return {"test_loss": test, "train_loss": train_loss, "gap": test - train_loss}


def _read_curve(path: Path, upto: int | None = None) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [row for row in rows if upto is None or row["step"] <= upto]


def train_piece(p: Plan, progress: bool = False) -> None:
    """Train the preset to its last step, evaluating every EVAL_EVERY steps; resumes from the newest checkpoint."""
    from train import checkpoint as ckpt
    from train import record
    from train.llm import train

    cfg, ckpt_dir, curve_path = p.cfg, ckpt.checkpoint_dir(p.work), p.work / "curve.jsonl"
    done = ckpt.list_epochs(ckpt_dir)
    if done and done[-1] >= cfg.steps and (p.out / "curve.json").is_file():
        return
    p.work.mkdir(parents=True, exist_ok=True)
    r = _build(p)
    resume = bool(done)
    if resume and (p.work / train.CONFIG).is_file():
        train._check_resume_config(json.loads((p.work / train.CONFIG).read_text()), cfg)
    train._write_config(p.work, cfg)
    start = train._restore_or_start(r, ckpt_dir, p.work, resume)
    curve = _read_curve(curve_path, start)
    curve_path.write_text("".join(json.dumps(row) + "\n" for row in curve))
    sample = _train_sample(r)
    if not curve:
        curve.append({"step": 0, **_losses(r, r.state.params, sample)})
        curve_path.write_text(json.dumps(curve[-1]) + "\n")
    marks = sorted({s for s in range(start + 1, cfg.steps + 1) if s % EVAL_EVERY == 0} |
                   {s for s in cfg.checkpoint_steps if s > start} | {cfg.steps})
    # Every resume checkpoint is kept too (2.4 MB each here): steps around the minimum stay measurable.
    keep = set(cfg.checkpoint_steps) | set(range(0, cfg.steps + 1, cfg.save_every or cfg.steps + 1))
    t0 = time.perf_counter()
    for mark in marks:
        last = ckpt.list_epochs(ckpt_dir)
        train.train_steps(r, start, mark, metrics_path=p.work / train.METRICS,
                          last_checkpoint=str(ckpt.epoch_path(ckpt_dir, last[-1])) if last else None,
                          progress=progress)
        start = mark
        row = {"step": mark, **_losses(r, r.state.params, sample)}
        if mark in keep or (cfg.save_every and mark % cfg.save_every == 0) or mark == cfg.steps:
            train.save_checkpoint(r, ckpt_dir, mark)
            ckpt.prune(ckpt_dir, keep_last=1, keep=keep)
        with open(curve_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        _log(f"step {mark}: test {row['test_loss']:.4f}, train {row['train_loss']:.4f} "
             f"({time.perf_counter() - t0:.0f} s)")
    # The curve is kept only up to the newest checkpoint on resume, so it matches an uninterrupted run.
    record.write_json(p.out / "curve.json", {
        "eval_every": EVAL_EVERY, "eval_sequences": cfg.eval_sequences,
        "note": "test loss on the fixed held-out sample, training loss on a fixed sample of the training subset "
                "(fold_in(data_options, 1)), both in evaluation mode", "curve": _read_curve(curve_path)})


def _measure_one(p: Plan, r, step: int, results: Path, state_name: str, progress: bool) -> None:
    """Measure one checkpoint with the run `r` (its Hessian sample) and write results.json + spectrum.png."""
    from train import checkpoint as ckpt
    from train import record
    from train.llm import train

    ckpt_dir = ckpt.checkpoint_dir(p.work)
    state, _ = train.load_params(r, ckpt_dir, step)
    t0 = time.perf_counter()
    result = train.measure_state(
        r, state.params, step, train_loss=train._recent_train_loss(p.work / train.METRICS, step),
        checkpoint=f"<work>/checkpoints/{ckpt.epoch_path(ckpt_dir, step).name}", progress=progress,
        lanczos_state=p.work / "lanczos" / state_name)
    fixed = _losses(r, state.params, _train_sample(r))
    result = dataclasses.replace(result, metrics=dict(result.metrics, train_loss_fixed=fixed["train_loss"],
                                                      gap=fixed["gap"]))
    record.save(result, results)
    record.plot(result, results.with_name("spectrum.png"), title=f"step {step}: {result.verdict}")
    _log(f"{state_name}: step {step}: test loss {fixed['test_loss']:.4f}, {result.verdict}, "
         f"{result.spectrum['lanczos_steps']} Lanczos steps, {time.perf_counter() - t0:.0f} s")


def _try_measure(p: Plan, r, step: int, results: Path, state_name: str, progress: bool) -> bool:
    """_measure_one, except that a spectrum not converged within max_lanczos_steps is logged (and listed in
    <work>/not_converged.json) instead of stopping the queue; its Krylov state is kept, so that a run with a
    larger --set max_lanczos_steps=... continues it."""
    import hspec

    path = p.work / "not_converged.json"
    try:
        _measure_one(p, r, step, results, state_name, progress)
        if path.is_file():  # measured now, with a larger budget
            failed = json.loads(path.read_text())
            failed.pop(state_name, None)
            path.write_text(json.dumps(failed, indent=1))
        return True
    except hspec.NotConvergedError as err:
        _log(f"{state_name}: step {step}: not converged ({err}); kept for a larger max_lanczos_steps")
        failed = json.loads(path.read_text()) if path.is_file() else {}
        failed[state_name] = {"step": step, "max_lanczos_steps": p.cfg.max_lanczos_steps, "error": str(err)}
        path.write_text(json.dumps(failed, indent=1))
        return False


def _checkpoint_losses(p: Plan) -> dict[int, float]:
    """The test loss at each checkpoint step, from the training curve."""
    curve = {row["step"]: row["test_loss"] for row in _read_curve(p.work / "curve.jsonl")}
    if not curve and (p.out / "curve.json").is_file():
        curve = {row["step"]: row["test_loss"] for row in json.loads((p.out / "curve.json").read_text())["curve"]}
    return {s: curve[s] for s in p.cfg.checkpoint_steps if s in curve}


def _spectrum_order(p: Plan) -> list[int]:
    """Checkpoint steps, the three key ones first (a partial queue already brackets the minimum)."""
    key = key_steps(_checkpoint_losses(p))
    first = list(dict.fromkeys([key["before"], key["at"], key["after"]]))
    return first + [s for s in sorted(p.cfg.checkpoint_steps) if s not in first]


def spectra_piece(p: Plan, progress: bool = False, key_only: bool = False) -> None:
    """K = 1000 at every checkpoint (draw 0); with key_only, at the checkpoints before, at and after the minimum."""
    order = _spectrum_order(p)[:len(set(key_steps(_checkpoint_losses(p)).values()))] if key_only else _spectrum_order(p)
    todo = [s for s in order if not (p.out / "steps" / str(s) / "results.json").is_file()]
    if todo:
        r = _build(p)
        for s in todo:
            _try_measure(p, r, s, p.out / "steps" / str(s) / "results.json", f"steps-{s}", progress)
            analyse(p)


def draws_piece(p: Plan, progress: bool = False) -> None:
    """Two more Hessian-sample draws at the checkpoints before, at and after the minimum."""
    key = key_steps(_checkpoint_losses(p))
    runs = {}
    # At the minimum and after it first: the error bars of the turn come before those of the earlier checkpoint.
    for s in dict.fromkeys((key["at"], key["after"], key["before"])):
        for d in DRAWS:
            path = p.out / "draws" / f"draw-{d}" / "steps" / str(s) / "results.json"
            if not path.is_file():
                r = runs.setdefault(d, _build(p, hessian_draw=d))
                _try_measure(p, r, s, path, f"draw-{d}-{s}", progress)
                analyse(p)


def sizes_piece(p: Plan, progress: bool = False) -> None:
    """The Hessian sample at half and twice its size, before and after the minimum."""
    key = key_steps(_checkpoint_losses(p))
    for factor in SIZE_FACTORS:
        seqs = max(1, int(round(p.cfg.hessian_sequences * factor)))
        name = f"sample-{seqs * p.cfg.block_size}"
        todo = [s for s in dict.fromkeys((key["before"], key["after"]))
                if not (p.out / "sensitivity" / name / "steps" / str(s) / "results.json").is_file()]
        if todo:
            r = _build(p, hessian_sequences=seqs)
            for s in todo:
                _try_measure(p, r, s, p.out / "sensitivity" / name / "steps" / str(s) / "results.json",
                             f"{name}-{s}", progress)
                analyse(p)


def paper_literal(p: Plan, r, step: int, progress: bool = False) -> dict[str, Any]:
    """The paper's literal procedure at one checkpoint (PAPER_LITERAL), its fit beside the converged one's."""
    import jax

    import hspec
    from train import checkpoint as ckpt
    from train import record
    from train.llm import loop, train

    state, _ = train.load_params(r, ckpt.checkpoint_dir(p.work), step)
    params = loop.full_params(state.params, r.fixed)
    pattern = train.subset_pattern(r.cfg, r.model_info["arch_config"])
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):
        op = r.hessian_factory(loop.hessian_loss(r.split.eval_def), params, batches=r.hessian_batches, wrt=pattern)
        top = hspec.top_eigenvalues(op, k=r.cfg.k, key=r.keys.lanczos_start, num_steps=PAPER_LITERAL["lanczos_steps"],
                                    max_steps=PAPER_LITERAL["lanczos_steps"], num_starts=PAPER_LITERAL["num_starts"],
                                    combine=PAPER_LITERAL["combine"], strict=False, progress=progress,
                                    checkpoint_dir=p.work / "lanczos" / f"paper-literal-{step}")
    verdict = hspec.power_law_verdict(top.eigenvalues, r.cfg.k)
    spectrum = {k: v for k, v in top.to_dict().items() if k not in ("std",)}
    return {"step": step, "procedure": PAPER_LITERAL["procedure"], "fit": record.fit_block(verdict, 0.05),
            "verdict": verdict.verdict, "spectrum": dict(spectrum, num_positive=int(np.sum(top.eigenvalues > 0))),
            "hessian_tokens": int(sum(float(np.sum(b[2])) for b in r.hessian_batches)),
            "seconds": time.perf_counter() - t0 + top.lanczos.resumed_s}


def paper_piece(p: Plan, progress: bool = False) -> None:
    """The paper's literal procedure before and after the minimum."""
    from train import record

    key = key_steps(_checkpoint_losses(p))
    for s in dict.fromkeys((key["before"], key["after"])):
        path = p.out / "sensitivity" / "paper-literal" / "steps" / str(s) / "results.json"
        if path.is_file():
            continue
        doc = paper_literal(p, _build(p), s, progress)
        record.write_json(path, doc)
        _log(f"paper-literal: step {s}: {doc['verdict']} ({doc['spectrum']['num_converged']} of {p.cfg.k} "
             f"converged, {doc['spectrum']['num_distinct']} distinct, {doc['seconds']:.0f} s)")
        analyse(p)


# -------------------------------------------------------------------------------------------------- the analysis

_PER_STEP = ("step", "tokens_seen", "lanczos_steps", "trained")


def _load_results(folder: Path) -> dict[int, Any]:
    """The records under <folder>/steps/<step>/results.json, by step."""
    from train import record

    return {int(path.parent.name): record.load(path) for path in sorted(folder.glob("steps/*/results.json"))}


def _row(result) -> dict[str, Any]:
    """A tracking row (train.llm.track's), with the evaluation-mode training loss and the generalisation gap."""
    from train.llm import track

    row = track.checkpoint_row(result)
    row["train_loss_eval"] = result.metrics.get("train_loss_fixed")
    row["gap"] = result.metrics.get("gap")
    row["hessian_tokens"] = result.hessian_sample.get("tokens")
    return row


def _fit_at(eigenvalues: Sequence[float], k: int) -> dict[str, Any]:
    """The power-law fit of the top k of a spectrum (K prefixes)."""
    import hspec

    v = hspec.power_law_verdict(np.asarray(eigenvalues, np.float64), k)
    fit = v.fit or v.positive_fit
    return {"k": k, "d_ks": None if fit is None else fit.d_ks, "d_crit": float(hspec.critical_value(k, 0.05)),
            "s": None if fit is None else fit.s, "is_power_law": bool(v.is_power_law), "verdict": v.verdict}


def draw_summary(main: dict[int, Any], draws: dict[int, dict[int, Any]]) -> dict[str, Any]:
    """Per step with more than one draw: each measure's values over the draws (draw 0 first), mean and sd."""
    out = {}
    for step in sorted(main):
        results = [main[step]] + [draws[d][step] for d in sorted(draws) if step in draws[d]]
        if len(results) < 2:
            continue
        rows = [_row(r) for r in results]
        entry: dict[str, Any] = {"n": len(rows), "draws": [0] + [d for d in sorted(draws) if step in draws[d]]}
        for m in MEASURES:
            mean, sd = mean_sd([row[m] for row in rows])
            entry[m] = {"values": [row[m] for row in rows], "mean": mean, "sd": sd}
        entry["is_power_law"] = [row["is_power_law"] for row in rows]
        out[str(step)] = entry
    return out


def overfit_claims(rows: list[dict[str, Any]], views: dict[str, Any], draws: dict[str, Any],
                   key: dict[str, int], complete: bool = True) -> dict[str, Any]:
    """The LLM claims of METHOD.md section 5, each with the rule applied and its result (None: undecidable)."""
    from train.llm.track import PEARSON_THRESHOLD

    by_step = {r["step"]: r for r in rows}
    out: dict[str, Any] = {"pearson_threshold": PEARSON_THRESHOLD, "key_steps": key}
    init, at = by_step.get(0), by_step.get(key["at"])
    out["no_power_law_at_init"] = {"rule": "d_KS >= d_c at step 0", "d_ks": None if init is None else init["d_ks"],
                                   "d_crit": None if init is None else init["d_crit"],
                                   "holds": None if init is None else not init["is_power_law"]}
    out["d_ks_falls"] = {"rule": "d_KS at the test-loss minimum below d_KS at step 0",
                         "d_ks_init": None if init is None else init["d_ks"],
                         "d_ks_at_minimum": None if at is None else at["d_ks"],
                         "holds": None if init is None or at is None else at["d_ks"] < init["d_ks"]}
    for m in MEASURES:
        r = views["test_loss"][m]["all"]["pearson"]
        # Decided once every planned checkpoint is measured (a correlation over a few of them is shown, not used).
        out[f"{m}_tracks_test_loss"] = {"rule": f"Pearson r({m}, test loss) > {PEARSON_THRESHOLD} over all checkpoints",
                                        "pearson": r, "checkpoints": len(rows),
                                        "holds": None if r is None or not complete else r > PEARSON_THRESHOLD}
    # The decisive test where training overfits: does d_KS turn when the test loss turns?
    turn = {}
    for m in MEASURES:
        a, b = by_step.get(key["at"]), by_step.get(key["after"])
        if a is None or b is None:
            turn[m] = None
            continue
        sds = [(draws.get(str(s)) or {}).get(m, {}).get("sd") for s in (key["at"], key["after"])]
        noise = math.sqrt(sum(sd ** 2 for sd in sds)) if all(sd is not None for sd in sds) else None
        change = b[m] - a[m]
        turn[m] = {"at_minimum": a[m], "after": b[m], "change": change, "sampling_sd": noise,
                   "rises_beyond_2sd": None if noise is None else change > 2 * noise}
    loss_rise = None
    if by_step.get(key["at"]) and by_step.get(key["after"]):
        loss_rise = by_step[key["after"]]["test_loss"] - by_step[key["at"]]["test_loss"]
    out["turn_after_minimum"] = {"rule": "a measure that tracks the test loss rises from the minimum to the last "
                                         "checkpoint by more than twice the Hessian-sample sd of that change "
                                         "(sqrt(sd_at^2 + sd_after^2), from the draws)",
                                 "test_loss_rise": loss_rise, "measures": turn}
    return out


def analyse(p: Plan) -> dict[str, Any] | None:
    """Rebuild <out>/tracking.json, tracking.png, sensitivity.json and table.txt from what is measured so far."""
    from train import record
    from train.llm import track

    main = _load_results(p.out)
    if not main:
        return None
    draws = {d: _load_results(p.out / "draws" / f"draw-{d}") for d in DRAWS}
    results = [main[s] for s in sorted(main)]
    setting = {k: v for k, v in results[0].setting.items() if k not in _PER_STEP}
    tracking = track.tracking_record(setting, results)
    rows = [_row(r) for r in results]
    summary = draw_summary(main, draws)
    for row in rows:
        entry = summary.get(str(row["step"]))
        for m in ("d_ks", "s"):
            row[f"{m}_sd_draws"] = None if entry is None else entry[m]["sd"]
        row["num_draws"] = 1 if entry is None else entry["n"]
    views = correlation_views(rows)
    losses = _checkpoint_losses(p) or {r["step"]: r["test_loss"] for r in rows}
    key = key_steps(losses)
    tracking.update(checkpoints=rows, correlation_views=views, draws=summary, key_steps=key,
                    claims_overfit=overfit_claims(rows, views, summary, key,
                                                  complete=set(p.cfg.checkpoint_steps) <= set(main)),
                    measured_steps=sorted(main), planned_steps=sorted(p.cfg.checkpoint_steps))
    record.write_json(p.out / "tracking.json", tracking)
    record.write_json(p.out / "sensitivity.json", sensitivity(p, main, draws, key))
    curve = json.loads((p.out / "curve.json").read_text())["curve"] if (p.out / "curve.json").is_file() else []
    plot(tracking, curve, p.out / "tracking.png")
    (p.out / "table.txt").write_text(table(tracking) + "\n")
    return tracking


def sensitivity(p: Plan, main: dict[int, Any], draws: dict[int, dict[int, Any]], key: dict[str, int]) -> dict:
    """K prefixes, Hessian-sample draws and sizes, and the paper's literal procedure, before and after the minimum."""
    out: dict[str, Any] = {"key_steps": key, "k_prefixes": {}, "draws": {}, "sizes": {}, "paper_literal": {}}
    for name in ("before", "at", "after"):
        s = key[name]
        if s in main:
            eig = main[s].spectrum["eigenvalues"]
            out["k_prefixes"][name] = {"step": s, "fits": [_fit_at(eig, k) for k in K_PREFIXES if k <= len(eig)]}
            out["draws"][name] = {"step": s, "rows": [
                {"draw": d, **{m: _row(res)[m] for m in (*MEASURES, "is_power_law")}}
                for d, res in [(0, main[s])] + [(d, draws[d][s]) for d in sorted(draws) if s in draws[d]]]}
    for folder in sorted((p.out / "sensitivity").glob("sample-*")):
        for s, res in _load_results(folder).items():
            row = _row(res)
            out["sizes"].setdefault(str(s), []).append(
                {"tokens": row["hessian_tokens"], **{m: row[m] for m in (*MEASURES, "is_power_law", "lanczos_steps")}})
    for s, res in main.items():
        if str(s) in out["sizes"]:
            row = _row(res)
            out["sizes"][str(s)].append({"tokens": row["hessian_tokens"], "main": True,
                                         **{m: row[m] for m in (*MEASURES, "is_power_law", "lanczos_steps")}})
            out["sizes"][str(s)].sort(key=lambda e: e["tokens"])
    for path in sorted((p.out / "sensitivity" / "paper-literal").glob("steps/*/results.json")):
        doc = json.loads(path.read_text())
        s = doc["step"]
        conv = _row(main[s]) if s in main else None
        out["paper_literal"][str(s)] = {
            "procedure": doc["procedure"], "d_ks": doc["fit"]["d_ks"], "s": doc["fit"]["s"],
            "d_crit": doc["fit"]["d_crit"], "is_power_law": doc["fit"]["is_power_law"], "verdict": doc["verdict"],
            "num_converged": doc["spectrum"]["num_converged"], "num_distinct": doc["spectrum"]["num_distinct"],
            "num_positive": doc["spectrum"]["num_positive"], "num_starts": doc["spectrum"]["num_starts"],
            "combine": doc["spectrum"]["combine"], "lanczos_steps": doc["spectrum"]["lanczos_steps"],
            "converged": None if conv is None else {m: conv[m] for m in ("d_ks", "s", "is_power_law", "num_starts",
                                                                         "combine", "num_distinct")}}
    return out


def _f(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def table(tracking: dict[str, Any]) -> str:
    """Rows (with the draws' sd where measured) and the correlation views, for a person."""
    head = (f"{'step':>6} {'test':>7} {'train':>7} {'gap':>7} {'d_KS':>14} {'s':>13} {'lambda_max':>10} "
            f"{'Tr(H)':>9} {'PL':>3} {'m':>5}")
    lines = [head, "-" * len(head)]
    for r in tracking["checkpoints"]:
        d = _f(r["d_ks"]) + ("" if r["d_ks_sd_draws"] is None else f"±{r['d_ks_sd_draws']:.4f}")
        s = _f(r["s"], ".3f") + ("" if r["s_sd_draws"] is None else f"±{r['s_sd_draws']:.3f}")
        lines.append(f"{r['step']:>6} {_f(r['test_loss']):>7} {_f(r['train_loss_eval']):>7} {_f(r['gap']):>7} "
                     f"{d:>14} {s:>13} {_f(r['lambda_max'], '.4g'):>10} {_f(r['trace'], '.4g'):>9} "
                     f"{'yes' if r['is_power_law'] else 'no':>3} {_f(r['lanczos_steps'], 'd'):>5}")
    views = tracking["correlation_views"]
    for target in TARGETS:
        lines.append(f"with the {'test loss' if target == 'test_loss' else 'gap (test - train)'}:")
        for m in MEASURES:
            v = views[target][m]
            lines.append(f"  {m:<10} all r={_f(v['all']['pearson'], '+.3f')} tau={_f(v['all']['kendall'], '+.3f')}"
                         f" | without step 0 r={_f(v['after_init']['pearson'], '+.3f')} "
                         f"tau={_f(v['after_init']['kendall'], '+.3f')} | partial on step "
                         f"r={_f(v['partial_step']['pearson'], '+.3f')} tau={_f(v['partial_step']['kendall'], '+.3f')}")
    return "\n".join(lines)


def plot(tracking: dict[str, Any], curve: list[dict], path: Path) -> None:
    """Loss curves, and each measure against the step (draws' sd as error bars) with the test loss beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tracking["checkpoints"]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 1 + len(MEASURES), figsize=(4.2 * (1 + len(MEASURES)), 3.8))
    ax = axes[0]
    if curve:
        ax.plot([c["step"] for c in curve], [c["test_loss"] for c in curve], "-", color="C3", label="test")
        ax.plot([c["step"] for c in curve], [c["train_loss"] for c in curve], "-", color="C2", label="train")
    ax.plot(steps, [r["test_loss"] for r in rows], "o", color="C3", ms=4)
    ax.axvline(tracking["key_steps"]["at"], color="k", lw=0.6, ls=":")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("loss (dots: measured checkpoints)")
    if curve:
        ax.legend(fontsize=8)
    for ax, m in zip(axes[1:], MEASURES):
        vals = [np.nan if r[m] is None else r[m] for r in rows]
        err = [r.get(f"{m}_sd_draws") or 0.0 for r in rows]
        ax.errorbar(steps, vals, yerr=err, fmt="o-", color="C0", ms=4, capsize=3)
        if m == "d_ks" and rows[0].get("d_crit"):
            ax.axhline(rows[0]["d_crit"], color="k", lw=0.8, ls="--", label="d_c")
            ax.legend(fontsize=8, loc="upper right")
        ax.axvline(tracking["key_steps"]["at"], color="k", lw=0.6, ls=":")
        twin = ax.twinx()
        twin.plot(steps, [r["test_loss"] for r in rows], "s--", color="C3", alpha=0.5, ms=3)
        twin.set_ylabel("test loss", color="C3", fontsize=8)
        last = tracking["setting"].get("steps") or max(steps)
        ax.set_xlim(-0.03 * last, 1.03 * last)
        v = tracking["correlation_views"]["test_loss"][m]
        ax.set_title(f"{track_label(m)}: r={_f(v['all']['pearson'], '+.2f')}, partial on step "
                     f"{_f(v['partial_step']['pearson'], '+.2f')}", fontsize=9)
        ax.set_xlabel("step")
    name = tracking["setting"].get("preset", "")
    fig.suptitle(f"{name}: last-block Hessian through training past the test-loss minimum (dotted line); "
                 f"error bars: sd over Hessian-sample draws", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def track_label(m: str) -> str:
    from train.llm.track import LABELS

    return LABELS[m]


# -------------------------------------------------------------------------------------------------- entry point


def status(p: Plan) -> str:
    """One line per piece: done or what is left."""
    from train import checkpoint as ckpt

    done = ckpt.list_epochs(ckpt.checkpoint_dir(p.work))
    lines = [f"train: newest checkpoint {done[-1] if done else None} of {p.cfg.steps}"]
    measured = sorted(_load_results(p.out))
    lines.append(f"spectra: {len(measured)} of {len(p.cfg.checkpoint_steps)} ({measured})")
    for d in DRAWS:
        lines.append(f"draw {d}: {sorted(_load_results(p.out / 'draws' / f'draw-{d}'))}")
    for folder in sorted((p.out / "sensitivity").glob("*")):
        lines.append(f"{folder.name}: {sorted(int(x.parent.name) for x in folder.glob('steps/*/results.json'))}")
    if (p.work / "not_converged.json").is_file():
        lines.append(f"not converged: {sorted(json.loads((p.work / 'not_converged.json').read_text()))}")
    for state in sorted((p.work / "lanczos").glob("*/state.npz")):  # measurements under way (or killed)
        with np.load(state) as saved:
            lines.append(f"under way: {state.parent.name}, {int(saved['steps'])} Lanczos steps saved")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m train.llm.overfit`: run the queue (or one piece), skipping what is finished."""
    ap = argparse.ArgumentParser(prog="python -m train.llm.overfit", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=PRESET)
    ap.add_argument("--out", help="results directory (default results/llm/<preset>)")
    ap.add_argument("--work", help="checkpoints, curve, Krylov state (default ~/.cache/hspec/work/llm/<preset>)")
    ap.add_argument("--data-dir", help="data root (default: env HSPEC_DATA_DIR)")
    ap.add_argument("--only", choices=PIECES, action="append", help="run only these pieces (repeatable)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--status", action="store_true", help="print what is finished and exit")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    p = plan(args.preset, args.out, args.work, args.data_dir, args.sets)
    if args.status:
        print(status(p))
        return 0
    pieces = {"train": train_piece, "key": lambda q, progress=False: spectra_piece(q, progress, key_only=True),
              "spectra": spectra_piece, "draws": draws_piece, "sizes": sizes_piece,
              "paper": paper_piece, "tracking": lambda q, progress=False: analyse(q)}
    for name in PIECES:
        if args.only and name not in args.only:
            continue
        _log(f"piece {name}")
        pieces[name](p, progress=args.progress)
    analyse(p)
    _log("queue finished" if not args.only else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
