"""The overfitting queue's analysis: rows, the draws' spread, the correlation views, the claims, the sensitivities.

    analyse(plan) -> tracking     <out>/tracking.json, tracking.png, sensitivity.json and table.txt, rebuilt from
                                  every results.json measured so far (figures.table and figures.plot draw them)
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from train.llm.overfit.figures import plot, table
from train.llm.overfit.plan import DRAWS, K_PREFIXES, MEASURES, Plan, checkpoint_losses, load_results
from train.llm.overfit.stats import correlation_views, key_steps, mean_sd

__all__ = ["draw_summary", "overfit_claims", "analyse", "sensitivity"]

_PER_STEP = ("step", "tokens_seen", "lanczos_steps", "trained")


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


def _ends(by_step: dict[int, dict], draws: dict[str, Any], m: str, s0: int, s1: int, of_means: bool):
    """Measure m at steps s0 and s1 (draw 0, or with of_means the mean over each step's draws, draw 0 alone where it
    has none), and the noise of its change, sqrt(sd_0^2/n_0 + sd_1^2/n_1) with n = 1 for one draw, where both steps
    have draws; None where either step is missing."""
    if s0 == s1:
        return None
    ends = []
    for s in (s0, s1):
        row, entry = by_step.get(s), draws.get(str(s)) or {}
        if row is None or row[m] is None:
            return None
        mean = of_means and m in entry
        ends.append((entry[m]["mean"] if mean else row[m], (entry.get(m) or {}).get("sd"),
                     entry.get("n", 1) if mean else 1))
    (a, sd_a, n_a), (b, sd_b, n_b) = ends
    noise = None if sd_a is None or sd_b is None else math.sqrt(sd_a ** 2 / n_a + sd_b ** 2 / n_b)
    return a, b, noise, [n_a, n_b]


def _key_change(by_step: dict[int, dict], draws: dict[str, Any], m: str, s0: int, s1: int) -> dict[str, Any] | None:
    """Measure m from step s0 to s1 (draw 0), with the sampling sd of one draw's change where both have draws."""
    ends = _ends(by_step, draws, m, s0, s1, of_means=False)
    if ends is None:
        return None
    a, b, noise, _ = ends
    return {"from": a, "to": b, "change": b - a, "sampling_sd": noise}


def _mean_change(by_step: dict[int, dict], draws: dict[str, Any], m: str, s0: int, s1: int) -> dict[str, Any] | None:
    """Measure m from step s0 to s1 as the mean over each step's draws, with the standard error of that change."""
    ends = _ends(by_step, draws, m, s0, s1, of_means=True)
    if ends is None:
        return None
    a, b, se, n = ends
    return {"from": a, "to": b, "change": b - a, "standard_error": se, "draws": n}


def _beyond(change: float, sd: float | None, sign: int) -> bool | None:
    """Whether a change goes `sign`'s way by more than 2 sd: False without draws too when it goes the other way."""
    if sign * change <= 0:
        return False
    return None if sd is None else sign * change > 2 * sd


def _loss_change(by_step: dict[int, dict], s0: int, s1: int) -> float | None:
    """The test loss's change from step s0 to s1, where both are measured."""
    a, b = by_step.get(s0), by_step.get(s1)
    return None if a is None or b is None or s0 == s1 else b["test_loss"] - a["test_loss"]


def _both(falls: bool | None, rises: bool | None, missing: bool) -> bool | None:
    """Follows the turn: False as soon as one half is decided against, None while a half is undecided."""
    if falls is False or rises is False:
        return False
    return None if missing or falls is None or rises is None else True


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
    # The decisive test where training overfits: does a measure turn when the test loss turns? Each change is of
    # draw 0 (the same sample at every checkpoint); its noise is that of one draw's change, from the draws' sd.
    fall = {m: _key_change(by_step, draws, m, key["before"], key["at"]) for m in MEASURES}
    rise = {m: _key_change(by_step, draws, m, key["at"], key["after"]) for m in MEASURES}
    turn = {m: None if rise[m] is None else {
        "at_minimum": rise[m]["from"], "after": rise[m]["to"], "change": rise[m]["change"],
        "sampling_sd": rise[m]["sampling_sd"],
        "rises_beyond_2sd": _beyond(rise[m]["change"], rise[m]["sampling_sd"], +1)} for m in MEASURES}
    out["turn_after_minimum"] = {"rule": "a measure that tracks the test loss rises from the minimum to the last "
                                         "checkpoint by more than twice the Hessian-sample sd of that change "
                                         "(sqrt(sd_at^2 + sd_after^2), from the draws)",
                                 "test_loss_rise": _loss_change(by_step, key["at"], key["after"]), "measures": turn}
    before = {m: None if fall[m] is None else {
        "before": fall[m]["from"], "at_minimum": fall[m]["to"], "change": fall[m]["change"],
        "sampling_sd": fall[m]["sampling_sd"],
        "falls_beyond_2sd": _beyond(fall[m]["change"], fall[m]["sampling_sd"], -1)} for m in MEASURES}
    out["fall_before_minimum"] = {"rule": "a measure that tracks the test loss falls from the checkpoint before the "
                                          "minimum to the minimum by more than twice the Hessian-sample sd of that "
                                          "change (sqrt(sd_before^2 + sd_at^2), from the draws)",
                                  "test_loss_change": _loss_change(by_step, key["before"], key["at"]),
                                  "measures": before}
    out["follows_turn"] = {"rule": "falls beyond 2 sd to the test-loss minimum and rises beyond 2 sd after it",
                           "measures": {m: _both(before[m] and before[m]["falls_beyond_2sd"],
                                                 turn[m] and turn[m]["rises_beyond_2sd"],
                                                 before[m] is None or turn[m] is None) for m in MEASURES}}
    # The same turn seen through the means of the draws (all three samples at each key checkpoint, not draw 0
    # alone), shown beside the rule above; added once the draws at the checkpoint before the minimum were seen.
    means = {}
    for m in MEASURES:
        f, r = (_mean_change(by_step, draws, m, *steps) for steps in ((key["before"], key["at"]),
                                                                       (key["at"], key["after"])))
        for half, sign in ((f, -1), (r, +1)):
            if half is not None:
                half["beyond_2se"] = _beyond(half["change"], half["standard_error"], sign)
        means[m] = {"fall": f, "rise": r, "follows": _both(f and f["beyond_2se"], r and r["beyond_2se"],
                                                           f is None or r is None)}
    out["follows_turn_means"] = {"rule": "the mean over the Hessian-sample draws falls to the test-loss minimum and "
                                         "rises after it, each by more than twice the standard error of the change "
                                         "(sqrt(sd_a^2/n_a + sd_b^2/n_b))", "measures": means}
    return out


def analyse(p: Plan) -> dict[str, Any] | None:
    """Rebuild <out>/tracking.json, tracking.png, sensitivity.json and table.txt from what is measured so far."""
    from train import record
    from train.llm import track

    main = load_results(p.out)
    if not main:
        return None
    draws = {d: load_results(p.out / "draws" / f"draw-{d}") for d in DRAWS}
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
    losses = checkpoint_losses(p) or {r["step"]: r["test_loss"] for r in rows}
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
        for s, res in load_results(folder).items():
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
