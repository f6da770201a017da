"""Which method choice moves the baseline's verdict: K, the Hessian sample, the Lanczos start, the paper's own
procedure, the seed and the LeNet layers, against the paper's baseline numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from train.report.claims import Row, learned, measured


# The baseline's numbers in the paper (docs/method.md §5: LeNet, MNIST, SGD gives d_KS ≈ 0.009, s ≈ 1.01): the only
# per-row numbers of the paper the report uses, because the issue asks which method choice explains our
# difference from them.
PAPER_BASELINE = {"d_ks": 0.009, "s": 1.01}
# A setting reaches the paper's baseline when d_KS and s lie within twice the seeds' standard deviation of it,
# but never closer than these floors (the spread of 3 seeds is itself uncertain).
REACH_FLOOR = {"d_ks": 0.01, "s": 0.05}


def _fit_numbers(fit: dict[str, Any] | None) -> tuple[float, float, bool] | None:
    """(d_KS, s, is_power_law) of a fit block, or None when the fit is undefined."""
    if not fit or fit.get("d_ks") is None or fit.get("s") is None:
        return None
    return float(fit["d_ks"]), float(fit["s"]), bool(fit["is_power_law"])


SEED_CHOICE = "seed (training noise)"

# The studies that measure a spectrum per setting: (study, the choice's name, the entry's key, how one setting
# reads, the heading of its table).
SETTING_STUDIES = (("k_prefix", "K", "k", "K = {}", "K (top-K prefix of one converged spectrum)"),
                   ("hessian_samples", "Hessian samples", "hessian_samples", "{} samples", "Hessian samples"),
                   ("hessian_draws", "Hessian sample drawn", "draw", "draw {}",
                    "Hessian sample of the same size (draw 0: the run's)"),
                   ("lanczos_starts", "Lanczos start", "start", "start {}", "Lanczos start"),
                   ("paper_procedure", "the paper's procedure (m steps, unconverged)", "m", "m = {}", None))


def method_choices(folders: dict[str, dict[str, Any]],
                   all_rows: dict[str, list[Row]]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """Each choice the baseline's verdict may depend on, with its settings' (d_KS, s, power law): the trained
    network's sensitivity studies (`study_docs`), the seeds of the baseline and the LeNet layer variants."""
    choices: list[tuple[str, list[tuple[str, Any]]]] = []
    for name, docs in folders.items():
        tag = f" ({name})" if len(folders) > 1 else ""
        for study, label, key, fmt, _ in SETTING_STUDIES:
            doc = docs[study]
            if doc:
                choices.append((label + tag, [(fmt.format(e[key]), _fit_numbers(e.get("fit")))
                                              for e in doc["trained"]]))
        doc = docs["paper_procedure"]
        if doc and any("positive_only" in e for e in doc["trained"]):
            choices.append(("the paper's procedure, non-positive Ritz values dropped" + tag,
                            [(f"m = {e['m']}, K' = {(e.get('positive_only') or e)['k']}",
                              _fit_numbers((e.get("positive_only") or e).get("fit"))) for e in doc["trained"]]))
    seeds = [r for r in learned(measured(all_rows.get("seeds", []))) if r.run.startswith("baseline")]
    if seeds:
        choices.append((SEED_CHOICE, [(f"seed {r.result.setting.get('seed')}", _fit_numbers(r.result.fit))
                                                  for r in seeds]))
    variants = learned(measured(all_rows.get("lenet-variants", [])))
    if variants:
        choices.append(("LeNet layers", [(r.run, _fit_numbers(r.result.fit)) for r in variants]))
    return choices


def _range(values: list[float], spec: str) -> str:
    return "—" if not values else f"{min(values):{spec}} – {max(values):{spec}}"


def method_choice_summary(choices: list[tuple[str, list[tuple[str, Any]]]]) -> str:
    """How far each choice moves d_KS and s, and whether any of its settings reaches the paper's baseline."""
    if not choices:
        return ""
    seeds = [n for label, entries in choices if label == SEED_CHOICE for _, n in entries if n]
    if len(seeds) >= 2:
        tol = {"d_ks": max(REACH_FLOOR["d_ks"], 2 * float(np.std([n[0] for n in seeds], ddof=1))),
               "s": max(REACH_FLOOR["s"], 2 * float(np.std([n[1] for n in seeds], ddof=1)))}
        basis = "twice the standard deviation of the baseline's seeds"
    else:
        tol, basis = dict(REACH_FLOOR), "the floors, the seeds' spread not measured yet"
    lines = ["| choice | settings | power law | d_KS (min – max) | s (min – max) | closest to the paper's s |",
             "|---|---|---|---|---|---|"]
    reaching, spreads = [], []
    for label, entries in choices:
        defined = [(name, n) for name, n in entries if n]
        d, s = [n[0] for _, n in defined], [n[1] for _, n in defined]
        closest = min(defined, key=lambda e: abs(e[1][1] - PAPER_BASELINE["s"]), default=None)
        lines.append(f"| {label} | {len(entries)} ({len(entries) - len(defined)} undefined) | "
                     f"{sum(n[2] for _, n in defined)} of {len(entries)} | {_range(d, '.4f')} | {_range(s, '.3f')} | "
                     + ("—" if closest is None else
                        f"{closest[0]}: d_KS {closest[1][0]:.4f}, s {closest[1][1]:.3f}") + " |")
        if s:
            spreads.append((max(s) - min(s), label))
        reaching += [f"{label}: {name}" for name, n in defined
                     if abs(n[0] - PAPER_BASELINE["d_ks"]) <= tol["d_ks"]
                     and abs(n[1] - PAPER_BASELINE["s"]) <= tol["s"]]
    rule = (f"A setting reaches the paper's baseline (d_KS {PAPER_BASELINE['d_ks']}, s {PAPER_BASELINE['s']}, "
            f"docs/method.md §5) when its d_KS is within {tol['d_ks']:.4f} and its s within {tol['s']:.3f} of them "
            f"({basis}).")
    verdict = (f"Settings that reach it: {', '.join(reaching)}." if reaching else
               "No setting measured reaches it: none of these choices alone explains the difference.")
    largest = max(spreads, default=None)
    moved = "" if largest is None else f" The choice that moves s the most is {largest[1]} (by {largest[0]:.3f})."
    return ("How far each choice moves the trained baseline's verdict (undefined: fewer positive values than K).\n\n"
            + "\n".join(lines) + "\n\n" + rule + " " + verdict + moved)
