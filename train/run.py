"""One run of the paper's pipeline: train, checkpoint, then the Hessian spectra and their verdicts.

`train_run` trains a configuration into an output directory and writes

    config.json                 the resolved configuration
    metrics.jsonl               one line per epoch (epoch 0: the initialisation, measured in eval mode)
    checkpoints/epoch_N/        orbax checkpoints (see train.checkpoint)
    results.json, spectrum.png  the final trained network
    init/results.json, ...      the control at initialisation (setting.trained = false)
    epochs/<e>/results.json     spectra after the chosen epochs
    table.txt                   the printed verdict table

Spectra are computed after training from the kept checkpoints, each only if its results.json is
missing, so `--resume` finishes a run killed at any point. `spectrum_of_checkpoint` computes the same
for any saved checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from train import checkpoint as ckpt
from train import config as config_lib
from train import loop
from train.config import Config, ConfigError

RESULTS = "results.json"
PLOT = "spectrum.png"


class OutputDirError(RuntimeError):
    """The output directory cannot be written, or already holds a run that would be overwritten."""


@dataclasses.dataclass
class Context:
    """Everything built once per run from its configuration: data, split model, optimizer, steps."""

    cfg: Config
    ds: Any
    fm: loop.FunctionalModel
    tx: Any
    template: loop.TrainState
    num_params: int
    steps_per_epoch: int
    num_epochs: int
    total_steps: int
    hessian: tuple[np.ndarray, np.ndarray, np.ndarray]


def _load_data(cfg: Config) -> Any:
    """The training data after the run's options (subset, label noise, random labels, Gaussian inputs)."""
    from train import data

    ds = data.load(cfg.dataset, cfg.data_dir)
    return data.apply_options(ds, train_size=cfg.train_size, label_noise=cfg.label_noise,
                              random_labels=cfg.random_labels, gaussian_inputs=cfg.gaussian_inputs, seed=cfg.seed)


def _check_sizes(cfg: Config, n_train: int) -> None:
    """Data-dependent checks: batch size and Hessian sample no larger than the training set."""
    if cfg.batch_size > n_train:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {n_train} training examples of {cfg.dataset}"
                          f"{f' (train_size={cfg.train_size})' if cfg.train_size else ''}; use batch_size <= {n_train}")
    if cfg.hessian_samples > n_train:
        raise ConfigError(f"hessian_samples={cfg.hessian_samples} exceeds the {n_train} training examples; "
                          f"use hessian_samples <= {n_train}")


def build_context(cfg: Config) -> Context:
    """Load the data, build and split the model, make the optimizer, resolve the config.

    Args:
        cfg: a configuration (validated here; rule fields resolved against the model's size).

    Returns:
        The run's Context; `template` is the initial training state (epoch 0).

    Raises:
        ConfigError: a bad field, batch size above N, K above the parameter count...
        FileNotFoundError: the data set is missing (train.data.DataNotFoundError says where to put it).
    """
    from flax import nnx

    from train import data, models, optim

    config_lib.validate(cfg)
    ds = _load_data(cfg)
    n = len(ds.y_train)
    _check_sizes(cfg, n)
    model_key, _ = jax.random.split(jax.random.key(cfg.seed))
    model = models.build(cfg.model, num_classes=ds.num_classes, input_shape=tuple(ds.input_shape),
                         rngs=nnx.Rngs(model_key), **config_lib.model_kwargs(config_lib.resolve(cfg)))
    num_params = int(models.count_params(model))
    cfg = config_lib.resolve(cfg, num_params=num_params)
    fm, params, rest = loop.split_model(model)
    spe = loop.steps_per_epoch(n, cfg.batch_size, cfg.drop_last)
    num_epochs, total = loop.plan(cfg.epochs, cfg.max_steps, spe)
    late = [e for e in cfg.spectrum_epochs if e > num_epochs]
    if late:
        raise ConfigError(f"spectrum_epochs {late} lie beyond the run's {num_epochs} epochs "
                          f"({total} steps of {spe} per epoch)")
    bounds = loop.drop_boundaries(epochs=cfg.epochs, max_steps=cfg.max_steps, spe=spe,
                                  fractions=cfg.lr_drop_fractions, drop_epochs=cfg.lr_drop_epochs)
    tx = optim.get(cfg.optimizer, learning_rate=loop.lr_schedule(cfg.learning_rate, bounds, cfg.lr_drop_factor),
                   weight_decay=cfg.weight_decay)
    template = loop.TrainState(params, rest, tx.init(params))
    hessian = data.hessian_sample(ds, cfg.hessian_samples, cfg.seed)
    return Context(cfg, ds, fm, tx, template, num_params, spe, num_epochs, total, hessian)


def ensure_writable(out: str | os.PathLike) -> Path:
    """Create a directory if needed and check that a file can be written in it.

    Args:
        out: the directory.

    Returns:
        It, as a Path.

    Raises:
        OutputDirError: it cannot be created or written.
    """
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"cannot write to the output directory {path} ({err.strerror or err}); "
                             "choose another --out") from None
    return path


def prepare_out_dir(out: str | os.PathLike, *, resume: bool) -> Path:
    """Create the output directory and check it can be written; refuse to start over an existing run.

    Args:
        out: the directory.
        resume: whether the run continues one already there.

    Returns:
        The directory as a Path.

    Raises:
        OutputDirError: it cannot be created or written, or (without resume) it already holds a run, or
            (with resume) it holds none.
    """
    path = ensure_writable(out)
    # A directory without checkpoints holds nothing a new run could lose (at most a config.json).
    has_run = bool(ckpt.list_epochs(ckpt.checkpoint_dir(path)))
    if has_run and not resume:
        raise OutputDirError(f"{path} already holds a run (checkpoints); continue it with --resume, "
                             "or choose another --out. Nothing there is overwritten")
    if resume and not ckpt.list_epochs(ckpt.checkpoint_dir(path)):
        raise OutputDirError(f"--resume: {path} holds no checkpoint to resume from; run without --resume")
    return path


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename), with NaN/inf written as null.

    Args:
        path: the destination.
        obj: a JSON-serialisable object (numpy scalars and arrays allowed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    """Plain Python types for JSON: numpy to Python (full float64 precision), non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the history held by a checkpoint (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in history))
    os.replace(tmp, path)


def _initial_metrics(ctx: Context, eval_step: Callable, state: loop.TrainState) -> dict:
    """Epoch 0: train and test loss/accuracy of the initialisation, both in eval mode."""
    tr_loss, tr_acc = loop.evaluate(eval_step, state.params, state.rest, ctx.ds.x_train, ctx.ds.y_train)
    te_loss, te_acc = loop.evaluate(eval_step, state.params, state.rest, ctx.ds.x_test, ctx.ds.y_test)
    return {"epoch": 0, "step": 0, "lr": ctx.cfg.learning_rate, "train_loss": tr_loss, "train_acc": tr_acc,
            "test_loss": te_loss, "test_acc": te_acc, "train_metrics": "eval pass", "time_s": 0.0}


def _save(ctx: Context, out: Path, epoch: int, step: int, state: loop.TrainState, history: list[dict]) -> Path:
    """Checkpoint after `epoch` (refusing non-finite parameters), then prune old checkpoints."""
    if not loop.tree_is_finite(state.params):
        raise loop.NonFiniteLossError(epoch, step, float("nan"), _last_checkpoint(out))
    path = ckpt.save(ckpt.checkpoint_dir(out), epoch, state,
                     {"step": step, "config": config_lib.to_dict(ctx.cfg), "metrics": history})
    ckpt.prune(ckpt.checkpoint_dir(out), keep_last=ctx.cfg.keep_checkpoints,
               keep={0, ctx.num_epochs, *ctx.cfg.spectrum_epochs})
    return path


def _last_checkpoint(out: Path) -> str | None:
    """The newest checkpoint directory of a run, or None."""
    epochs = ckpt.list_epochs(ckpt.checkpoint_dir(out))
    return str(ckpt.epoch_path(ckpt.checkpoint_dir(out), epochs[-1])) if epochs else None


def _start(ctx: Context, out: Path, eval_step: Callable, resume: bool) -> tuple[loop.TrainState, int, int, list]:
    """The state to train from: a fresh initialisation (saved as epoch 0) or the newest checkpoint."""
    metrics_path = out / "metrics.jsonl"
    if resume:
        epoch = ckpt.list_epochs(ckpt.checkpoint_dir(out))[-1]
        state, meta = ckpt.restore(ckpt.epoch_path(ckpt.checkpoint_dir(out), epoch), ctx.template)
        history = meta["metrics"]
        _write_metrics(metrics_path, history)  # drops lines of an epoch lost when the process died
        return loop.TrainState(*state), epoch, meta["step"], history
    history = [_initial_metrics(ctx, eval_step, ctx.template)]
    _write_metrics(metrics_path, history)
    _save(ctx, out, 0, 0, ctx.template, history)
    return ctx.template, 0, 0, history


def _epoch_line(r: dict, num_epochs: int) -> str:
    """One human-readable line of per-epoch metrics."""
    return (f"epoch {r['epoch']}/{num_epochs}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
            f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%  lr {r['lr']:.3g}  {r['time_s']:.1f} s")


def _epoch_record(ctx: Context, eval_step: Callable, state: loop.TrainState, stats: dict, *, epoch: int, step: int,
                  t0: float) -> dict:
    """The metrics.jsonl record of an epoch: its running train metrics, a test evaluation, the rate, the time."""
    te_loss, te_acc = loop.evaluate(eval_step, state.params, state.rest, ctx.ds.x_test, ctx.ds.y_test)
    return {"epoch": epoch, "step": step, "lr": loop.current_lr(state.opt_state), "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"], "test_loss": te_loss, "test_acc": te_acc, "train_metrics": "running mean",
            "time_s": time.perf_counter() - t0}


def train_epochs(ctx: Context, out: Path, *, resume: bool, progress: bool, echo: Callable = print) -> loop.TrainState:
    """Train from the initialisation or the newest checkpoint to the end, checkpointing as configured.

    Args:
        ctx: the run's context.
        out: the run directory.
        resume: continue from the newest checkpoint.
        progress: show tqdm bars.
        echo: where per-epoch lines go.

    Returns:
        The final training state.

    Raises:
        NonFiniteLossError: naming the epoch, step and the last good checkpoint (left intact).
    """
    from train import data

    cfg = ctx.cfg
    eval_step = loop.make_eval_step(ctx.fm)
    augment = data.augment_cifar if cfg.augment else None
    step_fn = loop.make_train_step(ctx.fm, ctx.tx, augment)
    _, aug_key = jax.random.split(jax.random.key(cfg.seed))
    state, start, step, history = _start(ctx, out, eval_step, resume)
    for epoch in range(start + 1, ctx.num_epochs + 1):
        t0 = time.perf_counter()
        perm = data.epoch_permutation(len(ctx.ds.y_train), cfg.seed, epoch)
        batches = data.batches(ctx.ds.x_train, ctx.ds.y_train, cfg.batch_size, perm, drop_last=cfg.drop_last)
        try:
            state, stats = loop.train_epoch(step_fn, state, batches, key=aug_key, epoch=epoch, first_step=step,
                                            num_steps=min(ctx.steps_per_epoch, ctx.total_steps - step),
                                            progress=progress)
        except loop.NonFiniteLossError as err:
            raise loop.NonFiniteLossError(err.epoch, err.step, err.loss, _last_checkpoint(out)) from None
        step += stats["steps"]
        record = _epoch_record(ctx, eval_step, state, stats, epoch=epoch, step=step, t0=t0)
        history = history + [record]
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        echo(_epoch_line(record, ctx.num_epochs))
        if epoch % cfg.checkpoint_every == 0 or epoch == ctx.num_epochs or epoch in cfg.spectrum_epochs:
            _save(ctx, out, epoch, step, state, history)
    return state


def _labels(cfg: Config) -> str:
    """'random', 'noisy' or 'clean'."""
    return "random" if cfg.random_labels else "noisy" if cfg.label_noise > 0 else "clean"


def setting(cfg: Config, *, epoch: int, step: int, trained: bool, lanczos_steps: int | None = None) -> dict[str, Any]:
    """The flat `setting` dict of a results.json.

    Args:
        cfg: the resolved configuration.
        epoch: epochs trained at the measured state (0 at initialisation).
        step: optimizer steps taken.
        trained: False for the control at initialisation.
        lanczos_steps: the Lanczos steps actually taken (the Krylov space grows past cfg.lanczos_steps
            until the top k converge); default cfg.lanczos_steps.

    Returns:
        The dict (dataset, model, depth, width, optimizer, batch_size, epochs, train_size, labels,
        label_noise, trained, seed, k, hessian_samples, lanczos_steps, and a few more).
    """
    return {"preset": cfg.preset, "dataset": cfg.dataset, "model": cfg.model, "depth": cfg.depth,
            "width": cfg.width, "activation": cfg.activation, "optimizer": cfg.optimizer,
            "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size,
            "epochs": epoch, "step": step, "train_size": cfg.train_size, "labels": _labels(cfg),
            "label_noise": cfg.label_noise, "trained": trained, "seed": cfg.seed, "k": cfg.k,
            "hessian_samples": cfg.hessian_samples,
            "lanczos_steps": cfg.lanczos_steps if lanczos_steps is None else lanczos_steps,
            "lanczos_steps_requested": cfg.lanczos_steps}


def _hspec_version() -> str:
    """The installed hspec version."""
    import hspec

    return getattr(hspec, "__version__", "unknown")


def spectrum_results(ctx: Context, state: loop.TrainState, metrics: dict, *, epoch: int, step: int,
                     checkpoint: str | None, title: str, out_dir: Path, progress: bool = True) -> dict:
    """Compute the spectrum of one state and write its results.json and rank–eigenvalue plot.

    Args:
        ctx: the run's context (its Hessian sample is used).
        state: the training state measured.
        metrics: that state's metrics record (train/test loss and accuracy).
        epoch: epochs trained (0: the control at initialisation).
        step: optimizer steps taken.
        checkpoint: the checkpoint the state came from, recorded.
        title: plot title.
        out_dir: where results.json and spectrum.png go.
        progress: show the Lanczos progress bar.

    Returns:
        The results dict written.
    """
    from train import spectrum

    cfg = ctx.cfg
    model = loop.merge(ctx.fm.eval_def, state.params, state.rest)
    hx, hy, _ = ctx.hessian
    t0 = time.perf_counter()
    report = spectrum.spectrum_report(model, hx, hy, k=cfg.k, lanczos_steps=cfg.lanczos_steps, seed=cfg.seed,
                                      max_lanczos_steps=cfg.max_lanczos_steps, batch_size=cfg.hessian_batch_size,
                                      trace_samples=cfg.trace_samples, strict=True, progress=progress)
    results = {
        "setting": setting(cfg, epoch=epoch, step=step, trained=epoch > 0,
                           lanczos_steps=report["spectrum"].get("lanczos_steps")),
        "fit": report["fit"], "verdict": report["verdict"], "spectrum": report["spectrum"],
        "sharpness": report["sharpness"], "eigengap_fit": report.get("eigengap_fit"),
        "metrics": {k: metrics[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
        "timing": dict(report.get("timing") or {}, spectrum_total_s=time.perf_counter() - t0),
        "hessian_sample": _hessian_record(ctx),
        "data": _data_record(ctx.ds),
        "num_params": ctx.num_params, "checkpoint": checkpoint, "hspec_version": _hspec_version(),
    }
    write_json(out_dir / RESULTS, results)
    spectrum.plot_spectrum(report, str(out_dir / PLOT), title)
    return results


def _hessian_record(ctx: Context) -> dict[str, Any]:
    """The recorded Hessian sample: its size, seed and indices (into the run's and the full training set)."""
    idx = np.asarray(ctx.hessian[2])
    full = ctx.ds.train_indices
    return {"size": int(len(idx)), "seed": ctx.cfg.seed, "indices": idx,
            "dataset_indices": None if full is None else np.asarray(full)[idx]}


def _data_record(ds: Any) -> dict[str, Any]:
    """Where the data came from and what the options did to it."""
    noise = None if ds.y_train_clean is None else float(np.mean(ds.y_train != ds.y_train_clean))
    return {"source": ds.source, "num_train": int(len(ds.y_train)), "num_test": int(len(ds.y_test)),
            "realised_label_noise": noise}


def _targets(cfg: Config, out: Path, num_epochs: int) -> list[tuple[str, int, Path]]:
    """(label, epoch, directory) of every spectrum a run writes: init, chosen epochs, final."""
    targets = [("init", 0, out / "init")] if cfg.init_control else []
    targets += [(f"epoch {e}", e, out / "epochs" / str(e)) for e in sorted(set(cfg.spectrum_epochs)) if e < num_epochs]
    return targets + [("final", num_epochs, out)]


def run_spectra(ctx: Context, out: Path, *, progress: bool = True, echo: Callable = print) -> list[tuple[str, dict]]:
    """Compute each missing spectrum of a run from its checkpoints (existing results.json are kept).

    Args:
        ctx: the run's context.
        out: the run directory.
        progress: show the Lanczos progress bars.
        echo: where progress lines go.

    Returns:
        [(label, results dict)] in the order init, epochs, final.
    """
    rows = []
    for label, epoch, where in _targets(ctx.cfg, out, ctx.num_epochs):
        if (where / RESULTS).exists():
            rows.append((label, json.loads((where / RESULTS).read_text())))
            continue
        path = ckpt.epoch_path(ckpt.checkpoint_dir(out), epoch)
        if not path.is_dir():
            raise ckpt.CheckpointError(
                f"no checkpoint of epoch {epoch} in {out} (kept: {ckpt.list_epochs(ckpt.checkpoint_dir(out))}): a "
                "spectrum epoch must be in spectrum_epochs before training reaches it, when its checkpoint is kept")
        state, meta = ckpt.restore(path, ctx.template)
        echo(f"spectrum at epoch {epoch} ({label}): top {ctx.cfg.k} of {ctx.cfg.lanczos_steps} Lanczos steps "
             f"on {ctx.cfg.hessian_samples} samples, {ctx.num_params} parameters")
        try:
            res = spectrum_results(ctx, loop.TrainState(*state), meta["metrics"][-1], epoch=epoch, step=meta["step"],
                                   checkpoint=str(path), title=f"{ctx.cfg.preset}: {label}", out_dir=where,
                                   progress=progress)
        except Exception as err:
            raise RuntimeError(f"the spectrum of {label} (epoch {epoch}) failed: {err}. The checkpoints are kept: "
                               "finish with --resume (spectrum fields such as lanczos_steps or k may be changed "
                               "with --set)") from err
        if label == "final" and epoch in ctx.cfg.spectrum_epochs:
            write_json(out / "epochs" / str(epoch) / RESULTS, res)
        rows.append((label, res))
    return rows


def _fmt(x: Any, spec: str) -> str:
    """Format a number, or '-' when missing."""
    return "-" if x is None else format(x, spec)


def verdict_table(rows: list[tuple[str, dict]]) -> str:
    """A table a person can read: one row per spectrum with K, d_KS, d_c, s, λ_max, Tr(H), test acc, verdict.

    Args:
        rows: [(label, results dict)].

    Returns:
        The table as text.
    """
    head = (f"{'network':<10} {'K':>5} {'d_KS':>7} {'d_c':>7} {'s':>7} {'lambda_max':>11} {'Tr(H)':>11} "
            f"{'test acc':>8}  verdict")
    lines = [head, "-" * len(head)]
    for label, r in rows:
        fit, sh = r.get("fit") or {}, r.get("sharpness") or {}
        lines.append(f"{label:<10} {_fmt(fit.get('k') or r['setting']['k'], 'd'):>5} {_fmt(fit.get('d_ks'), '.4f'):>7} "
                     f"{_fmt(fit.get('d_crit'), '.4f'):>7} {_fmt(fit.get('s'), '.3f'):>7} "
                     f"{_fmt(sh.get('lambda_max'), '.4g'):>11} {_fmt(sh.get('trace'), '.4g'):>11} "
                     f"{_fmt(100 * r['metrics']['test_acc'], '.2f'):>7}%  {r.get('verdict')}")
    return "\n".join(lines)


def _check_resume_config(out: Path, cfg: Config) -> None:
    """On --resume, the training fields must equal those of the stored run."""
    stored = config_lib.load_json(str(out / "config.json"))
    diff = config_lib.differences(stored, cfg, ignore=config_lib.SPECTRUM_FIELDS)
    if diff:
        detail = "; ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume: the configuration differs from the run in {out} ({detail}); only the spectrum "
                          f"fields ({', '.join(config_lib.SPECTRUM_FIELDS)}) may change on resume")


def train_run(cfg: Config, out: str | os.PathLike, *, resume: bool = False, progress: bool = True,
              echo: Callable = print) -> list[tuple[str, dict]]:
    """Train a configuration, then compute and write its spectra and print the verdict table.

    Args:
        cfg: the configuration (preset plus overrides; resolved here).
        out: the output directory.
        resume: continue the run in `out` from its newest checkpoint (or finish its spectra).
        progress: show progress bars.
        echo: where human-readable lines go.

    Returns:
        [(label, results dict)] for init (if enabled), chosen epochs, final.
    """
    config_lib.validate(cfg)
    out_path = prepare_out_dir(out, resume=resume)
    ctx = build_context(cfg)
    if resume:
        _check_resume_config(out_path, ctx.cfg)
    write_json(out_path / "config.json", config_lib.to_dict(ctx.cfg))
    echo(f"{ctx.cfg.preset}: {ctx.cfg.model} ({ctx.num_params} parameters) on {ctx.cfg.dataset} "
         f"({len(ctx.ds.y_train)} examples), {ctx.cfg.optimizer} lr {ctx.cfg.learning_rate:g}, "
         f"{ctx.num_epochs} epochs x {ctx.steps_per_epoch} steps -> {out_path}")
    train_epochs(ctx, out_path, resume=resume, progress=progress, echo=echo)
    rows = run_spectra(ctx, out_path, progress=progress, echo=echo)
    table = verdict_table(rows)
    (out_path / "table.txt").write_text(table + "\n")
    echo(table)
    return rows


def _find_checkpoint(path: Path, epoch: int | None) -> Path:
    """A checkpoint directory from a run directory (newest or given epoch) or an epoch directory."""
    if (path / "meta").is_dir():
        return path
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    epochs = ckpt.list_epochs(ckpt_dir)
    if not epochs:
        raise ckpt.CheckpointError(f"no checkpoint found at {path}: give a run directory or its "
                                   "checkpoints/epoch_N directory")
    if epoch is None:
        return ckpt.epoch_path(ckpt_dir, epochs[-1])
    if epoch not in epochs:
        raise ckpt.CheckpointError(f"no checkpoint for epoch {epoch} in {ckpt_dir}; kept epochs: {epochs}")
    return ckpt.epoch_path(ckpt_dir, epoch)


def load_model(path: str | os.PathLike, *, epoch: int | None = None) -> tuple[nnx.Module, Context]:
    """The trained network of a saved run, in evaluation mode, and its run context.

    Args:
        path: a run directory (its newest checkpoint, or `epoch`) or a `checkpoints/epoch_N` directory.
        epoch: which epoch of a run directory.

    Returns:
        (model, ctx): an NNX model with the checkpoint's parameters and BatchNorm statistics, and the
        Context (config, data, the recorded Hessian sample `ctx.hessian`).
    """
    where = _find_checkpoint(Path(path), epoch)
    ctx = build_context(config_lib.from_dict(ckpt.read_meta(where)["config"]))
    state, _ = ckpt.restore(where, ctx.template)
    state = loop.TrainState(*state)
    model = loop.merge(ctx.fm.eval_def, state.params, state.rest)
    model.eval()
    return model, ctx


def spectrum_of_checkpoint(path: str | os.PathLike, *, epoch: int | None = None, out: str | os.PathLike | None = None,
                           overrides: dict[str, Any] | None = None, echo: Callable = print) -> dict:
    """Compute the spectrum of any saved checkpoint, as a run does at its end.

    Args:
        path: a run directory (its newest checkpoint, or `epoch`) or a `checkpoints/epoch_N` directory.
        epoch: which epoch of a run directory.
        out: where results.json and spectrum.png go (default `<run>/spectra/epoch_<N>`).
        overrides: spectrum fields to change (k, lanczos_steps, hessian_samples, ...) and data_dir.
        echo: where human-readable lines go.

    Returns:
        The results dict written.

    Raises:
        ConfigError: an override of a training field.
        CorruptCheckpointError: the checkpoint is damaged (it is left untouched).
    """
    where = _find_checkpoint(Path(path), epoch)
    meta = ckpt.read_meta(where)
    cfg = config_lib.from_dict(meta["config"])
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k not in config_lib.SPECTRUM_FIELDS]
    if bad:
        raise ConfigError(f"the spectrum of a checkpoint can change only {', '.join(config_lib.SPECTRUM_FIELDS)}; "
                          f"not {', '.join(bad)}")
    if "k" in overrides and "lanczos_steps" not in overrides:
        overrides["lanczos_steps"] = None  # re-apply the rule for the new K
    ctx = build_context(config_lib.apply_overrides(cfg, overrides))
    state, meta = ckpt.restore(where, ctx.template)
    e = meta["epoch"]
    out_dir = Path(out) if out is not None else where.parent.parent / "spectra" / f"epoch_{e}"
    if (out_dir / RESULTS).exists():
        raise OutputDirError(f"{out_dir / RESULTS} exists already and is not overwritten; choose another --out")
    ensure_writable(out_dir)
    res = spectrum_results(ctx, loop.TrainState(*state), meta["metrics"][-1], epoch=e, step=meta["step"],
                           checkpoint=str(where), title=f"{cfg.preset}: epoch {e}", out_dir=out_dir)
    echo(verdict_table([("init" if e == 0 else f"epoch {e}", res)]))
    return res
