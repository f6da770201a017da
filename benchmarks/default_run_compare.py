"""The default run (`python -m train`) of this checkout against an earlier commit, in one session.

Three runs, interleaved so that machine noise hits both sides alike:
  baseline   the earlier commit, in a temporary git worktree
  legacy     this checkout with the earlier commit's PRNG key derivation patched in (no stream of its own
             per purpose): with the same keys the refactored code must give the same results, and its
             time is the fair performance comparison (same Lanczos steps)
  current    this checkout as it is (one stream per purpose: the numbers change, as documented)

Prints the wall time of each run, the ratios against the baseline, and the results side by side.

    python benchmarks/default_run_compare.py --baseline 9b33f9c [--preset default] [--rounds 1] [--set k=...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The key derivation before one stream per purpose (train.keys), as the earlier code wrote it: the model
# and the Lanczos start from split(key(seed))[0], augmentation and trace probes from [1], data options
# split inside apply_options, the Hessian sample from fold_in(key(seed), 1), epoch e from fold_in(key(seed), e).
LEGACY = """
import jax, sys
from train import experiment, keys
def legacy(seed):
    root = jax.random.key(int(seed))
    a, b = jax.random.split(root)
    return keys.RunKeys(int(seed), init=a, data_order=root, augment=b, data_options=root,
                        hessian_sample=jax.random.fold_in(root, 1), lanczos_start=a, trace_probes=b,
                        density_probes=b, dropout=b)
experiment.run_keys = legacy
from train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _run(cmd: list[str], cwd: Path, out: Path) -> float:
    """Run one default run; return its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=str(cwd))
    t0 = time.perf_counter()
    subprocess.run(cmd + ["--out", str(out), "--no-progress"], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _summary(out: Path) -> dict:
    """The numbers a reader compares: per spectrum d_KS, s, λ_max, Tr(H), steps, eigenvalue head; metrics."""
    rows = {}
    for label, path in (("init", out / "init" / "results.json"), ("final", out / "results.json")):
        r = json.loads(path.read_text())
        rows[label] = {"d_ks": r["fit"]["d_ks"], "s": r["fit"]["s"], "lambda_max": r["sharpness"]["lambda_max"],
                       "trace": r["sharpness"]["trace"], "lanczos_steps": r["spectrum"]["lanczos_steps"],
                       "eigenvalues": r["spectrum"]["eigenvalues"], "test_acc": r["metrics"]["test_acc"],
                       "spectrum_s": r["timing"].get("spectrum_total_s")}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the earlier commit")
    p.add_argument("--preset", default="default")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hspec-compare-"))
    tree = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = ["--preset", args.preset, *[f"--set={s}" for s in args.sets]]
    cmds = {"baseline": ([sys.executable, "-m", "train", *base], tree),
            "legacy": ([sys.executable, "-c", LEGACY, *base], REPO),
            "current": ([sys.executable, "-m", "train", *base], REPO)}
    times: dict[str, list[float]] = {name: [] for name in cmds}
    try:
        for r in range(args.rounds):
            for name, (cmd, cwd) in cmds.items():
                times[name].append(_run(cmd, cwd, tmp / f"{name}{r}"))
                print(f"round {r} {name}: {times[name][-1]:.1f} s", flush=True)
        results = {name: _summary(tmp / f"{name}0") for name in cmds}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    best = {name: min(t) for name, t in times.items()}
    print(f"\nwall time (best of {args.rounds}): " + ", ".join(f"{n} {t:.1f} s" for n, t in best.items()))
    print(f"ratio legacy/baseline {best['legacy'] / best['baseline']:.3f}, "
          f"current/baseline {best['current'] / best['baseline']:.3f}")
    for label in ("init", "final"):
        print(f"\n{label}:")
        for name, res in results.items():
            row = res[label]
            print(f"  {name:<8} d_KS {row['d_ks']} s {row['s']} lambda_max {row['lambda_max']} trace {row['trace']} "
                  f"steps {row['lanczos_steps']} test_acc {row['test_acc']} spectrum {row['spectrum_s']:.1f} s")
        same = results["legacy"][label]["eigenvalues"] == results["baseline"][label]["eigenvalues"]
        diff = max(abs(a - b) for a, b in zip(results["legacy"][label]["eigenvalues"],
                                               results["baseline"][label]["eigenvalues"]))
        print(f"  legacy keys reproduce the baseline eigenvalues: {'bit-identical' if same else f'max |diff| {diff:.3g}'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
