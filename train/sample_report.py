"""REPRODUCTION.md's "Hessian sample" section: d_KS and s against the number of examples in the Hessian.

Reads results/hessian-sample/<name>/series.json (written by `python -m train hessian-sample`, train.sample_size)
and renders, for the trained network and its initialisation: a table per sample size (mean ± sd over the draws,
how many draws pass the KS test, the curvature carriers of the samples, the operator used), a figure of d_KS and s
against N on a log axis with error bars, and a paragraph that states what the numbers say, computed from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

STUDY = "hessian-sample"
FIGURE = "hessian-sample.png"
STATES = ("trained", "init")


def load_series(results: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every series.json under results/hessian-sample/, by folder name (sorted)."""
    out = []
    for path in sorted((Path(results) / STUDY).glob("*/series.json")):
        try:
            out.append((path.parent.name, json.loads(path.read_text())))
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); rerun `python -m train hessian-sample` to rewrite it")
    return out


def by_size(doc: dict[str, Any], state: str) -> dict[int, list[dict[str, Any]]]:
    """The finished pieces of one state grouped by sample size; at a size where the exact and the reduced operator
    were both measured on draw 0 (the method's check), the exact one stands for the size."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for p in doc.get("pieces", []):
        if p["state"] == state and p.get("fit", {}).get("d_ks") is not None:
            groups.setdefault(int(p["hessian_samples"]), []).append(p)
    for n, pieces in groups.items():
        exact_draws = {p["draw"] for p in pieces if not p.get("reduced_operator")}
        groups[n] = [p for p in pieces if not (p.get("reduced_operator") and p["draw"] in exact_draws)]
    return dict(sorted(groups.items()))


def reduction_checks(doc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(exact, reduced) pairs of the same state, size and draw: the check of the certified operator."""
    pieces = doc.get("pieces", [])
    exact = {(p["state"], p["hessian_samples"], p["draw"]): p for p in pieces if not p.get("reduced_operator")}
    return [(exact[key], p) for p in pieces if p.get("reduced_operator")
            and (key := (p["state"], p["hessian_samples"], p["draw"])) in exact]


def _stat(values: list[float], spec: str) -> str:
    if len(values) == 1:
        return f"{values[0]:{spec}}"
    return f"{np.mean(values):{spec}} ± {np.std(values, ddof=1):{spec}}"


def _carriers(pieces: list[dict[str, Any]]) -> tuple[str, str]:
    """N_eff and the examples carrying 90%, as cells (mean over draws; "—" before the carriers were computed)."""
    c = [p["carriers"] for p in pieces if p.get("carriers")]
    if not c:
        return "—", "—"
    return (_stat([x["participation_ratio"] for x in c], ".0f"), _stat([float(x["carriers_90"]) for x in c], ".0f"))


def _operator_cell(pieces: list[dict[str, Any]]) -> str:
    reduced = [p for p in pieces if p.get("reduced_operator")]
    if not reduced:
        return "exact"
    cells = []
    for p in reduced:
        r = p["reduced"]
        cert = r["certificate"]
        ok = "accepted" if cert["accepted"] else "NOT accepted"
        cells.append(f"{r['kept']} of {r['kept'] + r['dropped']} kept; Weyl bound {cert['relative_bound']:.1e} λ_K "
                     f"({ok})")
    return "; ".join(cells)


def _row(state: str, n: int, pieces: list[dict[str, Any]], num_train: int) -> str:
    d = [p["fit"]["d_ks"] for p in pieces]
    s = [p["fit"]["s"] for p in pieces]
    passing = sum(bool(p["fit"]["is_power_law"]) for p in pieces)
    conv = min(int(p["num_converged"]) for p in pieces)
    lam = [float(np.asarray(p["eigenvalues"])[0]) for p in pieces]
    lam_k = [float(np.asarray(p["eigenvalues"])[int(p["k"]) - 1]) for p in pieces]
    n_eff, c90 = _carriers(pieces)
    size = f"{n} (all)" if n == num_train else str(n)
    return (f"| {state} | {size} | {len(pieces)} | {_stat(d, '.4f')} | {pieces[0]['fit']['d_crit']:.4f} | "
            f"{passing} of {len(pieces)} | {_stat(s, '.3f')} | {_stat(lam, '.3g')} | {_stat(lam_k, '.3g')} | "
            f"{n_eff} | {c90} | {conv}/{pieces[0]['k']} | {_operator_cell(pieces)} |")


TABLE_HEAD = ("| network | N | draws | d_KS | d_c | power law | s | λ_1 | λ_K | N_eff | carry 90% | converged | "
              "operator |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def series_table(doc: dict[str, Any]) -> str:
    """One row per (state, N): mean ± sd over the draws."""
    n_train = doc["provenance"]["num_train"]
    rows = [_row(state, n, pieces, n_train) for state in STATES for n, pieces in by_size(doc, state).items()]
    return TABLE_HEAD + "\n" + "\n".join(rows)


def series_figure(doc: dict[str, Any], path: Path, title: str) -> None:
    """d_KS (with d_c) and s against N on a log axis, trained and init, error bars over the draws."""
    from train.report.figures import agg_figure, save_figure

    fig = agg_figure(10.0, 3.8)
    for i, (field, label) in enumerate((("d_ks", "d_KS"), ("s", "s"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for state, marker in zip(STATES, ("o", "s")):
            groups = by_size(doc, state)
            if not groups:
                continue
            ns = np.array(list(groups))
            vals = [[p["fit"][field] for p in g] for g in groups.values()]
            mean = np.array([np.mean(v) for v in vals])
            sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals])
            ax.errorbar(ns, mean, yerr=sd, marker=marker, capsize=3, ms=4, lw=1, label=state)
        if field == "d_ks":
            d_c = next((p["fit"]["d_crit"] for p in doc.get("pieces", [])), None)
            if d_c is not None:
                ax.axhline(d_c, color="k", ls="--", lw=0.8, label=f"d_c = {d_c:.4f}")
        ax.set_xscale("log")
        ax.set_xlabel("examples in the Hessian N")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _verdicts(groups: dict[int, list[dict[str, Any]]]) -> str:
    return ", ".join(f"N = {n}: {sum(bool(p['fit']['is_power_law']) for p in g)} of {len(g)}" for n, g in groups.items())


def what_the_numbers_say(doc: dict[str, Any]) -> str:
    """The section's paragraph: the verdicts and the carriers against N, read off the series (no prose that the
    numbers do not give)."""
    n_train = doc["provenance"]["num_train"]
    trained, init = by_size(doc, "trained"), by_size(doc, "init")
    parts = []
    if trained:
        parts.append(f"The trained network passes the KS test in {_verdicts(trained)} draws.")
        lo, hi = min(trained), max(trained)
        d_lo = np.mean([p["fit"]["d_ks"] for p in trained[lo]])
        d_hi = np.mean([p["fit"]["d_ks"] for p in trained[hi]])
        whole = "the whole training set" if hi == n_train else f"N = {hi}, the largest sample measured so far"
        parts.append(f"Its mean d_KS goes from {d_lo:.4f} at N = {lo} to {d_hi:.4f} at {whole}.")
    if init:
        parts.append(f"The initialisation passes in {_verdicts(init)} draws.")
    whole_set = doc.get("whole_set") or {}
    for state in STATES:
        c = whole_set.get(state)
        if c:
            parts.append(f"Over the whole training set ({c['num_examples']} examples) the {state} network's curvature "
                         f"is carried by N_eff = {c['participation_ratio']:.0f} examples (90% of its Gauss-Newton trace "
                         f"by {c['carriers_90']}).")
    if trained and whole_set.get("trained"):
        at = [(n, np.mean([p["carriers"]["participation_ratio"] for p in g if p.get("carriers")]))
              for n, g in trained.items() if any(p.get("carriers") for p in g)]
        if at:
            parts.append("The trained network's N_eff per sample: " +
                         ", ".join(f"{v:.0f} at N = {n}" for n, v in at) + ".")
    pending = doc.get("pending", [])
    if pending:
        parts.append(f"Not measured yet: {', '.join(pending)} (the study continues where it stopped).")
    return " ".join(parts)


def checks_text(doc: dict[str, Any]) -> str:
    """The check of the reduced operator against the exact spectrum, where both were measured."""
    lines = []
    for exact, reduced in reduction_checks(doc):
        a, b = np.asarray(exact["eigenvalues"], np.float64), np.asarray(reduced["eigenvalues"], np.float64)
        k = min(a.size, b.size)
        moved = float(np.max(np.abs(a[:k] - b[:k])))
        cert = reduced["reduced"]["certificate"]
        lines.append(f"{reduced['state']}, N = {reduced['hessian_samples']}, draw {reduced['draw']}: the reduced "
                     f"operator kept {reduced['reduced']['kept']} of {reduced['hessian_samples']} examples; its top "
                     f"{k} differ from the exact ones by at most {moved:.2e} ({moved / a[k - 1]:.1e} λ_K), within the "
                     f"Weyl bound {cert['bound']:.2e}: {'yes' if moved <= cert['bound'] else 'NO'}; d_KS "
                     f"{exact['fit']['d_ks']:.4f} exact against {reduced['fit']['d_ks']:.4f} reduced.")
    return "\n".join(f"- {line}" for line in lines)


def reduction_text(folder: Path) -> str:
    """reduction_check.json: the dropped part's norm for a few curvature cuts, against the tolerance."""
    try:
        doc = json.loads((folder / "reduction_check.json").read_text())
    except FileNotFoundError:
        return ""
    lines = [f"- drop the examples below the {100 * c['quantile']:.0f}% quantile of t_i ({c['dropped']} of "
             f"{doc['hessian_samples']}): the dropped part's norm is {c['norm']['norm']:.2e} = "
             f"{c['relative_to_lambda_k']:.2g} λ_K, {'within' if c['accepted'] else 'above'} the tolerance "
             f"{doc['tolerance']:g} λ_K" for c in doc["cuts"]]
    accepted = [c for c in doc["cuts"] if c["accepted"]]
    best = max((c["dropped"] for c in accepted), default=0)
    verdict = (f"The largest cut the certificate accepts drops {best} of {doc['hessian_samples']} examples, "
               f"{100 * best / doc['hessian_samples']:.0f}% of each product's cost: "
               + ("the long spectra are computed exactly instead, their Krylov state kept across sessions."
                  if best < doc["hessian_samples"] / 2 else "the reduced operator is worth its certificate here.")
               if accepted else
               "No cut is accepted: at K = 1000 the examples that the network fits with confidence still move the "
               "K-th eigenvalue by more than the tolerance, so the certified operator saves nothing here, and the "
               "long spectra are computed exactly, their Krylov state kept across sessions instead.")
    return (f"Can the operator drop the examples that carry little curvature? Measured on draw 0 of N = "
            f"{doc['hessian_samples']} (λ_K = {doc['lambda_k']:.3g}; {doc['device']}):\n\n" + "\n".join(lines) +
            f"\n\n{verdict}")


def deviation_rank(piece: dict[str, Any]) -> int | None:
    """The rank at which a piece's top K departs most from its fitted power law (None: no positive fit)."""
    from hspec.powerlaw import ks_deviations

    fit = piece.get("fit") or {}
    top = np.asarray(piece.get("eigenvalues") or [], np.float64)[:fit.get("k") or 0]
    if top.size == 0 or not fit.get("beta") or np.any(top <= 0):
        return None
    return int(np.argmax(ks_deviations(top, fit["beta"]))) + 1


def _mean(pieces: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([p["fit"][key] for p in pieces]))


def mechanism_text(doc: dict[str, Any]) -> str:
    """The paragraph on the mechanism: how the curvature carriers, d_KS and the place of its largest deviation move
    with N, and whether the verdict does. Every clause is read off the series."""
    trained, init = by_size(doc, "trained"), by_size(doc, "init")
    if not trained:
        return ""
    d_c = next(iter(trained.values()))[0]["fit"]["d_crit"]
    carriers = {n: np.mean([p["carriers"]["participation_ratio"] for p in g if p.get("carriers")])
                for n, g in trained.items() if any(p.get("carriers") for p in g)}
    parts = ["What the numbers say about the mechanism."]
    if carriers:
        parts.append("The trained network's curvature is carried by N_eff = " + ", ".join(
            f"{v:.0f} ({v / n:.3f} N) at N = {n}" for n, v in carriers.items()) + " examples: the count grows in "
            "proportion to N, and the Gauss-Newton part of a sample's Hessian, a sum of terms of rank at most C − 1 "
            "= 9 per example, has an effective rank of about 9 N_eff = " + ", ".join(
                f"{9 * v:.0f}" for v in carriers.values()) + f" against K = {doc['provenance']['k']}.")
    ranks = {n: [r for r in (deviation_rank(p) for p in g) if r is not None] for n, g in trained.items()}
    parts.append("Its d_KS is " + ", ".join(f"{_mean(g, 'd_ks'):.4f} at N = {n}" for n, g in trained.items()) +
                 " (d_c = " + f"{d_c:.4f}), with its largest deviation from the power law at rank " +
                 ", ".join(f"{'/'.join(str(r) for r in ranks[n])} (N = {n})" for n in trained if ranks[n]) + ".")
    fails = [n for n, g in trained.items() if _mean(g, "d_ks") >= d_c]
    passes = [n for n, g in trained.items() if _mean(g, "d_ks") < d_c]
    if fails and passes and max(fails) < min(passes):
        parts.append(f"So the trained network's verdict moves with the sample: no power law up to N = {max(fails)} "
                     f"(the report's rows use N = 1000), a power law from N = {min(passes)} on, by a margin of "
                     f"{d_c - max(_mean(trained[n], 'd_ks') for n in passes):.4f} or more below d_c.")
    elif fails and passes:
        n0 = min(passes)
        later = {n: _mean(g, "d_ks") for n, g in trained.items() if n >= n0}
        lo, hi = min(later.values()), max(later.values())
        parts.append(f"The trained network's verdict changes with N, but not monotonically: from N = {n0} on its d_KS "
                     f"stays between {lo:.4f} and {hi:.4f}, at most {d_c - lo:.4f} below d_c and {hi - d_c:.4f} above "
                     f"it, a power law at N = {', '.join(str(n) for n, d in later.items() if d < d_c)} and none at "
                     f"N = {', '.join(str(n) for n, d in later.items() if d >= d_c)}.")
    else:
        parts.append("The trained network's verdict is the same at every N measured.")
    if len(trained.get(1000, [])) >= 2:
        sd = float(np.std([p["fit"]["d_ks"] for p in trained[1000]], ddof=1))
        parts.append(f"Draws of 1000 examples move its d_KS by sd {sd:.4f}, {sd / d_c:.0%} of d_c: at the report's "
                     f"sample a verdict within that distance of d_c is a draw of the sample.")
    if init:
        lo = min(_mean(g, "d_ks") for g in init.values())
        hi = max(_mean(g, "d_ks") for g in init.values())
        whole = (doc.get("whole_set") or {}).get("init")
        spread = (f", its curvature spread over N_eff = {whole['participation_ratio'] / whole['num_examples']:.2f} N "
                  f"examples" if whole else "")
        verdict = "never passes" if all(_mean(g, "d_ks") >= d_c for g in init.values()) else "passes at some N"
        parts.append(f"The initialisation{spread}, {verdict}: d_KS {lo:.4f} – {hi:.4f} at every N measured.")
    return " ".join(parts)


def sample_size_summary(doc: dict[str, Any]) -> str | None:
    """One line for the report's "what bears on all of them": each state's mean d_KS against N, the sizes where
    it passes, and whether the whole training set is measured yet."""
    parts = []
    for state, what in (("trained", "the trained network"), ("init", "its initialisation")):
        groups = by_size(doc, state)
        if not groups:
            continue
        d_c = next(iter(groups.values()))[0]["fit"]["d_crit"]
        means = {n: _mean(g, "d_ks") for n, g in groups.items()}
        passing = [n for n, d in means.items() if d < d_c]
        parts.append(f"{what}'s d_KS is " + ", ".join(f"{d:.4f}" for d in means.values()) + " at N = " +
                     ", ".join(str(n) for n in means) + " (a power law " +
                     (f"at N = {', '.join(map(str, passing))}" if passing else "at none") + f"; d_c = {d_c:.4f})")
    if not parts:
        return None
    whole = doc.get("provenance", {}).get("num_train")
    measured = {int(p["hessian_samples"]) for p in doc.get("pieces", [])}
    tail = ("" if whole is None or whole in measured else
            f"; the whole training set ({whole} examples) is not measured yet, so no row is re-measured at another N")
    return "; ".join(parts) + tail


def krylov_steps_text(folder: Path) -> str:
    """krylov-steps/*.json: each extended piece's top K at growing m, and where the stop rules would have ended it."""
    docs = [json.loads(p.read_text()) for p in sorted((Path(folder) / "krylov-steps").glob("*.json"))]
    if not docs:
        return ""
    out = ["Does a top K that meets the residual rule hold still as the Krylov space grows? Each piece below is one "
           "Krylov run extended beyond its stop (`python -m train.krylov_steps`, results in `krylov-steps/`); a "
           "run truncated at m steps is exactly an m-step run, so each row is what a run stopped at m reports, "
           "against the longest run."]
    for doc in docs:
        rows = ["| m | meet the residual rule | d_KS | λ_K | largest change to the longest run | ranks changed > 1e-3 |",
                "|---|---|---|---|---|---|"]
        for r in doc["rows"]:
            d = f"{r['d_ks']:.4f}" if r.get("d_ks") is not None else "–"
            rows.append(f"| {r['m']} | {r['num_converged']} of {doc['k']} | {d} | {r['lambda_k']:.4g} | "
                        f"{r['max_relative_change_to_last']:.1e} (rank {r['at_rank']}) | {r['ranks_changed_over_1e-3']} |")
        stops = []
        for block in doc["stops"]:
            for r in block["rules"]:
                where = ("never within the run" if r["m"] is None else
                         f"at m = {r['m']} with d_KS {r['d_ks']:.4f}" if r.get("d_ks") is not None else
                         f"at m = {r['m']}")
                stops.append(f"from {block['first']} steps, checked every {block['every']}: rule \"{r['rule']}\" "
                             f"stops {where}")
        out.append(f"{doc['piece']} ({doc['dim']} parameters, tolerance {doc['tol']:g} λ_1; {doc['device']}):\n\n" +
                   "\n".join(rows) + "\n\nReplayed on the same coefficients:\n\n" +
                   "\n".join(f"- {s}" for s in stops))
    out.append("The residual rule bounds how far each Ritz value is from *some* eigenvalue, not that it is the "
               "eigenvalue of its rank: grown from fewer than 3K steps it stops while eigenvalues of the dense tail "
               "are still missing, and every rank below them is shifted. The runs in this report start at 3K steps; "
               "the Hessian-sample study and the LLM runs also require the top K to have settled (no rank moved by "
               "more than 3e-3 over the last tenth of the steps, `hspec.top_eigenvalues(settle=...)`).")
    return "\n\n".join(out)


def hessian_sample_section(results: Path, figures: Path, rel: str) -> tuple[str, list[str]]:
    """The section's markdown and the figure file names it wrote."""
    series = load_series(results)
    head = "## Hessian sample: what the number of examples in the Hessian does to the verdict\n\n"
    if not series:
        return head + "Not measured yet (`python -m train hessian-sample --run RUN`).", []
    out, written = [head + INTRO], []
    for name, doc in series:
        fig = f"{name}-{FIGURE}"
        series_figure(doc, figures / fig, f"{doc['provenance']['preset']}, epoch {doc['provenance']['epoch']}: "
                                          f"K = {doc['provenance']['k']}")
        written.append(fig)
        out.append(f"### {name}\n\n{series_table(doc)}\n\n![d_KS and s against N]({rel}/{fig})\n\n"
                   f"{what_the_numbers_say(doc)}")
        checks = checks_text(doc)
        if checks:
            out.append("The certified operator against the exact spectrum:\n\n" + checks)
        mechanism = mechanism_text(doc)
        if mechanism:
            out.append(mechanism)
        reduction = reduction_text(Path(results) / STUDY / name)
        if reduction:
            out.append(reduction)
        steps = krylov_steps_text(Path(results) / STUDY / name)
        if steps:
            out.append(steps)
    return "\n\n".join(out), written


INTRO = """The paper defines H as the Hessian of the training loss (docs/method.md §1) and says nothing of a subsample;
every other spectrum in this report is that of 1000 training examples. Here the converged top K = 1000 of the
reference network (`lenet-mnist-sgd` after 50 epochs) and of its initialisation are measured on N = 500 ... 60,000
examples (the whole training set), with 3 draws of the sample where N ≤ 4000 (mean ± sd; draw 0 is the sample a
run with `hessian_samples=N` uses). Beside each: N_eff, the participation ratio (Σ t_i)² / Σ t_i² of the per-example
Gauss-Newton traces t_i = tr(J_iᵀ A_i J_i) over the sample, and how many examples carry 90% of Σ t_i
(`hspec.curvature`). Where the trained network's operator is "reduced", it keeps only the examples with the largest
t_i, and the dropped part's spectral norm (Lanczos on the dropped examples alone) bounds by Weyl's inequality how far
any eigenvalue moved; such a spectrum is accepted only when the bound is below 1e-3 λ_K (`hspec.certify`). Spectra
at N = 500, 1000 (3 draws) and 2000 (draw 0) are the sensitivity study's, measured on the same network: it retrains
bit-identically on this CPU model (its metrics history equals the published run's, value for value). On another
CPU model of this kind the same run differs from its first epoch on (train loss 0.3529 against 0.3481,
docs/findings.md), so a verdict near d_c is also a draw of the hardware: records now keep the CPU model
(`timing.device`)."""
