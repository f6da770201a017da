"""The result record: the same keys whether the fit is defined or not, and a lossless JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import hspec
from train import record


def _record(eigenvalues: np.ndarray, k: int) -> record.SpectrumResult:
    verdict = hspec.power_law_verdict(eigenvalues, k)
    return record.SpectrumResult(
        setting={"dataset": "mnist", "k": k, "epochs": 0, "max_steps": None, "trained": False},
        fit=record.fit_block(verdict, 0.05), verdict=verdict.verdict,
        spectrum={"eigenvalues": eigenvalues[:k], "lanczos_steps": 3 * k},
        sharpness={"lambda_max": float(eigenvalues[0]), "trace": 1.0 / 3.0, "trace_stderr": float("nan")},
        eigengap_fit=None, metrics={"test_acc": 0.5, "test_loss": 2.0}, timing={"lanczos_s": 0.1},
        hessian_sample={"size": 10, "indices": np.arange(10)}, data={"source": "test"}, num_params=1234,
        checkpoint=None, hspec_version=hspec.__version__, keys={"seed": 0})


ZIPF = 1.0 / np.arange(1, 101, dtype=np.float64)


def test_defined_and_undefined_fits_have_the_same_keys():
    defined = _record(ZIPF, 100)
    with_negatives = _record(np.concatenate([ZIPF[:90], -ZIPF[:10]]), 100)
    assert set(defined.fit) == set(with_negatives.fit) == set(record.FIT_KEYS)
    # Defined: the MLE of METHOD.md §3, beta = 1 + K / sum ln(lambda_i / lambda_K).
    assert defined.fit["beta"] == pytest.approx(1 + 100 / np.sum(np.log(ZIPF / ZIPF[-1])), rel=1e-12)
    assert defined.fit["num_positive"] == 100 and defined.fit["positive_fit"] is None
    # Undefined: numeric fields null, is_power_law stays a bool (false), the positive fit beside it.
    assert all(with_negatives.fit[key] is None for key in ("beta", "sigma", "s", "d_ks", "xmin", "lsq_slope"))
    assert with_negatives.fit["is_power_law"] is False and with_negatives.is_power_law is False
    assert with_negatives.fit["d_crit"] == pytest.approx(1.36 / 10, rel=1e-12)
    assert with_negatives.fit["num_positive"] == 90
    pos = ZIPF[:90]
    assert with_negatives.fit["positive_fit"]["beta"] == pytest.approx(1 + 90 / np.sum(np.log(pos / pos[-1])))


@pytest.mark.parametrize("values", [ZIPF, np.concatenate([ZIPF[:90], -ZIPF[:10]])])
def test_json_round_trip_is_lossless(tmp_path, values):
    rec = _record(values, 100)
    record.save(rec, tmp_path / "results.json")
    back = record.load(tmp_path / "results.json")
    assert back.to_json() == rec.to_json()
    assert back.eigenvalues.tolist() == values[:100].tolist()  # full float64 precision
    assert back.sharpness["trace_stderr"] is None  # NaN is written as null
    assert json.loads((tmp_path / "results.json").read_text())["schema_version"] == record.SCHEMA_VERSION


def test_an_older_schema_loads_with_the_missing_fields_null():
    old = _record(ZIPF, 100).to_json()
    old.pop("schema_version"), old.pop("keys")
    for key in ("xmin", "lsq_slope", "num_dropped", "num_positive", "positive_fit"):
        old["fit"].pop(key)
    back = record.SpectrumResult.from_json(old)
    assert back.schema_version == 1 and back.keys is None
    assert set(back.fit) == set(record.FIT_KEYS) and back.fit["xmin"] is None
    assert back.fit["beta"] == old["fit"]["beta"]


def test_a_newer_schema_or_another_file_is_refused():
    newer = dict(_record(ZIPF, 100).to_json(), schema_version=record.SCHEMA_VERSION + 1)
    with pytest.raises(ValueError, match="upgrade hspec"):
        record.SpectrumResult.from_json(newer)
    with pytest.raises(ValueError, match="not a results.json"):
        record.SpectrumResult.from_json({"setting": {}})


def test_verdict_table_shows_both_paths():
    table = record.verdict_table([("final", _record(ZIPF, 100)),
                                  ("init", _record(np.concatenate([ZIPF[:90], -ZIPF[:10]]), 100))])
    final, init = table.splitlines()[2:]
    fit = hspec.fit_power_law(ZIPF)
    assert f"{fit.d_ks:.4f}" in final and f"{fit.s:.3f}" in final and "50.00%" in final
    assert init.split()[2] == "-" and "non-positive eigenvalues among the top K: 10 of 100" in init


def test_a_network_that_did_not_learn_is_named_under_the_verdict_table_and_in_the_sweep_list(tmp_path):
    import dataclasses

    from train import sweep

    base = _record(ZIPF, 100)
    # Cross-entropy of uniform logits over MNIST's 10 classes, −log(1/10), from softmax itself:
    uniform = float(-np.log(np.exp(0.0) / np.exp(np.zeros(10)).sum()))
    stuck = dataclasses.replace(base, setting={**base.setting, "trained": True},
                                metrics={**base.metrics, "train_loss": uniform, "test_acc": 0.1135})
    learned = dataclasses.replace(stuck, metrics={**stuck.metrics, "train_loss": 1.9})  # 0.83 ln 10: it learned
    assert record.did_not_learn(stuck) and not record.did_not_learn(learned) and not record.did_not_learn(base)
    table = record.verdict_table([("init", base), ("final", stuck), ("other", learned)]).splitlines()
    assert len(table) == 6 and table[-1].startswith("warning: final did not learn: train loss 2.3026 against "
                                                    "ln 10 = 2.3026") and "test accuracy 11.35%" in table[-1]

    roots = sweep.Roots(tmp_path / "results", tmp_path / "work")
    group = sweep.Group("g", "tests", None, (sweep.SweepRun("a", "tiny-fcn-mnist"), sweep.SweepRun("b", "tiny-fcn-mnist")))
    for spec, res in zip(group.runs, (stuck, learned)):
        record.save(res, roots.published(group.name, spec.name) / "results.json")
    assert sweep.run_state(roots, group, group.runs[0]) == "done (did not learn: train loss at that of ignoring the inputs)"
    assert sweep.run_state(roots, group, group.runs[1]) == "done"


def test_the_no_input_loss_is_the_entropy_of_the_training_labels():
    import dataclasses

    from scipy import stats

    from train.experiment import label_entropy

    labels = np.repeat(np.arange(12), [400, 200, 100, 80, 50, 50, 40, 30, 30, 10, 5, 5])  # Avila-like imbalance
    h = label_entropy(labels)
    assert h == pytest.approx(stats.entropy(np.bincount(labels)), rel=1e-12) and h < 0.9 * math.log(12)
    base = _record(ZIPF, 100)
    stuck = dataclasses.replace(base, setting={**base.setting, "dataset": "avila", "trained": True},
                                data={**base.data, "train_label_entropy": h}, metrics={**base.metrics, "train_loss": h})
    # At the labels' entropy it learned nothing, though far below ln 12 (which alone would miss it).
    assert record.did_not_learn(stuck) and record.no_input_loss(stuck) == (h, "the entropy of its training labels")
    learned = dataclasses.replace(stuck, metrics={**stuck.metrics, "train_loss": 0.9 * h})
    assert not record.did_not_learn(learned)
    older = dataclasses.replace(stuck, data={"source": "test"})  # a record from before the entropy was kept
    assert record.no_input_loss(older) == (math.log(12), "ln 12") and not record.did_not_learn(older)
