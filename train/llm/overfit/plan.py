"""The overfitting queue's plan: its preset, where it reads and writes, and what it has written so far.

The formats and paths are those of results/llm/gpt2-overfit-shakespeare-cpu/ and its work directory
(~/.cache/hspec/work/llm/<preset>/): curve.jsonl and checkpoints/ in the work directory; curve.json,
steps/<step>/, draws/draw-<d>/steps/<step>/ and sensitivity/ in the results directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["PRESET", "EVAL_EVERY", "DRAWS", "SIZE_FACTORS", "K_PREFIXES", "PAPER_LITERAL", "PIECES", "MEASURES",
           "TARGETS", "Plan", "plan", "log", "read_curve", "checkpoint_losses", "load_results"]

PRESET = "gpt2-overfit-shakespeare-cpu"
EVAL_EVERY = 50
DRAWS = (1, 2)
SIZE_FACTORS = (0.5, 2.0)
K_PREFIXES = (100, 200, 300, 500, 1000)
PAPER_LITERAL = {"num_starts": 3, "lanczos_steps": 1000, "combine": "pool",
                 "procedure": "3 Lanczos runs of 1000 steps from independent starts, their 3000 Ritz values pooled, "
                              "the top 1000 fitted as they are (unconverged values and repeats kept)"}
PIECES = ("train", "key", "draws", "spectra", "sizes", "paper", "tracking")
MEASURES = ("d_ks", "s", "lambda_max", "trace")
TARGETS = ("test_loss", "gap")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a queue reads and writes: its config, results directory and (outside the work tree) work directory."""

    cfg: Any
    out: Path
    work: Path
    data_dir: str | None = None


def plan(preset: str = PRESET, out: str | os.PathLike | None = None, work: str | os.PathLike | None = None,
         data_dir: str | None = None, sets: Sequence[str] = ()) -> Plan:
    """The queue of a preset: results in results/llm/<preset>, work in ~/.cache/hspec/work/llm/<preset>."""
    from train.llm import presets

    cfg = presets.apply_overrides(presets.get(preset), presets.parse_assignments(list(sets)))
    out = Path(out) if out else Path("results") / "llm" / preset
    work = Path(work) if work else Path.home() / ".cache" / "hspec" / "work" / "llm" / preset
    return Plan(cfg, out, work, data_dir)


def log(msg: str) -> None:
    """One timestamped line of the queue's log."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_curve(path: Path, upto: int | None = None) -> list[dict]:
    """The rows of curve.jsonl (step, test_loss, train_loss, gap) up to step `upto`."""
    if not path.is_file():
        return []
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [row for row in rows if upto is None or row["step"] <= upto]


def checkpoint_losses(p: Plan) -> dict[int, float]:
    """The test loss at each checkpoint step, from the training curve."""
    curve = {row["step"]: row["test_loss"] for row in read_curve(p.work / "curve.jsonl")}
    if not curve and (p.out / "curve.json").is_file():
        curve = {row["step"]: row["test_loss"] for row in json.loads((p.out / "curve.json").read_text())["curve"]}
    return {s: curve[s] for s in p.cfg.checkpoint_steps if s in curve}


def load_results(folder: Path) -> dict[int, Any]:
    """The records under <folder>/steps/<step>/results.json, by step."""
    from train import record

    return {int(path.parent.name): record.load(path) for path in sorted(folder.glob("steps/*/results.json"))}
