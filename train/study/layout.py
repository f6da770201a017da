"""The results/ and runs/ trees: where a sweep's runs train and are published, their states, and failed attempts.

    results/<group>/<run>/results.json, config.json, metrics.jsonl, spectrum.png, table.txt
    results/<group>/<run>/epochs/<e>/results.json, spectrum.png      spectra after chosen epochs
    results/<group>/<run>/control.json       which random-initialisation control the run uses
    results/<group>/<run>/overrides.json     the fields the sweep's --set changed ({} for none)
    results/controls/<key>/results.json, spectrum.png, key.json    one control per distinct key
    results/sensitivity/<name>/*.json        `python -m train sensitivity` (train.study.sensitivity)
    results/failed/<group>/<run>.json        training attempts that diverged (non-finite loss), per overrides

Runs train in `<work>/<group>/<run>/` (checkpoints live there and only there) and are copied into results/ through
a staging directory and one rename (`publish`), so that a half-written run never appears under results/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from train import record, rundir
from train.config import Config
from train.lock import RunLock
from train.study.plan import CONTROLS, Group, SweepError, SweepRun, control_fields, control_key, source_of

RESULTS_ROOT = "results"
# Outside the work tree (train.rundir.default_work_dir: $HSPEC_WORK_DIR or ~/.cache/hspec/work), so that the
# checkpoints and Krylov states of runs that take several sessions survive a fresh clone.
WORK_ROOT = str(rundir.default_work_dir() / "sweeps")
SENSITIVITY = "sensitivity"
CONTROL_POINTER = "control.json"
OVERRIDES = "overrides.json"
# results/failed/<group>/<run>.json: the diverged attempts of a run, one per set of overrides (record_failure).
FAILED = "failed"
CONTROL_KEY = "key.json"
# What a published run holds: the record, its config, metrics, plot and table; never checkpoints.
PUBLISHED_FILES = (rundir.RESULTS, rundir.CONFIG, rundir.METRICS, rundir.PLOT, rundir.TABLE)
SPECTRUM_FILES = (rundir.RESULTS, rundir.PLOT)


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
        return f"partial{running} (checkpoint of epoch {epochs[-1]}{lanczos_progress(work)}){failed}"
    return ("running" if running else "missing") + failed


def lanczos_progress(work: Path) -> str:
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


def control_pointer(cfg: Config) -> dict[str, Any]:
    """control.json of a run: the control's key and its path relative to the run's published directory."""
    key = control_key(cfg)
    return {"key": key, "path": f"../../{CONTROLS}/{key}", "fields": control_fields(cfg)}
