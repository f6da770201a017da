"""The Hessian-sample study: what the number of examples in the Hessian does to the K = 1000 verdict.

    python -m train hessian-sample --run RUN_DIR [--epoch E] [--sizes 1000,2000,4000,8000,16000,all]
                                   [--draws 3] [--draws-up-to 4000] [--states trained,init] [--list]

The paper defines H as the Hessian of the training loss (METHOD.md §1); every spectrum of the reproduction is
that of a 1000-example sample. For a trained network and its initialisation this study measures the converged
top K at each sample size N (3 draws where N <= --draws-up-to: draw 0 is the sample a run with
hessian_samples=N uses, draw i is drawn from fold_in of that stream), and beside each spectrum the curvature
carriers (hspec.curvature: the participation ratio of the per-example Gauss-Newton traces) over its sample.

A spectrum is one piece. Each finished piece is kept under the work folder (outside the work tree; default
~/.cache/hspec/work, or $HSPEC_WORK_DIR), and so is the Krylov state of the piece in progress, saved every
minute with the identity of its network, sample and settings: a killed study (or a session that ends) resumes
where it stopped, bit-identically, and a state that belongs to something else is refused. After each piece the
published file results/hessian-sample/<name>/series.json is rewritten with every piece finished so far.

Where the network fits most of its examples with confidence, most examples carry no curvature; the operator may
then drop them (`--reduce`): the kept examples are those with the largest Gauss-Newton traces, and the dropped
part's spectral norm (hspec.certify, by Lanczos on the dropped examples alone) bounds by Weyl's inequality how far
any eigenvalue moved. Such a piece is accepted only when that bound is below 1e-3 · λ_K, and records it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import hspec
from train import config as config_lib
from train import rundir
from train.measure import TOL, device_description
# The piece layer's names stay importable from here, as they were before the split (tests use krylov_identity).
from train.sample_pieces import (CERTIFY_TOLERANCE, DROP_BUDGET, STATES, STUDY, Piece, carriers,  # noqa: F401
                                 exact_piece, gn_traces, krylov_identity, parse_piece_name, piece_operator,
                                 piece_order, plan, reduced_piece, sample_indices, state_fingerprint)

SIZES = ("1000", "2000", "4000", "8000", "16000", "all")
DRAWS = 3
DRAWS_UP_TO = 4000
DRAWS_FROM = 1000


# --------------------------------------------------------------------------------------------------
# Spectra measured already by the sensitivity study, on the same network


def reused_pieces(exp: Any, meta: dict, results: Path) -> dict[str, dict[str, Any]]:
    """Pieces the sensitivity study (results/sensitivity/<run>-epoch<E>/) measured on this very network: the
    run's own sample and its other draws at the run's size, and the other sizes of draw 0.

    They are used only when the sensitivity study's run is this one: same preset, seed, epoch and K, and the
    published run's metrics history (results/*/<run>/metrics.jsonl) equals this checkpoint's, value for value
    (training here is bitwise reproducible on one CPU model; a rerun elsewhere is not, FINDINGS.md)."""
    cfg, e = exp.cfg, meta["epoch"]
    out: dict[str, dict[str, Any]] = {}
    for folder in sorted((results / "sensitivity").glob(f"*-epoch{e}")):
        base = _read_json(folder / "base.json")
        prov = (base or {}).get("provenance", {})
        if (prov.get("preset"), prov.get("seed"), prov.get("epoch"), prov.get("k")) != (cfg.preset, cfg.seed, e, cfg.k):
            continue
        if not _same_history(results, Path(prov.get("run", "")).name, meta["metrics"]):
            continue
        size, source = prov["hessian_samples"], str(folder)
        for label in STATES:
            b = base[label]
            out[Piece(label, size, 0).name] = dict(_refit(b["eigenvalues"], cfg.k), num_converged=b["num_converged"],
                                                   lanczos_steps=b["lanczos_steps"], eigenvalues=b["eigenvalues"],
                                                   seconds=b.get("seconds"), source=f"{source}/base.json")
            for doc_name, field, size_of in (("hessian_draws.json", "draw", lambda x: size),
                                             ("hessian_samples.json", "hessian_samples", lambda x: x)):
                doc = _read_json(folder / doc_name) or {}
                for entry in doc.get(label, []):
                    if "eigenvalues" not in entry:
                        continue
                    draw = entry[field] if field == "draw" else 0
                    piece = Piece(label, size_of(entry[field]), draw)
                    out.setdefault(piece.name, dict(_refit(entry["eigenvalues"], cfg.k),
                                                    num_converged=entry["num_converged"],
                                                    lanczos_steps=entry.get("lanczos_steps"),
                                                    eigenvalues=entry["eigenvalues"], seconds=None,
                                                    source=f"{source}/{doc_name}"))
    return out


def _refit(values: Any, k: int) -> dict[str, Any]:
    from train import record

    return record.refit(np.asarray(values, np.float64), k)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _same_history(results: Path, run_name: str, history: list[dict]) -> bool:
    """Whether a published run called `run_name` has exactly this metrics history (train/test loss per epoch)."""
    for path in results.glob(f"*/{run_name}/metrics.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        key = lambda r: (r["epoch"], r["train_loss"], r["test_loss"], r["train_acc"], r["test_acc"])  # noqa: E731
        if [key(r) for r in rows] == [key(r) for r in history]:
            return True
    return False


# --------------------------------------------------------------------------------------------------
# The runner


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """What the study measures: sample sizes (ints; the training set's size for the whole set), draws, states,
    and from which size on the trained network's operator is reduced (None: never), validated at one size below."""

    sizes: tuple[int, ...]
    draws: int = DRAWS
    draws_up_to: int = DRAWS_UP_TO
    draws_from: int = DRAWS_FROM
    states: tuple[str, ...] = STATES
    reduce_from: int | None = None
    validate_reduction_at: int | None = None


def pieces_of(spec: StudySpec, n_train: int) -> list[Piece]:
    """The study's pieces in order (plan), plus the validation of the reduction against an exact spectrum."""
    out = plan(list(spec.sizes), n_train, spec.draws, spec.draws_up_to, spec.states, spec.reduce_from,
               spec.draws_from)
    v = spec.validate_reduction_at
    if v is not None and "trained" in spec.states and v <= n_train:
        out.insert(next((i for i, p in enumerate(out) if p.state == "trained" and p.size > v), len(out)),
                   Piece("trained", v, 0, True))
    return out


class Study:
    """One network's Hessian-sample study: its experiment, states, traces, finished pieces and output files."""

    def __init__(self, run: Path, epoch: int | None, spec: StudySpec, results: Path, work: Path, name: str | None,
                 echo: Callable = print, lanczos_steps: int | None = None, data_dir: str | os.PathLike | None = None):
        from train.run import experiment_at_checkpoint

        # The Krylov space starts at `lanczos_steps` (default: the run's rule, 3K) and grows until the top K have
        # converged; a state saved under one start continues under another (the Lanczos run is the same).
        overrides = {} if lanczos_steps is None else {"lanczos_steps": lanczos_steps, "max_lanczos_steps": None}
        if data_dir:  # the data where they are now, not where the run found them (a run moved to another machine)
            overrides["data_dir"] = str(Path(data_dir).absolute())
        self.exp, trained, self.meta, _ = experiment_at_checkpoint(Path(run), epoch=epoch, overrides=overrides)
        self.spec, self.results, self.echo = spec, Path(results), echo
        self.name = name or f"{Path(run).resolve().name}-epoch{self.meta['epoch']}"
        self.out = self.results / STUDY / self.name
        self.work = Path(work) / STUDY / self.name
        self.states = {"trained": trained, "init": self.exp.template}
        self.n_train = len(self.exp.ds.y_train)
        self.pieces = pieces_of(spec, self.n_train)
        self.factory = hspec.HessianFactory()  # one for the study: pieces of one sample size compile once

    def traces(self, label: str, compute: bool = True) -> np.ndarray | None:
        """The whole training set's per-example Gauss-Newton traces of a state (computed once, then cached)."""
        return gn_traces(self.exp, self.states[label], self.work, compute)

    def piece_path(self, piece: Piece) -> Path:
        return self.work / "pieces" / f"{piece.name}.json"

    def finished(self) -> dict[str, dict[str, Any]]:
        """Every finished piece: computed here (kept under the work folder) or reused from the sensitivity study."""
        done = {name: e for name, e in reused_pieces(self.exp, self.meta, self.results).items()}
        # Every piece kept for this network, also those of an invocation with another plan (series.json keeps all).
        prints = {label: state_fingerprint(st.params) for label, st in self.states.items()}
        for path in sorted((self.work / "pieces").glob("*.json")):
            doc = _read_json(path)
            if doc is not None and doc.get("network") == prints.get(parse_piece_name(path.stem)[0]):
                done[path.stem] = doc["entry"]
        return done

    def compute(self, piece: Piece, done: dict, progress: bool) -> dict[str, Any]:
        """Measure one piece and keep it under the work folder (atomically)."""
        from train import record

        st, idx = self.states[piece.state], sample_indices(self.exp, piece.size, piece.draw)
        if piece.reduced:
            entry = reduced_piece(self.exp, st, piece, idx, self.traces(piece.state)[idx],
                                  self._lambda_k_guess(piece.state, done), self.work, progress, self.factory)
        else:
            entry = exact_piece(self.exp, st, piece, idx, self.work, progress, self.factory)
        entry["source"] = "computed"
        entry["device"] = device_description()
        record.write_json(self.piece_path(piece), {"network": state_fingerprint(st.params), "entry": entry})
        return json.loads(self.piece_path(piece).read_text())["entry"]

    def _lambda_k_guess(self, label: str, done: dict) -> float:
        """λ_K of the largest sample of this state finished so far (the drop budget's scale)."""
        k = self.exp.cfg.k
        sizes = {name: parse_piece_name(name)[1] for name in done if parse_piece_name(name)[0] == label}
        if not sizes:
            raise RuntimeError(f"no finished {label} spectrum to scale the drop budget by: run a smaller size first")
        return float(np.asarray(done[max(sizes, key=sizes.get)]["eigenvalues"])[k - 1])

    def _pending(self, done: dict) -> list[str]:
        return _pending_of(self, done)

    def write(self, done: dict) -> Path:
        """results/hessian-sample/<name>/series.json: every finished piece with its sample's curvature carriers."""
        from train import record

        entries = []
        for name, entry in sorted(done.items(), key=lambda kv: piece_order(kv[0])):
            state, size, draw, reduced = parse_piece_name(name)
            if state not in self.states:
                continue
            idx, t = sample_indices(self.exp, size, draw), self.traces(state, compute=False)
            entries.append(dict(entry, state=state, hessian_samples=size, draw=draw, reduced_operator=reduced,
                                key="hessian_sample" if draw == 0 else f"fold_in(hessian_sample, {draw})",
                                carriers=None if t is None else carriers(t[idx])))
        doc = {"provenance": {"run": self.name, "preset": self.exp.cfg.preset, "epoch": self.meta["epoch"],
                              "seed": self.exp.cfg.seed, "k": self.exp.cfg.k, "num_params": self.exp.num_params,
                              "num_train": self.n_train, "spec": dataclasses.asdict(self.spec),
                              "certify_tolerance": CERTIFY_TOLERANCE, "drop_budget": DROP_BUDGET},
               "whole_set": {label: None if (t := self.traces(label, compute=False)) is None else carriers(t)
                             for label in STATES},
               "pieces": entries, "pending": self._pending(done)}
        self.out.mkdir(parents=True, exist_ok=True)
        record.write_json(self.out / "series.json", doc)
        return self.out / "series.json"


def _pending_of(study: "Study", done: dict) -> list[str]:
    """The pieces not finished yet: this invocation's plan and what the series already listed as pending (another
    queue, e.g. the other state on the other core, shares the file), in the study's order."""
    old = (_read_json(study.out / "series.json") or {}).get("pending", [])
    names = {p.name for p in study.pieces} | set(old)
    return sorted((n for n in names if n not in done), key=piece_order)




def run_study(study: Study, progress: bool = True) -> Path:
    """Compute every pending piece in order, writing series.json after each."""
    done = study.finished()
    path = study.write(done)
    for piece in study.pieces:
        # Read again before each piece: pieces finished elsewhere meanwhile (another queue, or unpacked from a GPU
        # run, benchmarks/gpu_check.sh hessian-sample) are not computed again, and series.json keeps them.
        done = study.finished()
        if piece.name in done:
            continue
        study.echo(f"{piece.name}: top {study.exp.cfg.k} of the Hessian of {piece.size} examples "
                   f"({'reduced operator, certified' if piece.reduced else 'exact'})")
        done[piece.name] = study.compute(piece, done, progress)
        e = done[piece.name]
        study.echo(f"{piece.name}: {e['verdict']} ({e['num_converged']} converged in {e['lanczos_steps']} steps, "
                   f"{e['seconds']:.0f} s)")
        path = study.write(done)
    return path


def listing(study: Study) -> str:
    """One line per piece: finished (d_KS, s), in progress (steps saved, converged so far) or pending."""
    done, lines = study.finished(), []
    for piece in study.pieces:
        if piece.name in done:
            fit = done[piece.name]["fit"]
            if fit.get("d_ks") is None:
                lines.append(f"{piece.name:28s} done     {done[piece.name]['verdict']}")
                continue
            src = done[piece.name].get("source", "computed")
            lines.append(f"{piece.name:28s} done     d_KS {fit['d_ks']:.4f} (d_c {fit['d_crit']:.4f}) s {fit['s']:.3f}"
                         f"{'' if src == 'computed' else '  [' + src + ']'}")
            continue
        from hspec.krylov_store import saved_progress

        progress = saved_progress(study.work / f"{piece.name}.lanczos", k=study.exp.cfg.k, tol=TOL)
        if progress is None:
            lines.append(f"{piece.name:28s} pending")
        else:
            lines.append(f"{piece.name:28s} running  {progress['steps']} Lanczos steps saved, "
                         f"{progress['converged']} of the top {study.exp.cfg.k} converged")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Can the operator be reduced? The dropped part's norm for a few cuts, measured once


REDUCTION_QUANTILES = (0.1, 0.25, 0.5, 0.75)


def reduction_check(study: Study, size: int, steps: int = 60) -> dict[str, Any]:
    """For draw 0 of a `size`-example sample of the trained network: drop the examples whose Gauss-Newton trace is
    below each quantile in REDUCTION_QUANTILES and measure the dropped part's spectral norm (Lanczos on it alone,
    scaled by n_dropped / N), against CERTIFY_TOLERANCE · λ_K of that sample (its exact piece when finished, else
    the run's own sample). Written to results/hessian-sample/<name>/reduction_check.json."""
    import jax

    from hspec.certify import spectral_norm
    from train import record

    st, idx = study.states["trained"], sample_indices(study.exp, size, 0)
    t = study.traces("trained")[idx]
    done = study.finished()
    exact = done.get(Piece("trained", size, 0).name) or done.get(Piece("trained", study.exp.cfg.hessian_samples, 0).name)
    lam_k = float(np.asarray(exact["eigenvalues"])[study.exp.cfg.k - 1])
    cuts = []
    for q in REDUCTION_QUANTILES:
        drop = t < np.quantile(t, q)
        t0 = time.perf_counter()
        norm = spectral_norm(piece_operator(study.exp, st, idx[drop], study.factory),
                             key=jax.random.fold_in(study.exp.keys.lanczos_start, 1),
                             num_steps=steps, scale=float(drop.sum()) / idx.size)
        cuts.append({"quantile": q, "dropped": int(drop.sum()), "dropped_gn_trace": float(t[drop].sum() / idx.size),
                     "norm": norm.to_dict(), "relative_to_lambda_k": norm.norm / lam_k,
                     "accepted": norm.norm <= CERTIFY_TOLERANCE * lam_k, "seconds": time.perf_counter() - t0})
    doc = {"hessian_samples": size, "draw": 0, "lambda_k": lam_k, "tolerance": CERTIFY_TOLERANCE, "cuts": cuts,
           "device": device_description()}
    study.out.mkdir(parents=True, exist_ok=True)
    record.write_json(study.out / "reduction_check.json", doc)
    return doc


# --------------------------------------------------------------------------------------------------
# The command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train hessian-sample",
                                description="The converged top-K spectrum of a trained network and of its "
                                            "initialisation against the number of examples in the Hessian, with the "
                                            "curvature carriers of each sample. Writes "
                                            "results/hessian-sample/<name>/series.json; resumable.")
    p.add_argument("--run", required=True, help="a run directory with checkpoints")
    p.add_argument("--epoch", type=int, help="which checkpoint (default: the newest)")
    p.add_argument("--name", help="output folder under <results>/hessian-sample (default: <run>-epoch<E>)")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"sample sizes, 'all' for the whole training set "
                                                            f"(default: {','.join(SIZES)})")
    p.add_argument("--draws", type=int, default=DRAWS, help=f"draws per size up to --draws-up-to (default {DRAWS})")
    p.add_argument("--draws-up-to", type=int, default=DRAWS_UP_TO, help=f"default {DRAWS_UP_TO}")
    p.add_argument("--draws-from", type=int, default=DRAWS_FROM, help=f"default {DRAWS_FROM}")
    p.add_argument("--states", default=",".join(STATES), help="trained, init or both (default: both)")
    p.add_argument("--reduce-from", help="from this size on, the trained network's operator keeps only the examples "
                                         "that carry its curvature, certified by Weyl's inequality (default: never)")
    p.add_argument("--validate-reduction-at", type=int,
                   help="also compute the reduced spectrum at this size, beside the exact one (the check of the method)")
    p.add_argument("--work", default=None, help=f"work folder for Krylov states and finished pieces (default: "
                                                f"${rundir.ENV_WORK_DIR}, else ~/.cache/hspec/work)")
    p.add_argument("--results", default="results", help="published results root (default: results/)")
    p.add_argument("--data-dir", help="data directory (default: the run's own, else env HSPEC_DATA_DIR, else "
                                       "~/.cache/hspec/data)")
    p.add_argument("--list", action="store_true", help="show each piece's progress and exit")
    p.add_argument("--lanczos-steps", type=int, help="Lanczos steps to start with before the convergence checks "
                                                     "(default: the run's rule, max(3K, K + 100)); the Krylov space "
                                                     "grows until the top K converge, up to 4x")
    p.add_argument("--reduction-check", type=int, metavar="N",
                   help="measure the dropped part's norm for a few curvature cuts of the trained network's N-example "
                        "sample (can the certified operator save anything?), write reduction_check.json and exit")
    p.add_argument("--carriers-only", action="store_true",
                   help="compute the curvature carriers of the whole training set (one pass per state), write "
                        "series.json and exit (run beside the spectra: the pieces do not wait for it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _size(text: str, n_train: int | None = None) -> int | str:
    text = text.strip()
    if text == config_lib.ALL_SAMPLES:
        return text
    try:
        value = int(text)
    except ValueError:
        raise config_lib.ConfigError(f"--sizes: {text!r} is neither a count nor 'all'") from None
    if value < 1:
        raise config_lib.ConfigError(f"--sizes: {value} is not a positive count")
    return value


def main(argv: list[str]) -> int:
    """`python -m train hessian-sample`."""
    from train import progress_wanted
    from train.data.dataset import use_data_dir

    args = _parser().parse_args(argv)
    use_data_dir(args.data_dir)
    states = tuple(s.strip() for s in args.states.split(",") if s.strip())
    bad = [s for s in states if s not in STATES]
    if bad:
        raise config_lib.ConfigError(f"--states: unknown {bad}; valid: {', '.join(STATES)}")
    sizes = [_size(s) for s in args.sizes.split(",") if s.strip()]
    reduce_from = None if args.reduce_from is None else _size(args.reduce_from)
    # 'all' resolves against the training set once the run is loaded.
    probe = Study(Path(args.run), args.epoch, StudySpec(sizes=()), Path(args.results),
                  Path(args.work) if args.work else rundir.default_work_dir(), args.name,
                  lanczos_steps=args.lanczos_steps, data_dir=args.data_dir)
    n = probe.n_train
    resolve = lambda v: n if v == config_lib.ALL_SAMPLES else v  # noqa: E731
    spec = StudySpec(sizes=tuple(sorted({resolve(s) for s in sizes})), draws=args.draws, draws_up_to=args.draws_up_to,
                     draws_from=args.draws_from,
                     states=states, reduce_from=None if reduce_from is None else resolve(reduce_from),
                     validate_reduction_at=args.validate_reduction_at)
    study = probe
    study.spec, study.pieces = spec, pieces_of(spec, n)
    if args.list:
        print(listing(study))
        return 0
    if args.reduction_check:
        doc = reduction_check(study, args.reduction_check)
        for c in doc["cuts"]:
            print(f"drop t below its {c['quantile']:.0%} quantile ({c['dropped']} examples): ||E|| = "
                  f"{c['norm']['norm']:.3g} = {c['relative_to_lambda_k']:.2g} λ_K "
                  f"({'accepted' if c['accepted'] else 'rejected'} at {CERTIFY_TOLERANCE:g} λ_K)")
        return 0
    if args.carriers_only:
        for label in spec.states:
            study.traces(label)
        print(f"curvature carriers written to {study.write(study.finished())}")
        return 0
    path = run_study(study, progress=progress_wanted(args.no_progress))
    print(f"hessian-sample study written to {path}")
    return 0
