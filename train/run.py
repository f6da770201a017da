"""One run of the paper's pipeline, orchestrated: assemble, train, measure the kept checkpoints, report.

    exp = experiment.build_experiment(cfg)      data, model, optimizer, Hessian sample, keys
    driver.train(exp, run_dir, ...)             epochs, checkpoints, resume
    measure_checkpoint(exp, ...)                one Hessian operator -> top K, trace, fit: a SpectrumResult
    record.verdict_table(rows)                  the printed table

Spectra are computed after training from the kept checkpoints, each only if its results.json is missing,
so `--resume` finishes a run killed at any point. `spectrum_of_checkpoint` does the same for any saved
checkpoint; `experiment_at_checkpoint` loads one back and `load_model` gives back a trained network. The
directory layout is in train.rundir.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from train import checkpoint as ckpt
from train import config as config_lib
from train import driver, keys, loop, measure, record, rundir
from train.config import Config, ConfigError
from train.experiment import Experiment, build_experiment, data_record, hessian_record
from train.rundir import OutputDirError  # noqa: F401  (re-exported: the CLI and users catch it here)


def setting(cfg: Config, *, epoch: int, step: int, trained: bool, lanczos_steps: int) -> dict[str, Any]:
    """The flat `setting` of a results.json: every way this run departs from the paper's setting.

    Args:
        cfg: the resolved configuration.
        epoch: epochs trained at the measured state (0 at initialisation).
        step: optimizer steps taken.
        trained: False for the control at initialisation.
        lanczos_steps: the Lanczos steps actually taken (the Krylov space grows until the top K converge).
    """
    labels = "random" if cfg.random_labels else "noisy" if cfg.label_noise > 0 else "clean"
    return {"preset": cfg.preset, "dataset": cfg.dataset, "model": cfg.model, "depth": cfg.depth,
            "width": cfg.width, "activation": cfg.activation, "optimizer": cfg.optimizer,
            "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size,
            "epochs": epoch, "step": step, "max_steps": cfg.max_steps, "train_size": cfg.train_size,
            "labels": labels, "label_noise": cfg.label_noise, "trained": trained, "seed": cfg.seed, "k": cfg.k,
            "hessian_samples": cfg.hessian_samples, "lanczos_steps": lanczos_steps,
            "lanczos_steps_requested": cfg.lanczos_steps}


def measure_state(exp: Experiment, state: loop.TrainState, metrics: dict, *, epoch: int, step: int,
                  checkpoint: str | None, progress: bool = True, lanczos_state: Path | None = None,
                  factory: Any = None) -> record.SpectrumResult:
    """Measure one training state and assemble its record (the one place a results.json is built).

    Args:
        exp: the experiment (its Hessian sample and keys are used).
        state: the training state measured.
        metrics: that state's metrics record (train/test loss and accuracy).
        epoch, step: how far it was trained (epoch 0: the control at initialisation).
        checkpoint: the checkpoint the state came from (relative to the results file), recorded.
        progress: show the Lanczos progress bar.
        lanczos_state: where the Lanczos state is kept so that a killed measurement resumes (None: not kept).
        factory: the hspec.HessianFactory kept across the run's checkpoints (its programs compiled once); None: new.
    """
    from train.hessian import curvature_record, hessian_loss

    import hspec

    cfg, t0 = exp.cfg, time.perf_counter()
    m = measure.measure(hessian_loss(exp.model_defs.eval_def, state.rest), state.params, None,
                        measure.SpectrumSpec.from_config(cfg), lanczos_key=exp.keys.lanczos_start,
                        trace_key=exp.keys.trace_probes, progress=progress, lanczos_state=lanczos_state,
                        data=(exp.hessian.x, exp.hessian.y), micro_batch=cfg.hessian_batch_size, factory=factory)
    return record.SpectrumResult(
        setting=setting(cfg, epoch=epoch, step=step, trained=epoch > 0, lanczos_steps=m.spectrum["lanczos_steps"]),
        fit=m.fit, verdict=m.verdict, spectrum=m.spectrum, sharpness=m.sharpness, eigengap_fit=m.eigengap_fit,
        metrics={k: metrics[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
        timing=measure.timing_since(m, t0), hessian_sample=hessian_record(exp),
        data=data_record(exp.ds, cfg.data_dir), num_params=exp.num_params, checkpoint=checkpoint,
        hspec_version=hspec.__version__, keys=keys.derivation(exp.keys), curvature=curvature_record(exp, state))


def measure_checkpoint(exp: Experiment, path: Path, out_dir: Path, title: str, progress: bool = True,
                       factory: Any = None) -> record.SpectrumResult:
    """Measure a saved checkpoint and write its results.json and rank-eigenvalue plot into `out_dir` (`factory`: as
    in `measure_state`)."""
    state, meta = ckpt.restore(path, exp.template)
    # Relative to the results file: committed results carry no machine paths.
    where = os.path.relpath(Path(path).absolute(), Path(out_dir).absolute())
    result = measure_state(exp, loop.TrainState(*state), meta["metrics"][-1], epoch=meta["epoch"],
                           step=meta["step"], checkpoint=where, progress=progress,
                           lanczos_state=Path(out_dir) / rundir.LANCZOS_STATE, factory=factory)
    record.save(result, out_dir / rundir.RESULTS)
    record.plot(result, out_dir / rundir.PLOT, title)
    return result


def _targets(exp: Experiment) -> list[tuple[str, int]]:
    """(label, epoch) of every spectrum a run writes: init, chosen epochs, final."""
    targets = [("init", 0)] if exp.cfg.init_control else []
    targets += [(f"epoch {e}", e) for e in sorted(set(exp.cfg.spectrum_epochs)) if e < exp.num_epochs]
    return targets + [("final", exp.num_epochs)]


class SpectrumError(RuntimeError):
    """A spectrum of a run failed (its cause chained); the run's checkpoints are intact."""


def _resume_hint(exp: Experiment, err: Exception) -> str:
    """What to add to --resume: a larger step budget when the top K did not converge (the Lanczos run then
    continues from its kept state), else the general note on spectrum fields."""
    import hspec

    if isinstance(err, hspec.NotConvergedError):
        budget = exp.cfg.max_lanczos_steps or hspec.default_max_steps(exp.cfg.lanczos_steps, exp.num_params)
        return (f" --set max_lanczos_steps=N with N above the {budget} steps taken (the Lanczos run continues "
                "from them), or a smaller k")
    return " (spectrum fields such as lanczos_steps or k may be changed with --set)"


def run_spectra(exp: Experiment, run: Path, *, progress: bool = True,
                echo: Callable = print) -> list[tuple[str, record.SpectrumResult]]:
    """Compute each missing spectrum of a run from its checkpoints (existing results.json are kept), through one
    Hessian operator factory, so that its programs are compiled at the first checkpoint only."""
    import hspec

    rows, factory = [], hspec.HessianFactory()
    for label, epoch in _targets(exp):
        where = rundir.spectrum_dir(run, epoch, exp.num_epochs)
        if not (where / rundir.RESULTS).exists():
            path = rundir.find_checkpoint(run, epoch)
            echo(f"spectrum at epoch {epoch} ({label}): top {exp.cfg.k} of >= {exp.cfg.lanczos_steps} Lanczos "
                 f"steps on {exp.cfg.hessian_samples} samples, {exp.num_params} parameters")
            try:
                result = measure_checkpoint(exp, path, where, f"{exp.cfg.preset}: {label}", progress, factory)
            except Exception as err:
                raise SpectrumError(f"the spectrum of {label} (epoch {epoch}) failed: {str(err).rstrip('.')}. "
                                    f"The checkpoints are kept: finish with --resume{_resume_hint(exp, err)}") \
                    from err
            if label == "final" and epoch in exp.cfg.spectrum_epochs:  # the epoch list stays complete
                record.save(result, run / "epochs" / str(epoch) / rundir.RESULTS)
        rows.append((label, record.load(where / rundir.RESULTS)))
    return rows


def _check_resume_config(run: Path, cfg: Config) -> None:
    """On --resume, the training fields must equal those of the stored run."""
    stored = config_lib.load_json(str(run / rundir.CONFIG))
    diff = config_lib.differences(stored, cfg, ignore=config_lib.SPECTRUM_FIELDS)
    if diff:
        detail = "; ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume: the configuration differs from the run in {run} ({detail}); only the spectrum "
                          f"fields ({', '.join(config_lib.SPECTRUM_FIELDS)}) may change on resume")


def train_run(cfg: Config, out: str | os.PathLike, *, resume: bool = False, progress: bool = True,
              echo: Callable = print) -> list[tuple[str, record.SpectrumResult]]:
    """Train a configuration, then compute and write its spectra and print the verdict table.

    Nothing is created in `out` until the experiment is assembled: a run that fails on its config or
    its data leaves no empty directory behind. Then the directory is claimed (rundir.claimed) before anything
    is written in it: a second run launched into it stops with OutputDirError and changes nothing there.

    Returns:
        [(label, record)] for init (if enabled), chosen epochs, final.
    """
    exp = build_experiment(cfg, progress)  # validates the config (once), then loads the data
    run = rundir.check_out_dir(out, resume=resume)
    with rundir.claimed(run):
        return _train_claimed(exp, run, resume=resume, progress=progress, echo=echo)


def _train_claimed(exp: Experiment, run: Path, *, resume: bool, progress: bool,
                   echo: Callable) -> list[tuple[str, record.SpectrumResult]]:
    """The body of train_run, in a run directory this process holds."""
    rundir.check_out_dir(run, resume=resume)  # again: another run may have finished there meanwhile
    if resume:
        _check_resume_config(run, exp.cfg)
    rundir.ensure_writable(run)
    record.write_json(run / rundir.CONFIG, config_lib.to_dict(exp.cfg))
    echo(f"{exp.cfg.preset}: {exp.cfg.model} ({exp.num_params} parameters) on {exp.cfg.dataset} "
         f"({len(exp.ds.y_train)} examples), {exp.cfg.optimizer} lr {exp.cfg.learning_rate:g}, "
         f"{exp.num_epochs} epochs x {exp.steps_per_epoch} steps -> {run}")
    driver.train(exp, run, resume=resume, progress=progress, echo=echo)
    rows = run_spectra(exp, run, progress=progress, echo=echo)
    table = record.verdict_table(rows)
    (run / rundir.TABLE).write_text(table + "\n")
    echo(table)
    return rows


def checkpoint_config(meta: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """The configuration a checkpoint was trained with (its meta's), with spectrum fields overridden; a new k
    without lanczos_steps re-applies the rule for the new K. The caller refuses overrides of training fields."""
    overrides = dict(overrides or {})
    if "k" in overrides and "lanczos_steps" not in overrides:
        overrides["lanczos_steps"] = None  # re-apply the rule for the new K
    return config_lib.apply_overrides(config_lib.from_dict(meta["config"]), overrides)


def experiment_at_checkpoint(path: str | os.PathLike, *, epoch: int | None = None,
                             overrides: dict[str, Any] | None = None,
                             progress: bool = True) -> tuple[Experiment, loop.TrainState, dict[str, Any], Path]:
    """A saved run's experiment and its training state at one checkpoint: the one way a checkpoint is loaded
    back (load_model, the sensitivity study, the Hessian-sample study).

    Args:
        path: a run directory (its newest checkpoint, or `epoch`) or a `checkpoints/epoch_N` directory.
        epoch: which epoch of a run directory.
        overrides: spectrum fields to change (checkpoint_config).
        progress: show the download progress bars.

    Returns:
        (exp, state, meta, where): the experiment of the checkpoint's configuration, the restored state, the
        checkpoint's meta (epoch, step, metrics, config) and its directory.
    """
    where = rundir.find_checkpoint(Path(path), epoch)
    meta = ckpt.read_meta(where)
    exp = build_experiment(checkpoint_config(meta, overrides), progress)
    state, _ = ckpt.restore(where, exp.template)
    return exp, loop.TrainState(*state), meta, where


def load_model(path: str | os.PathLike, *, epoch: int | None = None) -> tuple[Any, Experiment]:
    """The trained network of a saved run, in evaluation mode, and its experiment.

    Args:
        path: a run directory (its newest checkpoint, or `epoch`) or a `checkpoints/epoch_N` directory.
        epoch: which epoch of a run directory.

    Returns:
        (model, exp): an NNX model with the checkpoint's parameters and BatchNorm statistics, and the
        Experiment (config, data, the recorded Hessian sample `exp.hessian`).
    """
    exp, state, _, _ = experiment_at_checkpoint(path, epoch=epoch)
    model = loop.merge(exp.model_defs.eval_def, state.params, state.rest)
    model.eval()
    return model, exp


def spectrum_of_checkpoint(path: str | os.PathLike, *, epoch: int | None = None, out: str | os.PathLike | None = None,
                           overrides: dict[str, Any] | None = None, progress: bool = True,
                           echo: Callable = print) -> record.SpectrumResult:
    """Compute the spectrum of any saved checkpoint, as a run does at its end.

    Args:
        path: a run directory (its newest checkpoint, or `epoch`) or a `checkpoints/epoch_N` directory.
        epoch: which epoch of a run directory.
        out: where results.json and spectrum.png go (default `<run>/spectra/epoch_<N>`).
        overrides: spectrum fields to change (k, lanczos_steps, hessian_samples, ...) and data_dir.
        progress: show the download and Lanczos progress bars.
        echo: where human-readable lines go (the verdict table and where the results were written).

    Raises:
        ConfigError: an override of a training field.
        CorruptCheckpointError: the checkpoint is damaged (it is left untouched).
        SpectrumError: the top K did not converge (its cause hspec.NotConvergedError; the message says which
            --set continues the kept Lanczos steps) or a Hessian-vector product was not finite.
    """
    import hspec

    where = rundir.find_checkpoint(Path(path), epoch)
    meta = ckpt.read_meta(where)
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k not in config_lib.SPECTRUM_FIELDS]
    if bad:
        raise ConfigError(f"the spectrum of a checkpoint can change only {', '.join(config_lib.SPECTRUM_FIELDS)}; "
                          f"not {', '.join(bad)}")
    cfg = checkpoint_config(meta, overrides)
    e = meta["epoch"]
    out_dir = Path(out) if out is not None else where.parent.parent / "spectra" / f"epoch_{e}"
    if (out_dir / rundir.RESULTS).exists():
        raise OutputDirError(f"{out_dir / rundir.RESULTS} exists already and is not overwritten; choose another --out")
    exp = build_experiment(cfg, progress)
    rundir.ensure_writable(out_dir)
    try:
        result = measure_checkpoint(exp, where, out_dir, f"{cfg.preset}: epoch {e}", progress)
    except (hspec.NotConvergedError, hspec.NonFiniteError) as err:
        how = " with" if isinstance(err, hspec.NotConvergedError) else ""
        raise SpectrumError(f"the spectrum of {where} failed: {str(err).rstrip('.')}. The checkpoint is kept; "
                            f"rerun this command{how}{_resume_hint(exp, err)}") from err
    echo(record.verdict_table([("init" if e == 0 else f"epoch {e}", result)]))
    echo(f"wrote {out_dir / rundir.RESULTS} and {out_dir / rundir.PLOT}")
    return result
