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
        reduction = reduction_text(Path(results) / STUDY / name)
        if reduction:
            out.append(reduction)
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
