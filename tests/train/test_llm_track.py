"""The LLM tracking record on synthetic checkpoints: rows, d_KS fallbacks, correlations recomputed by hand."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

import hspec
from train import record
from train.llm import track

K = 50


def _record(step: int, eigenvalues: np.ndarray, test_loss: float, lambda_max: float,
            trace: float) -> record.SpectrumResult:
    """A SpectrumResult as the pipeline writes it, from a prescribed spectrum."""
    verdict = hspec.power_law_verdict(eigenvalues, K)
    return record.SpectrumResult(
        setting={"step": step, "preset": "synthetic"}, fit=record.fit_block(verdict, 0.05), verdict=verdict.verdict,
        spectrum={"eigenvalues": eigenvalues, "num_converged": K, "lanczos_steps": 150},
        sharpness={"lambda_max": lambda_max, "trace": trace, "trace_stderr": 0.1}, eigengap_fit=None,
        metrics={"test_loss": test_loss, "train_loss": test_loss - 0.1}, timing={"measure_s": 1.0},
        hessian_sample={}, data={}, num_params=1000, checkpoint=None, hspec_version="test", keys=None)


def _spectra() -> list[np.ndarray]:
    """Step 0: exponential with negative values among the top K (undefined fit); then ever closer to Zipf."""
    ranks = np.arange(1, K + 1, dtype=np.float64)
    init = np.exp(-ranks / 10.0) - 0.02  # the last values are negative
    mixes = [np.exp(-ranks / 10.0) * (1 - a) + ranks ** -1.0 * a for a in (0.3, 0.6, 0.9, 1.0)]
    return [init] + mixes


STEPS = [0, 50, 100, 200, 500]
LOSSES = [4.2, 2.9, 2.4, 2.0, 1.9]
LAMBDA = [1.0, 3.0, 2.0, 5.0, 4.0]
TRACE = [10.0, 30.0, 45.0, 40.0, 60.0]


@pytest.fixture(scope="module")
def tracking():
    results = [_record(s, e, l, lm, tr) for s, e, l, lm, tr in zip(STEPS, _spectra(), LOSSES, LAMBDA, TRACE)]
    # Given out of order: the record sorts by step.
    return track.tracking_record({"preset": "synthetic"}, results[::-1])


def _pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.sum(dx * dy) / math.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))


def _kendall_tau_a(x, y) -> float:
    """(concordant - discordant) / pairs: Kendall's tau-b when there are no ties, as here."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    signs = [np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs]
    return float(np.sum(signs) / len(pairs))


def test_rows_follow_the_records_and_fall_back_to_the_positive_fit(tracking):
    rows = tracking["checkpoints"]
    assert [r["step"] for r in rows] == STEPS
    init = _spectra()[0]
    positive = init[init > 0]
    # Step 0: undefined fit over K (negative values), so d_KS is the fit over the K' positive values, flagged.
    assert rows[0]["d_ks_positive_only"] and not rows[0]["is_power_law"] and rows[0]["num_positive"] == positive.size
    beta = 1 + positive.size / np.sum(np.log(positive / positive[-1]))
    assert rows[0]["s"] == pytest.approx(1 / (beta - 1), rel=1e-12)
    assert rows[0]["d_ks"] == pytest.approx(hspec.fit_power_law(positive).d_ks, rel=1e-12)
    for r, eig in zip(rows[1:], _spectra()[1:]):
        fit = hspec.fit_power_law(eig, K)
        assert not r["d_ks_positive_only"] and r["d_ks"] == fit.d_ks and r["s"] == fit.s
        assert r["is_power_law"] == (fit.d_ks < hspec.critical_value(K))
    assert [r["lambda_max"] for r in rows] == LAMBDA and [r["trace"] for r in rows] == TRACE
    assert [r["test_loss"] for r in rows] == LOSSES


def test_correlations_equal_the_hand_formulas_over_every_checkpoint(tracking):
    rows = tracking["checkpoints"]
    for m in track.MEASURES:
        values = [r[m] for r in rows]
        c = tracking["correlations"][m]
        assert c["n"] == len(STEPS)  # step 0 included
        assert c["pearson"] == pytest.approx(_pearson(values, LOSSES), abs=1e-12)
        assert c["kendall"] == pytest.approx(_kendall_tau_a(values, LOSSES), abs=1e-12)
        assert 0 <= c["pearson_p"] <= 1 and 0 <= c["kendall_p"] <= 1
        trained = tracking["correlations_after_init"][m]  # the second view leaves out step 0
        assert trained["n"] == len(STEPS) - 1
        assert trained["pearson"] == pytest.approx(_pearson(values[1:], LOSSES[1:]), abs=1e-12)


def test_claims_are_decided_on_the_numbers(tracking):
    rows, claims, corr = tracking["checkpoints"], tracking["claims"], tracking["correlations"]
    assert claims["d_ks_first"] == rows[0]["d_ks"] and claims["d_ks_last"] == rows[-1]["d_ks"]
    assert claims["d_ks_falls"] == (rows[-1]["d_ks"] < rows[0]["d_ks"])
    assert claims["no_power_law_at_init"] is True
    assert claims["power_law_at_end"] == rows[-1]["is_power_law"] is True  # exact Zipf at the end
    for m in track.MEASURES:
        assert claims[f"{m}_tracks_test_loss"] == (corr[m]["pearson"] > 0.9)


def test_undefined_fit_is_the_largest_distance_and_flagged():
    values = np.concatenate([[1.0], -np.ones(K - 1)])  # one positive value: no fit at all
    rec = _record(0, _spectra()[1], 4.0, 1.0, 1.0)
    fit = {**{key: None for key in record.FIT_KEYS}, "is_power_law": False, "k": K, "num_positive": 1,
           "d_crit": hspec.critical_value(K), "positive_fit": None}
    rec = dataclasses.replace(rec, fit=fit, spectrum=dict(rec.spectrum, eigenvalues=values))
    row = track.checkpoint_row(rec)
    assert row["d_ks"] == 1.0 and row["d_ks_undefined"] and not row["d_ks_positive_only"] and row["s"] is None


def test_constant_or_short_series_have_no_correlation():
    assert track.correlation([1, 2], [3, 4])["pearson"] is None
    assert track.correlation([1, 1, 1], [3, 4, 5])["pearson"] is None
    c = track.correlation([1, None, 3, float("nan"), 5], [2, 9, 4, 9, 7])
    assert c["n"] == 3 and c["pearson"] == pytest.approx(_pearson([1, 3, 5], [2, 4, 7]))


def test_write_gives_full_precision_json_a_plot_and_a_table(tracking, tmp_path):
    path = track.write(tracking, tmp_path)
    back = json.loads(path.read_text())
    assert back["checkpoints"][2]["d_ks"] == tracking["checkpoints"][2]["d_ks"]  # full float64 precision
    assert (tmp_path / "tracking.png").stat().st_size > 10_000
    text = track.table(tracking)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["step", "test", "loss", "d_KS", "s", "lambda_max"]
    assert len([ln for ln in lines if ln.strip().split(" ")[0].isdigit()]) == len(STEPS)
    assert "positive eigenvalues only" in text and "correlation with the test loss" in text
