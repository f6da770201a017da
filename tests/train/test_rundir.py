"""The run directory's claim: one `python -m train` at a time in an --out, the second changes nothing there."""

from __future__ import annotations

import json
import socket

import pytest

from train import rundir
from train.__main__ import main
from train.lock import RunLock
from train.rundir import OutputDirError


def snapshot(path):
    """Every file under a directory: its bytes and modification time."""
    return {p.relative_to(path).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_second_claim_of_a_directory_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    with rundir.claimed(out) as held:
        assert held == out and (out / rundir.LOCK).is_file()
        (out / rundir.CONFIG).write_text('{"seed": 0}')
        before = snapshot(out)
        with pytest.raises(OutputDirError, match=f"{out} is in use by another run") as err:
            with rundir.claimed(out):
                pytest.fail("the second claim must not run its body")
        assert "\n" not in str(err.value) and "nothing in it was changed" in str(err.value)
        assert snapshot(out) == before
    assert not (out / rundir.LOCK).exists()  # released: the directory can be claimed again
    with rundir.claimed(out):
        pass


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 1, "token": "dead"}))
    with rundir.claimed(out):
        assert json.loads((out / rundir.LOCK).read_text())["token"] != "dead"


def test_a_run_launched_into_a_directory_in_use_exits_2_and_touches_nothing(tmp_path, data_dir, capsys):
    """The winner (here: this process holding the claim, as a run does while it trains) has written its
    config.json; a second `python -m train` with other settings stops with status 2 before writing anything."""
    out = tmp_path / "run"
    winner = RunLock(out / rundir.LOCK)
    assert winner.acquire()
    try:
        (out / rundir.CONFIG).write_text(json.dumps({"seed": 0, "learning_rate": 0.1}))
        before = snapshot(out)
        rc = main(["--preset", "tiny-fcn-mnist", "--data-dir", str(data_dir), "--no-progress", "--out", str(out),
                   "seed=1", "learning_rate=0.05"])
        err = capsys.readouterr().err
        assert rc == 2 and f"{out} is in use by another run" in err and "Traceback" not in err, err
        assert snapshot(out) == before
    finally:
        winner.release()
