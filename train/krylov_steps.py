"""Does a converged top K hold still as the Krylov space grows? One Hessian-sample piece, measured at many m.

The strict rule of every spectrum in the report is that the top K Ritz values have residual bounds
|β_m y_{m,i}| <= TOL · λ_1 (docs/method.md §2). A residual bound says that a Ritz value lies near *some*
eigenvalue, not that it is the eigenvalue of its rank: in a dense tail an eigenvalue that the Krylov space has
not yet found shifts every rank below it, while every value meets the rule. This study extends one piece of the
Hessian-sample study (train/sample_pieces.py: same network, sample, operator and start vector, so the Krylov run is
the same run) to `--steps` up to M, and at each m of the list reports the top K of the m-step run (a run truncated
at m steps is exactly an m-step run): how many meet the rule, d_KS, s, λ_K, and how far the top K still are from
those of the longest run (the largest relative change over the ranks, and its rank).

    python -m train.krylov_steps --run RUN --piece trained-n1000-d0 --steps 2000,2500,3000,3500 --first 1100,1500

`rule_stops` replays stop rules on the saved coefficients: where the residual rule alone, and the rule that also
asks the top K to have settled, would have stopped a run grown from `--first` steps, and what it would have
reported there.

The Krylov state is kept beside the study's (`<work>/hessian-sample/<name>/<piece>.lanczos`, with the study's
identity), so a killed run resumes, and the study's own piece continues from it. The result is written to
results/hessian-sample/<name>/krylov-steps/<piece>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["steps_table", "rule_stops", "measure_steps", "main"]


def _top_k_at(alphas: np.ndarray, betas: np.ndarray, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k Ritz values of the m-step run (descending) and their residual bounds |β_m y_{m,i}|."""
    from hspec.krylov import ritz_decomposition

    values, residuals, _ = ritz_decomposition(alphas[None, :m], betas[None, :m])[:3]
    return np.asarray(values[0][:k]), np.asarray(residuals[0][:k])


def steps_table(alphas: np.ndarray, betas: np.ndarray, steps: Sequence[int], k: int, tol: float) -> list[dict]:
    """One row per m in `steps` (ascending, each at most len(alphas)): the top k of the m-step run against the
    longest one's. Pure: the coefficients of one start decide everything."""
    from train import record

    steps = sorted(int(m) for m in steps)
    if steps[-1] > len(alphas):
        raise ValueError(f"the run has {len(alphas)} steps, fewer than m = {steps[-1]}")
    if steps[0] < k:
        raise ValueError(f"m = {steps[0]} steps give {steps[0]} Ritz values, fewer than K = {k}")
    final, _ = _top_k_at(alphas, betas, steps[-1], k)
    rows = []
    for m in steps:
        top, res = _top_k_at(alphas, betas, m, k)
        lam1 = abs(float(top[0]))
        converged = int(np.sum(res <= tol * lam1))
        change = np.abs(top - final) / np.abs(final)
        row = {"m": m, "num_converged": converged, "lambda_k": float(top[-1]),
               "max_relative_change_to_last": float(change.max()), "at_rank": int(np.argmax(change)) + 1,
               "ranks_changed_over_1e-3": int(np.sum(change > 1e-3))}
        if np.all(top > 0):
            fit = record.refit(top, k)
            row.update(d_ks=fit["fit"]["d_ks"], s=fit["fit"]["s"], verdict=fit["verdict"])
        rows.append(row)
    return rows


def rule_stops(alphas: np.ndarray, betas: np.ndarray, k: int, tol: float, first: int, every: int,
               settle: Sequence[float] = (1e-2, 3e-3, 1e-3)) -> list[dict[str, Any]]:
    """Where stop rules would have ended this run, checked at m = first, first + every, ... (as hspec grows a
    Krylov space), and what they would have reported there, against the run's longest m:

    - "residual": the top k meet |β_m y_{m,i}| <= tol · λ_1 (the rule of every spectrum in the report);
    - "settled <ε>": that, and no rank of the top k moved by more than ε (relative) over the last `every` steps
      (train.measure.SETTLE = 3e-3 is the rule the Hessian-sample study and the LLM runs use).

    Each rule is hspec's own (hspec.eigenvalues.top_k_converged, one start), applied to the first m coefficients.
    A rule that never fires within the run is reported with m None."""
    from hspec.eigenvalues import top_k_converged

    from train import record

    final, _ = _top_k_at(alphas, betas, len(alphas), k)
    rules = {"residual": None, **{f"settled {e:g}": e for e in settle}}
    out = {}
    for m in range(first, len(alphas) + 1, every):
        a, b = alphas[None, :m], betas[None, :m]
        if not top_k_converged(a, b, k=k, tol=tol):
            continue  # every rule asks the residual rule first: the settled ones cannot fire here either
        for name, eps in rules.items():
            if name not in out and (eps is None or top_k_converged(a, b, k=k, tol=tol, settle=eps, back=every)):
                top, _ = _top_k_at(alphas, betas, m, k)
                row = {"rule": name, "m": m, "lambda_k": float(top[-1]),
                       "max_relative_change_to_last": float(np.max(np.abs(top - final) / np.abs(final)))}
                if np.all(top > 0):
                    row["d_ks"] = record.refit(top, k)["fit"]["d_ks"]
                out[name] = row
    return [out.get(name, {"rule": name, "m": None}) for name in rules]

def _never(alphas: np.ndarray, betas: np.ndarray) -> bool:
    return False


def measure_steps(study: Any, piece_name: str, steps: Sequence[int], progress: bool,
                  firsts: Sequence[int] = ()) -> dict[str, Any]:
    """Extend `piece_name`'s Krylov run to max(steps) (resumable) and tabulate it; the stop rules are replayed
    from the run's own first step count (3K) and from each of `firsts` (checked every tenth of it)."""
    import hspec
    from train import sample_pieces as sp
    from train.measure import TOL, device_description

    state_label, size, draw, reduced = sp.parse_piece_name(piece_name)
    if reduced:
        raise ValueError(f"{piece_name}: only exact pieces (no '-reduced') can be extended")
    piece = sp.Piece(state_label, size, draw)
    st, idx = study.states[state_label], sp.sample_indices(study.exp, size, draw)
    op = sp.piece_operator(study.exp, st, idx)
    t0 = time.perf_counter()
    # A `stop` that never fires keeps the Krylov state when the run ends (hspec clears a finished run's state):
    # the study's own piece, and a longer extension, continue from it instead of starting again.
    run = hspec.lanczos(op, max(steps), key=study.exp.keys.lanczos_start, progress=progress,
                        checkpoint_dir=study.work / f"{piece.name}.lanczos", stop=_never,
                        checkpoint_identity=sp.krylov_identity(study.exp, st, piece, idx, None))
    k = study.exp.cfg.k
    first = study.exp.cfg.lanczos_steps or hspec.default_num_steps(k, op.dim)  # the run's rule, checked as it grows
    return {"what": "the top K of one Krylov run at growing m (train/krylov_steps.py)", "piece": piece.name,
            "network": sp.state_fingerprint(st.params), "k": k, "tol": TOL, "dim": int(op.dim),
            "rows": steps_table(run.alphas[0], run.betas[0], steps, k, TOL),
            "stops": [{"first": f, "every": max(f // 10, 10),
                       "rules": rule_stops(run.alphas[0], run.betas[0], k, TOL, f, max(f // 10, 10))}
                      for f in sorted({first, *firsts})],
            "seconds": run.resumed_s + time.perf_counter() - t0, "device": device_description()}


def main(argv: list[str] | None = None) -> int:
    from train import progress_wanted, record, rundir
    from train import sample_size as ss
    from train.data.dataset import use_data_dir

    p = argparse.ArgumentParser(prog="python -m train.krylov_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run directory with checkpoints")
    p.add_argument("--epoch", type=int, help="which checkpoint (default: the newest)")
    p.add_argument("--name", help="the study's folder name (default: <run>-epoch<E>)")
    p.add_argument("--piece", required=True, help="e.g. trained-n1000-d0 (state-n<size>-d<draw>)")
    p.add_argument("--steps", required=True, help="comma-separated Krylov dimensions m, e.g. 2000,3000,4000")
    p.add_argument("--first", default="", help="also replay the stop rules from these first step counts, e.g. "
                                               "1100,1500 (the run's own, 3K, always)")
    p.add_argument("--work", help="work folder (default: ~/.cache/hspec/work or $HSPEC_WORK_DIR)")
    p.add_argument("--results", default="results", help="published results root (default: results/)")
    p.add_argument("--data-dir", help="data directory (default: env HSPEC_DATA_DIR, else ~/.cache/hspec/data)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    use_data_dir(args.data_dir)
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    if not steps or steps[0] < 1:
        raise SystemExit("--steps: give positive Krylov dimensions, e.g. 2000,3000,4000")
    study = ss.Study(Path(args.run), args.epoch, ss.StudySpec(sizes=()), Path(args.results),
                     Path(args.work) if args.work else rundir.default_work_dir(), args.name)
    firsts = [int(f) for f in args.first.split(",") if f.strip()]
    doc = measure_steps(study, args.piece, steps, progress_wanted(args.no_progress), firsts)
    out = study.out / "krylov-steps" / f"{doc['piece']}.json"
    record.write_json(out, doc)
    for r in doc["rows"]:
        print(f"m {r['m']:5d}: {r['num_converged']:4d} of {doc['k']} meet the rule, d_KS {r.get('d_ks', float('nan')):.4f}, "
              f"λ_K {r['lambda_k']:.4g}, top K differ from m = {steps[-1]} by up to "
              f"{r['max_relative_change_to_last']:.2e} (rank {r['at_rank']}, {r['ranks_changed_over_1e-3']} ranks > 1e-3)")
    for block in doc["stops"]:
        for r in block["rules"]:
            where = "never within the run" if r["m"] is None else (
                f"at m {r['m']}: d_KS {r.get('d_ks', float('nan')):.4f}, top K off by up to "
                f"{r['max_relative_change_to_last']:.2e}")
            print(f"from {block['first']} (every {block['every']}), rule {r['rule']}: stops {where}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
