"""The report's Hessian-sample section from a synthetic series: mean ± sd over draws, the exact spectrum standing
for a size where the reduced one was also measured, the reduction check's verdict."""

import json

import numpy as np

from train import record, sample_report

K = 1000


def _piece(state, n, draw, values, reduced=False, neff=None):
    entry = dict(record.refit(values, K), state=state, hessian_samples=n, draw=draw, reduced_operator=reduced,
                 num_converged=K, lanczos_steps=3000, eigenvalues=list(values),
                 carriers=None if neff is None else {"participation_ratio": neff, "carriers_90": 2 * neff})
    if reduced:
        entry["reduced"] = {"kept": n // 2, "dropped": n - n // 2,
                            "certificate": {"bound": 1e-9, "relative_bound": 1e-6, "accepted": True}}
    return entry


def _doc():
    zipf = 1.0 / np.arange(1, K + 1)
    expo = np.exp(-np.arange(K) / 200.0)
    pieces = [_piece("trained", 1000, d, zipf * (1 + 0.01 * d), neff=20 + d) for d in range(3)]
    pieces += [_piece("trained", 4000, 0, expo, neff=100), _piece("trained", 4000, 0, zipf, reduced=True),
               _piece("init", 1000, 0, expo)]
    return {"provenance": {"num_train": 60000, "preset": "p", "epoch": 50, "k": K}, "pieces": pieces,
            "whole_set": {"trained": {"num_examples": 60000, "participation_ratio": 1375.0, "carriers_90": 2175}},
            "pending": ["trained-n60000-d0"]}


def test_table_and_paragraph_follow_the_series():
    doc = _doc()
    groups = sample_report.by_size(doc, "trained")
    assert sorted(groups) == [1000, 4000] and len(groups[1000]) == 3
    assert [p["reduced_operator"] for p in groups[4000]] == [False]  # the exact spectrum stands for N = 4000
    table = sample_report.series_table(doc)
    d = [record.refit(1.0 / np.arange(1, K + 1) * (1 + 0.01 * i), K)["fit"]["d_ks"] for i in range(3)]
    assert f"| trained | 1000 | 3 | {np.mean(d):.4f} ± {np.std(d, ddof=1):.4f} |" in table
    assert "| 3 of 3 |" in table and "| 21 ± 1 |" in table  # all three Zipf draws pass; N_eff 20, 21, 22
    assert "| init | 1000 | 1 |" in table and "| 0 of 1 |" in table  # exp(-k/200) fails (d_KS 0.154)
    text = sample_report.what_the_numbers_say(doc)
    assert "N = 1000: 3 of 3, N = 4000: 0 of 1" in text
    assert "N_eff = 1375 examples" in text and "Not measured yet: trained-n60000-d0" in text
    checks = sample_report.checks_text(doc)
    assert "within the Weyl bound" in checks and ": NO;" in checks  # exp vs Zipf differ far beyond 1e-9


def test_reduction_verdict(tmp_path):
    cut = lambda q, n, ok: {"quantile": q, "dropped": n, "norm": {"norm": 1e-6}, "relative_to_lambda_k": 1e-3,  # noqa: E731
                             "accepted": ok}
    doc = {"hessian_samples": 2000, "lambda_k": 0.002, "tolerance": 1e-3, "device": "cpu",
           "cuts": [cut(0.1, 200, True), cut(0.5, 1000, False)]}
    (tmp_path / "reduction_check.json").write_text(json.dumps(doc))
    text = sample_report.reduction_text(tmp_path)
    assert "drops 200 of 2000 examples, 10% of each product's cost" in text and "computed exactly instead" in text
    doc["cuts"] = [cut(0.5, 1000, False)]
    (tmp_path / "reduction_check.json").write_text(json.dumps(doc))
    assert "No cut is accepted" in sample_report.reduction_text(tmp_path)
    assert sample_report.reduction_text(tmp_path / "none") == ""


def test_a_verdict_that_straddles_d_c_beyond_some_n_is_said_so_with_its_range():
    """Fails at 1000, passes at 2000 and 4000, fails at 8000: the paragraph gives the range of d_KS from the first
    passing N on and its largest distance to d_c, computed here from the same fits."""
    zipf = 1.0 / np.arange(1, K + 1)
    expo = np.exp(-np.arange(K) / 200.0)
    bent = np.where(np.arange(K) < 700, zipf, zipf * np.exp(-(np.arange(K) - 700) / 2000.0))
    series = {1000: expo, 2000: zipf, 4000: zipf * 1.01, 8000: bent}
    fits = {n: record.refit(v, K)["fit"] for n, v in series.items()}
    d_c = fits[1000]["d_crit"]
    assert fits[1000]["d_ks"] >= d_c and fits[2000]["d_ks"] < d_c and fits[8000]["d_ks"] >= d_c
    doc = {"provenance": {"num_train": 60000, "k": K},
           "pieces": [_piece("trained", n, 0, v) for n, v in series.items()]}
    text = sample_report.mechanism_text(doc)
    later = [fits[n]["d_ks"] for n in (2000, 4000, 8000)]
    assert (f"from N = 2000 on its d_KS stays between {min(later):.4f} and {max(later):.4f}, at most "
            f"{d_c - min(later):.4f} below d_c and {max(later) - d_c:.4f} above it, a power law at N = 2000, 4000 and "
            f"none at N = 8000.") in text


def test_the_summary_for_the_disagreements_gives_each_state_against_n_and_whether_the_whole_set_is_measured():
    doc = _doc()
    zipf = 1.0 / np.arange(1, K + 1)
    d = [record.refit(zipf * (1 + 0.01 * i), K)["fit"]["d_ks"] for i in range(3)]
    expo_d = record.refit(np.exp(-np.arange(K) / 200.0), K)["fit"]["d_ks"]
    line = sample_report.sample_size_summary(doc)
    assert line.startswith(f"the trained network's d_KS is {np.mean(d):.4f}, {expo_d:.4f} at N = 1000, 4000 (a power "
                           f"law at N = 1000; d_c = 0.0430); its initialisation's d_KS is {expo_d:.4f} at N = 1000 "
                           "(a power law at none; d_c = 0.0430)")
    assert line.endswith("the whole training set (60000 examples) is not measured yet, so no row is re-measured at "
                         "another N")
    doc["pieces"].append(_piece("trained", 60000, 0, zipf))
    assert "not measured yet" not in sample_report.sample_size_summary(doc)
    assert sample_report.sample_size_summary({"provenance": {}, "pieces": []}) is None
