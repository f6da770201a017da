"""The claims at other K: every group refitted on the top-K prefixes of its converged spectra, and how many trained
networks and controls are power laws at each K."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from train.record import SpectrumResult
from train.report.claims import CLAIMS, Row, at_k, learned, measured, rows_at_k
from train.report.figures import FIGURES, counts_figure
from train.study import plan


def power_law_counts(by_group: dict[str, list[Row] | None]) -> tuple[dict[str, bool], dict[str, bool]]:
    """(trained networks, random-initialisation controls) -> is a power law, each network counted once however
    many groups show it (the reference run is a row of five groups; a control is shared by many runs)."""
    trained, controls = {}, {}
    for name, rows in by_group.items():
        for r in rows or ():
            if name == plan.CONTROLS:  # a control's row is named by its key
                controls[r.run] = r.result.is_power_law
                continue
            if r.result is not None and r.final:
                trained[json.dumps(r.result.setting, sort_keys=True)] = r.result.is_power_law
            if r.control is not None:
                controls[r.control_key] = r.control.is_power_law
    return trained, controls


def _k_of_n(flags: dict[str, bool]) -> str:
    return f"{sum(flags.values())} of {len(flags)}"


@dataclasses.dataclass(frozen=True)
class Refits:
    """Every group's rows refitted at each K some network reaches (`refit_groups`), and the power-law counts."""

    ks: list[int]
    by_k: dict[int, dict[str, list[Row] | None]]
    counts: list[tuple[int, dict[str, bool], dict[str, bool]]]


def refit_groups(all_rows: dict[str, list[Row]], ks: Sequence[int] = plan.SENSITIVITY_KS) -> Refits | None:
    """The groups with claims (networks that did not learn left out) refitted at each of ks; None when no
    network reaches any of them."""
    judged = {name: learned(rows) for name, rows in all_rows.items() if measured(rows) and CLAIMS.get(name)}
    fitted: dict[tuple[int, int], SpectrumResult | None] = {}  # a shared control is refitted once per K

    def refit(result: SpectrumResult | None, k: int) -> SpectrumResult | None:
        if (id(result), k) not in fitted:
            fitted[id(result), k] = at_k(result, k)
        return fitted[id(result), k]

    by_k = {k: {name: rows_at_k(rows, k, refit) for name, rows in judged.items()} for k in sorted(ks)}
    reached = [k for k in by_k if any(rows is not None for rows in by_k[k].values())]
    if not reached:
        return None
    return Refits(reached, by_k, [(k, *power_law_counts(by_k[k])) for k in reached])


def contrast_sentence(refits: Refits) -> str:
    """Where trained networks and controls differ most in their share of power laws, and at the largest K."""
    def gap(entry: tuple[int, dict[str, bool], dict[str, bool]]) -> float:
        _, t, c = entry
        return sum(t.values()) / max(len(t), 1) - sum(c.values()) / max(len(c), 1)

    best, last = max(refits.counts, key=gap), refits.counts[-1]  # the first K of the largest gap
    return (f"The contrast the paper draws (trained networks are power laws, their initialisations are not) is "
            f"sharpest at K = {best[0]}: {_k_of_n(best[1])} trained networks against {_k_of_n(best[2])} controls; "
            f"at K = {last[0]}: {_k_of_n(last[1])} against {_k_of_n(last[2])}.")


def claims_at_other_k(all_rows: dict[str, list[Row]], refits: Refits | None = None, figure: Path | None = None,
                      rel: str = FIGURES) -> str:
    """Every claim's outcome at each K of `refits` (default: refit_groups(all_rows)), from prefixes of the same
    converged spectra, and how many trained networks and controls show a power law at each K (with their
    figure at `figure`, when given).

    The paper's K is 1000; it does not say that its eigenvalues were converged, and d_c = 1.36/√K asks more
    of a larger K, so this is the first thing to check."""
    refits = refit_groups(all_rows) if refits is None else refits
    if refits is None:
        return "No network measured at these K yet."
    ks, by_k = refits.ks, refits.by_k
    lines = ["| group | the paper's claim | " + " | ".join(f"K = {k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    for name in by_k[ks[0]]:
        if all(by_k[k][name] is not None for k in ks):  # not a group measured at K = 50 (Avila, ResNet18)
            lines += [f"| {name} | {claim.text} | " + " | ".join(claim.rule(by_k[k][name]).status for k in ks) + " |"
                      for claim in CLAIMS[name]]
    table = ["| K | trained networks with a power law | random-initialisation controls with a power law |",
             "|---|---|---|"] + [f"| {k} | {_k_of_n(t)} | {_k_of_n(c)} |" for k, t, c in refits.counts]
    parts = ["The same converged spectra, fitted on their top K for smaller K (exact: every one of the top 1000 is "
             "converged). Groups measured at K = 50 are left out; so are networks that did not learn.",
             "\n".join(lines), "\n".join(table), contrast_sentence(refits)]
    if figure is not None:
        counts_figure(refits.counts, figure)
        parts.append(f"![power laws against K]({rel}/{figure.name})")
    return "\n\n".join(parts)
