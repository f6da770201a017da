"""The CPU overfitting LLM queue (train.llm.overfit): its statistics against hand computations, the choice of
the checkpoints around the minimum, the training subset and sample draws, and a SIGKILLed queue resuming to the
same tracking.json as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from train.llm import overfit, presets

# -------------------------------------------------------------------------------------------------- statistics


def _tau(a, b) -> float:
    """Kendall's tau by counting pairs (no ties in these data)."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    return sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs) / len(pairs)


def _data(seed: int = 0, n: int = 12):
    rng = np.random.default_rng(seed)
    z = np.arange(n, dtype=float) * 100.0  # the step
    x = 0.002 * z + rng.normal(size=n)  # a measure drifting with time
    y = -0.001 * z + 0.8 * x + rng.normal(size=n)  # a loss
    return x, y, z


def test_partial_pearson_is_the_correlation_of_regression_residuals_and_the_textbook_formula():
    x, y, z = _data()
    got = overfit.partial_pearson(x, y, z)
    # Residuals by numpy's polynomial fit (a line), then their correlation.
    rx = x - np.polyval(np.polyfit(z, x, 1), z)
    ry = y - np.polyval(np.polyfit(z, y, 1), z)
    want = np.sum(rx * ry) / math.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    assert got["r"] == pytest.approx(want, abs=1e-12) and got["n"] == 12
    # (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)).
    r = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    formula = (r(x, y) - r(x, z) * r(y, z)) / math.sqrt((1 - r(x, z) ** 2) * (1 - r(y, z) ** 2))
    assert got["r"] == pytest.approx(formula, abs=1e-12)
    # The t-test with n - 3 degrees of freedom.
    from scipy import stats

    t = want * math.sqrt(9 / (1 - want ** 2))
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(t), 9), rel=1e-9)


def test_partial_kendall_by_counting_pairs():
    x, y, z = _data(1)
    txy, txz, tyz = _tau(x, y), _tau(x, z), _tau(y, z)
    want = (txy - txz * tyz) / math.sqrt((1 - txz ** 2) * (1 - tyz ** 2))
    assert overfit.partial_kendall(x, y, z)["tau"] == pytest.approx(want, abs=1e-12)


def test_partial_correlations_skip_missing_values_and_refuse_too_few():
    x, y, z = _data(2)
    xs = list(x) + [None]
    assert overfit.partial_pearson(xs, list(y) + [1.0], list(z) + [1.0])["n"] == 12
    assert overfit.partial_pearson([1, 2, 3], [1, 2, 4], [0, 1, 2])["r"] is None
    # A measure that is a line in the step has nothing left once the step is removed.
    assert overfit.partial_pearson(2 * z + 1, y, z)["r"] is None


def test_correlation_views_show_the_time_confound():
    # The loss falls and then rises; a measure that only grows with the step tracks the loss while it falls.
    steps = [0, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000]
    loss = [4.0, 3.0, 2.6, 2.4, 2.3, 2.25, 2.3, 2.4, 2.6, 2.9]
    rows = [{"step": s, "test_loss": l, "gap": 0.001 * s, "d_ks": 0.1 - 1e-5 * s + 0.01 * math.sin(s),
             "s": 1.0, "lambda_max": float(s), "trace": l * 3.0} for s, l in zip(steps, loss)]
    views = overfit.correlation_views(rows)
    assert views["test_loss"]["trace"]["all"]["pearson"] == pytest.approx(1.0)
    assert views["test_loss"]["s"]["all"]["pearson"] is None  # constant
    assert views["gap"]["lambda_max"]["all"]["pearson"] == pytest.approx(1.0)
    assert views["gap"]["lambda_max"]["partial_step"]["pearson"] is None  # both lines in the step
    later = [r for r in rows if r["step"] > 0]
    assert views["test_loss"]["d_ks"]["after_init"]["n"] == len(later)
    assert views["with_step"]["lambda_max"]["pearson"] == pytest.approx(1.0)


def test_key_steps_bracket_the_minimum():
    losses = {0: 4.0, 100: 3.0, 200: 2.5, 300: 2.3, 400: 2.2, 600: 2.1, 800: 2.2, 1000: 2.4}
    assert overfit.key_steps(losses) == {"before": 200, "at": 600, "after": 1000}
    assert overfit.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0) and overfit.mean_sd([1.0]) == (1.0, None)


# -------------------------------------------------------------------------------------------------- the preset


def test_overfit_preset_records_its_subset_and_the_queue_plan():
    cfg = presets.get(overfit.PRESET)
    assert (cfg.k, cfg.num_starts, cfg.combine, cfg.train_tokens) == (1000, 1, "distinct", 50_000)
    from train.measure import SETTLE

    assert cfg.lanczos_settle == SETTLE  # grown from 1500 steps, the residual rule alone stops too early
    assert len(cfg.checkpoint_steps) >= 10 and cfg.hessian_sequences * cfg.block_size >= 8192
    lines = presets.departures(cfg)
    assert any(line.startswith("train_tokens: the first 50,000 tokens") for line in lines)
    with pytest.raises(presets.LLMConfigError, match="cannot be negative"):
        presets.apply_overrides(cfg, {"hessian_draw": "-1"})
    p = overfit.plan(sets=["k=20"])
    assert p.cfg.k == 20 and p.out == Path("results/llm") / overfit.PRESET


def test_training_subset_and_hessian_draws(data_dir):
    from train.llm import train

    small = {"model.n_layer": "1", "model.n_embd": "16", "model.n_head": "2", "hessian_sequences": "4",
             "hessian_batch": "4", "eval_sequences": "4", "eval_batch": "4"}
    cfg = presets.apply_overrides(presets.get(overfit.PRESET), {**small, "train_tokens": "1000"})
    r0 = train.build(cfg, data_dir=str(data_dir))
    assert len(r0.data.train.tokens) == 1000 and r0.data.info["train_tokens_used"] == 1000
    full = train.build(presets.apply_overrides(cfg, {"train_tokens": "0"}), data_dir=str(data_dir))
    np.testing.assert_array_equal(full.data.train.tokens[:1000], r0.data.train.tokens)
    # Every Hessian sequence is a window of the subset; another draw is another sample of the same size.
    x0 = r0.hessian_batches[0][0]
    r1 = train.build(presets.apply_overrides(cfg, {"hessian_draw": "1"}), data_dir=str(data_dir))
    x1 = r1.hessian_batches[0][0]
    assert x0.shape == x1.shape and not np.array_equal(x0, x1)
    text = "".join(map(chr, r0.data.train.tokens))  # a string of token ids, to search windows in
    for row in np.concatenate([x0, x1]):
        assert "".join(map(chr, row)) in text
    np.testing.assert_array_equal(train.build(cfg, data_dir=str(data_dir)).hessian_batches[0][0], x0)



@pytest.mark.parametrize("d_ks_before, by_draw_0", [(0.08, True), (0.06, False)])
def test_the_turn_by_draw_0_and_by_the_draws_means(d_ks_before, by_draw_0):
    """d_KS falls to the minimum and rises after it, λ_max rises throughout. By draw 0, d_KS's fall from 0.08 is
    0.05 against 2 sd = 2·sqrt(0.02² + 0.003²) = 0.0404 (follows), from 0.06 only 0.03 (does not); the means
    0.07 → 0.028 → 0.045 fall by 0.042 against 2 se = 2·sqrt((0.02² + 0.003²)/3) = 0.0234 and rise by 0.017
    against 2·sqrt((0.003² + 0.002²)/3) = 0.0042 (follow) either way."""
    steps, test = (10, 20, 30), (2.5, 2.2, 2.6)
    d0 = {10: d_ks_before, 20: 0.03, 30: 0.05}
    rows = [{"step": s, "test_loss": te, "d_ks": d0[s], "s": 1.0, "lambda_max": float(s), "trace": 10.0 * s,
             "d_crit": 0.043, "is_power_law": d0[s] < 0.043} for s, te in zip(steps, test)]
    means, sds = {10: 0.07, 20: 0.028, 30: 0.045}, {10: 0.02, 20: 0.003, 30: 0.002}
    draws = {str(s): {"n": 3, "d_ks": {"mean": means[s], "sd": sds[s]}, "s": {"mean": 1.0, "sd": 0.01},
                      "lambda_max": {"mean": float(s), "sd": 0.1}, "trace": {"mean": 10.0 * s, "sd": 1.0}}
             for s in steps}
    views = {"test_loss": {m: {"all": {"pearson": None}} for m in overfit.MEASURES}}
    c = overfit.overfit_claims(rows, views, draws, {"before": 10, "at": 20, "after": 30})
    fall = c["fall_before_minimum"]["measures"]["d_ks"]
    assert fall["sampling_sd"] == pytest.approx(math.hypot(0.02, 0.003), rel=1e-12)
    assert fall["falls_beyond_2sd"] is by_draw_0 and c["turn_after_minimum"]["measures"]["d_ks"]["rises_beyond_2sd"]
    assert c["follows_turn"]["measures"]["d_ks"] is by_draw_0
    m = c["follows_turn_means"]["measures"]["d_ks"]
    assert m["fall"]["change"] == pytest.approx(-0.042) and m["rise"]["change"] == pytest.approx(0.017)
    assert m["fall"]["standard_error"] == pytest.approx(math.sqrt((0.02 ** 2 + 0.003 ** 2) / 3), rel=1e-12)
    assert m["follows"] is True
    # λ_max rises before the minimum: decided against by either rule.
    assert c["follows_turn"]["measures"]["lambda_max"] is False
    assert c["follows_turn_means"]["measures"]["lambda_max"]["follows"] is False
    assert c["fall_before_minimum"]["test_loss_change"] == pytest.approx(-0.3)
    from train.llm import report

    text = report.turn_paragraph({"claims_overfit": c, "key_steps": c["key_steps"], "checkpoints": rows,
                                  "draws": draws})
    row = (f"| d_KS | {d_ks_before:.4g} | 0.03 | 0.05 | {0.03 - d_ks_before:+.3g} ± 0.02: "
           f"{'falls' if by_draw_0 else 'no'} | +0.02 ± 0.0036: rises | {'yes' if by_draw_0 else 'no'} | "
           "-0.042 ± 0.012: falls | +0.017 ± 0.0021: rises | yes |")
    assert row in text
    differ = "They differ for d_KS, whose draws have sd 0.02 at step 10, 0.003 at step 20, 0.002 at step 30"
    assert (differ in text) is not by_draw_0

# -------------------------------------------------------------------------------------------------- resume


TINY = ["model.n_embd=16", "model.n_layer=1", "model.n_head=2", "steps=40", "checkpoint_steps=0,10,20,30,40",
        "save_every=10", "k=12", "lanczos_steps=40", "max_lanczos_steps=400", "hessian_sequences=4",
        "hessian_batch=4", "eval_sequences=8", "eval_batch=8", "trace_samples=3"]


def _queue(out: Path, work: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "train.llm.overfit", "--out", str(out), "--work", str(work), "--data-dir",
            str(data_dir), "--only", "train", "--only", "spectra", "--only", "draws", "--only", "tracking"]
    args += [f"--set={s}" for s in TINY] + list(extra)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


_TIMED = ("measure_s", "seconds", "spectrum_total_s")


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in _TIMED}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


@pytest.mark.slow
def test_sigkilled_queue_resumes_to_the_same_tracking(data_dir, tmp_path):
    straight = _queue(tmp_path / "a", tmp_path / "wa", data_dir)
    killed = _queue(tmp_path / "b", tmp_path / "wb", data_dir)
    # Kill the second once its first spectrum is written (training done, the spectra under way).
    deadline = time.time() + 600
    while not list((tmp_path / "b" / "steps").glob("*/results.json")):
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read() if killed.stdout else ""
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    out, _ = straight.communicate(timeout=900)
    assert straight.returncode == 0, out
    resumed = _queue(tmp_path / "b", tmp_path / "wb", data_dir)
    out_b, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out_b
    a, b = (json.loads((tmp_path / d / "tracking.json").read_text()) for d in ("a", "b"))
    assert _untimed(a) == _untimed(b)
    assert len(a["checkpoints"]) == 5 and a["draws"] and {"num_starts", "combine", "num_distinct"} <= set(
        a["checkpoints"][0])
    assert json.loads((tmp_path / "a" / "curve.json").read_text()) == json.loads(
        (tmp_path / "b" / "curve.json").read_text())


# -------------------------------------------------------------------------------------------------- analysis, report


def _synthetic_record(step: int, eigenvalues: np.ndarray, test_loss: float, train_loss: float, lam: float,
                      tr: float):
    import hspec
    from train import record

    k = eigenvalues.size
    verdict = hspec.power_law_verdict(eigenvalues, k)
    setting = {"step": step, "preset": "synthetic", "k": k, "num_starts": 1, "combine": "distinct",
               "arch_n_layer": 1, "arch_n_head": 2, "arch_n_embd": 16, "block_size": 8, "learning_rate": 6e-4,
               "weight_decay": 0.1, "train_tokens": 1000, "steps": 1000, "tokens_per_step": 64,
               "departures": ["k: 100 (paper 1000)"]}
    return record.SpectrumResult(
        setting=setting, fit=record.fit_block(verdict, 0.05), verdict=verdict.verdict,
        spectrum={"eigenvalues": eigenvalues, "num_converged": k, "lanczos_steps": 300, "num_starts": 1,
                  "combine": "distinct", "num_distinct": k},
        sharpness={"lambda_max": lam, "trace": tr, "trace_stderr": 0.1}, eigengap_fit=None,
        metrics={"test_loss": test_loss, "train_loss": train_loss, "train_loss_fixed": train_loss,
                 "gap": test_loss - train_loss}, timing={"measure_s": 1.0}, hessian_sample={"tokens": 512},
        data={}, num_params=1000, checkpoint=None, hspec_version="test", keys=None)


def test_analysis_and_report_section_from_synthetic_checkpoints(tmp_path):
    from train import record
    from train.llm import report

    ranks = np.arange(1, 101, dtype=np.float64)
    steps = [0, 100, 200, 300, 400, 600, 800, 1000]
    test = [4.0, 3.0, 2.5, 2.3, 2.2, 2.1, 2.2, 2.4]
    train_l = [4.0, 2.9, 2.3, 2.0, 1.8, 1.5, 1.2, 0.9]
    exps = [0.3, 0.8, 0.9, 1.0, 1.05, 1.1, 1.0, 0.9]
    out = tmp_path / "results" / "llm" / "synthetic"
    for s, te, tr, a in zip(steps, test, train_l, exps):
        eig = ranks ** -a if s else np.exp(-ranks / 20.0)
        record.save(_synthetic_record(s, eig, te, tr, 1.0 + s / 100, 10.0 + s), out / "steps" / str(s) / "results.json")
    for d in (1, 2):
        for s, a in ((200, 0.9), (600, 1.1), (1000, 0.9)):
            eig = ranks ** -(a + 0.01 * d) * (1 + 0.01 * d * np.sin(ranks))
            record.save(_synthetic_record(s, np.sort(eig)[::-1], test[steps.index(s)], train_l[steps.index(s)], 1.0,
                                          1.0), out / "draws" / f"draw-{d}" / "steps" / str(s) / "results.json")
    cfg = presets.apply_overrides(presets.get(overfit.PRESET), {"checkpoint_steps": ",".join(map(str, steps)),
                                                                "steps": "1000"})
    t = overfit.analyse(overfit.Plan(cfg, out, tmp_path / "work"))
    assert t["key_steps"] == {"before": 200, "at": 600, "after": 1000}
    rows = t["checkpoints"]
    assert [r["step"] for r in rows] == steps and rows[2]["num_draws"] == 3
    d_ks_600 = [hspec_fit(np.sort(ranks ** -(1.1 + 0.01 * d) * (1 + 0.01 * d * np.sin(ranks)))[::-1]).d_ks
                for d in (0, 1, 2)]
    assert rows[5]["d_ks_sd_draws"] == pytest.approx(np.std(d_ks_600, ddof=1), rel=1e-9)
    gap = [a - b for a, b in zip(test, train_l)]
    r = np.corrcoef([row["d_ks"] for row in rows], gap)[0, 1]
    assert t["correlation_views"]["gap"]["d_ks"]["all"]["pearson"] == pytest.approx(r, abs=1e-12)
    assert t["claims_overfit"]["no_power_law_at_init"]["holds"] is True
    # The turn: draw 0's change from 200 to 600 and from 600 to 1000, against the draws' sd of each change.
    c = t["claims_overfit"]
    sd = {s: rows[steps.index(s)]["d_ks_sd_draws"] for s in (200, 600, 1000)}
    d0 = {s: rows[steps.index(s)]["d_ks"] for s in (200, 600, 1000)}
    fall, rise = c["fall_before_minimum"]["measures"]["d_ks"], c["turn_after_minimum"]["measures"]["d_ks"]
    assert fall["change"] == pytest.approx(d0[600] - d0[200], rel=1e-12)
    assert fall["sampling_sd"] == pytest.approx(math.hypot(sd[200], sd[600]), rel=1e-12)
    assert rise["sampling_sd"] == pytest.approx(math.hypot(sd[600], sd[1000]), rel=1e-12)
    falls, rises = d0[600] - d0[200] < -2 * fall["sampling_sd"], d0[1000] - d0[600] > 2 * rise["sampling_sd"]
    assert (fall["falls_beyond_2sd"], rise["rises_beyond_2sd"]) == (falls, rises)
    assert c["follows_turn"]["measures"]["d_ks"] is (falls and rises)
    # The same turn through the draws' means, with the standard error of each change.
    vals = {s: t["draws"][str(s)]["d_ks"]["values"] for s in (200, 600, 1000)}
    mean = {s: float(np.mean(v)) for s, v in vals.items()}
    se = {s: float(np.std(v, ddof=1)) ** 2 / len(v) for s, v in vals.items()}
    by_means = c["follows_turn_means"]["measures"]["d_ks"]
    assert by_means["fall"]["change"] == pytest.approx(mean[600] - mean[200], rel=1e-12)
    assert by_means["rise"]["standard_error"] == pytest.approx(math.sqrt(se[600] + se[1000]), rel=1e-12)
    m_falls = mean[600] - mean[200] < -2 * math.sqrt(se[200] + se[600])
    m_rises = mean[1000] - mean[600] > 2 * math.sqrt(se[600] + se[1000])
    assert by_means["follows"] is (m_falls and m_rises) and by_means["fall"]["draws"] == [3, 3]
    # λ_max (1 + step/100 in draw 0) rises before the minimum: decided against whatever the noise.
    assert c["fall_before_minimum"]["measures"]["lambda_max"]["falls_beyond_2sd"] is False
    assert c["follows_turn"]["measures"]["lambda_max"] is False
    assert {"num_starts", "combine", "num_distinct"} <= set(rows[0])
    assert (out / "tracking.png").is_file() and (out / "sensitivity.json").is_file()
    text = report.llm_section(tmp_path / "results", tmp_path)
    assert "### synthetic" in text and "| the power law is absent at initialisation |" in text
    assert f"r = {t['claims_overfit']['d_ks_tracks_test_loss']['pearson']:+.3f}" in text
    assert "(n=3)" in text and "results/llm/synthetic/tracking.png" in text
    assert f"| λ_max | {1 + 2:.4g} | {1 + 6:.4g} | {1 + 10:.4g} | +4 ± " in text
    assert "| λ_max does not track the test loss where it turns |" in text
    # "In brief": the verdicts of the section's rows, counted.
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in text.split("\n") if line.startswith("| ") and
                ("track" in line or "initialisation" in line or "falls as" in line) and "rule" not in line]
    brief = report.llm_brief(tmp_path / "results")
    assert brief.startswith(f"The LLM claim (synthetic, trained past its test-loss minimum): of the {len(verdicts)} "
                            f"rules its section applies, {verdicts.count('agree')} agree, "
                            f"{verdicts.count('disagree')} disagree, {verdicts.count('undecided')} undecided")
    assert text == report.llm_section(tmp_path / "results", tmp_path)  # the same files give the same text


def test_sample_sizes_and_the_papers_literal_procedure_in_the_sensitivity_section(tmp_path):
    """The sizes and paper-literal pieces' files, as the queue writes them, land in sensitivity.json and the report:
    each size's fit is that of its own spectrum, the run's own sample is marked, the literal procedure's row sits
    beside the converged one of the same checkpoint."""
    import dataclasses

    import hspec
    from train import record
    from train.llm import report

    ranks = np.arange(1, 101, dtype=np.float64)
    steps, test = [0, 100, 200], [4.0, 2.0, 2.5]
    out = tmp_path / "results" / "llm" / "synthetic"
    for s, te in zip(steps, test):
        eig = ranks ** -1.0 if s else np.exp(-ranks / 20.0)
        record.save(_synthetic_record(s, eig, te, te - 0.5, 1.0, 1.0), out / "steps" / str(s) / "results.json")
    sized = {}
    for tokens, a in ((256, 0.8), (1024, 1.2)):
        for s in (0, 200):  # before and after the minimum (step 100)
            eig = ranks ** -(a + s / 1000)
            rec = dataclasses.replace(_synthetic_record(s, eig, 1.0, 0.5, 1.0, 1.0), hessian_sample={"tokens": tokens})
            record.save(rec, out / "sensitivity" / f"sample-{tokens}" / "steps" / str(s) / "results.json")
            sized[(s, tokens)] = hspec_fit(eig).d_ks
    pooled = np.repeat(ranks[:34] ** -0.7, 3)[:100]  # three starts' top values, each found three times
    verdict = hspec.power_law_verdict(pooled, 100)
    record.write_json(out / "sensitivity" / "paper-literal" / "steps" / "200" / "results.json", {
        "step": 200, "procedure": overfit.PAPER_LITERAL["procedure"], "fit": record.fit_block(verdict, 0.05),
        "verdict": verdict.verdict, "hessian_tokens": 512, "seconds": 1.0,
        "spectrum": {"eigenvalues": pooled, "num_converged": 40, "num_distinct": 34, "num_positive": 100,
                     "num_starts": 3, "combine": "pool", "lanczos_steps": 1000}})
    cfg = presets.apply_overrides(presets.get(overfit.PRESET), {"checkpoint_steps": "0,100,200", "steps": "200"})
    overfit.analyse(overfit.Plan(cfg, out, tmp_path / "work"))
    sens = json.loads((out / "sensitivity.json").read_text())
    assert sens["key_steps"] == {"before": 0, "at": 100, "after": 200}
    assert [e["tokens"] for e in sens["sizes"]["200"]] == [256, 512, 1024]
    assert [e.get("main", False) for e in sens["sizes"]["0"]] == [False, True, False]
    assert sens["sizes"]["200"][2]["d_ks"] == pytest.approx(sized[(200, 1024)], rel=1e-12)
    lit = sens["paper_literal"]["200"]
    assert lit["d_ks"] == pytest.approx(hspec_fit(pooled).d_ks, rel=1e-12)
    assert (lit["num_distinct"], lit["num_starts"], lit["combine"]) == (34, 3, "pool")
    assert lit["converged"]["d_ks"] == pytest.approx(hspec_fit(ranks ** -1.0).d_ks, rel=1e-12)
    text = report.llm_section(tmp_path / "results", tmp_path)
    assert f"| 200 | 1024 | {sized[(200, 1024)]:.4f} |" in text and "| 200 | 512 (main) |" in text
    assert (f"| 200 | paper's literal: 3 runs × 1000 steps, pool, unconverged kept | {lit['d_ks']:.4f} |" in text
            and "| 40 | 34 | 100 |" in text)
    assert f"| 200 | converged (ours): 1 start, distinct | {lit['converged']['d_ks']:.4f} |" in text

def hspec_fit(values):
    import hspec

    return hspec.fit_power_law(values, values.size)


@pytest.mark.slow
def test_a_spectrum_not_converged_is_listed_and_the_queue_goes_on(data_dir, tmp_path):
    sets = [s for s in TINY if not s.startswith(("lanczos_steps", "max_lanczos_steps", "checkpoint_steps"))]
    p = overfit.plan(out=tmp_path / "out", work=tmp_path / "work", data_dir=str(data_dir),
                     sets=sets + ["checkpoint_steps=0,20,40", "lanczos_steps=13", "max_lanczos_steps=14"])
    overfit.train_piece(p)
    overfit.spectra_piece(p)  # K = 12 of 14 Lanczos steps: none converges here
    failed = json.loads((tmp_path / "work" / "not_converged.json").read_text())
    assert set(failed) == {"steps-0", "steps-20", "steps-40"} and failed["steps-0"]["max_lanczos_steps"] == 14
    assert not list((tmp_path / "out").glob("steps/*/results.json"))
    assert "not converged: ['steps-0', 'steps-20', 'steps-40']" in overfit.status(p)
