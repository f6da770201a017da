"""The overfitting queue's table and figure: rows with the draws' sd and the correlation views, for a person.

    table(tracking) -> str                  table.txt
    plot(tracking, curve, path)             tracking.png: loss curves, and each measure against the step
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from train.llm.overfit.plan import MEASURES, TARGETS

__all__ = ["table", "plot", "track_label"]


def _f(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def table(tracking: dict[str, Any]) -> str:
    """Rows (with the draws' sd where measured) and the correlation views, for a person."""
    head = (f"{'step':>6} {'test':>7} {'train':>7} {'gap':>7} {'d_KS':>14} {'s':>13} {'lambda_max':>10} "
            f"{'Tr(H)':>9} {'PL':>3} {'m':>5}")
    lines = [head, "-" * len(head)]
    for r in tracking["checkpoints"]:
        d = _f(r["d_ks"]) + ("" if r["d_ks_sd_draws"] is None else f"±{r['d_ks_sd_draws']:.4f}")
        s = _f(r["s"], ".3f") + ("" if r["s_sd_draws"] is None else f"±{r['s_sd_draws']:.3f}")
        lines.append(f"{r['step']:>6} {_f(r['test_loss']):>7} {_f(r['train_loss_eval']):>7} {_f(r['gap']):>7} "
                     f"{d:>14} {s:>13} {_f(r['lambda_max'], '.4g'):>10} {_f(r['trace'], '.4g'):>9} "
                     f"{'yes' if r['is_power_law'] else 'no':>3} {_f(r['lanczos_steps'], 'd'):>5}")
    views = tracking["correlation_views"]
    for target in TARGETS:
        lines.append(f"with the {'test loss' if target == 'test_loss' else 'gap (test - train)'}:")
        for m in MEASURES:
            v = views[target][m]
            lines.append(f"  {m:<10} all r={_f(v['all']['pearson'], '+.3f')} tau={_f(v['all']['kendall'], '+.3f')}"
                         f" | without step 0 r={_f(v['after_init']['pearson'], '+.3f')} "
                         f"tau={_f(v['after_init']['kendall'], '+.3f')} | partial on step "
                         f"r={_f(v['partial_step']['pearson'], '+.3f')} tau={_f(v['partial_step']['kendall'], '+.3f')}")
    return "\n".join(lines)


def plot(tracking: dict[str, Any], curve: list[dict], path: Path) -> None:
    """Loss curves, and each measure against the step (draws' sd as error bars) with the test loss beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tracking["checkpoints"]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 1 + len(MEASURES), figsize=(4.2 * (1 + len(MEASURES)), 3.8))
    ax = axes[0]
    if curve:
        ax.plot([c["step"] for c in curve], [c["test_loss"] for c in curve], "-", color="C3", label="test")
        ax.plot([c["step"] for c in curve], [c["train_loss"] for c in curve], "-", color="C2", label="train")
    ax.plot(steps, [r["test_loss"] for r in rows], "o", color="C3", ms=4)
    ax.axvline(tracking["key_steps"]["at"], color="k", lw=0.6, ls=":")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("loss (dots: measured checkpoints)")
    if curve:
        ax.legend(fontsize=8)
    for ax, m in zip(axes[1:], MEASURES):
        vals = [np.nan if r[m] is None else r[m] for r in rows]
        err = [r.get(f"{m}_sd_draws") or 0.0 for r in rows]
        ax.errorbar(steps, vals, yerr=err, fmt="o-", color="C0", ms=4, capsize=3)
        if m == "d_ks" and rows[0].get("d_crit"):
            ax.axhline(rows[0]["d_crit"], color="k", lw=0.8, ls="--", label="d_c")
            ax.legend(fontsize=8, loc="upper right")
        ax.axvline(tracking["key_steps"]["at"], color="k", lw=0.6, ls=":")
        twin = ax.twinx()
        twin.plot(steps, [r["test_loss"] for r in rows], "s--", color="C3", alpha=0.5, ms=3)
        twin.set_ylabel("test loss", color="C3", fontsize=8)
        last = tracking["setting"].get("steps") or max(steps)
        ax.set_xlim(-0.03 * last, 1.03 * last)
        v = tracking["correlation_views"]["test_loss"][m]
        ax.set_title(f"{track_label(m)}: r={_f(v['all']['pearson'], '+.2f')}, partial on step "
                     f"{_f(v['partial_step']['pearson'], '+.2f')}", fontsize=9)
        ax.set_xlabel("step")
    name = tracking["setting"].get("preset", "")
    fig.suptitle(f"{name}: last-block Hessian through training past the test-loss minimum (dotted line); "
                 f"error bars: sd over Hessian-sample draws", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def track_label(m: str) -> str:
    """The printed name of a measure (train.llm.track's)."""
    from train.llm.track import LABELS

    return LABELS[m]
