"""Sweeps: the groups, overrides, control keys, shards, locks and atomic publishing; a tiny group swept for real
(skip, resume, a held lock, a failing run, one shared control checked against the epoch-0 checkpoint); and the
sensitivity study on the tiny run, its numbers recomputed another way."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest

import hspec
from train import config as config_lib
from train import presets, record, run, rundir
from train.__main__ import main
from train.catalog import OPTIMIZERS
from train.hessian import hessian_batches, loss_fn_from_model
from train.study import layout, plan, sweep
from train.study.lock import RunLock

# --- the groups -----------------------------------------------------------------------------------------------


def test_groups_hold_the_papers_settings():
    g = plan.GROUPS
    assert [s.preset for s in g["optimizers"].runs] == [f"lenet-mnist-{o.replace('_', '-')}" for o in OPTIMIZERS]
    assert [s.preset for s in g["batch-size"].runs] == [f"lenet-mnist-batch{b}" for b in presets.BATCH_SIZES]
    assert [s.preset for s in g["batch-size-iters1000"].runs] == [
        f"lenet-mnist-iters1000-batch{b}" for b in presets.BATCH_SIZES]
    assert [s.preset for s in g["train-size"].runs] == [f"lenet-mnist-n{n}" for n in presets.TRAIN_SIZES]
    assert [s.name for s in g["label-noise"].runs] == ["noise40", "noise80", "random-labels"]
    assert [plan.nominal_config(s).depth for s in g["fcn-depth"].runs] == [1, 2, 4]
    assert [plan.nominal_config(s).width for s in g["fcn-width"].runs] == list(range(10, 101, 10))
    ref = plan.nominal_config(g["checkpoints"].runs[0])
    assert (ref.preset, ref.epochs, ref.spectrum_epochs, ref.k) == ("lenet-mnist-sgd", 50, (1, 2, 3, 10, 20, 30), 1000)
    assert {(plan.nominal_config(s).preset, plan.nominal_config(s).seed) for s in g["seeds"].runs} == {
        (p, seed) for p in ("lenet-mnist-sgd", "lenet-mnist-batch640", "lenet-mnist-batch768") for seed in (0, 1, 2)}
    assert [plan.nominal_config(s).k for s in g["avila"].runs + g["resnet18"].runs] == [50, 50]
    assert {plan.nominal_config(s).dataset for s in g["cifar10-lenet"].runs} == {"cifar10"}
    linear = g["linear"].runs[0]  # diverges at the paper's lr 0.1 (results/failed/linear/linear.json)
    assert plan.applied_overrides(linear, plan.run_config(linear, {})) == {"learning_rate": 0.01}
    assert "diverges" in linear.why
    # The CIFAR optimizers that do not learn at the paper's lr 1 run there and, beside it, at lr 0.1.
    cifar = {s.name: s for s in g["cifar10-lenet"].runs}
    for name in ("vanilla-sgd", "adai"):
        paper, lower = cifar[name], cifar[f"{name}-lr0.1"]
        assert config_lib.resolve(plan.nominal_config(paper)).learning_rate == 1.0 and not paper.departures
        assert plan.applied_overrides(lower, plan.run_config(lower, {})) == {"learning_rate": 0.1}
        assert plan.nominal_config(lower).optimizer == plan.nominal_config(paper).optimizer
    for group in g.values():
        assert len({s.name for s in group.runs}) == len(group.runs)
        assert all(not plan.nominal_config(s).init_control for s in group.runs)  # controls are computed apart


def test_same_as_runs_are_the_same_training():
    aliases = [(group, spec) for group in plan.GROUPS.values() for spec in group.runs if spec.same_as]
    # optimizers/sgd, batch128, n60000, width100, three seed-0 runs, lenet-variants/paper-form
    assert len(aliases) == 8
    for group, spec in aliases:
        _, src = plan.source_of(group, spec)
        assert src.same_as is None
        diff = config_lib.differences(plan.nominal_config(spec), plan.nominal_config(src),
                                      ignore=("preset", "train_size") + config_lib.SPECTRUM_FIELDS)
        assert diff == {}, (spec.name, diff)
        assert plan.same_training(plan.nominal_config(spec), plan.nominal_config(src)), spec.name


def test_no_network_is_trained_twice():
    """Every pair of runs that would train the same network is declared same_as (n60000 once trained the
    reference run again: 50 epochs, bit for bit)."""
    # run_config: as trained, departures included (vanilla-sgd-lr0.1 is vanilla-sgd at another rate).
    trained = [(f"{g.name}/{s.name}", plan.run_config(s, {})) for g in plan.iter_groups() for s in g.runs
               if s.same_as is None]
    for i, (name, cfg) in enumerate(trained):
        twins = [other for other, c in trained[i + 1:] if plan.same_training(cfg, c)]
        assert not twins, (name, twins)
    ref = plan.nominal_config(plan.find_run(plan.REFERENCE)[1])
    assert plan.same_training(ref, dataclasses.replace(ref, train_size=60000, k=10, preset="x"))
    assert not plan.same_training(ref, dataclasses.replace(ref, train_size=59999))


def test_overrides_apply_to_every_run_and_are_recorded():
    overrides = config_lib.parse_assignments(["epochs=2", "k=20"])
    for group in plan.iter_groups():
        for spec in group.runs:
            cfg = plan.run_config(spec, overrides)
            assert cfg.k == 20 and (cfg.epochs == 2 or spec.preset.startswith("lenet-mnist-iters1000"))
    ref = plan.GROUPS["checkpoints"].runs[0]
    cfg = plan.run_config(ref, overrides)
    # Spectrum epochs beyond the shorter run are dropped, and that is recorded with the overrides.
    assert cfg.spectrum_epochs == (1, 2)
    assert plan.applied_overrides(ref, cfg) == {"epochs": 2, "k": 20, "spectrum_epochs": [1, 2]}
    assert plan.applied_overrides(ref, plan.run_config(ref, {})) == {}
    with pytest.raises(config_lib.ConfigError, match="unknown config field 'epoch'"):
        plan.run_config(ref, {"epoch": "2"})


def test_control_key_depends_only_on_network_and_hessian_sample():
    key = lambda ref, **o: plan.control_key(plan.run_config(plan.find_run(ref)[1], o))  # noqa: E731
    ref = key("checkpoints/lenet-mnist-sgd")
    # Optimizer, learning rate, batch size and length of training do not change the initial network.
    assert {key(f"optimizers/{s.name}") for s in plan.GROUPS["optimizers"].runs} == {ref}
    assert key("batch-size/batch8192") == key("batch-size-iters1000/batch512") == ref
    assert key("checkpoints/lenet-mnist-sgd", epochs="3") == ref
    # The seed, the data options, the Hessian sample and the spectrum settings do.
    others = [key("seeds/baseline-seed1"), key("train-size/n600"), key("label-noise/noise40"),
              key("label-noise/random-labels"), key("checkpoints/lenet-mnist-sgd", k="20"),
              key("checkpoints/lenet-mnist-sgd", hessian_samples="500"), key("fcn-width/width10"),
              key("fashion-mnist/sgd")]
    assert len(set(others) | {ref}) == len(others) + 1
    keys = [k for k, _ in plan.distinct_controls(plan.GROUPS, {})]
    assert len(keys) == len(set(keys)) and ref in keys and all(o in keys for o in others[:4])


def test_a_controls_lanczos_state_is_shared_across_step_budgets_only():
    resnet = plan.find_run("resnet18/resnet18-cifar10-sgd")[1]
    state = lambda **o: plan.control_state_key(plan.run_config(resnet, o))  # noqa: E731
    # A control that ran out of steps continues under a larger budget: the budget is not in the state's name...
    assert state(max_lanczos_steps="300") == state(max_lanczos_steps="450") == state(lanczos_steps="200") == state()
    # ...while the key it is published under, and everything the Krylov space depends on, still separates.
    key = lambda **o: plan.control_key(plan.run_config(resnet, o))  # noqa: E731
    assert key(max_lanczos_steps="300") != key(max_lanczos_steps="450")
    assert len({state(), state(hessian_samples="128"), state(k="20"), state(seed="1")}) == 4


def test_a_failed_spectrum_that_did_not_converge_says_how_the_sweep_continues_it():
    import hspec
    from train.run import SpectrumError

    direct = hspec.NotConvergedError("only 9 of the top 40")
    try:
        raise SpectrumError("the spectrum of final failed") from direct
    except SpectrumError as err:
        chained = err
    for err in (direct, chained):
        assert "run the sweep again with --set max_lanczos_steps=N" in sweep.failure_hint(err)
    assert sweep.failure_hint(SpectrumError("x")) == sweep.failure_hint(ValueError("x")) == ""


def test_control_config_keeps_the_control_fields_and_nothing_of_training():
    spec = plan.find_run("optimizers/adam")[1]
    cfg = plan.run_config(spec, {"epochs": "7", "train_size": "300", "hessian_samples": "200"})
    ccfg = plan.control_config(cfg)
    assert plan.control_fields(ccfg) == plan.control_fields(cfg)
    assert (ccfg.optimizer, ccfg.learning_rate, ccfg.batch_size, ccfg.preset) == ("sgd", None, 128, "init-control")
    assert ccfg.init_control and config_lib.validate(ccfg)
    # Every control of every group is a valid configuration whose own key is the key it is filed under.
    for key, run_cfg in plan.distinct_controls(plan.GROUPS, {}):
        control = config_lib.validate(plan.control_config(run_cfg))
        assert plan.control_key(control) == key
    assert plan.control_config(plan.run_config(spec, {"train_size": "100", "hessian_samples": "50",
                                                         "batch_size": "32"})).batch_size == 100


def test_shards_partition_the_group_in_a_fixed_order():
    runs = list(plan.GROUPS["fcn-width"].runs)
    for n in range(1, 6):
        parts = [sweep.shard(runs, *sweep.parse_shard(f"{i}/{n}")) for i in range(n)]
        assert sorted(r.name for p in parts for r in p) == sorted(r.name for r in runs)
        assert all(p == sorted(p, key=runs.index) for p in parts)
    assert sweep.parse_shard(None) == (0, 1)
    for bad in ("3/3", "-1/2", "a/b", "1", "0/0"):
        with pytest.raises(plan.SweepError, match="give I/N"):
            sweep.parse_shard(bad)


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["sweep", "nope", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")]) == 2
    assert "unknown sweep group 'nope'" in capsys.readouterr().err
    assert main(["sweep", "optimizers", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "r" / "w")]) == 2
    assert "must be separate directories" in capsys.readouterr().err
    assert main(["sweep", "optimizers", "--shard", "5/2", "--results", str(tmp_path / "r"),
                 "--work", str(tmp_path / "w")]) == 2
    assert main(["sweep", "optimizers", "--set", "k=x", "--results", str(tmp_path / "r"),
                 "--work", str(tmp_path / "w")]) == 2
    assert "'k' expects int" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_list_shows_every_group(capsys, tmp_path):
    assert main(["sweep", "--list", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(plan.GROUPS)
    assert "11 runs: 11 missing" in out.splitlines()[1]


# --- locks and publishing ------------------------------------------------------------------------------------


def test_lock_is_exclusive_refreshed_and_taken_over_when_stale(tmp_path):
    path = tmp_path / "locks" / "x.lock"
    a = RunLock(path, heartbeat=0.05)
    assert a.acquire() and not RunLock(path).acquire()
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert path.stat().st_mtime > old + 50  # the heartbeat touched it
    a.release()
    assert not path.exists()
    again = RunLock(path)
    assert again.acquire()
    again.release()
    # Stale: not refreshed for longer than stale_after (a dead process on another machine).
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t"}))
    os.utime(path, (old, old))
    b = RunLock(path, stale_after=60)
    assert b.acquire() and b.owner()["token"] == b.token
    b.release()
    # Stale: a process of this host that is gone, however fresh its file.
    child = subprocess.Popen(["true"])
    child.wait()
    dead = child.pid
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "token": "t"}))
    c = RunLock(path)
    assert c.is_stale() and c.acquire()
    c.release()


def test_a_held_lock_names_its_host_pid_age_and_the_rule_that_frees_it(tmp_path):
    """Issue 27, case 8: the message of a lock held elsewhere says who holds it, since when, and when it frees."""
    path = tmp_path / "run" / rundir.LOCK
    path.parent.mkdir()
    path.write_text(json.dumps({"host": "gpu7", "pid": 4242, "token": "t", "since": time.time() - 3 * 3600 - 720}))
    lock = RunLock(path)
    assert not lock.acquire()
    text = lock.describe()
    assert "held by pid 4242 on host gpu7 for 3 h 12 min, refreshed 0 s ago" in text and str(path) in text
    assert "on another host once the lock is not refreshed for 10 min" in text
    with pytest.raises(rundir.OutputDirError, match="held by pid 4242 on host gpu7"):
        with rundir.claimed(tmp_path / "run"):
            pass


@pytest.mark.parametrize("text,wrong", [("-1/2", "the shard index I=-1 is negative (shards count from 0)"),
                                        ("2/2", "the shard index I=2 must be below the count N=2 (shards 0..1)"),
                                        ("0/0", "the shard count N=0 must be at least 1"),
                                        ("a/b", "I and N must be whole numbers"), ("3", "it has no '/'")])
def test_a_bad_shard_says_what_is_wrong(capsys, tmp_path, text, wrong):
    rc = main(["sweep", "optimizers", "--shard", text, "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: --shard {text}: {wrong}") and err.count("\n") == 1, err
    assert "give I/N with 0 <= I < N, e.g. --shard 0/4" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_publish_is_all_or_nothing_and_never_places_checkpoints(tmp_path):
    src = tmp_path / "work"
    (src / "checkpoints").mkdir(parents=True)
    (src / "results.json").write_text("{}")
    (src / "checkpoints" / "x").write_text("weights")
    dest = tmp_path / "results" / "g" / "run"
    with pytest.raises(plan.SweepError, match="refusing to publish checkpoints"):
        layout.publish({"checkpoints/x": src / "checkpoints" / "x"}, {}, dest)
    with pytest.raises(FileNotFoundError):
        layout.publish({"results.json": src / "results.json", "zz.json": src / "missing.json"}, {}, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no staging directory left behind
    (dest.parent / ".staging-run-dead").mkdir()  # left by a killed process
    layout.publish({"results.json": src / "results.json"}, {"control.json": {"key": "k"}}, dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["run"]
    assert json.loads((dest / "control.json").read_text()) == {"key": "k"}
    assert (dest / "results.json").read_text() == "{}"
    with pytest.raises(plan.SweepError, match="exists already"):
        layout.publish({}, {}, dest)


# --- a tiny group, swept for real ------------------------------------------------------------------------

TINY = plan.Group("tiny", "tests", "optimizer", (
    plan.SweepRun("a", "tiny-fcn-mnist"),
    plan.SweepRun("b", "tiny-fcn-mnist", (("optimizer", "adam"),)),
    plan.SweepRun("c", "tiny-fcn-mnist-2epochs"),
    plan.SweepRun("d", "tiny-fcn-mnist", same_as="tiny/a"),
    # Fails when its data are loaded (batch larger than MNIST): the others must still finish.
    plan.SweepRun("e", "tiny-fcn-mnist", (("train_size", None), ("batch_size", 100000))),
    # Diverges (NaN at step 2): its attempt is recorded under results/failed/ and the report shows it.
    plan.SweepRun("f", "tiny-fcn-mnist", departures=(("learning_rate", 1e8),), why="a divergence to record"),
    # Departs from its preset's setting on purpose: trained with the departure, which is recorded.
    plan.SweepRun("g", "tiny-fcn-mnist", departures=(("learning_rate", 0.05),), why="the paper's rate diverges"),
))
OVERRIDES = ["--set", "trace_samples=3"]


class _Killed(Exception):
    pass


def _kill_before_spectra(line: str) -> None:
    if line.startswith("spectrum at epoch"):
        raise _Killed(line)


@pytest.fixture(scope="module")
def swept(data_dir, tmp_path_factory):
    """The tiny group swept twice: first with run b locked by a live process elsewhere and run c killed after
    training (before its spectra), then again after b's lock went stale."""
    root = tmp_path_factory.mktemp("sweep")
    roots = layout.Roots.checked(root / "results", root / "work")
    args = ["sweep", "tiny", "--results", str(roots.results), "--work", str(roots.work), "--data-dir", str(data_dir),
            "--no-progress"] + OVERRIDES
    logs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(plan.GROUPS, "tiny", TINY)
        mp.setenv("HSPEC_DATA_DIR", str(data_dir))
        c_cfg = plan.run_config(TINY.runs[2], config_lib.parse_assignments(OVERRIDES[1:]))
        with pytest.raises(_Killed):
            run.train_run(c_cfg, roots.workdir("tiny", "c"), progress=False, echo=_kill_before_spectra)
        lock = roots.lock("tiny--b")
        lock.path.parent.mkdir(parents=True)
        lock.path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t"}))
        states = {"b_locked": layout.run_state(roots, TINY, TINY.runs[1]),
                  "c_killed": layout.run_state(roots, TINY, TINY.runs[2])}
        mp.setattr("builtins.print", lambda *a, **k: logs.append(" ".join(map(str, a))))
        rc1 = main(args)
        first = list(logs)
        old = time.time() - 3600
        os.utime(lock.path, (old, old))
        mtime_a = (roots.published("tiny", "a") / "results.json").stat().st_mtime_ns
        rc2 = main(args)
        failures = sweep.sweep("controls", roots=roots, overrides={"trace_samples": "3"}, progress=False,
                               echo=logs.append, groups={"tiny": TINY, "controls": plan.GROUPS["controls"]})
    return {"roots": roots, "rc": (rc1, rc2), "first": "\n".join(first), "logs": "\n".join(logs),
            "states": states, "mtime_a": mtime_a, "control_failures": failures}


def test_sweep_publishes_finished_runs_and_reports_failures(swept):
    roots = swept["roots"]
    assert swept["rc"] == (1, 1)  # runs e and f fail both times; the others finish
    assert "[tiny/e] FAILED: ConfigError: batch_size=100000 exceeds the 60000 training examples" in swept["logs"]
    assert "[tiny/f] FAILED: NonFiniteLossError: training loss became nan at epoch 1, step 2" in swept["logs"]
    assert "[tiny/b] being worked on by another process, held by pid 1 on host elsewhere" in swept["first"]
    assert swept["states"] == {"b_locked": "running", "c_killed": "partial (checkpoint of epoch 2)"}
    published = sorted(p.name for p in (roots.results / "tiny").iterdir())
    assert published == ["a", "b", "c", "g"]  # d is a's result, e and f failed
    for name in published:
        where = roots.published("tiny", name)
        files = sorted(str(p.relative_to(where)) for p in where.rglob("*") if p.is_file())
        expected = ["config.json", "control.json", "metrics.jsonl", "overrides.json", "results.json", "spectrum.png",
                    "table.txt"]
        assert files == sorted(expected + (["epochs/1/results.json", "epochs/1/spectrum.png"] if name == "c" else []))
        assert (where / "results.json").read_bytes() == (roots.workdir("tiny", name) / "results.json").read_bytes()
        cfg = json.loads((where / "config.json").read_text())
        assert cfg["init_control"] is False and cfg["trace_samples"] == 3 and cfg["data_dir"] is None
        departs = {"learning_rate": 0.05} if name == "g" else {}
        assert json.loads((where / "overrides.json").read_text()) == {"trace_samples": 3, **departs}
        assert (cfg["learning_rate"] == 0.05) == (name == "g")
    assert not [p for p in roots.results.rglob("*") if "checkpoints" in p.name or p.name.startswith(".staging")]
    listing = sweep.listing(roots, "tiny", {"trace_samples": "3"}, groups={"tiny": TINY, **plan.GROUPS})
    assert 'done (overrides {"trace_samples": 3}) (= tiny/a)' in listing


def test_list_reports_published_controls_as_published_whatever_the_set(swept):
    """Issue 27, case 8: a published run's control is the one its control.json names, whatever --set is given (as
    the run itself is listed as done); --set changes only the controls of runs still to be done."""
    roots, groups = swept["roots"], {"tiny": TINY, "controls": plan.GROUPS["controls"]}
    pointed = {json.loads((roots.published("tiny", run) / "control.json").read_text())["key"] for run in "abcg"}
    for overrides in ({"trace_samples": "3"}, {}, {"k": "5", "seed": "7"}):
        runs = sweep.listing(roots, "tiny", overrides, groups=groups).splitlines()[1:]
        assert all("[control done]" in line for line in runs if " done" in line), runs
        controls = sweep.listing(roots, "controls", overrides, groups=groups).splitlines()
        done = {line.split()[0] for line in controls if line.endswith("done")}
        # The sweep's own overrides also find e's control (computed before its data failed); others only those
        # of the published runs: the controls of e and f (not published) for these overrides are missing.
        assert done >= pointed and (overrides == {"trace_samples": "3"} or done == pointed), (overrides, controls)


def test_a_diverged_run_is_recorded_once_per_overrides_and_reported(swept):
    roots = swept["roots"]
    path = roots.failure("tiny", "f")
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]  # one file, no temporary left
    (attempt,) = layout.read_failures(path)  # the second sweep's attempt replaced the first's
    assert attempt["overrides"] == {"learning_rate": 1e8, "trace_samples": 3}
    assert (attempt["error"], attempt["epoch"], attempt["step"], attempt["loss"]) == ("NonFiniteLossError", 1, 2, "nan")
    assert attempt["last_finished_epoch"]["epoch"] == 0 and "time_s" not in attempt["last_finished_epoch"]
    assert "/" not in json.dumps(attempt)  # no paths: the report built from it is portable
    assert f"[1 diverged attempt(s) in {path}]" in layout.run_state(roots, TINY, TINY.runs[5])
    layout.record_failure(path, dict(attempt, overrides={"learning_rate": 10.0}))
    assert [a["overrides"] for a in layout.read_failures(path)] == [{"learning_rate": 10.0}, attempt["overrides"]]

    from train import report
    row, where = report.rows.run_row(roots.results, TINY, TINY.runs[5])
    assert (row.result, row.failed, where) == (None, True, None)
    assert row.notes[1].startswith('diverged with learning_rate=100000000.0, trace_samples=3: the training loss '
                                   'became nan at epoch 1, step 2; after epoch 0 the training loss was')
    assert report.table_row(row).startswith("| f | failed |")
    done, _ = report.rows.run_row(roots.results, TINY, TINY.runs[6])
    assert not done.failed and "the paper's rate diverges" in done.notes
    assert 'sweep overrides: learning_rate=0.05, trace_samples=3' in done.notes[0]


def test_a_run_published_with_other_overrides_is_kept_and_reported(swept):
    roots, spec = swept["roots"], TINY.runs[0]
    before = (roots.published("tiny", "a") / "results.json").read_bytes()
    message = r"published with overrides \{'trace_samples': 3\}, this sweep asks \{\}"
    with pytest.raises(plan.SweepError, match=message):
        sweep.sweep_run(roots, TINY, spec, plan.run_config(spec, {}), progress=False, echo=lambda s: None)
    assert (roots.published("tiny", "a") / "results.json").read_bytes() == before


def test_second_sweep_skips_done_runs_and_takes_over_a_stale_lock(swept):
    logs = swept["logs"].split(swept["first"], 1)[1]
    assert "[tiny/a] done (in results); skipped" in logs and "[tiny/b] training in" in logs
    assert (swept["roots"].published("tiny", "a") / "results.json").stat().st_mtime_ns == swept["mtime_a"]


def test_killed_run_resumes_without_training_again(swept):
    first = swept["first"]
    assert "[tiny/c] resuming from its checkpoints" in first and "[tiny/c] epoch 1/2" not in first
    metrics = (swept["roots"].published("tiny", "c") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [0, 1, 2]


def test_one_control_per_key_equals_the_epoch0_checkpoint(swept, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("HSPEC_DATA_DIR", str(data_dir))
    roots = swept["roots"]
    pointers = {n: json.loads((roots.published("tiny", n) / "control.json").read_text()) for n in "abc"}
    assert len({p["key"] for p in pointers.values()}) == 1  # a, b, c differ only in training
    where = roots.published("tiny", "a") / pointers["a"]["path"]
    assert where.resolve().parent == (roots.results / "controls").resolve()
    controls = sorted(p.name for p in (roots.results / "controls").iterdir())
    assert len(controls) == 2  # a/b/c's and e's (full MNIST): e's control was computed before e failed
    control = record.load(where / "results.json")
    assert control.setting["trained"] is False and control.setting["preset"] == "init-control"
    assert json.loads((where / "key.json").read_text())["fields"]["trace_samples"] == 3
    # Recomputed another way: the run's own epoch-0 checkpoint, restored and measured.
    again = run.spectrum_of_checkpoint(roots.workdir("tiny", "a"), epoch=0, out=tmp_path / "e0", echo=lambda s: None)
    np.testing.assert_allclose(control.eigenvalues, again.eigenvalues, rtol=1e-6)
    first_line = json.loads((roots.published("tiny", "a") / "metrics.jsonl").read_text().splitlines()[0])
    assert control.metrics["test_acc"] == first_line["test_acc"]
    assert swept["control_failures"] == [] and "skipped" in swept["logs"].rsplit("[tiny/e]", 1)[1]


# --- sensitivity ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sensitivity(swept, data_dir):
    roots = swept["roots"]
    args = ["sensitivity", "--run", str(roots.workdir("tiny", "a")), "--results", str(roots.results), "--name", "t",
            "--work", str(roots.work),
            "--ks", "4,10", "--samples", "64,128", "--starts", "2", "--draws", "2", "--multipliers", "1,2,3", "--no-progress",
            "--data-dir", str(data_dir)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HSPEC_DATA_DIR", str(data_dir))
        assert main(args) == 0
        out = roots.results / "sensitivity" / "t"
        mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        assert main(args) == 0  # resumes: every file exists, nothing is recomputed
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    docs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return roots, docs


def test_sensitivity_k_prefixes_refit_one_converged_spectrum(sensitivity):
    roots, docs = sensitivity
    base = np.asarray(docs["base"]["trained"]["eigenvalues"])
    # The base run is the run's own spectrum (same key, same sample, same steps).
    own = record.load(roots.published("tiny", "a") / "results.json")
    np.testing.assert_allclose(base, own.eigenvalues, rtol=1e-6)
    for entry in docs["k_prefix"]["trained"]:
        k = entry["k"]
        top = base[:k]
        beta = 1 + k / np.sum(np.log(top / top[-1]))  # the MLE with the cutoff at λ_K, by hand
        assert entry["fit"]["beta"] == pytest.approx(beta, rel=1e-9)
        assert entry["fit"]["s"] == pytest.approx(1 / (beta - 1), rel=1e-9)
    assert [e["k"] for e in docs["k_prefix"]["init"]] == [4, 10]
    control_key = json.loads((roots.published("tiny", "a") / "control.json").read_text())["key"]
    control = record.load(roots.results / "controls" / control_key / "results.json")
    np.testing.assert_allclose(docs["base"]["init"]["eigenvalues"], control.eigenvalues, rtol=1e-6)


def test_sensitivity_paper_procedure_is_one_truncated_lanczos_run(sensitivity, data_dir, monkeypatch):
    monkeypatch.setenv("HSPEC_DATA_DIR", str(data_dir))
    roots, docs = sensitivity
    entries = docs["paper_procedure"]["trained"]
    assert [e["m"] for e in entries] == [10, 20, 30]
    # Recomputed another way: a separate Lanczos run of m = 10 steps from the same start.
    model, exp = run.load_model(roots.workdir("tiny", "a"))
    loss, params = loss_fn_from_model(model)
    op = hspec.hessian_operator(loss, params, batches=hessian_batches(exp.hessian.x, exp.hessian.y, 128))
    direct = hspec.lanczos(op, 10, key=exp.keys.lanczos_start).ritz_values[0]
    np.testing.assert_allclose(entries[0]["ritz_values"], direct, atol=1e-4 * direct[0])
    assert entries[0]["num_ritz_positive"] == int(np.sum(direct > 0))
    base = np.asarray(docs["base"]["trained"]["eigenvalues"])
    err = np.abs(np.asarray(entries[-1]["ritz_values"]) - base).max() / base[0]
    assert entries[-1]["max_rel_error"] == pytest.approx(err, rel=1e-9)
    dropped = [e for e in entries + docs["paper_procedure"]["init"] if "positive_only" in e]
    assert dropped  # m = K = 10 steps leave non-positive Ritz values among the top K
    for e in entries + docs["paper_procedure"]["init"]:  # the positive Ritz values alone, fitted by hand
        pos = np.asarray(e["ritz_values"])[np.asarray(e["ritz_values"]) > 0]
        if len(pos) == 10:
            assert "positive_only" not in e
            continue
        assert e["positive_only"]["k"] == len(pos)
        beta = 1 + len(pos) / np.sum(np.log(pos / pos[-1]))
        assert e["positive_only"]["fit"]["beta"] == pytest.approx(beta, rel=1e-9)


def test_sensitivity_samples_and_starts(sensitivity):
    _, docs = sensitivity
    samples = {e["hessian_samples"]: e for e in docs["hessian_samples"]["trained"]}
    assert samples[128]["fit"] == docs["k_prefix"]["trained"][-1]["fit"]  # the run's own sample
    assert samples[64]["num_converged"] == 10 and samples[64]["fit"]["s"] != samples[128]["fit"]["s"]
    starts = docs["lanczos_starts"]["trained"]
    assert [s["key"] for s in starts] == ["lanczos_start", "fold_in(lanczos_start, 1)"]
    # Another start vector converges to the same top eigenvalues.
    base = np.asarray(docs["base"]["trained"]["eigenvalues"])
    np.testing.assert_allclose(starts[1]["eigenvalues"], base, rtol=1e-3)
    assert docs["k_prefix"]["provenance"]["run"].endswith("tiny/a")


def test_sensitivity_hessian_draws_are_other_samples_of_the_same_size(sensitivity, data_dir, monkeypatch):
    """Draw 1 is the top K on 128 examples drawn with fold_in(hessian_sample, 1): recomputed here from that sample
    with hspec directly; draw 0 is the run's own spectrum."""
    import jax

    from train import data

    monkeypatch.setenv("HSPEC_DATA_DIR", str(data_dir))
    roots, docs = sensitivity
    draws = docs["hessian_draws"]["trained"]
    assert [d["key"] for d in draws] == ["hessian_sample", "fold_in(hessian_sample, 1)"]
    assert draws[0]["fit"] == docs["k_prefix"]["trained"][-1]["fit"]
    model, exp = run.load_model(roots.workdir("tiny", "a"))
    sample = data.hessian_sample(exp.ds, 128, jax.random.fold_in(exp.keys.hessian_sample, 1))
    assert not np.array_equal(sample.indices, exp.hessian.indices)  # another sample: the test can fail
    loss, params = loss_fn_from_model(model)
    op = hspec.hessian_operator(loss, params, batches=hessian_batches(sample.x, sample.y, 128))
    direct = hspec.top_eigenvalues(op, k=10, key=jax.random.key(123), strict=True).eigenvalues
    np.testing.assert_allclose(draws[1]["eigenvalues"], direct, rtol=1e-6)
    assert draws[1]["fit"]["d_ks"] == pytest.approx(hspec.power_law_verdict(direct, 10).fit.d_ks, rel=1e-4)


def test_a_killed_sensitivity_study_resumes_losing_only_the_spectrum_in_progress(swept, data_dir, monkeypatch,
                                                                                  tmp_path):
    from train.study import sensitivity as sens

    monkeypatch.setenv("HSPEC_DATA_DIR", str(data_dir))
    run_dir = swept["roots"].workdir("tiny", "a")
    spec = sens.SensitivitySpec(ks=(10,), samples=(128,), starts=2, multipliers=(1.0,), studies=("lanczos_starts",))
    real, calls = sens.converged_top, []

    def killed_at_the_fourth(*args, **kwargs):  # base trained, base init, start 1 trained, start 1 init: killed
        calls.append(kwargs["state_dir"])  # where its Lanczos state is kept
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sens, "converged_top", killed_at_the_fourth)
    kw = dict(results=tmp_path / "results", work=tmp_path / "work", name="t", spec=spec, progress=False,
              echo=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        sens.sensitivity(run_dir, **kw)
    out, parts = tmp_path / "results" / "sensitivity" / "t", tmp_path / "work" / "sensitivity" / "t"
    assert sorted(p.name for p in out.iterdir()) == ["base.json"]  # no half-written study under results/
    assert [p.relative_to(parts).as_posix() for p in parts.rglob("*.json")] == ["lanczos_starts-trained/start1.json"]
    assert calls[:3] == [parts / "base-trained.lanczos", parts / "base-init.lanczos",
                         parts / "lanczos_starts-trained" / "start1.lanczos"]
    calls.clear()
    sens.sensitivity(run_dir, **kw)
    assert calls == [parts / "lanczos_starts-init" / "start1.lanczos"]  # only the spectrum in progress, again
    monkeypatch.setattr(sens, "converged_top", real)
    sens.sensitivity(run_dir, **dict(kw, results=tmp_path / "r2", work=tmp_path / "w2"))
    uninterrupted = tmp_path / "r2" / "sensitivity" / "t" / "lanczos_starts.json"
    assert (out / "lanczos_starts.json").read_text() == uninterrupted.read_text()


def test_sensitivity_refuses_training_fields(swept, capsys):
    rc = main(["sensitivity", "--run", str(swept["roots"].workdir("tiny", "a")), "--set", "epochs=3"])
    assert rc == 2 and "changes only the spectrum fields" in capsys.readouterr().err


def test_a_spectrum_killed_in_lanczos_resumes_from_its_saved_krylov_state(swept, tmp_path, data_dir, monkeypatch):
    """Killed at the 40th Hessian-vector product (through the operator's public matvec, which each Lanczos step
    calls once), the same spectrum started again continues from the saved Krylov state (it takes fewer products)
    and gives the same eigenvalues as an uninterrupted run; the state is removed once it is done."""
    import hspec
    from hspec import krylov

    monkeypatch.setenv("HSPEC_DATA_DIR", str(data_dir))
    monkeypatch.setattr(krylov, "CHECKPOINT_EVERY_S", 0.0)
    work = swept["roots"].workdir("tiny", "a")
    quiet = dict(epoch=0, echo=lambda s: None)
    real_matvec, products = hspec.HessianOperator.matvec, []

    def matvec(self, v):
        products.append(1)
        if len(products) == 40 and kill:
            raise KeyboardInterrupt
        return real_matvec(self, v)

    monkeypatch.setattr(hspec.HessianOperator, "matvec", matvec)
    kill = False
    plain = run.spectrum_of_checkpoint(work, out=tmp_path / "plain", **quiet)
    total, products[:] = len(products), []
    kill = True
    with pytest.raises(KeyboardInterrupt):
        run.spectrum_of_checkpoint(work, out=tmp_path / "resumed", **quiet)
    assert (tmp_path / "resumed" / rundir.LANCZOS_STATE / "state.npz").is_file()
    products[:], kill = [], False
    again = run.spectrum_of_checkpoint(work, out=tmp_path / "resumed", **quiet)
    resumed = again.timing["lanczos_resumed_steps"]
    # Resumed at the last save before the kill; one more product checks the saved state's α_0 against the operator.
    assert 32 <= resumed < 40 and len(products) == total - resumed + 1
    np.testing.assert_array_equal(again.eigenvalues, plain.eigenvalues)
    # The record counts the killed process's saved steps and their seconds in the Lanczos time.
    timing = again.timing
    assert 0 < timing["lanczos_resumed_s"] < timing["lanczos_s"] and "lanczos_resumed_steps" not in plain.timing
    assert timing["spectrum_total_s"] >= timing["measure_s"] >= timing["lanczos_s"]  # every total counts them
    assert not (tmp_path / "resumed" / rundir.LANCZOS_STATE).exists()


def test_list_names_the_spectra_in_progress_and_their_saved_lanczos_step(tmp_path):
    from hspec.krylov import KrylovStore

    def saved_at(where, steps):
        V = np.zeros((1, 40, 5))
        store = KrylovStore(where / rundir.LANCZOS_STATE, every_s=0)
        store.save((V, np.ones((1, 40)), np.ones((1, 40)), None), steps)

    saved_at(tmp_path / "epochs" / "10", 17)
    saved_at(tmp_path, 33)
    assert layout.lanczos_progress(tmp_path) == ("; spectrum of epoch 10 saved at Lanczos step 17"
                                                 "; final spectrum saved at Lanczos step 33")
    assert layout.lanczos_progress(tmp_path / "epochs") == ""


def test_a_spectrums_total_time_counts_the_seconds_of_the_steps_it_resumed():
    """spectrum_total_s is this process's seconds since t0 plus lanczos_resumed_s: 100 s resumed, ~0 s here."""
    from train import measure

    m = measure.Measurement({}, "", {}, {}, None, None, {"lanczos_s": 100.5, "lanczos_resumed_s": 100.0})
    total = measure.timing_since(m, time.perf_counter())["spectrum_total_s"]
    assert 100.0 <= total < 101.0
    assert measure.timing_since(dataclasses.replace(m, timing={}), time.perf_counter())["spectrum_total_s"] < 1.0
