"""The sensitivity section: the studies of results/sensitivity/<name>/ as tables, trained network beside its
initialisation, after the summary of which method choice moves the verdict (train.report.methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from train.report.claims import Row
from train.report.methods import SETTING_STUDIES, method_choice_summary, method_choices
from train.report.rows import read_json, study_docs
from train.report.tables import fmt_value
from train.study import layout


def _study_cell(entry: dict[str, Any]) -> str:
    fit = entry.get("fit") or {}
    if entry.get("skipped"):
        return "skipped"
    if fit.get("d_ks") is None:
        return str(entry.get("verdict", "—"))
    return (f"{'power law' if fit['is_power_law'] else 'no power law'}: d_KS {fit['d_ks']:.4f} / "
            f"d_c {fit['d_crit']:.4f}, s {fit['s']:.3f}")


def start_agreement(base: dict[str, Any] | None, doc: dict[str, Any] | None) -> str:
    """How far the other Lanczos starts' converged top K lie from the base run's (start 0), in units of λ_1:
    with every value converged they should agree to the tolerance, whatever the start."""
    if not base or not doc:
        return ""
    parts = []
    for label, name in (("trained", "the trained network"), ("init", "its initialisation")):
        ref = np.asarray(base.get(label, {}).get("eigenvalues") or [], dtype=float)
        gaps = [float(np.max(np.abs(np.asarray(e["eigenvalues"], dtype=float) - ref[:len(e["eigenvalues"])])) / ref[0])
                for e in doc.get(label, []) if e.get("eigenvalues") and len(ref) >= len(e["eigenvalues"])]
        if gaps:
            parts.append(f"{max(gaps):.1e} λ_1 ({name}, {len(gaps)} other starts)")
    if not parts:
        return ""
    return ("The other starts' converged eigenvalues lie within " + " and ".join(parts) + " of start 0's, "
            "max over the top K: once every value is converged, the start no longer matters.")


def sensitivity_section(results: Path, all_rows: dict[str, list[Row]] | None = None,
                        folders: dict[str, dict[str, Any]] | None = None) -> str:
    """The sensitivity studies of results/sensitivity/<name>/ as tables (trained network and its initialisation);
    `folders` is their `study_docs`, when the caller has read them already."""
    parts = []
    folders = study_docs(results) if folders is None else folders
    for name, docs in folders.items():
        prov = next((d["provenance"] for d in docs.values() if d), None)
        if prov is None:
            continue
        parts.append(f"### {name}\n\n{prov['preset']}, checkpoint of epoch {prov['epoch']}, K = {prov['k']}, "
                     f"{prov['hessian_samples']} Hessian samples, seed {prov['seed']}"
                     + (f"; spectrum overrides {prov['overrides']}" if prov.get("overrides") else ""))
        for study, _, key, _, label in SETTING_STUDIES:
            doc = docs[study]
            if doc and label:
                lines = [f"| {label} | trained | initialisation |", "|---|---|---|"]
                lines += [f"| {a[key]} | {_study_cell(a)} | {_study_cell(b)} |"
                          for a, b in zip(doc["trained"], doc["init"])]
                agreement = (start_agreement(read_json(results / layout.SENSITIVITY / name / "base.json"), doc)
                             if study == "lanczos_starts" else "")
                parts.append("\n".join(lines) + (f"\n\n{agreement}" if agreement else ""))
        if docs["paper_procedure"]:
            lines = ["| m (steps) | network | positive Ritz values | top-K Ritz values as they are | "
                     "positive ones of the top K only (K') | max abs(θ_i − λ_i)/λ_1 vs converged | within 1e-3 |",
                     "|---|---|---|---|---|---|---|"]
            for label in ("trained", "init"):
                for e in docs["paper_procedure"][label]:
                    pos = e.get("positive_only")
                    lines.append(f"| {e['m']} ({e['multiplier']:g}K) | {label} | {e['num_ritz_positive']} | "
                                 f"{_study_cell(e)} | "
                                 + ("—" if pos is None else f"K' = {pos['k']}: {_study_cell(pos)}")
                                 + f" | {fmt_value(e.get('max_rel_error'), '.2e')} | {e.get('num_within_1e3', '—')} |")
            parts.append("The paper's procedure: the Ritz values of one Lanczos run of m steps, taken without a "
                         "convergence check (what PyHessian's density() returns), against the converged top K. "
                         "Where some of the top K are non-positive the fit is undefined; the next column fits the "
                         "positive ones alone (with d_c = 1.36/√K'), as a user who drops them would.\n\n"
                         + "\n".join(lines))
    variants = ("LeNet variants (the paper gives no layers): the `lenet-variants` group trains the variants "
                "without the first convolution's padding and with average pooling beside the paper's form.")
    body = "\n\n".join(parts) if parts else "Not run yet (`python -m train sensitivity --run <run directory>`)."
    summary = method_choice_summary(method_choices(folders, all_rows or {}))
    return (summary + "\n\n" if summary else "") + body + "\n\n" + variants
