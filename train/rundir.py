"""The run directory: its layout, finding checkpoints in it, and refusing to overwrite a run.

    <run>/config.json                the resolved configuration
    <run>/metrics.jsonl              one line per epoch (epoch 0: the initialisation, in eval mode)
    <run>/checkpoints/epoch_N/       orbax checkpoints (train.checkpoint)
    <run>/results.json, spectrum.png the final trained network
    <run>/init/results.json, ...     the control at initialisation (setting.trained = false)
    <run>/epochs/<e>/results.json    spectra after the chosen epochs
    <run>/table.txt                  the printed verdict table
    <run>/.run.lock                  held while a `python -m train` works in it (train.lock.RunLock)

This layout is a contract that the sweeps, the report and users' scripts rely on.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from train import checkpoint as ckpt
from train.lock import RunLock
from train.record import jsonable

RESULTS = "results.json"
PLOT = "spectrum.png"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TABLE = "table.txt"
# The Krylov state of a spectrum in progress (hspec.KrylovStore), beside its results; removed when it finishes.
LANCZOS_STATE = ".lanczos"
# Where long jobs keep their work state (checkpoints of sweeps, Krylov bases, finished pieces of studies).
ENV_WORK_DIR = "HSPEC_WORK_DIR"


def default_work_dir() -> Path:
    """$HSPEC_WORK_DIR, else ~/.cache/hspec/work: outside any work tree, so that the state of a long job survives
    a fresh clone (and a machine that is handed back keeps it), and nothing of it can be committed."""
    return Path(os.environ.get(ENV_WORK_DIR) or Path.home() / ".cache" / "hspec" / "work")
# The claim of a run directory: created atomically before anything else is written there, removed at the end.
LOCK = ".run.lock"


class OutputDirError(RuntimeError):
    """The output directory cannot be written, or already holds a run that would be overwritten."""


def spectrum_dir(run: Path, epoch: int, num_epochs: int) -> Path:
    """Where the spectrum of the state after `epoch` goes: init/, epochs/<e>/, or the run itself (final)."""
    if epoch == num_epochs:
        return run
    return run / "init" if epoch == 0 else run / "epochs" / str(epoch)


def checkpoint_epochs(run: Path) -> list[int]:
    """The epochs of the checkpoints kept in a run directory."""
    return ckpt.list_epochs(ckpt.checkpoint_dir(run))


def checkpoint_path(run: Path, epoch: int) -> Path:
    """The checkpoint directory of `epoch` in a run directory."""
    return ckpt.epoch_path(ckpt.checkpoint_dir(run), epoch)


def last_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint directory of a run, or None."""
    epochs = checkpoint_epochs(run)
    return checkpoint_path(run, epochs[-1]) if epochs else None


def check_out_dir(out: str | os.PathLike, *, resume: bool) -> Path:
    """Check, without creating anything, that a run may start (or resume) in `out`.

    Args:
        out: the directory.
        resume: whether the run continues one already there.

    Returns:
        The directory as a Path.

    Raises:
        OutputDirError: (without resume) it already holds a run, (with resume) it holds none, or it
            is a file.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"cannot write to the output directory {path}: it is a file; choose another --out")
    # A directory without checkpoints holds nothing a new run could lose (at most a config.json).
    has_run = path.is_dir() and bool(checkpoint_epochs(path))
    if has_run and not resume:
        raise OutputDirError(f"{path} already holds a run (checkpoints); continue it with --resume, "
                             "or choose another --out. Nothing there is overwritten")
    if resume and not has_run:
        raise OutputDirError(f"--resume: {path} holds no checkpoint to resume from; run without --resume")
    return path


@contextlib.contextmanager
def claimed(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory `out` (its lock file, created atomically) while the body works in it.

    The one thing written before the claim is held is the lock file itself (and `out`, when it is new): a second
    process launched into the same directory stops here, having changed nothing there.

    Raises:
        OutputDirError: another live process holds the directory, or it cannot be written.
    """
    path = Path(out)
    lock = RunLock(path / LOCK)
    try:
        held = lock.acquire()
    except OSError as err:
        raise OutputDirError(f"cannot write to the output directory {path} ({err.strerror or err}); "
                             "choose another --out") from None
    if not held:
        raise OutputDirError(f"{path} is in use by another run, {lock.describe()}; nothing in it was changed: let "
                             "that run finish, or choose another --out")
    try:
        yield path
    finally:
        lock.release()


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


def find_checkpoint(path: Path, epoch: int | None) -> Path:
    """A checkpoint directory from a run directory (newest or given epoch) or an epoch directory.

    Raises:
        CheckpointError: none there, or not the asked epoch (naming the epochs kept).
    """
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


def write_metrics(run: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the history a checkpoint holds (atomically)."""
    path = run / METRICS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(jsonable(r)) + "\n" for r in history))
    os.replace(tmp, path)


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line to metrics.jsonl."""
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(jsonable(record)) + "\n")


def read_metrics(run: Path) -> list[dict]:
    """The records of metrics.jsonl, in order ([] when there is none yet)."""
    path = run / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
