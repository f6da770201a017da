"""The disagreement diagnosis: every claim our numbers disagree with, and what our own measurements offer as reasons."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import hspec
from train.report.claims import (CLAIMS, DISAGREE, ORDERING_RULES, STEP_RULES, Row, learned, listed, measured,
                                 not_learned_runs, rule_s_tracks_test_error, step_trend)
from train.report.tables import fmt_value, mean_sd
from train.sample_report import sample_size_summary


def stuck_setting(setting: dict[str, Any]) -> str:
    """The settings that decide whether a run takes off: optimizer, learning rate, batch, data and labels."""
    parts = [f"{setting.get('optimizer')} lr {setting.get('learning_rate'):g}", f"batch {setting.get('batch_size')}"]
    if setting.get("train_size"):
        parts.append(f"{setting['train_size']} examples")
    if setting.get("labels") not in (None, "clean"):
        parts.append(f"{setting['labels']} labels")
    return ", ".join(parts)


# A verdict whose d_KS lies within this fraction of d_c could flip with the sample, the seed or K.
NEAR_THRESHOLD = 0.25


def final_spectra(rows: list[Row]) -> list[tuple[str, Any]]:
    """(name, record) of each fitted spectrum at the end of a group's runs, their controls included, once each
    (runs share controls)."""
    seen, out = set(), []
    for r in (r for r in measured(rows) if r.final):
        for name, result in ((r.run, r.result), (f"the control of {r.run}", r.control)):
            if result is not None and result.fit.get("d_ks") is not None and id(result) not in seen:
                seen.add(id(result))
                out.append((name, result))
    return out


def near_threshold(rows: list[Row]) -> list[str]:
    """The networks of a group (and their controls) whose d_KS lies within NEAR_THRESHOLD·d_c of d_c."""
    return [f"{name} (d_KS {res.fit['d_ks']:.4f}, d_c {res.fit['d_crit']:.4f})" for name, res in final_spectra(rows)
            if abs(res.fit["d_ks"] - res.fit["d_crit"]) <= NEAR_THRESHOLD * res.fit["d_crit"]]


# Below this K the test is loose (d_c = 1.36/√K ≥ 0.136): the baseline's own initialisation passes at K = 100.
SMALL_K = 100


def controls_passing_at_small_k(rows: list[Row]) -> str | None:
    """The random-initialisation controls of a group that pass the test at a K where d_c is loose."""
    out = [f"{name} (K = {fit['k']}: d_KS {fit['d_ks']:.4f} < d_c {fit['d_crit']:.4f})"
           for name, res in final_spectra(rows) for fit in [res.fit]
           if not res.setting.get("trained") and fit.get("is_power_law") and fit["k"] <= SMALL_K]
    if not out:
        return None
    return (f"random initialisations that pass at a small K, where the test is loose (d_c = 1.36/√K, against "
            f"{hspec.critical_value(1000):.4f} at K = 1000): {listed(out)}")


def s_resolution(rows: list[Row]) -> str | None:
    """How the spread of s across a group's networks compares with the fit's own uncertainty of s.

    s = 1/(β − 1), so σ_s = σ_β/(β − 1)² (first order): an ordering of s between networks whose s differ by
    less than about 2σ_s rests on the fit's noise.
    """
    fits = [r.result.fit for r in measured(rows) if r.result.fit.get("s") is not None and r.result.fit.get("beta")]
    if len(fits) < 2:
        return None
    s_values = [f["s"] for f in fits]
    sigma_s = float(np.median([f["sigma"] / (f["beta"] - 1) ** 2 for f in fits]))
    return (f"s spans {min(s_values):.3f} – {max(s_values):.3f} across these {len(fits)} networks, while the fit's "
            f"own uncertainty of one s is about ±{sigma_s:.3f} (σ_β/(β − 1)², median): differences smaller than "
            f"about {2 * sigma_s:.3f} do not order the networks")


def label_fit(rows: list[Row]) -> str | None:
    """How much of their changed training labels the networks trained on noisy labels fit.

    A network that predicts every example's clean label scores 1 − q on labels of which a fraction q was
    changed (the realised noise); accuracy above that is the share of changed labels it memorised.
    """
    parts = []
    for r in (r for r in measured(rows) if r.final and r.result.setting.get("trained")):
        q, acc = r.result.data.get("realised_label_noise"), r.result.metrics.get("train_acc")
        if q and acc is not None:
            parts.append(f"{r.run} {100 * acc:.1f}% against {100 * (1 - q):.1f}% "
                         f"({100 * max(acc - (1 - q), 0) / q:.0f}% of its changed labels fitted)")
    if not parts:
        return None
    return ("how far the networks fit their changed labels: train accuracy on their own labels against what "
            "predicting the clean labels scores: " + listed(parts))


def _k_dependence(doc: dict[str, Any] | None, label: str) -> str | None:
    """"power law at K = 100, 500; not at 300, 1000" for one network of a K-prefix study, if the verdict varies."""
    if not doc:
        return None
    entries = [(e["k"], (e.get("fit") or {}).get("is_power_law")) for e in doc[label]]
    yes = [k for k, v in entries if v]
    if not yes or len(yes) == len(entries):
        return None
    return f"power law at K = {listed(yes)}; not at {listed([k for k, v in entries if not v])}"


def sample_dependence(draws: dict[str, Any] | None, sizes: dict[str, Any] | None, label: str) -> str | None:
    """How much the Hessian sample moves one network's d_KS: over draws of the same size, and over sizes."""
    parts = []
    if draws:
        d = [(e.get("fit") or {}).get("d_ks") for e in draws[label]]
        d = [x for x in d if x is not None]
        if len(d) >= 2:
            hits = sum(bool((e.get("fit") or {}).get("is_power_law")) for e in draws[label])
            parts.append(f"{len(d)} draws of {draws['provenance']['hessian_samples']} examples give d_KS "
                         f"{min(d):.4f} – {max(d):.4f} (a power law in {hits} of {len(draws[label])})")
    if sizes:
        entries = [(e["hessian_samples"], e.get("fit") or {}) for e in sizes[label]]
        yes = [n for n, f in entries if f.get("is_power_law")]
        parts.append(f"{listed([n for n, _ in entries])} examples give d_KS "
                     f"{listed([fmt_value(f.get('d_ks'), '.4f') for _, f in entries])} ("
                     + (f"a power law at {listed(yes)})" if yes else "no power law)"))
    if not parts:
        return None
    d_c = next((f["d_crit"] for doc in (draws, sizes) if doc for e in doc[label]
                for f in [e.get("fit") or {}] if f.get("d_crit")), None)
    return "; ".join(parts) + ("" if d_c is None else f", against d_c = {d_c:.4f}")


def disagreements_section(all_rows: dict[str, list[Row]], folders: dict[str, dict[str, Any]],
                          series: Sequence[tuple[str, dict[str, Any]]] = ()) -> str:
    """Every claim we disagree with, with what our own measurements offer as likely reasons.

    Groups that share their networks (the reference run is a row of four groups) can make the same claim
    on the same measurements: that claim is listed once, under all of them.
    """
    items: dict[tuple, tuple[list[str], str]] = {}
    for name, rows in all_rows.items():
        rows = learned(rows)
        for claim in CLAIMS.get(name, ()):
            out = claim.rule(rows)
            if out.status != DISAGREE:
                continue
            reasons, near = [], []
            if claim.rule in ORDERING_RULES:
                # The rows the rule itself compares: the trained checkpoints, or the ends of the runs.
                compared = ([r for r in rows if (r.value or 0) > 0] if claim.rule is rule_s_tracks_test_error
                            else [r for r in rows if r.final])
                spread = s_resolution(compared)
                reasons += [spread] if spread else []
            else:
                near = near_threshold(rows)
                fitted, loose = label_fit(rows), controls_passing_at_small_k(rows)
                reasons += [x for x in (fitted, loose) if x]
                trend = step_trend(rows, claim.rule) if claim.rule in STEP_RULES else None
                reasons += [trend] if trend else []
                if claim.rule in STEP_RULES and not any(r.result.is_power_law for r in measured(rows) if r.final):
                    reasons.append("none of the group's networks is a power law at this K, so there is no "
                                   "structure to break down or to appear (the section on the claims at other K "
                                   "shows where there is)")
            if near:
                reasons.append(f"verdicts near the threshold (|d_KS − d_c| ≤ {NEAR_THRESHOLD:g}·d_c), which the "
                               f"sample, the seed or K can flip: {listed(near[:6])}"
                               + (f" and {len(near) - 6} more" if len(near) > 6 else ""))
            reduced = [r.run for r in measured(rows) if r.reduced]
            if reduced:
                reasons.append(f"rows that depart from the paper's setting: {listed(reduced)}")
            numbers = tuple(sorted((res.fit.get("d_ks") or 0.0, res.sharpness.get("lambda_max") or 0.0)
                                   for r in measured(rows) if r.final for res in (r.result, r.control) if res is not None))
            groups, _ = items.setdefault((claim.text, out.detail, numbers),
                                         ([], f"{claim.text} Ours: {out.detail}." + "".join(f"\n  - {x}" for x in reasons)))
            groups.append(name)
    items = [f"- **{', '.join(groups)}**" + (" (the same networks)" if len(groups) > 1 else "") + f": {body}"
             for groups, body in items.values()]
    if not items:
        return "No claim measured so far disagrees with ours."
    general = []
    for folder, docs in folders.items():
        for label, what in (("trained", "the trained network"), ("init", "its initialisation")):
            dep = _k_dependence(docs.get("k_prefix"), label)
            if dep:
                general.append(f"K ({folder}, {what}): {dep}; d_c = 1.36/√K shrinks with K, so a larger K "
                               f"asks a closer fit of more eigenvalues.")
            sample = sample_dependence(docs.get("hessian_draws"), docs.get("hessian_samples"), label)
            if sample:
                general.append(f"Hessian sample ({folder}, {what}): {sample}.")
    for folder, doc in series:  # results/hessian-sample: the same networks at N beyond the sensitivity study's
        summary = sample_size_summary(doc)
        if summary:
            general.append(f"Hessian-sample size ({folder}, the \"Hessian sample\" section): {summary}.")
    seeds = [r.result.fit.get("d_ks") for r in learned(measured(all_rows.get("seeds", [])))
             if r.run.startswith("baseline")]
    seeds = [d for d in seeds if d is not None]
    general.append(f"Seeds: the baseline's d_KS over {len(seeds)} seeds is {mean_sd(seeds)}." if len(seeds) >= 2
                   else "Seeds: the spread of d_KS over training seeds is not measured yet (the seeds group).")
    stuck = sorted({f"{name}/{r.run} ({stuck_setting(r.result.setting)})" for name, rows in all_rows.items()
                    for r in rows if r.run in not_learned_runs(rows) and name != "checkpoints"})
    if stuck:
        general.append(f"Networks that did not learn (train loss within 2% of the loss of predicting the class "
                       f"frequencies without looking at the inputs; the rows say more) are left out "
                       f"of every claim and error bar: {listed(stuck)}. Training at the paper's learning rates "
                       f"does not always take off; their spectra are in their rows.")
    general.append("Unstated choices of the paper: the LeNet layers (the lenet-variants group), whether its "
                   "eigenvalues were converged (the paper's procedure in the sensitivity section), the Hessian "
                   "sample (which 1,000 examples) and the Lanczos start.")
    return ("Each claim our numbers disagree with, with what our own measurements suggest as reasons. None of "
            "these is a finding about the paper's code, which we have not seen.\n\n" + "\n".join(items)
            + "\n\nWhat bears on all of them:\n\n" + "\n".join(f"- {g}" for g in general))
