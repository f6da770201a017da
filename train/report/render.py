"""Assembling REPRODUCTION.md: the header, the overview, each group's section, and `python -m train report`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from train.report.at_k import Refits, claims_at_other_k, contrast_sentence, refit_groups
from train.report.claims import AGREE, CLAIMS, DISAGREE, UNDECIDED, Row, learned, measured, not_learned_runs
from train.report.disagreements import disagreements_section
from train.report.figures import FIGURES, rank_figure, sharpness_figure
from train.report.rows import load_group, study_docs
from train.report.sensitivity import sensitivity_section
from train.report.tables import claims_table, correlation_table, data_section, group_table, seeds_table
from train.study import layout, plan

CLAIMS_AT_K_FIGURE = "power-laws-against-k.png"
# What a group's section says beyond its description: where it departs from the paper, or what it stands for.
_NOTES = {
    "linear": "docs/method.md §5 lists linear networks among the models without a claim of their own; the general "
              "claim is tested.",
    "cifar10-lenet": "CIFAR-100 is not in the data directory: the paper's LeNet trained on CIFAR-100 and evaluated on "
                     "CIFAR-10 is not run. These runs use the CIFAR-10 subset (4,000 training / 1,000 test images).",
    "resnet18": "ResNet18 trains on the CIFAR-10 subset (4,000 training / 1,000 test images), K = 50. No GPU was "
                "lent to this reproduction, so it runs on the 2-core CPU machine at a reduced setting, marked in its "
                "row: `python -m train sweep resnet18 --set epochs=15 --set lr_drop_epochs=6,12 --set "
                "hessian_samples=128 --set hessian_batch_size=128 --set max_lanczos_steps=450` (15 of the paper's "
                "200 epochs, the learning rate divided by 10 at the same 40% and 80% of them; a Hessian sample of 128 "
                "images). Fifteen CPU epochs leave the network early in training (its accuracy below), not the "
                "paper's trained ResNet18, so its row does not test the paper's ResNet18 claim at the paper's "
                "setting; a GPU run of the full setting would.",
    "seeds": "Seed 0 of each series is the run of the group named in its row.",
    "lenet-variants": "The paper gives no LeNet layers; `paper-form` is the reference run (padding 2 on 28x28 "
                      "inputs, max pooling, docs/method.md §5). The variants test how much that unstated choice "
                      "matters.",
}


# Groups whose networks differ in how they were trained on the same data, so that s, λ_max and Tr(H) can be set
# against test error across them: the paper's optimizer tables and checkpoints, and the batch-size sweeps (the
# sharp-minima reading of large batches, which the paper's generalisation claim speaks to).
SHARPNESS_GROUPS = ("checkpoints", "optimizers", "batch-size", "batch-size-iters1000", "fashion-mnist",
                    "cifar10-lenet")


def _group_figures(name: str, rows: list[Row], figures: Path, rel: str) -> list[str]:
    """Write a group's figures; returns the markdown lines that show them."""
    done = [r for r in measured(rows)]
    if not done:
        return []
    out = []
    curves = [(r.run + ("" if r.learned else " (did not learn)"), r.result.eigenvalues) for r in done]
    rank_figure(curves, figures / f"{name}.png", f"{name}: rank-eigenvalue curves (positive values)")
    out.append(f"![{name}: rank-eigenvalue curves]({rel}/{name}.png)")
    if name in SHARPNESS_GROUPS:
        trained = learned([r for r in done if (r.value or 0) != 0] if name == "checkpoints" else done)
        sharpness_figure(trained, figures / f"{name}-sharpness.png", f"{name}: s, λ_max and Tr(H) against test error")
        out.append(f"![{name}: s, λ_max, Tr(H) against test error]({rel}/{name}-sharpness.png)\n\n"
                   + correlation_table(trained))
    return out


def spectrum_cost(row: Row) -> str:
    """What a large network's spectra cost, from its records: the network's accuracy, the Lanczos steps until the
    top K converged, their seconds, and the Krylov basis that full reorthogonalisation keeps."""
    res, control, k = row.result, row.control, row.result.fit["k"]
    m, t, n = res.setting["lanczos_steps"], res.timing, res.num_params
    text = (f"{row.run}: {res.metrics['test_acc']:.1%} test accuracy after {res.setting['epochs']} epochs (train loss "
            f"{res.metrics['train_loss']:.2f}); its top {k} converged after {m} Lanczos steps, "
            f"{t['lanczos_s']:.0f} s on {t.get('device') or 'an unrecorded device'} (and {t['trace_s']:.0f} s for "
            f"the trace)")
    most = m
    if control is not None:
        most = max(m, control.setting["lanczos_steps"])
        text += f"; its initialisation's top {control.fit['k']} after {control.setting['lanczos_steps']} steps"
    # float32 (4 bytes): the precision these networks train and are measured in; one basis row per step.
    return (text + f". Full reorthogonalisation keeps the Krylov basis, {4 * n / 1e6:.0f} MB a step for its "
            f"{n / 1e6:.1f} million parameters ({4 * n * most / 1e9:.1f} GB at {most} steps).")


def group_section(name: str, rows: list[Row], figures: Path, rel: str) -> str:
    """A group's section: description, claims with our verdicts, the table, seeds' error bars, figures."""
    group = plan.get_group(name)
    command = ("python -m train sweep controls" if name == plan.CONTROLS else f"python -m train sweep {name}")
    parts = [f"## {name}\n\n{group.description[:1].upper()}{group.description[1:]}. Produced by `{command}`."]
    if name in _NOTES:
        parts.append(_NOTES[name])
    if name == "resnet18":
        parts += [spectrum_cost(row) for row in measured(rows) if row.final]
    if not measured(rows):
        failed = [row for row in rows if row.failed]
        return "\n\n".join(parts + (["No run finished yet.", group_table(rows)] if failed else ["Not run yet."]))
    parts.append(claims_table(CLAIMS.get(name, ()), rows))
    parts.append(group_table(rows))
    if name == "seeds":
        parts.append("Error bars over seeds:\n\n" + seeds_table(rows))
    parts += _group_figures(name, rows, figures, rel)
    return "\n\n".join(parts)


def in_brief(all_rows: dict[str, list[Row]], refits: Refits | None) -> str:
    """The bottom line: the claims' outcomes at K = 1000 and the trained/control contrast across K."""
    statuses = [c.rule(learned(rows)).status for name, rows in all_rows.items() if measured(rows)
                for c in CLAIMS.get(name, ())]
    text = (f"In brief: of the {len(statuses)} claims with results (one per group and claim), {statuses.count(AGREE)} agree, "
            f"{statuses.count(DISAGREE)} disagree and {statuses.count(UNDECIDED)} "
            f"{'is' if statuses.count(UNDECIDED) == 1 else 'are'} undecided at the paper's K. ")
    return text + (contrast_sentence(refits) if refits is not None else "")


def overview(all_rows: dict[str, list[Row]]) -> str:
    """One line per group: results present and the claims' outcomes."""
    lines = ["| group | networks measured | claims: agree / disagree / undecided |", "|---|---|---|"]
    for name, rows in all_rows.items():
        done = measured(rows)
        if not done:
            failed = sum(row.failed for row in rows)
            lines.append(f"| {name} | " + (f"none finished ({failed} failed)" if failed else "not run yet") + " | |")
            continue
        statuses = [c.rule(learned(rows)).status for c in CLAIMS.get(name, ())]
        reduced, stuck = sum(r.reduced for r in done), len(not_learned_runs(done))
        lines.append(f"| {name} | {len(done)} of {len(rows)}" + (f" ({reduced} reduced)" if reduced else "")
                     + (f" ({stuck} did not learn)" if stuck else "")
                     + f" | {statuses.count(AGREE)} / {statuses.count(DISAGREE)} / {statuses.count(UNDECIDED)} |")
    return "\n".join(lines)


HEADER = """# Reproduction: Investigating the Overlooked Hessian Structure (Tang et al., ICML 2025)

Generated by `python -m train report` from the results under `results/` (written by `python -m train sweep`);
do not edit by hand. This is a blind reproduction: the tables hold what we measured, beside the paper's claims as
stated in the project's docs/method.md §5, never the paper's own numbers.

Method (docs/method.md §2-3): the top K Hessian eigenvalues (K = 1000; 50 for ResNet18 and Avila) of the mean training
loss on a fixed Hessian sample, by Lanczos with full reorthogonalisation, every one of the K converged (residual ≤
1e-4 λ_1); the power-law MLE with the cutoff at λ_K, β ± σ, s = 1/(β − 1); a power law iff d_KS < d_c = 1.36/√K.
Random-initialisation controls are the same measurement at the initial network of the run. Rows marked "reduced"
depart from the paper's setting as they say; "converged" is the number of the top K with a converged Ritz value.
N is the number of training examples in the Hessian (1000, or the whole training subset where it is smaller; the
paper's H is that of the whole training loss: see "Hessian sample" below for what N does to the verdict; no row
has been re-measured at another N yet), and N_eff the participation ratio of their per-example Gauss-Newton
traces, the number of examples that carry the curvature ("—": the record predates the diagnostic; it comes with
the next measurement of the row)."""


# Every record committed before the device was kept in it was measured on this one machine (no GPU was lent to
# those sessions); the report says so instead of leaving those numbers without a machine.
UNRECORDED_DEVICE = ("device not recorded (this repository's records from before it was kept were all measured on "
                     "the project's 2-core x86-64 CPU machine)")


def machines(all_rows: dict[str, list[Row]]) -> str:
    """Which devices measured the published records, with how many each (a record counted once)."""
    records = {id(res): res for rows in all_rows.values() for r in rows for res in (r.result, r.control)
               if res is not None}
    counts: dict[str, int] = {}
    for res in records.values():
        device = res.timing.get("device") or UNRECORDED_DEVICE
        counts[device] = counts.get(device, 0) + 1
    if not counts:
        return "Measured on: nothing yet."
    return "Measured on: " + "; ".join(f"{device}: {n} spectra" for device, n in sorted(counts.items())) + "."


def render(results: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write the report and its figures; return the markdown.

    Args:
        results: the results root.
        out: the markdown file; figures go to `reproduction/` beside it.
    """
    results, out = Path(results), Path(out)
    figures = out.parent / FIGURES
    all_rows = {name: load_group(results, name) for name in plan.GROUPS}
    folders = study_docs(results)
    refits = refit_groups(all_rows)
    from train.sample_report import hessian_sample_section, load_series  # results/hessian-sample (issue 24)
    series = load_series(results)
    from train.llm.report import llm_brief, llm_section  # results/llm: the LLM claim (issue 25)
    brief = " ".join(x for x in (in_brief(all_rows, refits), llm_brief(results)) if x)
    sections = [HEADER, machines(all_rows), brief, "## Overview\n\n" + overview(all_rows),
                "## Where we disagree, and likely reasons\n\n" + disagreements_section(all_rows, folders, series),
                "## The claims at other K\n\n" + claims_at_other_k(all_rows, refits, figures / CLAIMS_AT_K_FIGURE)]
    sections += [group_section(name, rows, figures, FIGURES) for name, rows in all_rows.items()]
    sections.append("## Sensitivity of the verdict to the method's choices\n\n" + sensitivity_section(results, all_rows, folders))
    sample_text, sample_figures = hessian_sample_section(results, figures, FIGURES)
    sections.append(sample_text)
    sections.append(llm_section(results, out.parent))
    sections.append("## Data\n\n" + data_section(all_rows))
    text = "\n\n".join(sections) + "\n"
    written = {f"{name}.png" for name, rows in all_rows.items() if measured(rows)} | {CLAIMS_AT_K_FIGURE}
    written |= set(sample_figures)
    written |= {f"{n}-sharpness.png" for n in SHARPNESS_GROUPS if measured(all_rows[n])}
    for stale in figures.glob("*.png") if figures.is_dir() else ():
        if stale.name not in written:
            stale.unlink()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return text


def main(argv: list[str]) -> int:
    """`python -m train report`."""
    p = argparse.ArgumentParser(prog="python -m train report",
                                description="Rewrite REPRODUCTION.md and its figures from the published results.")
    p.add_argument("--results", default=layout.RESULTS_ROOT, help="the results root (default: results/)")
    p.add_argument("--out", default="REPRODUCTION.md", help="the markdown file (default: ./REPRODUCTION.md); "
                                                            f"figures go to {FIGURES}/ beside it")
    args = p.parse_args(argv)
    render(args.results, args.out)
    print(f"wrote {args.out} and {Path(args.out).parent / FIGURES}/")
    return 0
