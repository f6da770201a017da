"""The Hessian-sample study (train.sample_size) on a tiny trained network: its pieces are the run's own spectrum
and the sample's curvature carriers, a resumed study writes the same series, and a foreign Krylov state is refused."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import hspec
from hspec.curvature import CurvatureCarriers
from train import record, run, sample_size


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    from train import presets

    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = dataclasses.replace(presets.get("tiny-fcn-mnist"), data_dir=str(data_dir))
    run.train_run(cfg, out, progress=False, echo=lambda *a: None)
    return out


SPEC = sample_size.StudySpec(sizes=(64, 128, 512), draws=2, draws_up_to=128, draws_from=64)


def _study(tiny_run, tmp_path, name="s"):
    return sample_size.Study(tiny_run, None, SPEC, tmp_path / "results", tmp_path / "work", name, echo=lambda *a: None)


def test_series_holds_the_runs_own_spectrum_and_each_samples_carriers(tiny_run, tmp_path):
    study = _study(tiny_run, tmp_path)
    assert [p.name for p in study.pieces] == [
        "trained-n64-d0", "trained-n128-d0", "trained-n512-d0", "trained-n64-d1", "trained-n128-d1",
        "init-n64-d0", "init-n128-d0", "init-n512-d0", "init-n64-d1", "init-n128-d1"]
    for label in ("trained", "init"):
        study.traces(label)
    doc = json.loads(sample_size.run_study(study, progress=False).read_text())
    pieces = {(p["state"], p["hessian_samples"], p["draw"]): p for p in doc["pieces"]}
    assert doc["pending"] == [] and len(pieces) == 10
    # Draw 0 at the run's own size (hessian_samples=128) is the run's own measurement.
    final = record.load(tiny_run / "results.json")
    np.testing.assert_allclose(pieces[("trained", 128, 0)]["eigenvalues"], final.spectrum["eigenvalues"], rtol=1e-6)
    init = record.load(tiny_run / "init" / "results.json")
    np.testing.assert_allclose(pieces[("init", 128, 0)]["eigenvalues"], init.spectrum["eigenvalues"], rtol=1e-6)
    # The whole training set is every row, draws differ, and each sample's carriers are its own traces'.
    np.testing.assert_array_equal(sample_size.sample_indices(study.exp, 512, 0), np.arange(512))
    assert not np.array_equal(sample_size.sample_indices(study.exp, 64, 0), sample_size.sample_indices(study.exp, 64, 1))
    t = study.traces("trained")
    idx = sample_size.sample_indices(study.exp, 64, 1)
    assert pieces[("trained", 64, 1)]["carriers"] == pytest.approx(CurvatureCarriers.of(t[idx]).to_dict())
    assert doc["whole_set"]["trained"] == pytest.approx(CurvatureCarriers.of(t).to_dict())
    for p in pieces.values():
        assert p["num_converged"] == 10 and p["fit"]["k"] == 10


def test_a_study_stopped_between_pieces_writes_the_same_series(tiny_run, tmp_path):
    whole = _study(tiny_run, tmp_path / "a")
    sample_size.run_study(whole, progress=False)
    first = _study(tiny_run, tmp_path / "b")
    first.pieces = first.pieces[:3]  # "killed" after three pieces
    sample_size.run_study(first, progress=False)
    assert len(json.loads((first.out / "series.json").read_text())["pieces"]) == 3
    resumed = _study(tiny_run, tmp_path / "b")
    sample_size.run_study(resumed, progress=False)
    a = json.loads((whole.out / "series.json").read_text())
    b = json.loads((resumed.out / "series.json").read_text())
    strip = lambda d: [{k: v for k, v in p.items() if k != "seconds"} for p in d["pieces"]]  # noqa: E731
    assert strip(a) == strip(b)


def test_a_krylov_state_of_another_piece_is_refused(tiny_run, tmp_path):
    study = _study(tiny_run, tmp_path)
    piece, other = sample_size.Piece("trained", 64, 0), sample_size.Piece("trained", 64, 1)
    st = study.states["trained"]
    idx = sample_size.sample_indices(study.exp, 64, 0)
    op = sample_size.piece_operator(study.exp, st, idx)
    # A state of piece `piece` that ran out of budget (so it is kept), moved to where `other` keeps its state.
    with pytest.raises(hspec.NotConvergedError):
        hspec.top_eigenvalues(op, k=10, key=study.exp.keys.lanczos_start, num_steps=12, max_steps=12, strict=True,
                              checkpoint_dir=study.work / f"{other.name}.lanczos",
                              checkpoint_identity=sample_size.krylov_identity(study.exp, st, piece, idx, None))
    with pytest.raises(hspec.KrylovStateError, match="delete"):
        study.compute(other, {}, progress=False)


def test_the_gpu_check_part_brings_back_pieces_that_the_local_study_takes_as_finished(tiny_run, tmp_path, data_dir):
    """benchmarks/gpu_check.sh hessian-sample, run here on the CPU at a tiny size: a piece staged with the run is not
    computed again (nor packed); the pieces it packs, unpacked into the local work folder, are the study's own (the
    same eigenvalues as a piece computed here), series.json lists them, and the study does not compute them again."""
    import os
    import subprocess
    import sys
    import tarfile

    from tests.conftest import REPO

    spec = lambda *sizes: sample_size.StudySpec(sizes=sizes, draws=1, states=("trained",))  # noqa: E731
    local = tmp_path / "work"
    staged = sample_size.Study(tiny_run, None, spec(64), tmp_path / "results", local, None, echo=lambda *a: None)
    sample_size.run_study(staged, progress=False)  # trained-n64-d0, finished here before the device run
    env = dict(os.environ, OUT=str(tmp_path / "out"), PY=sys.executable, HSPEC_DATA_DIR=str(data_dir),
               HS_RUN=str(tiny_run), HS_SIZES="128", HS_THEN="64", HS_STATES="trained", HS_STAGED=str(local),
               HS_WORK=str(tmp_path / "device-work"), HS_RESULTS=str(tmp_path / "device-results"), JAX_PLATFORMS="cpu")
    (tmp_path / "out").mkdir()
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "hessian-sample:300"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert "packed hessian-sample-results.tgz: 1 pieces" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("hessian-sample exit status 0") == 2  # the whole-set sizes, then the others
    assert "trained-n64-d0: top" not in done.stdout  # staged: skipped
    with tarfile.open(tmp_path / "out" / "hessian-sample-results.tgz") as tar:
        assert sorted(m.name.rsplit("/", 1)[-1] for m in tar.getmembers()) == ["gpu-log.txt", "trained-n128-d0.json"]
        tar.extractall(local, filter="data")
    study = sample_size.Study(tiny_run, None, spec(64, 128), tmp_path / "results", local, None, echo=lambda *a: None)
    assert {"trained-n64-d0", "trained-n128-d0"} <= set(study.finished())
    study.compute = lambda *a, **k: pytest.fail("a piece brought back from the device was computed again")
    doc = json.loads(sample_size.run_study(study, progress=False).read_text())
    assert [(p["state"], p["hessian_samples"]) for p in doc["pieces"]] == [("trained", 64), ("trained", 128)]
    here = sample_size.Study(tiny_run, None, spec(128), tmp_path / "r2", tmp_path / "w2", None, echo=lambda *a: None)
    mine = json.loads(sample_size.run_study(here, progress=False).read_text())
    assert doc["pieces"][1]["eigenvalues"] == mine["pieces"][0]["eigenvalues"]
