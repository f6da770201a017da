"""REPRODUCTION.md's LLM section, from results/llm alone (called by `python -m train report`).

For a run of the overfitting queue (train.llm.overfit: tracking.json with `claims_overfit`): the claims as
docs/method.md section 5 states them, the rule applied to each and our result; every checkpoint with the error bars of
the Hessian-sample draws; Pearson and Kendall correlations of d_KS, s, lambda_max and Tr(H) with the test loss and
with the generalisation gap (all checkpoints, without step 0, partial on the step); the sensitivity of the verdict
(K prefixes, sample draws and sizes, the paper's literal procedure); and what departs from the paper's setting.
Other tracking runs (`python -m train llm`) get their correlation line. The same files give the same text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["llm_section", "llm_brief", "claim_rows", "CLAIM_TEXT"]

CLAIM_TEXT = ("docs/method.md §5 (LLMs): \"d_KS falls as training proceeds and tracks the test loss (Pearson r above "
              "0.9), while λ_max and Tr(H) do not; the power law is absent at initialisation.\"")
LABEL = {"d_ks": "d_KS", "s": "s", "lambda_max": "λ_max", "trace": "Tr(H)"}
MEASURES = ("d_ks", "s", "lambda_max", "trace")


def _f(x: Any, spec: str = ".4f") -> str:
    return "–" if x is None else format(x, spec)


def _pm(mean: Any, sd: Any, spec: str) -> str:
    return _f(mean, spec) + ("" if sd is None else f" ± {format(sd, spec)}")


def _word(holds: Any) -> str:
    return "undecided (not measured yet)" if holds is None else ("holds" if holds else "does not hold")


def _agree(holds: Any, paper_says: bool) -> str:
    if holds is None:
        return "undecided"
    return "agree" if bool(holds) == paper_says else "disagree"


def claim_rows(t: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Each claim as (claim, rule applied, our number, verdict): "agree", "disagree", "undecided", or both rules'
    verdicts where the turn's two rules differ."""
    c = t["claims_overfit"]
    rows = []
    init = c["no_power_law_at_init"]
    ours = "step 0 not measured yet" if init["d_ks"] is None else f"d_KS {_f(init['d_ks'])}, d_c {_f(init['d_crit'])}"
    rows.append(("the power law is absent at initialisation", init["rule"], ours, _agree(init["holds"], True)))
    falls = c["d_ks_falls"]
    rows.append(("d_KS falls as training proceeds", falls["rule"],
                 f"{_f(falls['d_ks_init'])} → {_f(falls['d_ks_at_minimum'])}", _agree(falls["holds"], True)))
    for m, says in (("d_ks", True), ("lambda_max", False), ("trace", False)):
        x = c[f"{m}_tracks_test_loss"]
        claim = "d_KS tracks the test loss" if m == "d_ks" else f"{LABEL[m]} does not track the test loss"
        partial = "" if x["holds"] is not None or x["pearson"] is None else f" (over {x.get('checkpoints')} so far)"
        rows.append((claim, x["rule"].replace(m, LABEL[m], 1), f"r = {_f(x['pearson'], '+.3f')}{partial}",
                     _agree(x["holds"], says)))
    follows = c.get("follows_turn")
    for m, says in (("d_ks", True), ("lambda_max", False), ("trace", False)) if follows else ():
        b, a = c["fall_before_minimum"]["measures"].get(m), c["turn_after_minimum"]["measures"].get(m)
        claim = (f"{LABEL[m]} tracks the test loss where it turns" if says else
                 f"{LABEL[m]} does not track the test loss where it turns")
        ours = f"draw 0: {_change_cell(b)} to the minimum, {_change_cell(a)} after it"
        verdict = _agree(follows["measures"].get(m), says)
        by_means = (c.get("follows_turn_means") or {}).get("measures", {}).get(m)
        if by_means:
            ours += (f"; the draws' means: {_mean_cell(by_means['fall'])} to the minimum, "
                     f"{_mean_cell(by_means['rise'])} after it")
            if _agree(by_means["follows"], says) != verdict:
                verdict = f"{verdict} (draw 0); {_agree(by_means['follows'], says)} (the draws' means)"
        rows.append((claim, f"{follows['rule'].replace('falls', 'it falls', 1)} (table below)", ours, verdict))
    return rows


def claims_table(t: dict[str, Any]) -> str:
    """Each claim, the rule applied, our number and agree / disagree."""
    return "\n".join(["| claim (docs/method.md §5) | rule applied | ours | |", "|---|---|---|---|"]
                     + [f"| {claim} | {rule} | {ours} | {verdict} |" for claim, rule, ours, verdict in claim_rows(t)])


def llm_brief(results: str | os.PathLike) -> str:
    """One sentence per overfitting-queue run for the report's "In brief": how many of its claim rules agree."""
    out = []
    for path in sorted((Path(results) / "llm").glob("*/tracking.json")):
        t = json.loads(path.read_text())
        if "claims_overfit" not in t:
            continue
        rows = claim_rows(t)
        verdicts = [v for *_, v in rows]
        against = [f"{claim}: {ours}" for claim, _, ours, v in rows if v == "disagree"]
        split = [claim for claim, *_, v in rows if v not in ("agree", "disagree", "undecided")]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("agree", "disagree", "undecided"))
        out.append(f"The LLM claim ({path.parent.name}, trained past its test-loss minimum): of the {len(rows)} "
                   f"rules its section applies, {counts}" + (f" ({'; '.join(against)})" if against else "")
                   + (f", and {len(split)} split between the turn's two rules ({'; '.join(split)})" if split else "")
                   + ".")
    return " ".join(out)


def checkpoint_table(t: dict[str, Any]) -> str:
    """One row per checkpoint; ± is the sd over the Hessian-sample draws where they were measured."""
    key = {v: k for k, v in t["key_steps"].items()}
    head = ("| step | test loss | train loss | gap | d_KS | s | λ_max | Tr(H) | power law | converged | Lanczos "
            "steps | starts / combine / distinct |")
    rows = [head, "|" + "---|" * 12]
    for r in t["checkpoints"]:
        mark = f" ({key[r['step']]} the minimum)" if r["step"] in key and key[r["step"]] != "at" else (
            " (the minimum)" if key.get(r["step"]) == "at" else "")
        draws = t["draws"].get(str(r["step"]))
        d_ks = _pm(draws["d_ks"]["mean"], draws["d_ks"]["sd"], ".4f") if draws else _f(r["d_ks"])
        s = _pm(draws["s"]["mean"], draws["s"]["sd"], ".3f") if draws else _f(r["s"], ".3f")
        n = f" (n={draws['n']})" if draws else ""
        rows.append(f"| {r['step']}{mark} | {_f(r['test_loss'])} | {_f(r.get('train_loss_eval'))} | "
                    f"{_f(r.get('gap'))} | {d_ks}{n} | {s} | {_f(r['lambda_max'], '.4g')} | {_f(r['trace'], '.4g')} | "
                    f"{'yes' if r['is_power_law'] else 'no'} | {r['num_converged']} of {r['k']} | "
                    f"{r['lanczos_steps']} | {r['num_starts']} / {r['combine']} / {r['num_distinct']} |")
    return "\n".join(rows) + ("\n\nWhere three Hessian-sample draws were measured, d_KS and s are their mean ± sd (n "
                             "draws); every other number, and every correlation, is of draw 0, the same sample at "
                             "every checkpoint.")


def _corr_cell(c: dict[str, Any], key: str, pkey: str | None) -> str:
    if c.get(key) is None:
        return "–"
    p = c.get(pkey) if pkey else None
    return f"{c[key]:+.2f}" + ("" if p is None else f" (p {p:.2g})")


def correlation_table(t: dict[str, Any]) -> str:
    """Pearson and Kendall with the test loss and with the gap: all, without step 0, partial on the step."""
    v = t["correlation_views"]
    rows = ["| measure | with | r, all | τ, all | r, without step 0 | τ, without step 0 | r, partial on step | "
            "τ, partial on step |", "|" + "---|" * 8]
    for target, name in (("test_loss", "test loss"), ("gap", "gap")):
        for m in MEASURES:
            c = v[target][m]
            rows.append(f"| {LABEL[m]} | {name} | {_corr_cell(c['all'], 'pearson', 'pearson_p')} | "
                        f"{_corr_cell(c['all'], 'kendall', 'kendall_p')} | "
                        f"{_corr_cell(c['after_init'], 'pearson', 'pearson_p')} | "
                        f"{_corr_cell(c['after_init'], 'kendall', 'kendall_p')} | "
                        f"{_corr_cell(c['partial_step'], 'pearson', 'pearson_p')} | "
                        f"{_corr_cell(c['partial_step'], 'kendall', None)} |")
    steps = ", ".join(f"{LABEL.get(k, k.replace('_', ' '))} {_f(c['kendall'], '+.2f')}"
                      for k, c in v["with_step"].items())
    return "\n".join(rows) + f"\n\nKendall τ of each series with the step (the time confound): {steps}."


def _cell(x: dict[str, Any] | None, noise_key: str, flag: str, moved: str) -> str:
    """One half of the turn: the change, ± its noise (`noise_key`), and with `moved` whether `flag` says it goes the
    right way beyond 2 of them (`moved`, or "no")."""
    if x is None:
        return "–"
    noise = " (no draws yet)" if x[noise_key] is None else f" ± {x[noise_key]:.2g}"
    decided = "" if not moved or x[flag] is None else f": {moved if x[flag] else 'no'}"
    return f"{_f(x['change'], '+.3g')}{noise}{decided}"


def _change_cell(x: dict[str, Any] | None, moved: str = "", flag: str = "") -> str:
    """A half of draw 0's turn: its change ± the sampling sd of one draw's change."""
    return _cell(x, "sampling_sd", flag, moved if flag else "")


def _mean_cell(x: dict[str, Any] | None, moved: str = "") -> str:
    """A half of the turn through the draws' means: the change ± its standard error."""
    return _cell(x, "standard_error", "beyond_2se", moved)


def turn_paragraph(t: dict[str, Any]) -> str:
    """What each measure does while the test loss falls to its minimum and rises after it: a table and the rules."""
    claims, key = t["claims_overfit"], t["key_steps"]
    turn = claims["turn_after_minimum"]
    fall = claims.get("fall_before_minimum", {"measures": {}, "test_loss_change": None})
    follows = claims.get("follows_turn", {"measures": {}})
    if turn["test_loss_rise"] is None:
        return "The checkpoints at and after the minimum are not measured yet."
    by_step = {r["step"]: r for r in t["checkpoints"]}
    loss = " → ".join(_f((by_step.get(key[n]) or {}).get("test_loss"), ".3f") for n in ("before", "at", "after"))
    means = claims.get("follows_turn_means", {"measures": {}, "rule": "–"})
    yes_no = lambda v: "undecided" if v is None else "yes" if v else "no"  # noqa: E731
    rows = [f"| measure | step {key['before']} (before) | step {key['at']} (the minimum) | step {key['after']} (after) "
            "| fall to the minimum, beyond 2 sd | rise after it, beyond 2 sd | follows the turn | the draws' means: "
            "fall, beyond 2 se | rise, beyond 2 se | follows the turn |", "|" + "---|" * 10]
    for m in MEASURES:
        b, a = fall["measures"].get(m), turn["measures"].get(m)
        vals = [(by_step.get(key[n]) or {}).get(m) for n in ("before", "at", "after")]
        mm = means["measures"].get(m) or {"fall": None, "rise": None, "follows": None}
        rows.append(f"| {LABEL[m]} | " + " | ".join(_f(v, ".4g") for v in vals) + " | "
                    f"{_change_cell(b, 'falls', 'falls_beyond_2sd')} | {_change_cell(a, 'rises', 'rises_beyond_2sd')} "
                    f"| {yes_no(follows['measures'].get(m))} | {_mean_cell(mm['fall'], 'falls')} | "
                    f"{_mean_cell(mm['rise'], 'rises')} | {yes_no(mm['follows'])} |")
    return (f"Across the turn of the test loss ({loss} at steps {key['before']}, {key['at']}, {key['after']}), each "
            f"measure of draw 0, its change, and the Hessian-sample sd of that change (from the draws). Rules: "
            f"{fall.get('rule', '–')}; {turn['rule']}; a measure follows the turn when it does both. Beside it, the "
            f"same turn through the means over the draws (n at each key checkpoint in the table below): "
            f"{means['rule']}. The draw-0 rule was set before the draws at step {key['before']} were measured, the "
            f"means' rule after.{_differ(t, follows, means)}\n\n" + "\n".join(rows))


def _differ(t: dict[str, Any], follows: dict[str, Any], means: dict[str, Any]) -> str:
    """Where the two turn rules decide differently: the draws' sd at each key checkpoint, which makes the difference."""
    out = []
    for m in MEASURES:
        a, b = follows["measures"].get(m), (means["measures"].get(m) or {}).get("follows")
        if a is None or b is None or a == b:
            continue
        sds = [f"{_f(((t['draws'].get(str(t['key_steps'][n])) or {}).get(m) or {}).get('sd'), '.2g')} at step "
               f"{t['key_steps'][n]}" for n in ("before", "at", "after")]
        out.append(f" They differ for {LABEL[m]}, whose draws have sd " + ", ".join(sds) + ": one draw's change "
                   "carries the whole variance of each end, the means' change 1/n of it.")
    return "".join(out)


def sensitivity_paragraphs(sens: dict[str, Any] | None) -> str:
    """K prefixes, draws, sample sizes and the paper's literal procedure, as short tables."""
    if not sens:
        return "Sensitivity: not measured yet."
    out = []
    if any(e["fits"] for e in sens["k_prefixes"].values()):
        ks = [f["k"] for f in next(iter(sens["k_prefixes"].values()))["fits"]]
        rows = ["| checkpoint | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for name, e in sens["k_prefixes"].items():
            rows.append(f"| {name} the minimum (step {e['step']}) | " + " | ".join(
                f"{_f(f['d_ks'])} / {_f(f['d_crit'])} ({'PL' if f['is_power_law'] else 'no'}), s {_f(f['s'], '.2f')}"
                for f in e["fits"]) + " |")
        out.append("K prefixes of the converged spectrum (d_KS / d_c, verdict, s):\n\n" + "\n".join(rows))
    if sens["sizes"]:
        rows = ["| step | Hessian tokens | d_KS | s | λ_max | Tr(H) | power law | Lanczos steps |", "|" + "---|" * 8]
        for step, entries in sorted(sens["sizes"].items(), key=lambda kv: int(kv[0])):
            for e in entries:
                rows.append(f"| {step} | {e['tokens']}{' (main)' if e.get('main') else ''} | {_f(e['d_ks'])} | "
                            f"{_f(e['s'], '.3f')} | {_f(e['lambda_max'], '.4g')} | {_f(e['trace'], '.4g')} | "
                            f"{'yes' if e['is_power_law'] else 'no'} | {e['lanczos_steps']} |")
        out.append("Hessian-sample size (half, the run's, twice):\n\n" + "\n".join(rows))
    if sens["draws"]:
        lines = []
        for name, e in sens["draws"].items():
            vals = ", ".join(f"{_f(r['d_ks'])}" for r in e["rows"])
            ss = ", ".join(f"{_f(r['s'], '.3f')}" for r in e["rows"])
            lines.append(f"- {name} the minimum (step {e['step']}), draws {[r['draw'] for r in e['rows']]}: "
                         f"d_KS {vals}; s {ss}")
        out.append("Hessian-sample draws (independent samples of the run's size):\n\n" + "\n".join(lines))
    if sens["paper_literal"]:
        rows = ["| step | procedure | d_KS | d_c | s | power law | converged | distinct | positive |",
                "|" + "---|" * 9]
        for step, e in sorted(sens["paper_literal"].items(), key=lambda kv: int(kv[0])):
            rows.append(f"| {step} | paper's literal: {e['num_starts']} runs × {e['lanczos_steps']} steps, "
                        f"{e['combine']}, unconverged kept | {_f(e['d_ks'])} | {_f(e['d_crit'])} | {_f(e['s'], '.3f')} "
                        f"| {'yes' if e['is_power_law'] else 'no'} | {e['num_converged']} | {e['num_distinct']} | "
                        f"{e['num_positive']} |")
            conv = e["converged"]
            if conv:
                rows.append(f"| {step} | converged (ours): {conv['num_starts']} start, {conv['combine']} | "
                            f"{_f(conv['d_ks'])} | {_f(e['d_crit'])} | {_f(conv['s'], '.3f')} | "
                            f"{'yes' if conv['is_power_law'] else 'no'} | all | {conv['num_distinct']} | all |")
        out.append("The paper's literal procedure beside the converged one (same checkpoint, same Hessian sample):\n\n"
                   + "\n".join(rows))
    return "\n\n".join(out)


def overfit_section(name: str, t: dict[str, Any], sens: dict[str, Any] | None, figure: str | None) -> str:
    """The section of one overfitting-queue run."""
    s = t["setting"]
    planned, measured = t.get("planned_steps", []), t.get("measured_steps", [])
    missing = [x for x in planned if x not in measured]
    intro = (f"### {name}\n\nA {s.get('arch_n_layer')}-layer GPT-2 ({s.get('arch_n_head')} heads, width "
             f"{s.get('arch_n_embd')}, block {s.get('block_size')}) trained with AdamW (lr {s.get('learning_rate')}, "
             f"constant, weight decay {s.get('weight_decay')}) on the first {s.get('train_tokens'):,} tokens of "
             f"character-level tiny Shakespeare's training split for {s.get('steps')} steps of "
             f"{s.get('tokens_per_step'):,} tokens, past its test-loss minimum. At each checkpoint: the top K = "
             f"{s.get('k')} eigenvalues of the last block's Hessian ({t['checkpoints'][0].get('hessian_tokens'):,} "
             f"Hessian tokens), every one converged, from {s.get('num_starts')} Lanczos start "
             f"({s.get('combine')}). Written by `python -m train.llm.overfit` (results/llm/{name}/).")
    if missing:
        intro += f" Measured so far: steps {measured}; still to measure: {missing}."
    parts = [intro, CLAIM_TEXT, claims_table(t), turn_paragraph(t), checkpoint_table(t), correlation_table(t),
             sensitivity_paragraphs(sens)]
    if figure:
        parts.append(f"![{name}]({figure})")
    parts.append("Departures from the paper's setting: " + "; ".join(s.get("departures", [])) + f". The Hessian "
                 f"sample holds {s.get('hessian_tokens', 0):,} tokens (the paper: 256 sequences of block 256, 65,536 "
                 "tokens), and every eigenvalue fitted here is converged, one start, none repeated, where the paper's "
                 "procedure (3 runs of 1000 Lanczos steps, pooled) keeps unconverged and repeated Ritz values (see the "
                 "sensitivity above).")
    return "\n\n".join(parts)


def other_run(name: str, t: dict[str, Any]) -> str:
    """One line for a tracking run of `python -m train llm`."""
    c = t.get("correlations", {})
    cells = ", ".join(f"{LABEL[m]} r = {_f(c.get(m, {}).get('pearson'), '+.3f')}" for m in MEASURES)
    rows = t["checkpoints"]
    steps = [r["step"] for r in rows]
    losses = [r["test_loss"] for r in rows if r["test_loss"] is not None]
    falls = bool(losses) and losses[-1] == min(losses)
    note = ("; its test loss is lowest at its last checkpoint, so any measure monotone in time tracks it there"
            if falls else "")
    return (f"- {name} (steps {steps}, K = {t['setting'].get('k')}): correlation with the test loss {cells}{note}.")


def llm_section(results: str | os.PathLike, out_dir: str | os.PathLike = ".") -> str:
    """The "LLMs" section from <results>/llm/*/tracking.json; figures linked relative to `out_dir`."""
    root = Path(results) / "llm"
    runs = sorted(p.parent for p in root.glob("*/tracking.json")) if root.is_dir() else []
    if not runs:
        return "## LLMs\n\nNo LLM results yet."
    parts, others = ["## LLMs"], []
    for run in runs:
        t = json.loads((run / "tracking.json").read_text())
        if "claims_overfit" not in t:
            others.append(other_run(run.name, t))
            continue
        sens_path = run / "sensitivity.json"
        sens = json.loads(sens_path.read_text()) if sens_path.is_file() else None
        fig = run / "tracking.png"
        rel = os.path.relpath(fig, Path(out_dir)) if fig.is_file() else None
        parts.append(overfit_section(run.name, t, sens, rel))
    if others:
        parts.append("Other LLM tracking runs:\n\n" + "\n".join(others))
    return "\n\n".join(parts)
