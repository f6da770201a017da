"""`python -m train`: listing, overrides, clear errors, a full tiny run checked against a dense Hessian,
the spectrum of a saved checkpoint, and a run killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from train import checkpoint as ckpt
from train import experiment, keys, loop, measure, presets, rundir
from train.__main__ import main

from tests.conftest import REPO
SETTING_KEYS = {"dataset", "model", "depth", "width", "optimizer", "batch_size", "epochs", "train_size", "labels",
                "label_noise", "trained", "seed", "k", "hessian_samples", "lanczos_steps", "max_steps"}
FIT_KEYS = {"beta", "sigma", "s", "d_ks", "d_crit", "is_power_law", "k", "xmin", "lsq_slope", "num_dropped",
            "num_positive", "positive_fit", "significance"}
METRIC_KEYS = {"train_loss", "train_acc", "test_loss", "test_acc"}


def _cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_presets(capsys):
    rc, out, _ = _cli(capsys, "--list-presets")
    assert rc == 0
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed == presets.names()
    for line in out.splitlines():  # each preset's K and whether it also pays for the control at initialisation
        cfg = presets.get(line.split()[0])
        assert line.split()[1] == f"K={cfg.k}" and ("+ init control" in line) == cfg.init_control


def test_overrides_in_all_three_spellings(capsys):
    rc, out, _ = _cli(capsys, "--show-config", "--preset", "tiny-fcn-mnist", "k=7", "--set", "seed=3",
                      "--batch-size", "32", "--spectrum-epochs=1")
    cfg = json.loads(out)
    assert rc == 0 and (cfg["k"], cfg["seed"], cfg["batch_size"], cfg["spectrum_epochs"]) == (7, 3, 32, [1])
    assert cfg["preset"] == "tiny-fcn-mnist" and cfg["width"] == 16


@pytest.mark.parametrize("args,fragments", [
    (["--preset", "nope"], ["unknown preset 'nope'", "tiny-fcn-mnist", "lenet-mnist-sgd"]),
    (["--show-config", "epoch=3"], ["unknown config field 'epoch'", "did you mean 'epochs'", "hessian_samples"]),
    (["--show-config", "--colour", "red"], ["unknown config field 'colour'", "learning_rate"]),
    (["--show-config", "k=ten"], ["'k' expects int", "'ten'"]),
    (["--show-config", "--preset", "tiny-fcn-mnist", "depth=1.5"], ["'depth' expects int or None", "'1.5'"]),
    (["--show-config", "stray"], ["'stray' is not of the form key=value"]),
    # A field set twice is refused in every spelling, naming the field and both values (issue 27, case 7).
    (["--show-config", "--set", "k=12", "--set", "k=8"], ["'k' is set twice", "k=12", "k=8"]),
    (["--show-config", "k=12", "--set", "k=8"], ["'k' is set twice", "k=12", "k=8"]),
    (["--show-config", "k=8", "--k", "12"], ["'k' is set twice", "k=12", "k=8"]),
    (["spectrum", "--checkpoint", "nowhere", "--set", "k=12", "k=8"], ["'k' is set twice", "k=12", "k=8"]),
])
def test_bad_input_is_one_clear_line(capsys, args, fragments):
    rc, _, err = _cli(capsys, *args)
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    for f in fragments:
        assert f in err


def test_data_dependent_errors(capsys, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("HSPEC_DATA_MIRROR", "http://127.0.0.1:9")  # a refusing host: no download here
    base = ["--preset", "tiny-fcn-mnist", "--no-progress", "--data-dir", data_dir]
    rc, _, err = _cli(capsys, *base, "--out", tmp_path / "a", "batch_size=1000")
    assert rc == 2 and "batch_size=1000 exceeds train_size=512" in err
    # The full Avila training split has 10,430 rows (SOURCES.md); only loading the data can tell.
    rc, _, err = _cli(capsys, *base, "--out", tmp_path / "a", "dataset=avila", "train_size=none", "batch_size=20000")
    assert rc == 2 and "batch_size=20000 exceeds the 10430 training examples of avila" in err
    rc, _, err = _cli(capsys, *base, "--out", tmp_path / "a", "train_size=70000")  # issue 27, case 6
    assert rc == 2 and err.count("\n") == 1
    assert "train_size=70000 exceeds the 60000 training examples of mnist; use train_size <= 60000" in err
    # FCN 784-2-10 has 784*2 + 2 + 2*10 + 10 = 1600 parameters.
    rc, _, err = _cli(capsys, *base, "--out", tmp_path / "b", "depth=1", "width=2", "hessian_samples=512", "k=2000",
                      "lanczos_steps=none")
    assert rc == 2 and "k=2000 exceeds the model's 1600 parameters" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _cli(capsys, "--preset", "tiny-fcn-mnist", "--data-dir", tmp_path / "empty", "--out", tmp_path / "c")
    assert rc == 2 and "mnist" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists(), "a run that failed before it started left its --out directory behind"
    (tmp_path / "file").write_text("x")
    rc, _, err = _cli(capsys, *base, "--out", tmp_path / "file" / "sub")
    assert rc == 2 and "cannot write to the output directory" in err
    rc, _, err = _cli(capsys, *base, "--out", tmp_path / "d", "--resume")
    assert rc == 2 and "holds no checkpoint to resume from" in err


@pytest.mark.parametrize("override,fragments", [
    ("k=1", ["k must be >= 2"]),
    ("trace_samples=1", ["trace_samples must be >= 2"]),
    ("lanczos_steps=10", ["lanczos_steps (10) must exceed k (10)"]),
    ("max_lanczos_steps=20", ["max_lanczos_steps (20) must be >= lanczos_steps (40)"]),
    ("lanczos_steps=none max_lanczos_steps=50", ["max_lanczos_steps=50 is below the 110 Lanczos steps"]),
    ("hessian_samples=600", ["hessian_samples=600 exceeds train_size=512"]),
    ("spectrum_epochs=3", ["spectrum_epochs [3] lie outside 1..epochs=1"]),
    # The tiny FCN has 784*16 + 16 + 16*16 + 16 + 16*10 + 10 = 13,002 parameters: the real limit comes first.
    ("k=20000", ["k=20000 exceeds the model's 13002 parameters", "use k <= 13002"]),
])
def test_every_bad_spectrum_field_is_refused_before_training(capsys, tmp_path, data_dir, override, fragments):
    out = tmp_path / "run"
    rc, stdout, err = _cli(capsys, "--preset", "tiny-fcn-mnist", "--data-dir", data_dir, "--out", out,
                           "--no-progress", *override.split())
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in err
    assert "epoch 1/" not in stdout and not out.exists()
    if override == "k=20000":
        assert "Gauss-Newton" not in err and "lanczos_steps" not in err


def test_full_disk_while_checkpointing_names_the_directory_and_resumes(capsys, tmp_path, data_dir, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    out = tmp_path / "run"
    real_save = ocp.Checkpointer.save

    def full_disk_at_epoch_2(self, path, *args, **kwargs):
        if str(path).endswith("epoch_00002"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, path, *args, **kwargs)

    args = ["--preset", "tiny-fcn-mnist", "--data-dir", data_dir, "--no-progress", "epochs=3", "init_control=false"]
    monkeypatch.setattr(ocp.Checkpointer, "save", full_disk_at_epoch_2)
    rc, _, err = _cli(capsys, *args, "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in ("No space left on device", str(out / "checkpoints"), "epoch_00001, is intact", "--resume"):
        assert fragment in err
    assert ckpt.list_epochs(out / "checkpoints") == [0, 1]
    assert [p.name for p in (out / "checkpoints").iterdir() if "tmp" in p.name] == []
    monkeypatch.setattr(ocp.Checkpointer, "save", real_save)
    rc, _, err = _cli(capsys, "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    assert ckpt.list_epochs(out / "checkpoints")[-1] == 3 and (out / "results.json").exists()


def _dense_hessian_eigenvalues(out: Path, data_dir) -> tuple[np.ndarray, float]:
    """Eigenvalues (descending) and trace of the float64 dense Hessian of the final network on the
    recorded Hessian sample, computed with jax.hessian on a raveled parameter vector."""
    from jax.flatten_util import ravel_pytree

    from train import config as C
    from train import data

    res = json.loads((out / "results.json").read_text())
    cfg = C.load_json(str(out / "config.json"))
    exp = experiment.build_experiment(cfg)
    assert not os.path.isabs(res["checkpoint"]) and "<data_dir>" in res["data"]["source"]
    state, _ = ckpt.restore(out / res["checkpoint"], exp.template)
    ds = data.apply_options(data.load("mnist", data_dir), train_size=cfg.train_size,
                            key=keys.run_keys(cfg.seed).data_options)
    idx = np.asarray(res["hessian_sample"]["indices"])
    x, y = ds.x_train[idx].astype(np.float64), ds.y_train[idx]
    with jax.enable_x64():
        params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), state[0])
        flat, unravel = ravel_pytree(params64)

        def loss(v):
            model = loop.merge(exp.model_defs.eval_def, unravel(v), state[1])
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        h = np.asarray(jax.jit(jax.hessian(loss))(flat))
    return np.linalg.eigvalsh(h)[::-1], float(np.trace(h))


def _assert_fit_recomputes(fit: dict, verdict: str, eig: np.ndarray) -> None:
    """The fit block, recomputed from the written eigenvalues (METHOD.md §3), on whichever path it took."""
    k = len(eig)
    np.testing.assert_allclose(fit["d_crit"], 1.36 / math.sqrt(k), rtol=1e-12)
    positive = eig[eig > 0]
    assert fit["num_positive"] == len(positive)
    if len(positive) == k:  # defined: the MLE over all K
        np.testing.assert_allclose(fit["beta"], 1 + k / np.sum(np.log(eig / eig[-1])), rtol=1e-9)
        assert fit["positive_fit"] is None and fit["is_power_law"] == (fit["d_ks"] < fit["d_crit"])
        return
    # Undefined: the same keys, numbers null, no power law, the fit over the positive values beside it.
    assert all(fit[key] is None for key in ("beta", "sigma", "s", "d_ks", "xmin", "lsq_slope"))
    assert fit["is_power_law"] is False and verdict.startswith("no power law (non-positive eigenvalues")
    if len(positive) >= 2:
        want = 1 + len(positive) / np.sum(np.log(positive / positive[-1]))
        np.testing.assert_allclose(fit["positive_fit"]["beta"], want, rtol=1e-9)


def test_tiny_run_writes_every_field_and_matches_the_dense_hessian(capsys, tmp_path, data_dir):
    out = tmp_path / "run"
    rc, stdout, err = _cli(capsys, "--preset", "tiny-fcn-mnist-2epochs", "--out", out, "--data-dir", data_dir,
                           "--no-progress", "depth=1", "width=4")
    assert rc == 0, err
    assert "verdict" in stdout and "init" in stdout and "final" in stdout  # the printed table
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lanczos_steps"] == 40 and cfg["learning_rate"] == 0.1 and cfg["width"] == 4
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    for where, epoch, trained in ((out, 2, True), (out / "init", 0, False), (out / "epochs" / "1", 1, True)):
        res = json.loads((where / "results.json").read_text())
        assert SETTING_KEYS <= set(res["setting"]) and FIT_KEYS == set(res["fit"])
        assert res["schema_version"] == 2 and res["keys"]["streams"]["lanczos_start"] == 5
        assert METRIC_KEYS <= set(res["metrics"]) and {"lambda_max", "trace"} <= set(res["sharpness"])
        assert {"verdict", "eigengap_fit", "timing", "hspec_version", "spectrum"} <= set(res)
        # 512 MNIST labels: near-uniform over 10 classes, so their entropy lies just under ln 10.
        assert math.log(10) - 0.05 < res["data"]["train_label_entropy"] <= math.log(10)
        if jax.default_backend() == "cpu":  # the device that measured, without the host's name
            assert res["timing"]["device"] == f"cpu ({os.cpu_count()} cores, {measure.cpu_model()})"
        s = res["setting"]
        assert (s["trained"], s["epochs"], s["labels"], s["train_size"], s["k"]) == (trained, epoch, "clean", 512, 10)
        assert s["lanczos_steps"] == res["spectrum"]["lanczos_steps"] >= s["lanczos_steps_requested"] == 40
        assert res["metrics"] == {k: metrics[epoch][k] for k in METRIC_KEYS}
        eig = np.asarray(res["spectrum"]["eigenvalues"])
        assert len(eig) == 10 and np.all(np.diff(eig) <= 0)
        assert (where / "spectrum.png").stat().st_size > 1000
        _assert_fit_recomputes(res["fit"], res["verdict"], eig)
    final = json.loads((out / "results.json").read_text())
    dense, trace = _dense_hessian_eigenvalues(out, data_dir)
    np.testing.assert_allclose(final["spectrum"]["eigenvalues"], dense[:10], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(final["sharpness"]["lambda_max"], dense[0], rtol=2e-4)
    assert abs(final["sharpness"]["trace"] - trace) <= 5 * final["sharpness"]["trace_stderr"] + 1e-3 * abs(trace)

    # The same command works on any saved checkpoint; it never overwrites, and corruption is named.
    rc, _, err = _cli(capsys, "spectrum", "--checkpoint", out, "--epoch", "1", "--out", tmp_path / "s1")
    assert rc == 0, err
    again = json.loads((tmp_path / "s1" / "results.json").read_text())
    ref = json.loads((out / "epochs" / "1" / "results.json").read_text())
    assert again["spectrum"]["eigenvalues"] == ref["spectrum"]["eigenvalues"] and again["setting"] == ref["setting"]
    rc, _, err = _cli(capsys, "spectrum", "--checkpoint", out, "--epoch", "1", "--out", tmp_path / "s1")
    assert rc == 2 and "not overwritten" in err
    rc, _, err = _cli(capsys, "spectrum", "--checkpoint", out, "--epoch", "1", "epochs=9")
    assert rc == 2 and "can change only" in err
    rc, _, err = _cli(capsys, "--preset", "tiny-fcn-mnist-2epochs", "--out", out, "--data-dir", data_dir)
    assert rc == 2 and "already holds a run" in err
    rc, _, err = _cli(capsys, "--out", out, "--resume", "seed=5")
    assert rc == 2 and "seed: run has 0, asked 5" in err
    meta_file = out / "checkpoints" / "epoch_00001" / "meta" / "metadata"
    meta_file.write_text(meta_file.read_text().replace('"digest": "', '"digest": "0'))
    rc, _, err = _cli(capsys, "spectrum", "--checkpoint", out / "checkpoints" / "epoch_00001", "--out", tmp_path / "s2")
    assert rc == 2 and "epoch_00001 is corrupted" in err


def test_killed_run_resumes_to_the_uninterrupted_result(capsys, tmp_path, data_dir):
    args = ["--preset", "tiny-fcn-mnist", "--data-dir", data_dir, "--no-progress", "epochs=15", "init_control=false"]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "train", *map(str, args), "--out", str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not ckpt.epoch_path(killed / "checkpoints", 2).exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ckpt.list_epochs(killed / "checkpoints")
    assert done[-1] < 15 and not (killed / "results.json").exists(), "the run ended before it could be killed"

    rc, _, err = _cli(capsys, "--out", killed, "--resume", "--no-progress")
    assert rc == 0, err
    rc, _, err = _cli(capsys, *args, "--out", tmp_path / "straight")
    assert rc == 0, err
    digest = [ckpt.read_meta(ckpt.epoch_path(d / "checkpoints", 15))["digest"] for d in (killed, tmp_path / "straight")]
    assert digest[0] == digest[1]
    res = [json.loads((d / "results.json").read_text()) for d in (killed, tmp_path / "straight")]
    assert res[0]["spectrum"]["eigenvalues"] == res[1]["spectrum"]["eigenvalues"]
    assert res[0]["metrics"] == res[1]["metrics"]


def test_unconverged_spectrum_exits_4_and_a_larger_budget_continues_it(capsys, tmp_path, data_dir):
    args = ["--preset", "tiny-fcn-mnist", "--data-dir", data_dir, "--no-progress", "epochs=1", "init_control=false",
            "k=40", "lanczos_steps=45", "trace_samples=2"]
    rc, _, err = _cli(capsys, *args, "max_lanczos_steps=45", "--out", tmp_path / "short")
    assert rc == 4 and "only" in err and "after 45 Lanczos steps" in err and "Traceback" not in err
    assert "--resume --set max_lanczos_steps=N with N above the 45 steps taken" in err
    assert (tmp_path / "short" / rundir.LANCZOS_STATE).is_dir()  # the 45 steps are kept
    rc, _, err = _cli(capsys, "--out", tmp_path / "short", "--resume", "--no-progress", "max_lanczos_steps=400")
    assert rc == 0, err
    rc, _, err = _cli(capsys, *args, "max_lanczos_steps=400", "--out", tmp_path / "straight")
    assert rc == 0, err
    res = [json.loads((d / "results.json").read_text()) for d in (tmp_path / "short", tmp_path / "straight")]
    assert res[0]["spectrum"]["eigenvalues"] == res[1]["spectrum"]["eigenvalues"]


def test_spectrum_that_does_not_converge_exits_4_with_the_hint_and_says_where_it_wrote(capsys, tmp_path, data_dir):
    """Issue 27, cases 6, 10 and 13: `spectrum` gives training's status 4 and --set hint, continues from the kept
    Lanczos steps, takes --no-progress, and prints where its results went."""
    run = tmp_path / "run"
    rc, _, err = _cli(capsys, "--preset", "tiny-fcn-mnist", "--data-dir", data_dir, "--no-progress", "--out", run,
                      "epochs=1", "init_control=false", "k=2", "lanczos_steps=10", "trace_samples=2")
    assert rc == 0, err
    spectrum = ["spectrum", "--checkpoint", run, "--out", tmp_path / "s", "--no-progress", "k=40", "lanczos_steps=45"]
    rc, out, err = _cli(capsys, *spectrum, "max_lanczos_steps=45")
    assert rc == 4 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "rerun this command with --set max_lanczos_steps=N with N above the 45 steps taken" in err
    rc, out, err = _cli(capsys, *spectrum, "max_lanczos_steps=400")
    assert rc == 0 and err == "", err  # no progress bar
    assert f"wrote {tmp_path / 's' / 'results.json'}" in out


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io
    import sys

    from train import progress_wanted

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_wanted(False) and not progress_wanted(True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert not progress_wanted(False)


def test_a_damaged_krylov_state_is_an_error_line_with_status_2():
    """hspec.KrylovStateError, raised alone (spectrum, sensitivity) or as the cause of a run's SpectrumError."""
    import hspec
    from train.exits import exit_status
    from train.run import SpectrumError

    damaged = hspec.KrylovStateError("the Krylov state in x cannot be used: ...; delete x to start this spectrum afresh")
    wrapped = SpectrumError("the spectrum of final (epoch 1) failed")
    wrapped.__cause__ = damaged
    assert exit_status(damaged) == exit_status(wrapped) == 2
