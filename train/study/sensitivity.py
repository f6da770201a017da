"""The sensitivity study: how much the verdict and s move with K, the Hessian sample, the Lanczos start, and
the paper's own unconverged procedure, for a trained network and its initialisation.

    python -m train sensitivity --run RUN_DIR [--epoch E] [--name NAME] [--set key=value ...] ...

For a trained network (e.g. `--run ~/.cache/hspec/work/sweeps/checkpoints/lenet-mnist-sgd`) and its initialisation, one converged top-K Lanczos run (long enough for every truncation below) gives the
verdict and s at K = 100, 300, 500, 1000 (its top-K prefixes refitted) and the paper's own procedure (the
Ritz values of that one run truncated at m = K, 1.25K, 1.5K, 2K, 3K steps, taken as they are, against the
converged values); further runs give the verdict with 500, 1000 and 2000 Hessian samples and from other
Lanczos start vectors. Each study is a JSON file in results/sensitivity/<name>/, skipped when it exists; the
spectra a study has finished wait in <work>/sensitivity/<name>/ (`--work`, default under ~/.cache/hspec/work/sweeps) until it is written, so a
killed study resumes losing only the spectrum in progress.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from train import progress_wanted
from train import config as config_lib
from train import record
from train.config import Config, ConfigError
from train.study.layout import RESULTS_ROOT, SENSITIVITY, WORK_ROOT
from train.study.plan import (PAPER_MULTIPLIERS, SENSITIVITY_DRAWS, SENSITIVITY_KS, SENSITIVITY_SAMPLES,
                              SENSITIVITY_STARTS, STUDIES, SensitivitySpec, SweepError)
from train.data.dataset import use_data_dir
from train.study.sweep import add_common_args


def converged_top(op: Any, k: int, key: Any, num_steps: int | None, max_steps: int | None, progress: bool, *,
                  state_dir: Path | None = None) -> Any:
    """The strict top k of an operator by the runs' own rule (train.measure.top_k), the Krylov space grown (by
    default up to 4x) until they converge: the study tests the procedure the runs use, so it has no rule of its own.

    With `state_dir` (used on CPU, where the basis is on the host) a killed run resumes its Krylov space."""
    import jax

    import hspec
    from train import measure

    # A study's step budget never exceeds the Krylov space a network has (the tiny test networks reach it).
    num_steps = min(op.dim, num_steps or hspec.default_num_steps(k, op.dim))
    spec = measure.SpectrumSpec(k=k, lanczos_steps=num_steps, max_lanczos_steps=max_steps)
    top, _ = measure.top_k(op, spec, key, progress, state_dir if jax.default_backend() == "cpu" else None)
    return top


def _base_spectrum(op: Any, cfg: Config, spec: SensitivitySpec, key: Any, progress: bool,
                   state_dir: Path | None = None) -> dict[str, Any]:
    """One converged top-K run long enough for every truncation of the paper's procedure; JSON-ready.

    It starts at max(the run's Lanczos steps, max multiplier · K) steps, so that every m = c·K is a
    prefix of this one run (with full reorthogonalisation a truncated run is exactly a shorter run).
    """
    import numpy as np

    k = cfg.k
    m0 = min(op.dim, max(cfg.lanczos_steps or 0, math.ceil(max(spec.multipliers, default=1.0) * k), k + 1))
    top = converged_top(op, k, key, m0, cfg.max_lanczos_steps, progress, state_dir=state_dir)
    lz = top.lanczos
    return {"k": k, "eigenvalues": np.asarray(top.eigenvalues), "residuals": np.asarray(top.residuals),
            "num_converged": top.num_converged, "lanczos_steps": top.num_steps, "alphas": lz.alphas[0],
            "betas": lz.betas[0], "seconds": top.seconds + lz.resumed_s}  # a killed run's saved steps included


def k_prefix_study(base: dict[str, Any], spec: SensitivitySpec) -> list[dict[str, Any]]:
    """The verdict and s of the top-K prefixes of one converged spectrum, K in spec.ks (<= the spectrum's K)."""
    ks = sorted({k for k in spec.ks if 2 <= k <= base["k"]} | {base["k"]})
    return [record.refit(base["eigenvalues"][:k], k) for k in ks]


def paper_procedure_study(base: dict[str, Any], spec: SensitivitySpec) -> list[dict[str, Any]]:
    """Ritz values of ONE Lanczos run truncated at m = c·K steps, taken as they are, against converged ones.

    For each m: the positive Ritz values, the verdict of the top K Ritz values (undefined when some are
    non-positive), and how far the top K lie from the converged top K (max |θ_i − λ_i| / λ_1, and how
    many agree to 1e-3 of λ_1). When some of the top K are non-positive, `positive_only` is the verdict of
    the positive ones alone (K' < K of them): what a user who drops the non-positive values would report.
    """
    import hspec
    import numpy as np

    k, conv = base["k"], np.asarray(base["eigenvalues"])
    alphas, betas = np.asarray(base["alphas"]), np.asarray(base["betas"])
    out = []
    for c in sorted(set(spec.multipliers)):
        m = int(round(c * k))
        if m > len(alphas) or m < 2:
            continue
        ritz, _ = hspec.tridiagonal_eigh(alphas[:m], betas[: m - 1])
        top = ritz[:k]
        entry = {"multiplier": c, "m": m, "num_ritz_positive": int(np.sum(ritz > 0)), "ritz_values": top}
        if top.size < k:
            entry.update(verdict=f"undefined: only {top.size} Ritz values for K = {k}", fit=None)
        else:
            entry.update(record.refit(top, k))
            positive = top[top > 0]
            if positive.size < k and positive.size >= 2:
                entry["positive_only"] = record.refit(positive, positive.size)
            err = np.abs(top - conv) / abs(conv[0])
            entry.update(max_rel_error=float(err.max()), num_within_1e3=int(np.sum(err <= 1e-3)))
        out.append(entry)
    return out


# cached(piece, compute) -> the piece's entry; compute(state_dir) computes it, keeping its Lanczos state in
# state_dir (None: not kept).
Cached = Callable[[str, Callable[[Path | None], dict]], dict]


def _uncached(piece: str, compute: Callable[[Path | None], dict]) -> dict:
    return compute(None)


def piece_cache(parts: Path, provenance: dict[str, Any]) -> Cached:
    """Keep each finished spectrum of a study in `parts` (under the work directory, never under results/), so
    that a study killed after hours loses only the spectrum in progress. A piece is reused only when it was
    computed with the same provenance (run, epoch, K, sample, spec, overrides); it is returned in its JSON
    form either way, so a resumed study writes the same file as an uninterrupted one."""
    stamp = json.dumps(provenance, sort_keys=True, default=str)

    def cached(piece: str, compute: Callable[[Path | None], dict]) -> dict:
        path = parts / f"{piece}.json"
        if path.is_file():
            doc = json.loads(path.read_text())
            if doc.get("stamp") == stamp:
                return doc["entry"]
        record.write_json(path, {"stamp": stamp, "entry": compute(parts / f"{piece}.lanczos")})
        return json.loads(path.read_text())["entry"]

    return cached


def _sample_operator(exp: Any, state: Any, size: int, draw: int = 0) -> Any:
    """The Hessian operator of `state` on a Hessian sample of `size` examples: drawn from the run's sample
    stream (draw 0, the run's own sample at its size) or from fold_in(that stream, draw)."""
    import jax

    from train import data
    from train.hessian import hessian_loss
    from train.measure import sample_operator

    key = exp.keys.hessian_sample if draw == 0 else jax.random.fold_in(exp.keys.hessian_sample, draw)
    own = size == exp.cfg.hessian_samples and draw == 0
    sample = exp.hessian if own else data.hessian_sample(exp.ds, size, key)
    # The runs' own operator (train.measure), so that the study tests the procedure the runs use.
    return sample_operator(hessian_loss(exp.model_defs.eval_def, state.rest), state.params, (sample.x, sample.y),
                           exp.cfg.hessian_batch_size)


def hessian_samples_study(exp: Any, state: Any, base: dict[str, Any], spec: SensitivitySpec, progress: bool,
                          cached: Cached = _uncached) -> list[dict[str, Any]]:
    """The verdict at K with each Hessian-sample size (drawn from the run's sample stream); `cached(piece,
    compute)` keeps each new spectrum once it is finished."""
    from train.catalog import NUM_CLASSES

    cfg, out = exp.cfg, []
    for n in sorted(set(spec.samples)):
        entry: dict[str, Any] = {"hessian_samples": n}
        if n > len(exp.ds.y_train) or n * (NUM_CLASSES[cfg.dataset] - 1) < 2 * cfg.k:
            entry["skipped"] = (f"{n} samples: more than the {len(exp.ds.y_train)} training examples, or a "
                                f"Gauss-Newton rank below 2K = {2 * cfg.k}")
        elif n == cfg.hessian_samples:
            entry.update(record.refit(base["eigenvalues"], cfg.k), num_converged=base["num_converged"],
                         lanczos_steps=base["lanczos_steps"])
        else:
            def compute(state_dir: Path | None, n: int = n) -> dict[str, Any]:
                top = converged_top(_sample_operator(exp, state, n), cfg.k, exp.keys.lanczos_start,
                                    cfg.lanczos_steps, cfg.max_lanczos_steps, progress, state_dir=state_dir)
                return dict(record.refit(top.eigenvalues, cfg.k), num_converged=top.num_converged,
                            lanczos_steps=top.num_steps, eigenvalues=top.eigenvalues)
            entry.update(cached(f"samples{n}", compute))
        out.append(entry)
    return out


def _variants_study(count: int, field: str, stream: str, base: dict[str, Any], k: int, cached: Cached,
                    spectrum: Callable[[int, Path | None], dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries 0..count-1 of a study that varies one key stream: entry 0 is the base spectrum (the run's key);
    entry i is `spectrum(i, state_dir)`, computed with fold_in(stream, i) and kept by `cached`."""
    out = []
    for i in range(count):
        if i == 0:
            entry = dict(record.refit(base["eigenvalues"], k), num_converged=base["num_converged"])
        else:
            entry = cached(f"{field}{i}", lambda state_dir, i=i: spectrum(i, state_dir))
        out.append({field: i, "key": stream if i == 0 else f"fold_in({stream}, {i})", **entry})
    return out


def hessian_draws_study(exp: Any, state: Any, base: dict[str, Any], spec: SensitivitySpec, progress: bool,
                        cached: Cached = _uncached) -> list[dict[str, Any]]:
    """The verdict at K on other Hessian samples of the run's size: which examples, not how many (the paper
    does not say which 1000 it used). Draw 0 is the run's sample; the Lanczos start is the run's."""
    cfg = exp.cfg

    def spectrum(i: int, state_dir: Path | None) -> dict[str, Any]:
        top = converged_top(_sample_operator(exp, state, cfg.hessian_samples, i), cfg.k, exp.keys.lanczos_start,
                            cfg.lanczos_steps, cfg.max_lanczos_steps, progress, state_dir=state_dir)
        return dict(record.refit(top.eigenvalues, cfg.k), num_converged=top.num_converged,
                    lanczos_steps=top.num_steps, eigenvalues=top.eigenvalues)

    return _variants_study(spec.draws, "draw", "hessian_sample", base, cfg.k, cached, spectrum)


def lanczos_starts_study(exp: Any, op: Any, base: dict[str, Any], spec: SensitivitySpec, progress: bool,
                         cached: Cached = _uncached) -> list[dict[str, Any]]:
    """The verdict at K from several Lanczos start vectors: start 0 is the run's key, start i its fold_in(i)."""
    import jax

    cfg = exp.cfg

    def spectrum(i: int, state_dir: Path | None) -> dict[str, Any]:
        key = jax.random.fold_in(exp.keys.lanczos_start, i)
        top = converged_top(op, cfg.k, key, cfg.lanczos_steps, cfg.max_lanczos_steps, progress, state_dir=state_dir)
        return dict(record.refit(top.eigenvalues, cfg.k), num_converged=top.num_converged, eigenvalues=top.eigenvalues)

    return _variants_study(spec.starts, "start", "lanczos_start", base, cfg.k, cached, spectrum)


def _display_path(path: Path) -> str:
    """A path as recorded: relative to the working directory when inside it, else its last two parts."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*path.resolve().parts[-2:]))


def refuse_training_fields(overrides: dict[str, Any]) -> None:
    """The study measures the run's own network: its --set may change only the spectrum fields.

    Raises:
        ConfigError: naming the other fields.
    """
    bad = [k for k in overrides if k not in config_lib.SPECTRUM_FIELDS]
    if bad:
        raise ConfigError(f"sensitivity --set changes only the spectrum fields "
                          f"({', '.join(config_lib.SPECTRUM_FIELDS)}); not {', '.join(bad)}")


def sensitivity(run: str | os.PathLike, *, results: str | os.PathLike = RESULTS_ROOT, epoch: int | None = None,
                name: str | None = None, overrides: dict[str, Any] | None = None,
                spec: SensitivitySpec = SensitivitySpec(), progress: bool = True, echo: Callable = print,
                work: str | os.PathLike = WORK_ROOT) -> Path:
    """How the verdict and s of a trained network and of its initialisation depend on the method's choices.

    Writes results/sensitivity/<name>/: base.json (one converged top-K run per state, with its Lanczos
    coefficients), then one JSON per study (STUDIES), each {"provenance", "trained": [...], "init": [...]}.
    A study whose file exists is skipped, and each spectrum a study finishes is kept in
    <work>/sensitivity/<name>/ until the study is written, so a killed study resumes losing at most one spectrum;
    on CPU the spectrum in progress keeps its Lanczos state there too (`<piece>.lanczos`), so it loses at most a
    minute.

    Args:
        run: a run directory with checkpoints (or a checkpoints/epoch_N directory).
        results: the results root. epoch: which checkpoint (default: the newest).
        name: the output folder's name (default: "<run name>-epoch<E>").
        overrides: spectrum fields (k, hessian_samples, lanczos_steps, ...); K is the largest K studied.
        spec: what to vary.
        work: the work root (the finished spectra of unfinished studies; never published).

    Returns:
        The output directory.
    """
    from train.run import experiment_at_checkpoint

    refuse_training_fields(overrides or {})
    exp, trained, meta, _ = experiment_at_checkpoint(Path(run), epoch=epoch, overrides=overrides)
    e = meta["epoch"]
    out = Path(results) / SENSITIVITY / (name or f"{Path(run).resolve().name}-epoch{e}")
    out.mkdir(parents=True, exist_ok=True)
    states = {"trained": trained, "init": exp.template}
    provenance = {"run": _display_path(Path(run)), "epoch": e, "preset": exp.cfg.preset, "k": exp.cfg.k,
                  "hessian_samples": exp.cfg.hessian_samples, "seed": exp.cfg.seed, "num_params": exp.num_params,
                  "overrides": dict(sorted((overrides or {}).items())), "spec": dataclasses.asdict(spec)}
    ops = {label: _sample_operator(exp, s, exp.cfg.hessian_samples) for label, s in states.items()}
    base = _load_or_compute_base(out, exp, ops, spec, provenance, progress, echo, Path(work) / SENSITIVITY / out.name)
    for study in spec.studies:
        path = out / f"{study}.json"
        if path.exists():
            echo(f"{study}: {path} exists; skipped")
            continue
        echo(f"{study}: trained and init")
        doc = {"provenance": provenance}
        for label, state in states.items():
            cached = piece_cache(Path(work) / SENSITIVITY / out.name / f"{study}-{label}", provenance)
            doc[label] = _study(study, exp, state, ops[label], base[label], spec, progress, cached)
        record.write_json(path, doc)
    return out


def _load_or_compute_base(out: Path, exp: Any, ops: dict, spec: SensitivitySpec, provenance: dict,
                          progress: bool, echo: Callable, work: Path | None = None) -> dict[str, Any]:
    """base.json: the converged top-K run of each state, computed once (reused when the study resumes); with
    `work`, a killed base spectrum resumes its Lanczos run from `work/base-<state>.lanczos`."""
    path = out / "base.json"
    if path.exists():
        return json.loads(path.read_text())
    doc: dict[str, Any] = {"provenance": provenance}
    for label, op in ops.items():
        echo(f"converged top {exp.cfg.k} of the {label} network ({op.dim} parameters)")
        doc[label] = _base_spectrum(op, exp.cfg, spec, exp.keys.lanczos_start, progress,
                                    None if work is None else work / f"base-{label}.lanczos")
    record.write_json(path, doc)
    return json.loads(path.read_text())


def _study(study: str, exp: Any, state: Any, op: Any, base: dict, spec: SensitivitySpec, progress: bool,
           cached: Cached = _uncached) -> list:
    """One study of one state."""
    if study == "k_prefix":
        return k_prefix_study(base, spec)
    if study == "paper_procedure":
        return paper_procedure_study(base, spec)
    if study == "hessian_samples":
        return hessian_samples_study(exp, state, base, spec, progress, cached)
    if study == "lanczos_starts":
        return lanczos_starts_study(exp, op, base, spec, progress, cached)
    if study == "hessian_draws":
        return hessian_draws_study(exp, state, base, spec, progress, cached)
    raise SweepError(f"unknown study {study!r}; valid: {', '.join(STUDIES)}")


def _numbers(text: str | None, kind: type) -> tuple:
    return () if not text else tuple(kind(x) for x in text.split(",") if x.strip())


def _sensitivity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train sensitivity",
                                description="The verdict and s of a trained network and of its initialisation "
                                            "against K, the Hessian sample, the Lanczos start and the paper's "
                                            "unconverged procedure. Writes results/sensitivity/<name>/*.json.")
    p.add_argument("--run", required=True, help="a run directory with checkpoints (e.g. "
                                                "~/.cache/hspec/work/sweeps/checkpoints/lenet-mnist-sgd)")
    p.add_argument("--epoch", type=int, help="which checkpoint (default: the newest)")
    p.add_argument("--name", help="output folder under <results>/sensitivity (default: <run>-epoch<E>)")
    p.add_argument("--ks", help=f"K values refitted from one converged spectrum (default: "
                                f"{','.join(map(str, SENSITIVITY_KS))}; the spectrum's K is the run's k)")
    p.add_argument("--samples", help=f"Hessian-sample sizes (default: {','.join(map(str, SENSITIVITY_SAMPLES))})")
    p.add_argument("--starts", type=int, default=SENSITIVITY_STARTS, help="Lanczos start vectors")
    p.add_argument("--draws", type=int, default=SENSITIVITY_DRAWS,
                   help="Hessian samples of the run's size (the run's own and draws from fold_in of its stream)")
    p.add_argument("--multipliers", help=f"the paper's procedure: m = c*K for these c (default: "
                                         f"{','.join(map(str, PAPER_MULTIPLIERS))})")
    p.add_argument("--studies", help=f"which studies (default: all of {','.join(STUDIES)})")
    p.add_argument("--work", default=WORK_ROOT, help=f"where each finished spectrum of an unfinished study is kept "
                                                     f"(<work>/sensitivity/<name>/; default: {WORK_ROOT}/)")
    add_common_args(p)
    return p


def main_sensitivity(argv: list[str]) -> int:
    """`python -m train sensitivity`."""
    args = _sensitivity_parser().parse_args(argv)
    overrides = config_lib.parse_assignments(args.sets)
    typed = config_lib.apply_overrides(Config(), overrides)
    spec = SensitivitySpec(ks=_numbers(args.ks, int) or SENSITIVITY_KS,
                           samples=_numbers(args.samples, int) or SENSITIVITY_SAMPLES, starts=args.starts, draws=args.draws,
                           multipliers=_numbers(args.multipliers, float) or PAPER_MULTIPLIERS,
                           studies=_numbers(args.studies, str) or STUDIES)
    unknown = [s for s in spec.studies if s not in STUDIES]
    if unknown:
        raise SweepError(f"unknown studies {unknown}; valid: {', '.join(STUDIES)}")
    use_data_dir(args.data_dir)
    out = sensitivity(args.run, results=args.results, epoch=args.epoch, name=args.name,
                      overrides={k: getattr(typed, k) for k in overrides}, spec=spec,
                      progress=progress_wanted(args.no_progress), work=args.work)
    print(f"sensitivity written to {out}")
    return 0
