"""Sweeps: every run of a named group of the paper's settings, resumable, shardable, published atomically.

    python -m train sweep GROUP [--shard I/N] [--set key=value ...] [--results DIR] [--work DIR]
                                [--data-dir DIR] [--no-progress]
    python -m train sweep --list [GROUP]

A group (GROUPS) is a list of runs, each a preset plus the few fields that define it (a seed). A sweep
trains each run of its group in the work directory `<work>/<group>/<run>/` (default
`~/.cache/hspec/work/sweeps`, or `$HSPEC_WORK_DIR/sweeps`: outside the work tree; checkpoints live there
and only there), then copies the finished files into `results/<group>/<run>/` through a staging
directory and one rename, so that a half-written run never appears under results/ (the trees are described in
train.study.layout; the groups and their configurations in train.study.plan).

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
import json
from pathlib import Path
from typing import Any, Callable

from train import progress_wanted
from train import config as config_lib
from train import rundir
from train.config import Config
from train.data.dataset import use_data_dir  # noqa: F401 (also importable from here, as before)
from train.study.layout import (CONTROL_KEY, CONTROL_POINTER, OVERRIDES, RESULTS_ROOT, SPECTRUM_FILES, WORK_ROOT, Roots,
                                control_pointer, failure_attempt, is_published, publish,
                                published_overrides, record_failure, run_files, run_state)
from train.study.plan import (CONTROLS, GROUPS, Group, SweepError, SweepRun, applied_overrides, control_config,
                              control_fields, control_key, control_state_key, distinct_controls, get_group, run_config,
                              source_of)

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
    metrics = driver.initial_metrics(exp, loop.make_eval_step(exp.model_defs), exp.template)
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
            echo(f"control {key}: FAILED: {type(err).__name__}: {err}{failure_hint(err)}")
            failures.append(key)
    return failures


def failure_hint(err: BaseException) -> str:
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
            echo(f"[{group.name}/{spec.name}] FAILED: {type(err).__name__}: {err}{failure_hint(err)}")
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


def add_common_args(p: argparse.ArgumentParser) -> None:
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
    add_common_args(p)
    return p


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
    use_data_dir(args.data_dir)
    failures = sweep(args.group, roots=roots, overrides=overrides, shard_=shard_,
                     progress=progress_wanted(args.no_progress), echo=lambda text: print(text, flush=True))
    print(listing(roots, args.group, overrides))
    if failures:
        print(f"failed: {', '.join(failures)} (run the sweep again to retry; finished runs are skipped)")
    return 1 if failures else 0
