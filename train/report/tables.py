"""The markdown tables of the report: a group's rows, its claims, the seeds' error bars, correlations, the data used."""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from train.record import SpectrumResult, did_not_learn_note
from train.report.claims import (UNDECIDED, Claim, Row, exponent, kendall_test, learned, listed, measured,
                                 not_learned_runs, pearson_test, test_error, with_p)


def fmt_value(x: Any, spec: str) -> str:
    """`x` formatted by `spec`; "—" when it is missing or not finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


TABLE_HEAD = ("| run | K | d_KS | d_c | verdict | N | N_eff | β ± σ | s | λ_max | Tr(H) | test error | converged "
              "| control | notes |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def curvature_cells(result: SpectrumResult) -> list[str]:
    """The Hessian sample's size N and its curvature carriers N_eff (the participation ratio of the per-example
    Gauss-Newton traces, hspec.curvature); "—" for a record written before the diagnostic was kept."""
    n = (result.hessian_sample or {}).get("size") or result.setting.get("hessian_samples")
    carriers = (result.curvature or {}).get("sample")
    return ["—" if n is None else str(n), "—" if carriers is None else f"{carriers['participation_ratio']:.0f}"]


def short_verdict(result: SpectrumResult) -> str:
    """"power law", "no power law", or "no power law (K' of K positive)" when the fit is undefined."""
    fit = result.fit
    if fit.get("d_ks") is None:
        return f"no power law ({fit.get('num_positive')} of {fit.get('k')} positive)"
    return "power law" if result.is_power_law else "no power law"


def _control_cell(row: Row) -> str:
    if row.control_key is None:
        return "—"
    if row.control is None:
        return "not computed yet"
    return f"{short_verdict(row.control)} (d_KS {fmt_value(row.control.fit.get('d_ks'), '.4f')})"


def table_row(row: Row) -> str:
    """One markdown row of a measured network."""
    r = row.result
    if r is None:
        return f"| {row.run} | {'failed' if row.failed else 'not run yet'} |  |  |  |  |  |  |  |  |  |  |  |  | {'; '.join(row.notes)} |"
    fit, sh = r.fit, r.sharpness
    beta = "—" if fit.get("beta") is None else f"{fit['beta']:.3f} ± {fit['sigma']:.3f}"
    err = test_error(r)
    conv = f"{r.spectrum.get('num_converged', '—')}/{fit.get('k')}"
    cells = [row.run, str(fit.get("k")), fmt_value(fit.get("d_ks"), ".4f"), fmt_value(fit.get("d_crit"), ".4f"),
             short_verdict(r), *curvature_cells(r), beta, fmt_value(fit.get("s"), ".3f"), fmt_value(sh.get("lambda_max"), ".4g"),
             fmt_value(sh.get("trace"), ".4g"), "—" if err is None else f"{100 * err:.2f}%", conv, _control_cell(row),
             "; ".join(((did_not_learn_note(r) + "; kept out of the claims and the error bars",)
                        if not row.learned else ()) + row.notes)]
    return "| " + " | ".join(cells) + " |"


def group_table(rows: list[Row]) -> str:
    """The markdown table of a group's rows."""
    return "\n".join([TABLE_HEAD] + [table_row(r) for r in rows])


def claims_table(claims: Sequence[Claim], rows: list[Row]) -> str:
    """The paper's claims, the rule applied, and our agree / disagree with its numbers."""
    lines = ["| the paper's claim (docs/method.md §5) | rule applied to our numbers | ours |", "|---|---|---|"]
    runs = [r for r in rows if r.final]
    pending = sum(r.result is None for r in runs)
    # A claim judged on part of its group may change when the rest is measured: say so beside it.
    so_far = f" (so far: {len(runs) - pending} of {len(runs)} runs measured)" if pending else ""
    stuck = not_learned_runs(rows)
    left_out = f"; left out: {listed(stuck)}, which did not learn" if stuck else ""
    for claim in claims:
        out = claim.rule(learned(rows))
        note = so_far if out.status != UNDECIDED else ""
        lines.append(f"| {claim.text} | {claim.how} | **{out.status}**{note}: {out.detail}{left_out} |")
    return "\n".join(lines)


def mean_sd(values: list[float]) -> str:
    """"mean ± sd" of values over seeds (sd with one degree of freedom removed), "(one seed)" or "—"."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f} (one seed)"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def seeds_table(rows: list[Row]) -> str:
    """s and d_KS as mean ± standard deviation over seeds and the verdict as k of n, per series (and the
    baseline's controls)."""
    series: dict[str, list[SpectrumResult]] = {}
    stuck: dict[str, list[str]] = {}
    for r in measured(rows):
        name = r.run.rsplit("-seed", 1)[0]
        series.setdefault(name, [])
        (series[name].append(r.result) if r.learned else stuck.setdefault(name, []).append(r.run))
    controls = {r.control_key: r.control for r in measured(rows) if r.run.startswith("baseline") and r.control}
    if controls:
        series["baseline: random-initialisation controls"] = [controls[k] for k in sorted(controls)]
    lines = ["| series | seeds | s (mean ± sd) | d_KS (mean ± sd) | power law | reduced | left out (did not learn) |",
             "|---|---|---|---|---|---|---|"]
    for name, results in series.items():
        s = [x.fit["s"] for x in results if x.fit.get("s") is not None]
        d = [x.fit["d_ks"] for x in results if x.fit.get("d_ks") is not None]
        reduced = any(r.reduced for r in rows if r.result in results)
        lines.append(f"| {name} | {len(results)} | {mean_sd(s)} | {mean_sd(d)} | "
                     f"{sum(x.is_power_law for x in results)} of {len(results)} | {'yes' if reduced else ''} | "
                     f"{listed(stuck.get(name, [])) if name in stuck else ''} |")
    return "\n".join(lines)


def correlation_table(rows: list[Row]) -> str:
    """Pearson r and Kendall τ of s, d_KS, λ_max and Tr(H) against test error."""
    done = [r for r in measured(rows) if test_error(r.result) is not None]
    lines = ["| measure | Pearson r with test error (p) | Kendall τ with test error (p) | n |", "|---|---|---|---|"]
    for name, get in (("s", exponent), ("d_KS", lambda x: x.fit.get("d_ks")),
                      ("λ_max", lambda x: x.sharpness.get("lambda_max")),
                      ("Tr(H)", lambda x: x.sharpness.get("trace"))):
        pts = [(get(r.result), test_error(r.result)) for r in done if get(r.result) is not None]
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        lines.append(f"| {name} | {with_p(pearson_test(x, y), '+.3f')} | {with_p(kendall_test(x, y), '+.3f')} | "
                     f"{len(pts)} |")
    return "\n".join(lines)


def _sanitize(text: str) -> str:
    """A data source without this machine's paths: each absolute path shortened to its last component."""
    return re.sub(r"(?<![\w.])/(?:[^\s/()]+/)*([^\s/()]+)", r"…/\1", text)


def data_section(all_rows: dict[str, list[Row]]) -> str:
    """The data each run used (the records' data blocks), one line per distinct data set and options."""
    used: dict[tuple, list[str]] = {}
    for group, rows in all_rows.items():
        for r in (r for r in measured(rows) if r.final):
            d, s = r.result.data, r.result.setting
            key = (s.get("dataset"), _sanitize(str(d.get("source", ""))), d.get("num_train"), d.get("num_test"),
                   s.get("labels"), fmt_value(d.get("realised_label_noise"), ".3f"))
            name = f"{group}/{r.run}"
            if name not in used.setdefault(key, []):
                used[key].append(name)
    lines = ["| dataset | source | training examples | test examples | labels | realised label noise | used by |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted(used, key=lambda k: tuple(str(x) for x in k)):
        names = used[key]
        who = listed(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        lines.append("| " + " | ".join(str(x) for x in key) + f" | {who} |")
    notes = ["- CIFAR-10 is the subset in the data directory: the first 4,000 training and 1,000 test images, not the "
             "paper's 50,000 / 10,000; every CIFAR-10 row says so.",
             "- CIFAR-100 is not in the data directory: the paper's LeNet trained on CIFAR-100 (and evaluated on "
             "CIFAR-10) is not run.",
             "- The Hessian is computed on a fixed sample of the training set (1,000 examples unless the row says "
             "otherwise), drawn from the run's own key."]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) if used else "No results yet.\n\n" + "\n".join(notes[1:2])
