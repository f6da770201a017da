"""Sweeps: every run of a named group of the paper's settings, resumable, shardable, published atomically.

    python -m train sweep GROUP [--shard I/N] [--set key=value ...] [--results DIR] [--work DIR]
                                [--data-dir DIR] [--no-progress]
    python -m train sweep --list [GROUP]

A group (GROUPS) is a list of runs, each a preset plus the few fields that define it (a seed). A sweep
trains each run of its group in the work directory `<work>/<group>/<run>/` (default
`~/.cache/hspec/work/sweeps`, or `$HSPEC_WORK_DIR/sweeps`: outside the work tree; checkpoints live there
and only there), then copies the finished files into `results/<group>/<run>/` through a staging
directory and one rename, so that a half-written run never appears under results/:

    results/<group>/<run>/results.json, config.json, metrics.jsonl, spectrum.png, table.txt
    results/<group>/<run>/epochs/<e>/results.json, spectrum.png      spectra after chosen epochs
    results/<group>/<run>/control.json       which random-initialisation control the run uses
    results/<group>/<run>/overrides.json     the fields the sweep's --set changed ({} for none)
    results/controls/<key>/results.json, spectrum.png, key.json    one control per distinct key
    results/sensitivity/<name>/*.json        `python -m train sensitivity` (train.sensitivity)
    results/failed/<group>/<run>.json        training attempts that diverged (non-finite loss), per overrides

A run that diverges is a result too: its attempt (overrides, epoch, step, last finished epoch's metrics) is
recorded under results/failed/ and the report shows it. A run the paper's setting cannot train here
declares `departures` (with the measured reason), applied like --set and marked in the report.

A run already in results/ is skipped; one whose work directory holds checkpoints is resumed
(`train_run(..., resume=True)`), so a killed sweep is finished by running it again. A run that is the
same training as a run of another group (the reference run lenet-mnist-sgd is also the optimizer table's
SGD, the batch-128 run and seed 0 of the seeds group) is declared `same_as` that run and never trained
twice; the report reads the source's results.

Runs train with init_control=false: a random-initialisation control depends only on the initial network
and the Hessian sample, so it is computed once per distinct key (CONTROL_FIELDS: data, model, seed, the
Hessian-sample and spectrum settings) into results/controls/<key>/ and referenced from every run that
shares it. `python -m train sweep controls` computes every missing control of every group, without
training.

Splitting a group across machines: `--shard I/N` takes runs I, I+N, I+2N, ... (0 <= I < N) of the
group's fixed order. A lock file per run (and per control) in `<work>/.locks/`, refreshed every minute
while the run works, keeps two processes from working on the same run; a lock not refreshed for ten
minutes belongs to a dead process and is taken over. A Slurm job array runs a whole group:

    #!/bin/bash
    #SBATCH --job-name=hspec-optimizers
    #SBATCH --array=0-10                 # one task per run: 11 optimizers
    #SBATCH --cpus-per-task=4
    #SBATCH --mem=16G
    #SBATCH --time=24:00:00
    #SBATCH --output=logs/%x-%a.out      # mkdir logs before sbatch
    cd "$SLURM_SUBMIT_DIR"               # the repository, on a file system every node sees
    source .venv/bin/activate
    export HSPEC_DATA_DIR=/shared/hspec-data
    python -m train sweep optimizers --no-progress \\
        --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"

Submitting the same script again after a time-out resumes each unfinished run from its newest
checkpoint (wait ten minutes, or the dead tasks' locks still count as held). Then
`python -m train sweep controls` (as an array too), `python -m train report`, and commit results/ and
REPRODUCTION.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from train import progress_wanted
from train import config as config_lib
from train import presets, record, rundir
from train.catalog import ADAM_FAMILY, FULL_TRAIN_SIZE, OPTIMIZERS  # noqa: F401  (ADAM_FAMILY: kept importable here)
from train.config import Config, ConfigError
from train.lock import LOCK_HEARTBEAT_S, LOCK_STALE_S, RunLock  # noqa: F401  (re-exported)

RESULTS_ROOT = "results"
# Outside the work tree (train.rundir.default_work_dir: $HSPEC_WORK_DIR or ~/.cache/hspec/work), so that the
# checkpoints and Krylov states of runs that take several sessions survive a fresh clone.
WORK_ROOT = str(rundir.default_work_dir() / "sweeps")
CONTROLS = "controls"
SENSITIVITY = "sensitivity"
CONTROL_POINTER = "control.json"
OVERRIDES = "overrides.json"
# results/failed/<group>/<run>.json: the diverged attempts of a run, one per set of overrides (record_failure).
FAILED = "failed"
CONTROL_KEY = "key.json"
# What a published run holds: the record, its config, metrics, plot and table; never checkpoints.
PUBLISHED_FILES = (rundir.RESULTS, rundir.CONFIG, rundir.METRICS, rundir.PLOT, rundir.TABLE)
SPECTRUM_FILES = (rundir.RESULTS, rundir.PLOT)
# A random-initialisation control is a function of these fields only: the initial network (data, model,
# seed) and the Hessian sample (training-set options, sample size) and how its spectrum is measured.
CONTROL_FIELDS = ("dataset", "model", "depth", "width", "activation", "batchnorm", "conv1_padding", "pooling", "seed",
                  "train_size",
                  "label_noise", "random_labels", "gaussian_inputs", "hessian_samples", "k", "lanczos_steps",
                  "max_lanczos_steps", "hessian_batch_size", "trace_samples")


class SweepError(ConfigError):
    """A bad group name, shard or root (the CLI answers it with one line and exit status 2)."""


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One run of a group.

    Attributes:
        name: the run's directory name within its group.
        preset: the preset it trains (train.presets).
        fields: the fields that define the run beyond its preset, as (name, value) pairs (e.g. a seed).
        same_as: "group/run" of the identical run trained in another group, or None.
        departures: fields on which the run must leave the paper's setting, as (name, value) pairs: applied
            like a sweep's --set (so recorded in overrides.json and marked in the report), before it.
        why: the reason for the departures, measured (the report prints it).
    """

    name: str
    preset: str
    fields: tuple[tuple[str, Any], ...] = ()
    same_as: str | None = None
    departures: tuple[tuple[str, Any], ...] = ()
    why: str = ""


@dataclasses.dataclass(frozen=True)
class Group:
    """A named sweep: its runs in a fixed order (the order shards split) and the setting that varies."""

    name: str
    description: str
    axis: str | None
    runs: tuple[SweepRun, ...]


def _slug(name: str) -> str:
    return name.replace("_", "-")


REFERENCE = "checkpoints/lenet-mnist-sgd"
# Measured (results/failed/linear/linear.json): without ReLU or BatchNorm, SGD at the paper's lr 0.1 ends
# epoch 1 at train loss 0.88 (78% accuracy) and reaches a NaN loss in epoch 2.
LINEAR_LR_WHY = ("at the paper's lr 0.1 the network without ReLU or BatchNorm diverges (the training loss is NaN in "
                 "epoch 2), so it trains at lr 0.01")


# Measured (results/cifar10-lenet/vanilla-sgd, adai): at the paper's CIFAR lr 1, LeNet-5 on the CIFAR-10 subset
# with vanilla SGD or Adai ends 200 epochs at train loss 2.3017 against ln 10 = 2.3026 and 9% test accuracy
# (PNM, also at lr 1, learns). Both stay in the group at the paper's rate; these runs sit beside them at 0.1.
CIFAR_LR1_WHY = ("at the paper's CIFAR lr 1 this optimizer does not learn on the CIFAR-10 subset (train loss "
                 "2.3017 after 200 epochs against ln 10 = 2.3026, test accuracy 9%; the run beside it), so this "
                 "one trains at lr 0.1")
CIFAR_LR1_STUCK = ("vanilla_sgd", "adai")


def _optimizer_runs(slug: str, sgd_same_as: str | None = None) -> tuple[SweepRun, ...]:
    """One run per optimizer of the paper's table on one dataset."""
    return tuple(SweepRun(_slug(o), f"lenet-{slug}-{_slug(o)}", same_as=sgd_same_as if o == "sgd" else None)
                 for o in OPTIMIZERS)


def _seed_runs(series: str, preset: str, source: str) -> tuple[SweepRun, ...]:
    """Seeds 0, 1, 2 of a preset; seed 0 is the run `source` (no spectra after intermediate epochs)."""
    return tuple(SweepRun(f"{series}-seed{s}", preset, (("seed", s), ("spectrum_epochs", ())),
                          same_as=source if s == 0 else None) for s in range(3))


def _build_groups() -> dict[str, Group]:
    """Every group of METHOD.md §5, in the order `--list` shows them."""
    g = [
        Group("checkpoints", "the reference run (LeNet-5, MNIST, momentum SGD, 50 epochs): spectra after epochs "
              "1, 2, 3, 10, 20, 30 and 50", "epochs", (SweepRun("lenet-mnist-sgd", "lenet-mnist-sgd"),)),
        Group("optimizers", "LeNet-5 on MNIST with the paper's eleven optimizers", "optimizer",
              _optimizer_runs("mnist", REFERENCE)),
        Group("batch-size", "LeNet-5, MNIST, SGD: batch size at a fixed 50 epochs", "batch_size",
              tuple(SweepRun(f"batch{b}", f"lenet-mnist-batch{b}", same_as=REFERENCE if b == 128 else None)
                    for b in presets.BATCH_SIZES)),
        Group("batch-size-iters1000", "LeNet-5, MNIST, SGD: batch size at a fixed 1000 iterations", "batch_size",
              tuple(SweepRun(f"batch{b}", f"lenet-mnist-iters1000-batch{b}") for b in presets.BATCH_SIZES)),
        Group("train-size", "LeNet-5, MNIST, SGD: training-set size", "train_size",
              # All 60000 examples is the reference run itself (same_training): never trained twice.
              tuple(SweepRun(f"n{n}", f"lenet-mnist-n{n}", same_as=REFERENCE if n == FULL_TRAIN_SIZE["mnist"] else None)
                    for n in presets.TRAIN_SIZES)),
        Group("label-noise", "LeNet-5, MNIST, SGD: 40% and 80% symmetric label noise, random labels", None,
              (SweepRun("noise40", "lenet-mnist-noise40"), SweepRun("noise80", "lenet-mnist-noise80"),
               SweepRun("random-labels", "lenet-mnist-random-labels"))),
        Group("fcn-depth", "FCN on MNIST: 1, 2, 4 hidden layers of width 100", "depth",
              tuple(SweepRun(f"depth{d}", f"fcn-mnist-depth{d}") for d in presets.FCN_DEPTHS)),
        Group("fcn-width", "FCN on MNIST: 2 hidden layers of width 10...100", "width",
              tuple(SweepRun(f"width{w}", f"fcn-mnist-width{w}", same_as="fcn-depth/depth2" if w == 100 else None)
                    for w in presets.FCN_WIDTHS)),
        Group("linear", "linear networks on MNIST, with or without ReLU and BatchNorm", None,
              (SweepRun("linear", "linear-mnist", departures=(("learning_rate", 0.01),), why=LINEAR_LR_WHY),)
              + tuple(SweepRun(n.removeprefix("linear-mnist-"), n)
                      for n in ("linear-mnist-relu", "linear-mnist-bn", "linear-mnist-relu-bn"))),
        Group("lenet-variants", "LeNet-5 on MNIST with SGD in the layer variants the paper leaves open: padding "
              "of the first convolution, max or average pooling", None,
              (SweepRun("paper-form", "lenet-mnist-sgd", same_as=REFERENCE),
               SweepRun("nopad", "lenet-mnist-sgd-nopad"), SweepRun("avgpool", "lenet-mnist-sgd-avgpool"))),
        Group(CONTROLS, "the random-initialisation control of every run above and below, once per distinct "
              "network and Hessian sample (no training)", None, ()),
        Group("seeds", "seeds 0, 1, 2 of the reference run and of batch sizes 640 and 768 (error bars)", "seed",
              _seed_runs("baseline", "lenet-mnist-sgd", REFERENCE)
              + _seed_runs("batch640", "lenet-mnist-batch640", "batch-size/batch640")
              + _seed_runs("batch768", "lenet-mnist-batch768", "batch-size/batch768")),
        Group("fashion-mnist", "LeNet-5 on Fashion-MNIST with the eleven optimizers (200 epochs)", "optimizer",
              _optimizer_runs("fashion-mnist")),
        Group("cifar10-lenet", "LeNet-5 on the CIFAR-10 subset (4000 train / 1000 test) with the eleven "
              "optimizers (200 epochs); vanilla SGD and Adai also at lr 0.1", "optimizer",
              _optimizer_runs("cifar10")
              + tuple(SweepRun(f"{_slug(o)}-lr0.1", f"lenet-cifar10-{_slug(o)}", departures=(("learning_rate", 0.1),),
                               why=CIFAR_LR1_WHY) for o in CIFAR_LR1_STUCK)),
        Group("avila", "FCN (2x100) on Avila, K = 50", None, (SweepRun("fcn-avila", "fcn-avila"),)),
        Group("resnet18", "ResNet18 on the CIFAR-10 subset, K = 50", None,
              (SweepRun("resnet18-cifar10-sgd", "resnet18-cifar10-sgd"),)),
    ]
    return {group.name: group for group in g}


GROUPS = _build_groups()


def get_group(name: str, groups: dict[str, Group] | None = None) -> Group:
    """The named group.

    Raises:
        SweepError: unknown name, listing the valid ones.
    """
    groups = GROUPS if groups is None else groups
    if name not in groups:
        raise SweepError(f"unknown sweep group {name!r}; valid groups: {', '.join(groups)}")
    return groups[name]


def find_run(ref: str, groups: dict[str, Group] | None = None) -> tuple[Group, SweepRun]:
    """The (group, run) a "group/run" reference names."""
    group_name, _, run_name = ref.partition("/")
    group = get_group(group_name, groups)
    for spec in group.runs:
        if spec.name == run_name:
            return group, spec
    raise SweepError(f"group {group_name!r} has no run {run_name!r}")


def source_of(group: Group, spec: SweepRun, groups: dict[str, Group] | None = None) -> tuple[Group, SweepRun]:
    """The run that holds `spec`'s results: itself, or the run it is the same as (followed to the end)."""
    seen = set()
    while spec.same_as is not None:
        if spec.same_as in seen:
            raise SweepError(f"same_as cycle through {spec.same_as}")
        seen.add(spec.same_as)
        group, spec = find_run(spec.same_as, groups)
    return group, spec


# --- configurations -------------------------------------------------------------------------------------


def nominal_config(spec: SweepRun) -> Config:
    """The run's configuration in the paper's setting: its preset and fields, trained without the init control."""
    cfg = config_lib.apply_overrides(presets.get(spec.preset), dict(spec.fields))
    return dataclasses.replace(cfg, init_control=False)


def run_config(spec: SweepRun, overrides: dict[str, Any]) -> Config:
    """The run's configuration: its departures from the paper's setting, then the sweep's overrides, validated.

    A smaller `epochs` drops the spectrum epochs beyond it (they cannot be measured), so that `epochs=2`
    works on the reference run; the change is recorded with the overrides.

    Raises:
        ConfigError: an unknown field, a bad value, or an inconsistent result (naming the run).
    """
    base = nominal_config(spec)
    cfg = config_lib.apply_overrides(base, {**dict(spec.departures), **overrides})
    if "spectrum_epochs" not in overrides and cfg.epochs is not None:
        cfg = dataclasses.replace(cfg, spectrum_epochs=tuple(e for e in cfg.spectrum_epochs if e <= cfg.epochs))
    try:
        return config_lib.validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"run {spec.name} ({spec.preset}): {err}") from None


def same_training(a: Config, b: Config) -> bool:
    """Whether two configurations train the same network: equal but for the preset's name and the spectrum's
    settings, with a `train_size` of the whole training set read as no subset (the loader keeps it whole)."""
    def canonical(cfg: Config) -> Config:
        whole = cfg.train_size is not None and cfg.train_size == FULL_TRAIN_SIZE.get(cfg.dataset)
        return dataclasses.replace(cfg, train_size=None) if whole else cfg

    return not config_lib.differences(canonical(a), canonical(b), ignore=("preset",) + config_lib.SPECTRUM_FIELDS)


def applied_overrides(spec: SweepRun, cfg: Config) -> dict[str, Any]:
    """The fields on which the run's configuration departs from its nominal one (JSON-ready), for overrides.json."""
    diff = config_lib.differences(nominal_config(spec), cfg)
    return {name: config_lib.to_dict(cfg)[name] for name in sorted(diff)}


def control_fields(cfg: Config) -> dict[str, Any]:
    """The fields a random-initialisation control depends on (CONTROL_FIELDS), JSON-ready."""
    data = config_lib.to_dict(cfg)
    # The LeNet layer options came later: left out while unset (the paper's form), so that the keys of
    # controls computed before them stay valid.
    optional = ("conv1_padding", "pooling")
    return {name: data[name] for name in CONTROL_FIELDS if not (name in optional and data[name] is None)}


def control_key(cfg: Config) -> str:
    """The name of the control a run shares with every run of the same initial network and Hessian sample.

    Readable prefix (dataset, model, seed), then 10 hex digits of the sha256 of the sorted CONTROL_FIELDS.
    """
    fields = control_fields(cfg)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.dataset}-{cfg.model}-seed{cfg.seed}-{digest}"


def control_state_key(cfg: Config) -> str:
    """Where a control's Lanczos state is kept while it is computed: its key without the step budget
    (lanczos_steps, max_lanczos_steps), which the Krylov space does not depend on (a run truncated at j steps
    is exactly a j-step run; hspec.KrylovStore checks the start vector and the operator before it continues)."""
    return control_key(dataclasses.replace(cfg, lanczos_steps=None, max_lanczos_steps=None))


def control_config(cfg: Config) -> Config:
    """A canonical config of a run's control: the control fields, and defaults for everything training-only.

    The control's record therefore does not depend on which of its runs computed it first.
    """
    base = Config()
    fields = {name: getattr(cfg, name) for name in CONTROL_FIELDS}
    batch = base.batch_size if cfg.train_size is None else min(base.batch_size, cfg.train_size)
    return dataclasses.replace(base, preset="init-control", batch_size=batch, epochs=1, init_control=True,
                               spectrum_epochs=(), **fields)


# --- roots, states, publishing ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Roots:
    """Where published results go and where runs train (checkpoints stay in `work`)."""

    results: Path
    work: Path

    @classmethod
    def checked(cls, results: str | os.PathLike, work: str | os.PathLike) -> Roots:
        """Roots that keep checkpoints out of results/: neither may lie inside the other.

        Raises:
            SweepError: one root inside the other.
        """
        r, w = Path(results), Path(work)
        ra, wa = r.resolve(), w.resolve()
        if ra == wa or ra in wa.parents or wa in ra.parents:
            raise SweepError(f"--work {w} and --results {r} must be separate directories (checkpoints are written "
                             "under --work and must never land under --results)")
        return cls(r, w)

    def published(self, group: str, run: str) -> Path:
        return self.results / group / run

    def workdir(self, group: str, run: str) -> Path:
        return self.work / group / run

    def control(self, key: str) -> Path:
        return self.results / CONTROLS / key

    def failure(self, group: str, run: str) -> Path:
        return failure_path(self.results, group, run)

    def lock(self, name: str) -> RunLock:
        return RunLock(self.work / ".locks" / f"{name}.lock")


def is_published(path: Path) -> bool:
    """A published run or control: its results.json exists (it arrives with the directory's rename)."""
    return (path / rundir.RESULTS).is_file()


def published_overrides(path: Path) -> dict[str, Any]:
    """The overrides a published run was trained with ({} for the paper's setting)."""
    try:
        return json.loads((path / OVERRIDES).read_text())
    except FileNotFoundError:
        return {}


def run_state(roots: Roots, group: Group, spec: SweepRun, groups: dict[str, Group] | None = None) -> str:
    """done, partial (with how far), running elsewhere, or missing; `same_as` runs report their source's."""
    if spec.same_as is not None:
        src_group, src = source_of(group, spec, groups)
        return f"{run_state(roots, src_group, src, groups)} (= {src_group.name}/{src.name})"
    dest = roots.published(group.name, spec.name)
    if is_published(dest):
        stored = published_overrides(dest)
        stuck = record.did_not_learn(record.load(dest / rundir.RESULTS))
        return ("done" + (" (did not learn: train loss at that of ignoring the inputs)" if stuck else "")
                + (f" (overrides {json.dumps(stored, sort_keys=True)})" if stored else ""))
    work = roots.workdir(group.name, spec.name)
    lock = roots.lock(f"{group.name}--{spec.name}")
    running = " running" if lock.path.exists() and not lock.is_stale() else ""
    epochs = rundir.checkpoint_epochs(work)
    failures = read_failures(roots.failure(group.name, spec.name))
    failed = f" [{len(failures)} diverged attempt(s) in {roots.failure(group.name, spec.name)}]" if failures else ""
    if epochs:
        return f"partial{running} (checkpoint of epoch {epochs[-1]}{_lanczos_progress(work)}){failed}"
    return ("running" if running else "missing") + failed


def _lanczos_progress(work: Path) -> str:
    """"; spectrum of epoch 50 saved at Lanczos step 1840 (412 of the top 1000 converged)" for each spectrum in
    progress in a run directory."""
    from hspec.krylov import saved_progress

    from train.measure import TOL

    try:
        k = int(json.loads((work / rundir.CONFIG).read_text())["k"])
    except (OSError, ValueError, KeyError, TypeError):
        k = None

    spectra = [(0, work / "init")] + [(int(d.name), d) for d in (work / "epochs").glob("*") if d.name.isdigit()]
    spectra.append((None, work))
    out = []
    for epoch, where in spectra:
        progress = saved_progress(where / rundir.LANCZOS_STATE, k=k or 1, tol=TOL)
        if progress is not None:
            which = "final spectrum" if epoch is None else f"spectrum of epoch {epoch}"
            conv = f" ({progress['converged']} of the top {k} converged)" if k else ""
            out.append(f"; {which} saved at Lanczos step {progress['steps']}{conv}")
    return "".join(out)


def failure_path(results: Path, group: str, run: str) -> Path:
    """Where a run's diverged attempts are recorded under a results root."""
    return results / FAILED / group / f"{run}.json"


def read_failures(path: Path) -> list[dict[str, Any]]:
    """The failed attempts recorded for a run ([] when none), sorted by their overrides."""
    try:
        return json.loads(path.read_text())["attempts"]
    except FileNotFoundError:
        return []


def failure_attempt(err: FloatingPointError, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """What a failed training attempt leaves for the report: its overrides, where and how it failed, and the
    metrics of its last finished epoch. Only portable fields: no paths, hosts or times (the report is
    deterministic), so the checkpoint path of the message is left out."""
    last = None
    metrics = work / rundir.METRICS
    if metrics.is_file():
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        last = {k: v for k, v in lines[-1].items() if k != "time_s"} if lines else None
    loss = getattr(err, "loss", None)
    return {"overrides": overrides, "error": type(err).__name__, "epoch": getattr(err, "epoch", None),
            "step": getattr(err, "step", None), "loss": None if loss is None else str(loss),
            "last_finished_epoch": last}


def record_failure(path: Path, attempt: dict[str, Any]) -> None:
    """Add a failed attempt to a run's failure record, replacing an earlier one with the same overrides."""
    attempts = [a for a in read_failures(path) if a["overrides"] != attempt["overrides"]] + [attempt]
    attempts.sort(key=lambda a: json.dumps(a["overrides"], sort_keys=True))
    record.write_json(path, {"attempts": attempts})


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def publish(files: dict[str, Path], extra: dict[str, Any], dest: Path) -> None:
    """Place files (relative name -> source path) and JSON documents into `dest` in one rename.

    The files are copied into a hidden staging directory beside `dest`, then renamed: `dest` appears
    complete or not at all. A staging directory left by a killed process is removed first.

    Raises:
        SweepError: a file would place a checkpoint under results/, or `dest` exists already.
    """
    bad = [name for name in files if "checkpoints" in Path(name).parts]
    if bad:
        raise SweepError(f"refusing to publish checkpoints into {dest}: {bad}")
    if dest.exists():
        raise SweepError(f"{dest} exists already; it is not overwritten")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.glob(f".staging-{dest.name}-*"):
        shutil.rmtree(old, ignore_errors=True)
    staging = dest.parent / f".staging-{dest.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name, src in sorted(files.items()):
            _copy_file(src, staging / name)
        for name, obj in sorted(extra.items()):
            (staging / name).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def run_files(work: Path) -> dict[str, Path]:
    """The files of a finished run directory that are published (PUBLISHED_FILES and the spectra dirs)."""
    files = {name: work / name for name in PUBLISHED_FILES if (work / name).is_file()}
    subdirs = [work / "init"] + sorted((work / "epochs").glob("*"), key=lambda p: p.name)
    for sub in subdirs:
        for name in SPECTRUM_FILES:
            if (sub / name).is_file():
                files[str((sub / name).relative_to(work))] = sub / name
    return files


# --- controls -----------------------------------------------------------------------------------------------


def compute_control(cfg: Config, dest: Path, *, progress: bool, echo: Callable, work: Path | None = None) -> None:
    """Measure the initial network of `cfg` (no training) and publish it as the control `dest`.

    The initial state is `build_experiment(control_config(cfg)).template`, the same state as a run's
    epoch-0 checkpoint; its metrics are the run's epoch-0 metrics (`driver.initial_metrics`). With `work`, the
    Lanczos state is kept in `work/controls/<key>/.lanczos` until the control is published.
    """
    import tempfile

    from train import driver, experiment, loop, record, run

    ccfg = control_config(cfg)
    exp = experiment.build_experiment(ccfg, progress)
    metrics = driver.initial_metrics(exp, loop.make_eval_step(exp.fm), exp.template)
    echo(f"control {dest.name}: top {exp.cfg.k} at initialisation, {exp.num_params} parameters, "
         f"{exp.cfg.hessian_samples} Hessian samples")
    # The Lanczos state stays under the work root (never under results/), so a killed control resumes; it is
    # named without the step budget, so that one that ran out of steps continues under a larger max_lanczos_steps.
    state = None if work is None else work / CONTROLS / control_state_key(cfg) / rundir.LANCZOS_STATE
    result = run.measure_state(exp, exp.template, metrics, epoch=0, step=0, checkpoint=None, progress=progress,
                               lanczos_state=state)
    with tempfile.TemporaryDirectory(prefix="hspec-control-") as tmp:
        record.save(result, Path(tmp) / rundir.RESULTS)
        record.plot(result, Path(tmp) / rundir.PLOT, f"random initialisation: {dest.name}")
        files = {name: Path(tmp) / name for name in SPECTRUM_FILES}
        publish(files, {CONTROL_KEY: {"key": dest.name, "fields": control_fields(cfg)}}, dest)
    echo(f"control {dest.name}: {result.verdict}")


def ensure_control(cfg: Config, roots: Roots, *, progress: bool, echo: Callable) -> str:
    """Compute the run's control unless it is published or being computed elsewhere.

    Returns:
        "done", "computed" or "running elsewhere".
    """
    key = control_key(cfg)
    dest = roots.control(key)
    if is_published(dest):
        return "done"
    lock = roots.lock(f"control--{key}")
    if not lock.acquire():
        echo(f"control {key}: being computed by another process, {lock.describe()}; skipped")
        return "running elsewhere"
    try:
        if not is_published(dest):  # another process may have finished it just before
            compute_control(cfg, dest, progress=progress, echo=echo, work=roots.work)
    finally:
        lock.release()
    return "computed"


def control_pointer(cfg: Config) -> dict[str, Any]:
    """control.json of a run: the control's key and its path relative to the run's published directory."""
    key = control_key(cfg)
    return {"key": key, "path": f"../../{CONTROLS}/{key}", "fields": control_fields(cfg)}


def distinct_controls(groups: dict[str, Group], overrides: dict[str, Any]) -> list[tuple[str, Config]]:
    """(key, config) of every distinct control of the groups' own runs (not `same_as`), in group order."""
    out: dict[str, Config] = {}
    for group in groups.values():
        for spec in group.runs:
            if spec.same_as is None:
                cfg = run_config(spec, overrides)
                out.setdefault(control_key(cfg), cfg)
    return list(out.items())


# --- the sweep ------------------------------------------------------------------------------------------


def parse_shard(text: str | None) -> tuple[int, int]:
    """"I/N" -> (I, N), 0 <= I < N; None -> (0, 1).

    Raises:
        SweepError: not of that form.
    """
    if text is None:
        return 0, 1
    i, sep, n = text.partition("/")
    try:
        i_, n_ = int(i), int(n)
        wrong = (f"the shard count N={n_} must be at least 1" if n_ < 1 else
                 f"the shard index I={i_} is negative (shards count from 0)" if i_ < 0 else
                 f"the shard index I={i_} must be below the count N={n_} (shards 0..{n_ - 1})" if i_ >= n_ else "")
    except ValueError:
        wrong = "I and N must be whole numbers separated by '/'"
    if not sep:
        wrong = "it has no '/'"
    if wrong:
        raise SweepError(f"--shard {text}: {wrong}; give I/N with 0 <= I < N, e.g. --shard 0/4 "
                         "(Slurm: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return i_, n_


def shard(items: list, index: int, count: int) -> list:
    """Items index, index + count, index + 2·count, ... of a list in its fixed order."""
    return items[index::count]


def _prefixed(echo: Callable, prefix: str) -> Callable:
    return lambda text: echo("\n".join(f"{prefix} {line}" for line in str(text).splitlines()))


def sweep_run(roots: Roots, group: Group, spec: SweepRun, cfg: Config, *, progress: bool, echo: Callable,
              groups: dict[str, Group] | None = None) -> str:
    """Bring one run to "done": skip it, resume it or train it, then publish it. Returns its state."""
    from train import run

    say = _prefixed(echo, f"[{group.name}/{spec.name}]")
    if spec.same_as is not None:
        state = run_state(roots, group, spec, groups)
        say(f"same training as {spec.same_as}: {state}" + ("" if state.startswith("done") else
            f"; it is run by `python -m train sweep {spec.same_as.split('/')[0]}`"))
        return state
    dest = roots.published(group.name, spec.name)
    if is_published(dest):
        stored, wanted = published_overrides(dest), applied_overrides(spec, cfg)
        if stored != wanted:
            raise SweepError(f"{dest} was published with overrides {stored}, this sweep asks {wanted}; it is kept as "
                             f"it is: to redo the run, delete {dest} and {roots.workdir(group.name, spec.name)}")
        say("done (in results); skipped")
        return "done"
    lock = roots.lock(f"{group.name}--{spec.name}")
    with lock as held:
        if not held:
            say(f"being worked on by another process, {lock.describe()}; skipped")
            return "running elsewhere"
        ensure_control(cfg, roots, progress=progress, echo=say)
        work = roots.workdir(group.name, spec.name)
        resume = bool(rundir.checkpoint_epochs(work))
        say(("resuming from its checkpoints in " if resume else "training in ") + str(work))
        try:
            run.train_run(cfg, work, resume=resume, progress=progress, echo=say)
        except FloatingPointError as err:  # a diverged training (NonFiniteLossError) is a result to report
            record_failure(roots.failure(group.name, spec.name),
                           failure_attempt(err, applied_overrides(spec, cfg), work))
            say(f"failure recorded in {roots.failure(group.name, spec.name)}")
            raise
        publish(run_files(work), {CONTROL_POINTER: control_pointer(cfg), OVERRIDES: applied_overrides(spec, cfg)},
                dest)
        say(f"published to {dest}")
    return "done"


def sweep_controls(roots: Roots, overrides: dict[str, Any], shard_: tuple[int, int], *, progress: bool,
                   echo: Callable, groups: dict[str, Group]) -> list[str]:
    """Compute every missing control of every group (this shard's share). Returns the failures."""
    failures = []
    for key, cfg in shard(distinct_controls(groups, overrides), *shard_):
        try:
            state = ensure_control(cfg, roots, progress=progress, echo=echo)
            if state == "done":
                echo(f"control {key}: done (in results); skipped")
        except Exception as err:  # noqa: BLE001  (one failed control must not stop the others)
            echo(f"control {key}: FAILED: {type(err).__name__}: {err}{_failure_hint(err)}")
            failures.append(key)
    return failures


def _failure_hint(err: BaseException) -> str:
    """For a spectrum whose top K did not converge (directly or as the cause): the sweep's way to continue it."""
    import hspec

    if isinstance(err, hspec.NotConvergedError) or isinstance(err.__cause__, hspec.NotConvergedError):
        return (" [run the sweep again with --set max_lanczos_steps=N above the steps taken: the spectrum continues "
                "from them]")
    return ""


def sweep(name: str, *, roots: Roots, overrides: dict[str, Any] | None = None, shard_: tuple[int, int] = (0, 1),
          progress: bool = True, echo: Callable = print, groups: dict[str, Group] | None = None) -> list[str]:
    """Run this shard's share of a group: every run brought to "done" (or reported as waiting).

    Configurations are checked before anything runs, so that a bad override fails at once. A run that
    fails (a control that does not converge, a non-finite loss) is reported and the others continue.

    Returns:
        The names of the runs (or controls) that failed.
    """
    groups = GROUPS if groups is None else groups
    overrides = dict(overrides or {})
    group = get_group(name, groups)
    if group.name == CONTROLS:
        return sweep_controls(roots, overrides, shard_, progress=progress, echo=echo, groups=groups)
    specs = shard(list(group.runs), *shard_)
    cfgs = {spec.name: run_config(spec, overrides) for spec in specs}
    failures = []
    for spec in specs:
        try:
            sweep_run(roots, group, spec, cfgs[spec.name], progress=progress, echo=echo, groups=groups)
        except Exception as err:  # noqa: BLE001  (a job array must finish its other runs)
            echo(f"[{group.name}/{spec.name}] FAILED: {type(err).__name__}: {err}{_failure_hint(err)}")
            failures.append(spec.name)
    return failures


def listed_control(roots: Roots, group: Group, spec: SweepRun, overrides: dict[str, Any],
                   groups: dict[str, Group] | None = None) -> str:
    """The control key `--list` shows for a run: that of its published record (control.json) when it is published,
    whatever the --set, as its state is; else the key these overrides give."""
    src_group, src = source_of(group, spec, groups)
    try:
        return json.loads((roots.published(src_group.name, src.name) / CONTROL_POINTER).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return control_key(run_config(src, overrides))


def _listed_controls(roots: Roots, overrides: dict[str, Any], groups: dict[str, Group]) -> list[str]:
    """Every distinct control key `--list` shows, in group order (see listed_control)."""
    keys = {listed_control(roots, g, spec, overrides, groups): None
            for g in groups.values() for spec in g.runs if spec.same_as is None}
    return list(keys)


def listing(roots: Roots, name: str | None = None, overrides: dict[str, Any] | None = None,
            groups: dict[str, Group] | None = None) -> str:
    """Groups with their run counts by state, or one group's runs with their states and controls.

    A published run is listed as published whatever the --set overrides (which apply to runs still to be done), and
    so is its control: the one its record points to."""
    groups = GROUPS if groups is None else groups
    overrides = dict(overrides or {})
    if name is None:
        lines = []
        for group in groups.values():
            if group.name == CONTROLS:
                keys = _listed_controls(roots, overrides, groups)
                done = sum(is_published(roots.control(k)) for k in keys)
                lines.append(f"{group.name:<22} {len(keys):>3} controls: {done} done  -- {group.description}")
                continue
            states = [run_state(roots, group, spec, groups).split()[0] for spec in group.runs]
            counts = ", ".join(f"{states.count(s)} {s}" for s in ("done", "partial", "running", "missing")
                               if states.count(s))
            lines.append(f"{group.name:<22} {len(group.runs):>3} runs: {counts}  -- {group.description}")
        return "\n".join(lines)
    group = get_group(name, groups)
    if group.name == CONTROLS:
        return "\n".join(f"{key:<40} {'done' if is_published(roots.control(key)) else 'missing'}"
                         for key in _listed_controls(roots, overrides, groups))
    lines = [f"{group.name}: {group.description}"]
    for spec in group.runs:
        ctl = "done" if is_published(roots.control(listed_control(roots, group, spec, overrides, groups))) \
            else "missing"
        lines.append(f"  {spec.name:<18} {spec.preset:<32} {run_state(roots, group, spec, groups)}  "
                     f"[control {ctl}]")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------------


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every run (repeatable), e.g. --set epochs=2 --set k=20")
    p.add_argument("--results", default=RESULTS_ROOT, help=f"published results root (default: {RESULTS_ROOT}/)")
    p.add_argument("--data-dir", help="data directory (default: env HSPEC_DATA_DIR, else ~/.cache/hspec/data); "
                                      "exported as HSPEC_DATA_DIR, so that no path of this machine enters config.json")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (there are none when stderr is not a terminal)")


def _sweep_parser() -> argparse.ArgumentParser:
    slurm = next(part for part in __doc__.split("\n\n") if part.lstrip().startswith("#!/bin/bash"))
    p = argparse.ArgumentParser(prog="python -m train sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Train every run of a named group (skipping finished runs, resuming "
                                            "killed ones), compute the random-initialisation controls, and publish "
                                            "each finished run into <results>/<group>/<run>/ (never checkpoints).",
                                epilog="groups: " + ", ".join(GROUPS) + "\n\na Slurm job array:\n" + slurm)
    p.add_argument("group", nargs="?", help="the group to run (see --list)")
    p.add_argument("--list", action="store_true", help="list the groups, or GROUP's runs, with their states")
    p.add_argument("--shard", help="run only runs I, I+N, ... of the group (0 <= I < N), e.g. 0/4")
    p.add_argument("--work", default=WORK_ROOT, help=f"where runs train, checkpoints included (default: {WORK_ROOT}/)")
    _common_args(p)
    return p


def _use_data_dir(path: str | None) -> None:
    if path:
        from train.data.dataset import ENV_DATA_DIR

        os.environ[ENV_DATA_DIR] = os.path.abspath(path)


def _joined_shard(argv: list[str]) -> list[str]:
    """"--shard -1/2" as "--shard=-1/2": argparse would take "-1/2" for an option and say only that --shard
    expects an argument; joined, parse_shard says what is wrong with it."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--shard" and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"--shard={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str]) -> int:
    """`python -m train sweep`: exit 0 when every run of the shard is done or waits on another group, 1 on a failure."""
    args = _sweep_parser().parse_args(_joined_shard(argv))
    shard_ = parse_shard(args.shard)
    overrides = config_lib.parse_assignments(args.sets)
    roots = Roots.checked(args.results, args.work)
    if args.list:
        print(listing(roots, args.group, overrides))
        return 0
    if not args.group:
        raise SweepError("name a group (python -m train sweep GROUP), or --list to see them: " + ", ".join(GROUPS))
    _use_data_dir(args.data_dir)
    failures = sweep(args.group, roots=roots, overrides=overrides, shard_=shard_,
                     progress=progress_wanted(args.no_progress), echo=lambda text: print(text, flush=True))
    print(listing(roots, args.group, overrides))
    if failures:
        print(f"failed: {', '.join(failures)} (run the sweep again to retry; finished runs are skipped)")
    return 1 if failures else 0


def iter_groups(groups: dict[str, Group] | None = None) -> Iterator[Group]:
    """The groups with runs of their own (every group but `controls`), in order."""
    for group in (GROUPS if groups is None else groups).values():
        if group.name != CONTROLS:
            yield group
