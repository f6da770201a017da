"""Summarise the wall times a `python -m train` run recorded: per epoch, per spectrum, in total.

  python -m train --preset default --out runs/default          # or any preset
  python benchmarks/run_timing.py runs/default

Epoch times come from metrics.jsonl (`time_s`, training plus the test evaluation of the epoch);
spectrum times from each results.json (`timing`: Lanczos, trace, total) with the steps taken.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summarise(run: Path) -> list[str]:
    """Lines describing the run's timings."""
    cfg = json.loads((run / "config.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [e for e in epochs if e.get("epoch", 0) > 0]
    times = [e["time_s"] for e in trained]
    lines = [f"{cfg['preset']}: {cfg['model']} on {cfg['dataset']}, {cfg['optimizer']}, batch {cfg['batch_size']}, "
             f"{len(trained)} epochs"]
    if times:
        lines.append(f"  epoch time: median {statistics.median(times):.1f} s (min {min(times):.1f}, max {max(times):.1f}); "
                     f"training total {sum(times):.0f} s; final test acc {100 * trained[-1]['test_acc']:.2f}%")
    total = sum(times)
    for res in sorted(run.glob("**/results.json")):
        r = json.loads(res.read_text())
        t = r.get("timing", {})
        total += t.get("spectrum_total_s", 0.0)
        fit = r.get("fit") or {}
        lines.append(f"  spectrum {res.parent.relative_to(run) if res.parent != run else 'final'}: K={fit.get('k')} "
                     f"{r['spectrum']['lanczos_steps']} steps, {r['spectrum']['num_converged']} converged, "
                     f"Lanczos {t.get('lanczos_s', 0):.0f} s, trace {t.get('trace_s', 0):.0f} s, "
                     f"total {t.get('spectrum_total_s', 0):.0f} s; {r.get('verdict')}")
    lines.append(f"  training + spectra: {total:.0f} s")
    return lines


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["runs/default"]:
        print("\n".join(summarise(Path(arg))))
