"""The reproduction report: each claim's rule on synthetic records, and `python -m train report` on a synthetic
results tree (the tables' numbers recomputed here, the output byte-stable, no paths of this machine)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import hspec
from train import config as config_lib
from train import record, report
from train.__main__ import main
from train.report import claims
from train.report.claims import AGREE, DISAGREE, UNDECIDED, Row
from train.study import plan

K = 100
RANKS = np.arange(1, K + 1, dtype=np.float64)


def power_law(s: float, scale: float = 1.0) -> np.ndarray:
    """λ_k = scale · k^(−s): the MLE finds a power law with exponent near s."""
    return scale * RANKS ** (-s)


def exponential(scale: float = 1.0) -> np.ndarray:
    """λ_k = scale · exp(−k/20): rejected by the KS test at K = 100."""
    return scale * np.exp(-RANKS / 20)


def synth(values: np.ndarray, *, test_acc: float = 0.99, trace: float = 10.0, **setting) -> record.SpectrumResult:
    """A record of the given eigenvalues, fitted by hspec exactly as a run fits them."""
    verdict = hspec.power_law_verdict(values, K)
    base = {"dataset": "mnist", "model": "lenet5", "optimizer": "sgd", "epochs": 50, "labels": "clean", "seed": 0,
            "batch_size": 128}
    return record.SpectrumResult(
        setting={**base, **setting}, fit=record.fit_block(verdict, 0.05), verdict=verdict.verdict,
        spectrum={"eigenvalues": [float(v) for v in values], "num_converged": K},
        sharpness={"lambda_max": float(values[0]), "trace": trace}, eigengap_fit=None,
        metrics={"train_loss": 0.1, "train_acc": 1.0, "test_loss": 0.1, "test_acc": test_acc}, timing={},
        hessian_sample={"size": 1000}, data={"source": "local IDX files in /machine/secret/data/mnist",
                                             "num_train": 60000, "num_test": 10000, "realised_label_noise": None},
        num_params=61706, checkpoint="/machine/secret/runs/ckpt", hspec_version="0.1.0", keys=None)


def row(name: str, result, *, control=None, value=None, final=True) -> Row:
    return Row(name, result, control, None if control is None else f"key-{name}", value, final)


# --- the rules on synthetic records -----------------------------------------------------------------------


def test_synthetic_spectra_are_what_the_rules_assume():
    assert synth(power_law(1.0)).is_power_law and not synth(exponential()).is_power_law
    assert synth(power_law(1.0)).fit["s"] == pytest.approx(1.0, abs=0.1)


def test_trained_vs_init():
    pl, no = synth(power_law(1.0)), synth(exponential())
    assert claims.rule_trained_vs_init([row("a", pl, control=no), row("b", pl, control=no)]).status == AGREE
    out = claims.rule_trained_vs_init([row("a", pl, control=no), row("b", no, control=no)])
    assert out.status == DISAGREE and "1 of 2 trained" in out.detail
    assert claims.rule_trained_vs_init([row("a", pl, control=pl)]).status == DISAGREE
    assert claims.rule_trained_vs_init([row("a", pl)]).status == UNDECIDED  # no control yet
    assert claims.rule_trained_vs_init([row("a", None)]).status == UNDECIDED
    # Intermediate epochs do not count as "trained networks": only the end of a run does.
    assert claims.rule_trained_vs_init([row("e1", no, final=False), row("a", pl, control=no)]).status == AGREE


@pytest.mark.parametrize("flags,status", [
    ((True, True, False, False), AGREE),
    ((True, False, True, False), DISAGREE),   # flips back: not one critical batch size
    ((True, True, True, True), DISAGREE),     # never breaks down
    ((False, True, True, True), DISAGREE),    # the wrong way round
    ((True,), UNDECIDED),
])
def test_batch_size_step(flags, status):
    sizes = (128, 512, 640, 8192)
    rows = [row(f"batch{b}", synth(power_law(1.0) if f else exponential()), value=b) for b, f in zip(sizes, flags)]
    # Shuffled input: the rule sorts by batch size itself.
    assert claims.rule_batch_size(rows[::-1]).status == status


def test_train_size_and_capacity_steps_go_the_other_way():
    rows = [row(f"n{n}", synth(power_law(1.0) if n >= 3000 else exponential()), value=n)
            for n in (600, 1000, 3000, 60000)]
    out = claims.rule_train_size(rows)
    assert out.status == AGREE and "power law at training-set size 3000, 60000" in out.detail
    assert claims.rule_batch_size(rows).status == DISAGREE
    for rule, what in ((claims.rule_depth, "depth"), (claims.rule_width, "width")):
        out = rule(rows)
        assert out.status == AGREE and f"power law at {what} 3000, 60000; none at 600, 1000" == out.detail


def test_step_detail_reads_right_when_the_verdict_is_everywhere_or_nowhere():
    nowhere = [row(f"batch{b}", synth(exponential()), value=b) for b in (512, 128)]
    everywhere = [row(f"batch{b}", synth(power_law(1.0)), value=b) for b in (512, 128)]
    assert claims.rule_batch_size(nowhere).detail == "no power law at any batch size (128, 512)"
    assert claims.rule_batch_size(everywhere).detail == "a power law at every batch size (128, 512)"


def test_step_trend_reports_the_direction_of_d_ks_along_the_axis():
    # d_KS grows with the batch size (power laws bending towards exponentials), none crossing in one step.
    sizes = (128, 512, 640, 8192)
    mixes = (0.0, 0.3, 0.2, 0.9)
    rows = [row(f"batch{b}", synth((1 - m) * power_law(1.0) + m * exponential()), value=b)
            for b, m in zip(sizes, mixes)]
    d = [r.result.fit["d_ks"] for r in rows]
    tau, p = stats.kendalltau(sizes, d)
    text = claims.step_trend(rows[::-1], claims.rule_batch_size)
    assert f"Kendall τ = {tau:+.2f} (p {p:.2g}) over 4 networks" in text
    assert ("the direction the claim implies" in text) == (tau > 0)
    # The same points read as a training-set axis imply the opposite direction.
    other = claims.step_trend(rows, claims.rule_train_size)
    assert ("not the direction" in other) == (tau > 0)
    assert claims.step_trend(rows[:2], claims.rule_batch_size) is None  # too few networks for a trend


def test_no_power_law_under_noise():
    assert claims.rule_no_power_law([row("noise40", synth(exponential()))]).status == AGREE
    out = claims.rule_no_power_law([row("noise40", synth(exponential())), row("noise80", synth(power_law(1.0)))])
    assert out.status == DISAGREE and "noise80" in out.detail


def test_sgd_below_adam():
    rows = [row("sgd", synth(power_law(0.8), optimizer="sgd")), row("adam", synth(power_law(1.2), optimizer="adam")),
            row("yogi", synth(power_law(1.5), optimizer="yogi")), row("pnm", synth(power_law(0.1), optimizer="pnm"))]
    assert claims.rule_sgd_below_adam(rows).status == AGREE  # PNM is not of the Adam family
    rows.append(row("radam", synth(power_law(0.5), optimizer="radam")))
    out = claims.rule_sgd_below_adam(rows)
    assert out.status == DISAGREE and "(radam)" in out.detail
    assert claims.rule_sgd_below_adam(rows[1:]).status == UNDECIDED


def test_s_tracks_sharpness_uses_kendall_tau_of_each_measure():
    s = [0.6, 0.9, 1.2, 1.5]
    rows = [row(f"o{i}", synth(power_law(x, scale=1 + x), test_acc=1 - x / 10, trace=x)) for i, x in enumerate(s)]
    assert claims.rule_s_tracks_sharpness(rows).status == AGREE
    # Test error falling as s grows: τ(s, test error) < 0.
    rows = [row(f"o{i}", synth(power_law(x, scale=1 + x), test_acc=0.5 + x / 10, trace=x)) for i, x in enumerate(s)]
    out = claims.rule_s_tracks_sharpness(rows)
    # τ = −1 over 4 points: the exact two-sided p-value is 2/4! = 0.083, not significant at 5%.
    assert out.status == DISAGREE and "τ(s, test error) = -1.00 (p 0.083)" in out.detail
    assert "not significant at 5%: " in out.detail and "test error" in out.detail.split("not significant")[1]
    assert claims.rule_s_tracks_sharpness(rows[:2]).status == UNDECIDED


def test_batch_size_groups_test_the_sharpness_claim_across_batch_sizes():
    # Larger batches: flatter spectra (larger s), sharper (λ_max, Tr) and worse test error; none a power law.
    s = [0.9, 1.3, 1.4, 1.6]
    rows = [row(f"batch{b}", synth(power_law(x, scale=1 + x) + exponential(), test_acc=1 - x / 10, trace=x),
                value=b) for b, x in zip((128, 512, 1024, 8192), s)]
    for group in ("batch-size", "batch-size-iters1000"):
        table = report.claims_table(claims.CLAIMS[group], rows)
        step, sharp = table.splitlines()[2:4]
        assert "breaks down abruptly" in step and "across the batch sizes" in sharp
        # Kendall τ over 4 concordant points is +1 for each measure: agree.
        assert "**agree**" in sharp and "τ(s, test error) = +1.00" in sharp


def test_s_tracks_test_error_across_checkpoints_is_pearson_r():
    s, err = [0.7, 0.9, 1.0, 1.1], [0.05, 0.03, 0.02, 0.021]
    rows = [row(f"epoch {e}", synth(power_law(x), test_acc=1 - y), value=e, final=False)
            for e, x, y in zip((1, 2, 10, 50), s, err)]
    rows.append(row("init", synth(exponential(), test_acc=0.1), value=0, final=False))  # epoch 0 is left out
    fitted = [r.result.fit["s"] for r in rows[:4]]
    expected = stats.pearsonr(fitted, err)
    out = claims.rule_s_tracks_test_error(rows)
    assert out.status == (AGREE if expected.statistic > 0 else DISAGREE)
    assert f"{expected.statistic:+.2f} (p {expected.pvalue:.2g})" in out.detail


def test_reductions_name_every_departure():
    nominal = plan.nominal_config(plan.find_run("optimizers/adam")[1])
    cfg = config_lib.to_dict(config_lib.resolve(nominal))
    data = {"num_train": 60000}
    assert report.reductions(cfg, nominal, data, {}) == []
    short = dict(cfg, epochs=5, k=20)
    assert report.reductions(short, nominal, data, {"epochs": 5, "k": 20}) == [
        "5 of 50 epochs", "k=20 (paper 1000)", "sweep overrides: epochs=5, k=20"]
    cifar = plan.nominal_config(plan.find_run("cifar10-lenet/sgd")[1])
    cifar_cfg = config_lib.to_dict(config_lib.resolve(cifar))
    assert report.reductions(cifar_cfg, cifar, {"num_train": 4000}, None) == ["data: 4000 of 50000 training examples"]
    # Micro-batches give the same gradient: not a departure, but the row says how it trained.
    micro = plan.nominal_config(plan.find_run("batch-size-iters1000/batch60000")[1])
    micro_cfg = config_lib.to_dict(config_lib.resolve(micro))
    assert micro_cfg["micro_batch"] == 2000
    assert report.reductions(micro_cfg, micro, data, None) == []
    assert report.rows.micro_batch_note(micro_cfg) == ("gradient summed over micro-batches of 2000",)
    assert report.rows.micro_batch_note(cfg) == () and report.rows.micro_batch_note({}) == ()


# --- the whole report on a synthetic results tree ---------------------------------------------------------


def _write_run(results: Path, group: str, name: str, result, *, control_key: str | None, epochs: dict | None = None,
               config_changes: dict | None = None) -> None:
    where = results / group / name
    record.save(result, where / "results.json")
    cfg = config_lib.to_dict(plan.nominal_config(plan.find_run(f"{group}/{name}")[1]))
    record.write_json(where / "config.json", {**cfg, **(config_changes or {})})
    record.write_json(where / "overrides.json", dict(config_changes or {}))
    if control_key:
        record.write_json(where / "control.json", {"key": control_key, "path": f"../../controls/{control_key}"})
    for e, r in (epochs or {}).items():
        record.save(r, where / "epochs" / str(e) / "results.json")


@pytest.fixture
def synthetic_results(tmp_path) -> tuple[Path, dict]:
    """A results tree: the reference run with checkpoints, four optimizers, a batch-size sweep, seeds, a
    reduced FCN run, a label-noise run and one shared control."""
    results = tmp_path / "results"
    ctl = "mnist-lenet5-seed0-0123456789"
    record.save(synth(exponential(), test_acc=0.1, trained=False), results / "controls" / ctl / "results.json")
    fields = plan.control_fields(plan.nominal_config(plan.find_run("checkpoints/lenet-mnist-sgd")[1]))
    record.write_json(results / "controls" / ctl / "key.json", {"key": ctl, "fields": {**fields, "k": K}})
    s = {"sgd": 1.0, "vanilla-sgd": 1.1, "adam": 1.3, "radam": 1.25}
    acc = {"sgd": 0.991, "vanilla-sgd": 0.989, "adam": 0.985, "radam": 0.987}
    trace = {"sgd": 30.0, "vanilla-sgd": 35.0, "adam": 50.0, "radam": 45.0}
    ref = synth(power_law(s["sgd"], 5), test_acc=acc["sgd"], trace=trace["sgd"])
    epochs = {e: synth(power_law(x, 5), test_acc=a, epochs=e) for e, x, a in ((1, 0.7, 0.95), (2, 0.8, 0.97),
                                                                               (10, 0.95, 0.985))}
    _write_run(results, "checkpoints", "lenet-mnist-sgd", ref, control_key=ctl, epochs=epochs)
    for opt in ("vanilla-sgd", "adam", "radam"):
        _write_run(results, "optimizers", opt, synth(power_law(s[opt], 5), test_acc=acc[opt], trace=trace[opt],
                                                     optimizer=opt.replace("-", "_")), control_key=ctl)
    for b, pl in ((512, True), (640, False), (1024, False)):
        _write_run(results, "batch-size", f"batch{b}", synth(power_law(1.0) if pl else exponential(), batch_size=b),
                   control_key=ctl)
    seeds = {"baseline-seed1": 1.1, "baseline-seed2": 0.9}
    for name, x in seeds.items():
        _write_run(results, "seeds", name, synth(power_law(x)), control_key=ctl)
    _write_run(results, "fcn-depth", "depth1", synth(power_law(1.0), model="fcn", depth=1), control_key=None,
               config_changes={"epochs": 2})
    _write_run(results, "label-noise", "noise40", synth(power_law(1.0), labels="noisy"), control_key=ctl)
    # Left by a publish killed half-way: never read.
    record.save(synth(power_law(2.0)), results / "controls" / ".staging-x-1234" / "results.json")
    record.save(synth(power_law(1.0)), results / "label-noise" / ".staging-noise80-1234" / "results.json")
    record.write_json(results / "label-noise" / ".staging-noise80-1234" / "control.json", {"key": ctl, "path": "x"})
    return results, {"s": s, "acc": acc, "trace": trace, "seeds": seeds, "ref": ref}


def test_report_tables_claims_and_numbers(synthetic_results, tmp_path, capsys):
    results, facts = synthetic_results
    out = tmp_path / "doc" / "REPRODUCTION.md"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    section = lambda name: text.split(f"\n## {name}\n")[1].split("\n## ")[0]  # noqa: E731
    # Claims, decided by our numbers.
    assert "**agree**" in section("optimizers").split("Momentum SGD")[1].split("\n")[0]
    # A claim judged on part of its group says how much of it was measured.
    assert ("**agree** (so far: 4 of 10 runs measured): power law at batch size 128, 512; none at 640, 1024"
            in section("batch-size"))
    assert "**disagree** (so far: 1 of 3 runs measured): 1 of 1 show a power law (noise40)" in section("label-noise")
    assert "Not run yet." in section("resnet18") and "Not run yet." in section("fashion-mnist")
    # The alias: optimizers/sgd is the reference run.
    assert "| sgd | 100 |" in section("optimizers")
    assert "same run as checkpoints/lenet-mnist-sgd" in section("optimizers")
    # n60000 is the reference too: its size comes from its preset (the reference leaves train_size unset, the
    # whole set), and the spelling train_size=60000 is no departure from the paper.
    n60000 = next(x for x in section("train-size").splitlines() if x.startswith("| n60000 |"))
    assert "reduced" not in n60000 and n60000.endswith("| same run as checkpoints/lenet-mnist-sgd |")
    assert [(r.run, r.value) for r in report.load_group(results, "train-size") if r.result] == [("n60000", 60000)]
    # The reduced run is flagged, and so is its overview line.
    assert "reduced: 2 of 50 epochs; sweep overrides: epochs" in section("fcn-depth")
    assert "| fcn-depth | 1 of 3 (1 reduced) |" in text
    assert "staging" not in text and "| controls | 1 of 1 (1 reduced) |" in text
    # The control was measured at K = 100, not the paper's 1000: flagged.
    assert "reduced: k=100 (paper 1000); used by 10 run(s): batch-size/batch1024" in section("controls")
    # Seeds: mean ± sd over the reference (seed 0) and seeds 1, 2, recomputed here.
    fitted = [facts["ref"].fit["s"]] + [synth(power_law(x)).fit["s"] for x in facts["seeds"].values()]
    assert f"| baseline | 3 | {np.mean(fitted):.4f} ± {np.std(fitted, ddof=1):.4f} |" in section("seeds")
    assert "| 3 of 3 |" in section("seeds")
    # Pearson r of s against test error across the optimizers, recomputed with scipy.
    opts = ["sgd", "vanilla-sgd", "adam", "radam"]
    s = [synth(power_law(facts["s"][o], 5)).fit["s"] for o in opts]
    err = [1 - facts["acc"][o] for o in opts]
    r, tau = stats.pearsonr(s, err), stats.kendalltau(s, err)
    assert (f"| s | {r.statistic:+.3f} (p {r.pvalue:.2g}) | {tau.statistic:+.3f} (p {tau.pvalue:.2g}) | 4 |"
            in section("optimizers"))
    # Checkpoints: the control as epoch 0, the epochs, the final.
    for line in ("| epoch 0 (initialisation) |", "| epoch 1 |", "| epoch 10 |", "| epoch 50 (final) |"):
        assert line in section("checkpoints")
    # No path of this machine, no temporary directory.
    assert "/machine/secret" not in text and str(tmp_path) not in text and "…/mnist" in section("Data")
    assert (out.parent / "reproduction" / "optimizers-sharpness.png").is_file()
    assert (out.parent / "reproduction" / report.CLAIMS_AT_K_FIGURE).is_file()
    # Synthetic spectra hold K = 100: the claims at K = 100 only; one control, shared by every run.
    assert "| K = 100 |" in section("The claims at other K") and "K = 300" not in section("The claims at other K")
    assert "sharpest at K = 100:" in section("The claims at other K") and "against 0 of 1 controls" in text


def test_report_is_byte_stable(synthetic_results, tmp_path):
    results, _ = synthetic_results
    outs = []
    for i in range(2):
        out = tmp_path / f"doc{i}" / "REPRODUCTION.md"
        report.render(results, out)
        figures = sorted((out.parent / "reproduction").glob("*.png"))
        outs.append((out.read_bytes(), [(p.name, p.read_bytes()) for p in figures]))
    assert outs[0] == outs[1] and len(outs[0][1]) >= 6


@pytest.mark.parametrize("damage,fragment", [
    (lambda text, d: text[:300], "is not valid JSON (Expecting ',' delimiter at line 16, column 14): it is truncated"),
    (lambda text, d: json.dumps({**d, "schema_version": 9}), "has schema_version 9; this hspec reads up to 2"),
    (lambda text, d: json.dumps({k: v for k, v in d.items() if k != "spectrum"}), "fields ['spectrum'] are missing"),
    (lambda text, d: json.dumps({**d, "spectrum": {**d["spectrum"], "eigenvalues": d["spectrum"]["eigenvalues"][:3]
                                                   + [None] + d["spectrum"]["eigenvalues"][4:]}}),
     "eigenvalue 3 of its 100 is null: the spectrum was broken when measured"),
])
def test_a_damaged_record_is_one_line_naming_the_file(synthetic_results, tmp_path, capsys, damage, fragment):
    """Issue 27, case 5: a truncated results.json, an unknown schema, a record without its spectrum or with a null
    eigenvalue: one error line naming the file (status 2), no traceback."""
    results, _ = synthetic_results
    path = results / "optimizers" / "adam" / "results.json"
    text = path.read_text()
    path.write_text(damage(text, json.loads(text)))
    rc = main(["report", "--results", str(results), "--out", str(tmp_path / "doc" / "REPRODUCTION.md")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {path}") and err.count("\n") == 1, err
    assert fragment in err


def test_a_run_without_metrics_is_named_in_the_claims_and_a_stray_folder_uses_no_control(synthetic_results, tmp_path):
    """Issue 27, case 5: a run that a claim cannot use is named in the claim's notes; a copy of a run's folder (not
    a run of any group) and an unpublished folder are not counted as users of the control they point to."""
    results, _ = synthetic_results
    path = results / "optimizers" / "adam" / "results.json"
    record.write_json(path, {k: v for k, v in json.loads(path.read_text()).items() if k != "metrics"})
    shutil.copytree(results / "optimizers" / "radam", results / "optimizers" / "radam-old-copy")
    (results / "optimizers" / "yogi").mkdir()  # a publish that never happened: control.json without results
    shutil.copy(results / "optimizers" / "radam" / "control.json", results / "optimizers" / "yogi")
    text = report.render(results, tmp_path / "doc" / "REPRODUCTION.md")
    optimizers = text[text.index("\n## optimizers\n"):]
    assert "left out, their records holding no metrics: adam" in optimizers[:optimizers.index("\n## ", 5)]
    assert "used by 10 run(s)" in text and "radam-old-copy" not in text and "optimizers/yogi" not in text


def test_report_without_results_says_not_run_yet(tmp_path):
    out = tmp_path / "R.md"
    text = report.render(tmp_path / "empty", out)
    assert text.count("Not run yet.") == len(plan.GROUPS) and "## Sensitivity" in text
    assert not (tmp_path / "reproduction").exists() or not list((tmp_path / "reproduction").glob("*.png"))


def test_sensitivity_section_reads_the_study_files(tmp_path):
    prov = {"run": "runs/x", "epoch": 50, "preset": "lenet-mnist-sgd", "k": 100, "hessian_samples": 1000, "seed": 0,
            "overrides": {}}
    entry = lambda values, k: {"k": k, **report_fit(values, k)}  # noqa: E731
    doc = {"provenance": prov, "trained": [entry(power_law(1.0), 50), entry(power_law(1.0), 100)],
           "init": [entry(exponential(), 50), entry(exponential(), 100)]}
    record.write_json(tmp_path / "sensitivity" / "ref" / "k_prefix.json", doc)
    text = report.sensitivity_section(tmp_path)
    fit = hspec.fit_power_law(power_law(1.0)[:50])
    assert f"| 50 | power law: d_KS {fit.d_ks:.4f} / d_c {fit.d_crit:.4f}, s {fit.s:.3f} |" in text


def test_lanczos_starts_say_how_far_their_converged_values_lie_from_start_0(tmp_path):
    prov = {"run": "runs/x", "epoch": 50, "preset": "lenet-mnist-sgd", "k": 4, "hessian_samples": 1000, "seed": 0,
            "overrides": {}}
    base = {"trained": {"eigenvalues": [2.0, 1.0, 0.5, 0.25]}, "init": {"eigenvalues": [4.0, 3.0, 2.0, 1.0]}}
    shifted = lambda values, at, by: [v + (by if i == at else 0.0) for i, v in enumerate(values)]  # noqa: E731
    doc = {"provenance": prov,
           "trained": [{"start": 0, "k": 4, **report_fit(np.array(base["trained"]["eigenvalues"]), 4)},
                       {"start": 1, "k": 4, "eigenvalues": shifted(base["trained"]["eigenvalues"], 2, 1e-6),
                        **report_fit(np.array(base["trained"]["eigenvalues"]), 4)},
                       {"start": 2, "k": 4, "eigenvalues": shifted(base["trained"]["eigenvalues"], 3, -3e-6),
                        **report_fit(np.array(base["trained"]["eigenvalues"]), 4)}],
           "init": [{"start": s, "k": 4, "eigenvalues": shifted(base["init"]["eigenvalues"], 0, 2e-8),
                     **report_fit(np.array(base["init"]["eigenvalues"]), 4)} for s in (0, 1, 2)]}
    # the largest shift over the starts, over lambda_1: 3e-6 / 2.0 and 2e-8 / 4.0
    text = report.start_agreement(base, doc)
    assert "1.5e-06 λ_1 (the trained network, 2 other starts)" in text
    assert "5.0e-09 λ_1 (its initialisation, 3 other starts)" in text
    record.write_json(tmp_path / "sensitivity" / "ref" / "lanczos_starts.json", doc)
    record.write_json(tmp_path / "sensitivity" / "ref" / "base.json", base)
    assert text in report.sensitivity_section(tmp_path)
    assert report.start_agreement(None, doc) == ""


def test_the_hessian_sample_line_gives_the_spread_over_draws_and_sizes():
    fits = {"pl": hspec.fit_power_law(power_law(1.0)), "exp": hspec.fit_power_law(exponential())}
    entry = lambda name, **kw: {**kw, **report_fit(power_law(1.0) if name == "pl" else exponential(), K)}  # noqa
    draws = {"provenance": {"hessian_samples": 1000},
             "trained": [entry("exp", draw=0), entry("pl", draw=1), entry("exp", draw=2)]}
    sizes = {"provenance": {"hessian_samples": 1000},
             "trained": [entry("exp", hessian_samples=500), entry("pl", hessian_samples=2000)]}
    lo, hi = sorted((fits["pl"].d_ks, fits["exp"].d_ks))
    line = report.disagreements.sample_dependence(draws, sizes, "trained")
    assert line == (f"3 draws of 1000 examples give d_KS {lo:.4f} – {hi:.4f} (a power law in 1 of 3); 500, 2000 "
                    f"examples give d_KS {fits['exp'].d_ks:.4f}, {fits['pl'].d_ks:.4f} (a power law at 2000), "
                    f"against d_c = {fits['pl'].d_crit:.4f}")
    assert report.disagreements.sample_dependence(None, None, "trained") is None


def report_fit(values, k):
    verdict = hspec.power_law_verdict(values, k)
    return {"verdict": verdict.verdict, "fit": record.fit_block(verdict, 0.05)}


def test_method_choice_summary_ranges_and_reach(tmp_path):
    """Each choice's d_KS and s ranges, and which setting reaches the paper's baseline within the seeds' spread."""
    prov = {"run": "runs/x", "epoch": 50, "preset": "lenet-mnist-sgd", "k": 100, "hessian_samples": 1000, "seed": 0,
            "overrides": {}}
    k_entry = lambda values, k: {"k": k, **report_fit(values, k)}  # noqa: E731
    record.write_json(tmp_path / "sensitivity" / "ref" / "k_prefix.json", {
        "provenance": prov, "trained": [k_entry(exponential(), 50), k_entry(power_law(1.045), 100)],
        "init": [k_entry(exponential(), 50), k_entry(exponential(), 100)]})
    undefined = {"m": 100, "multiplier": 1.0, "num_ritz_positive": 40, "verdict": "undefined",
                 "fit": {"d_ks": None, "s": None}}
    record.write_json(tmp_path / "sensitivity" / "ref" / "paper_procedure.json",
                      {"provenance": prov, "trained": [undefined], "init": [undefined]})
    seeds = {"seeds": [row(f"baseline-seed{i}", synth(power_law(s), seed=i)) for i, s in enumerate((1.3, 1.2, 1.25))]}
    text = report.sensitivity_section(tmp_path, seeds)

    k50, k100 = hspec.fit_power_law(exponential()[:50]), hspec.fit_power_law(power_law(1.045))
    passes = sum(f.d_ks < f.d_crit for f in (k50, k100))
    assert (f"| K | 2 (0 undefined) | {passes} of 2 | {min(k50.d_ks, k100.d_ks):.4f} – {max(k50.d_ks, k100.d_ks):.4f} | "
            f"{min(k50.s, k100.s):.3f} – {max(k50.s, k100.s):.3f} | K = 100: d_KS {k100.d_ks:.4f}, s {k100.s:.3f} |"
            ) in text
    assert "| the paper's procedure (m steps, unconverged) | 1 (1 undefined) | 0 of 1 | — | — | — |" in text
    seed_fits = [hspec.fit_power_law(power_law(s)) for s in (1.3, 1.2, 1.25)]
    tol_d = max(0.01, 2 * np.std([f.d_ks for f in seed_fits], ddof=1))
    tol_s = max(0.05, 2 * np.std([f.s for f in seed_fits], ddof=1))
    assert f"d_KS is within {tol_d:.4f} and its s within {tol_s:.3f} of them" in text
    # The synthetic K = 100 spectrum is an exact power law fitted at s near 1; nothing else comes close.
    assert abs(k100.d_ks - 0.009) <= tol_d and abs(k100.s - 1.01) <= tol_s
    assert "Settings that reach it: K: K = 100." in text
    spreads = {"K": abs(k50.s - k100.s), "seed (training noise)": np.ptp([f.s for f in seed_fits])}
    assert f"moves s the most is {max(spreads, key=spreads.get)}" in text
    # Nothing measured: no summary, the section says so.
    assert report.sensitivity_section(tmp_path / "empty", {}).startswith("Not run yet")


def test_planned_control_users_group_runs_by_their_control():
    planned = report.planned_control_users()
    ref = plan.control_key(plan.run_config(plan.find_run("checkpoints/lenet-mnist-sgd")[1], {}))
    assert {"checkpoints/lenet-mnist-sgd", "optimizers/adam", "batch-size/batch512"} <= set(planned[ref])
    assert "optimizers/sgd" not in planned[ref]  # a same_as run is its source's
    noise = plan.control_key(plan.run_config(plan.find_run("label-noise/noise40")[1], {}))
    assert planned[noise] == ["label-noise/noise40"]  # noisy labels change the Hessian sample
    assert sum(map(len, planned.values())) == sum(s.same_as is None for g in plan.iter_groups() for s in g.runs)


def _with_fit(result, **fit):
    return record.SpectrumResult(**{**result.__dict__, "fit": {**result.fit, **fit}})


def test_disagreements_name_near_threshold_verdicts_the_resolution_of_s_and_the_k_dependence():
    d_c = 1.36 / np.sqrt(K)
    near = _with_fit(synth(power_law(1.0)), d_ks=1.1 * d_c, is_power_law=False)  # within 25% of d_c
    far = _with_fit(synth(exponential()), d_ks=2 * d_c)
    rows = [row("noise40", far, control=near), row("noise80", synth(power_law(1.0)))]
    assert report.near_threshold(rows) == [f"the control of noise40 (d_KS {1.1 * d_c:.4f}, d_c {d_c:.4f})"]
    # s = 1/(β − 1) and σ_s = σ_β/(β − 1)²: with β = 2 and σ_β = 0.03 both s and σ_s are plain numbers.
    a = _with_fit(synth(power_law(1.0)), beta=2.0, sigma=0.03, s=1.0)
    b = _with_fit(synth(power_law(1.0)), beta=3.0, sigma=0.2, s=0.5)
    text = report.s_resolution([row("a", a), row("b", b)])
    assert "s spans 0.500 – 1.000 across these 2 networks" in text
    assert "±0.040" in text  # median of 0.03 and 0.2/4 = 0.05
    all_rows = {name: [] for name in plan.GROUPS}
    assert report.disagreements_section(all_rows, {}) == "No claim measured so far disagrees with ours."
    all_rows["label-noise"] = rows  # noise80 is a power law: the claim "breaks down under noise" disagrees
    k_doc = {"trained": [{"k": 100, "fit": {"is_power_law": True}}, {"k": 1000, "fit": {"is_power_law": False}}],
             "init": [{"k": 100, "fit": {"is_power_law": False}}, {"k": 1000, "fit": {"is_power_law": False}}]}
    text = report.disagreements_section(all_rows, {"base": {"k_prefix": k_doc}})
    assert "- **label-noise**: The structure breaks down under label noise" in text
    assert "1 of 2 show a power law (noise80)" in text and "the control of noise40 (d_KS" in text
    assert "K (base, the trained network): power law at K = 100; not at 1000" in text
    assert "its initialisation" not in text  # its verdict does not change with K
    assert "spread of d_KS over training seeds is not measured yet" in text


def test_a_claim_on_networks_that_groups_share_is_listed_once_under_all_of_them():
    """The reference run is a row of several groups: the same disagreeing claim on the same measurements is one
    item naming the groups; a group with other measurements keeps its own item."""
    trained, init = synth(exponential()), synth(exponential())  # neither is a power law: "trained vs init" disagrees
    shared = [row("reference", trained, control=init)]
    other = [row("paper-form", synth(exponential(2.0)), control=init)]  # the same d_KS (scale-free), another λ_max
    all_rows = {name: [] for name in plan.GROUPS}
    all_rows.update(checkpoints=shared, optimizers=shared, **{"lenet-variants": other})
    text = report.disagreements_section(all_rows, {})
    assert "- **checkpoints, optimizers** (the same networks): Trained networks show a power law" in text
    assert "- **lenet-variants**: Trained networks show a power law" in text
    assert text.count("Trained networks show a power law") == 2


def test_a_control_that_passes_at_a_small_k_is_named_as_a_reason():
    """At K ≤ 100, d_c = 1.36/√K ≥ 0.136 lets an initialisation pass: a disagreeing trained-vs-control claim says
    which controls passed there; a trained network, or a control that fails, is not named."""
    passing = synth(power_law(1.0), trained=False)
    failing = synth(exponential(), trained=False)
    rows = [row("resnet", synth(power_law(1.0), trained=True), control=passing),
            row("other", synth(power_law(0.8), trained=True), control=failing)]
    text = report.controls_passing_at_small_k(rows)
    d = passing.fit
    assert text.endswith(f"the control of resnet (K = {K}: d_KS {d['d_ks']:.4f} < d_c {1.36 / np.sqrt(K):.4f})")
    assert "0.0430 at K = 1000" in text and "other" not in text
    assert report.controls_passing_at_small_k(rows[1:]) is None
    all_rows = {name: [] for name in plan.GROUPS}
    all_rows["resnet18"] = rows[:1]
    assert "random initialisations that pass at a small K" in report.disagreements_section(all_rows, {})


def test_label_fit_compares_train_accuracy_with_predicting_the_clean_labels():
    """On labels of which a fraction q was changed, predicting the clean label scores 1 − q; the accuracy above
    that, over q, is the share of changed labels the network fitted."""
    import dataclasses

    def noisy(q, acc, trained=True):
        res = synth(power_law(1.0), trained=trained)
        return dataclasses.replace(res, data={**res.data, "realised_label_noise": q},
                                   metrics={**res.metrics, "train_acc": acc})

    rows = [row("noise40", noisy(0.4, 0.66)), row("random", noisy(0.9, 0.05)), row("unchanged", synth(power_law(1.0))),
            row("init", noisy(0.4, 0.1, trained=False))]
    text = report.label_fit(rows)
    assert "noise40 66.0% against 60.0% (15% of its changed labels fitted)" in text  # (0.66 − 0.6)/0.4
    assert "random 5.0% against 10.0% (0% of its changed labels fitted)" in text
    assert "unchanged" not in text and "init" not in text  # no changed labels; not trained
    assert report.label_fit([rows[2]]) is None


def _stuck(values, **setting):
    """A trained record whose final train loss is that of uniform logits over MNIST's 10 classes, computed here
    from the softmax cross-entropy itself: the loss of a network that learned nothing of its inputs."""
    import dataclasses

    logits = np.zeros(10)
    uniform_loss = float(-(logits[3] - np.log(np.exp(logits).sum())))  # any label: −log(1/10)
    res = synth(values, trained=True, test_acc=0.1135, **setting)
    return dataclasses.replace(res, metrics={**res.metrics, "train_loss": uniform_loss, "train_acc": 0.11})


def test_a_network_that_did_not_learn_is_shown_but_kept_out_of_claims_and_error_bars():
    import dataclasses

    stuck = _stuck(power_law(1.0))
    assert record.did_not_learn(stuck)
    # A network on 80% noisy labels ends at 1.90 (0.83 ln 10, measured here): it learned, and counts.
    noisy = synth(exponential(), trained=True)
    noisy = dataclasses.replace(noisy, metrics={**noisy.metrics, "train_loss": 1.9039})
    assert not record.did_not_learn(noisy)
    # A random initialisation (not trained) is a control, never "did not learn".
    assert not record.did_not_learn(dataclasses.replace(stuck, setting={**stuck.setting, "trained": False}))

    # The step rule with the stuck power law at n1000 would see none, PL, none, PL (disagree); without it, agree.
    rows = [row("n600", synth(exponential(), trained=True), value=600), row("n1000", stuck, value=1000),
            row("n3000", synth(exponential(), trained=True), value=3000),
            row("n60000", synth(power_law(1.0), trained=True), value=60000)]
    assert claims.rule_train_size(rows).status == DISAGREE
    table = report.claims_table(claims.CLAIMS["train-size"], rows)
    assert "**agree**" in table and "left out: n1000, which did not learn" in table
    assert "did not learn: train loss 2.3026 against ln 10 = 2.3026, the loss of predicting" in report.table_row(rows[1])
    assert "(1 did not learn)" in report.overview({"train-size": rows})
    # Where the bottom line lists it, it says what decides whether a run takes off.
    assert report.stuck_setting({**stuck.setting, "learning_rate": 1.0, "train_size": 1000}) == \
        "sgd lr 1, batch 128, 1000 examples"
    assert report.stuck_setting({**stuck.setting, "learning_rate": 0.1, "labels": "random"}) == \
        "sgd lr 0.1, batch 128, random labels"

    # The seeds' error bars: mean ± sd over the seeds that learned, the stuck one named beside them.
    seeds = [row("baseline-seed0", synth(power_law(1.0), trained=True)),
             row("baseline-seed1", synth(power_law(1.3), trained=True)),
             row("baseline-seed2", _stuck(exponential()))]
    s = [seeds[0].result.fit["s"], seeds[1].result.fit["s"]]
    line = next(x for x in report.seeds_table(seeds).splitlines() if x.startswith("| baseline |"))
    assert f"| 2 | {np.mean(s):.4f} ± {np.std(s, ddof=1):.4f} |" in line and line.endswith("| baseline-seed2 |")


def test_the_report_says_which_device_measured_each_record():
    import dataclasses

    def on(device):
        res = synth(power_law(1.0))
        return dataclasses.replace(res, timing={"lanczos_s": 1.0, **({"device": device} if device else {})})

    gpu, cpu, old = on("gpu: NVIDIA H200 x1"), on("cpu (2 cores)"), on(None)
    # A shared control (the same record twice) counts once; two records of one device count twice.
    rows = {"a": [row("x", gpu, control=old), row("y", cpu, control=old)], "b": [row("z", on("gpu: NVIDIA H200 x1"))]}
    assert report.machines(rows) == ("Measured on: cpu (2 cores): 1 spectra; "
                                     f"{report.UNRECORDED_DEVICE}: 1 spectra; gpu: NVIDIA H200 x1: 2 spectra.")
    assert report.rows.device_note(gpu) == ("measured on gpu: NVIDIA H200 x1",)
    assert report.rows.device_note(cpu) == () and report.rows.device_note(old) == ()


def _measured_at(values: np.ndarray, **setting) -> record.SpectrumResult:
    """A record of a converged top len(values), fitted at K = len(values) as a run fits it."""
    import dataclasses

    res = synth(values[:K], **setting)
    verdict = hspec.power_law_verdict(values, len(values))
    return dataclasses.replace(res, fit=record.fit_block(verdict, 0.05), verdict=verdict.verdict,
                               spectrum={"eigenvalues": [float(v) for v in values], "num_converged": len(values)})


def test_claims_at_other_k_refit_prefixes_of_the_converged_spectrum():
    # Top 100 a power law (k^-1), then a steep exponential tail: a power law at K = 100, not at K = 300.
    head = power_law(1.0, 5.0)
    values = np.concatenate([head, head[-1] * np.exp(-np.arange(1, 201) / 10)])
    trained, init = _measured_at(values, trained=True), _measured_at(5 * np.exp(-np.arange(1, 301) / 20.0))
    assert not trained.is_power_law
    small = claims.at_k(trained, 100)
    alone = hspec.power_law_verdict(values[:100], 100)  # the top 100 fitted on their own
    assert small.is_power_law and small.fit["d_ks"] == pytest.approx(alone.fit.d_ks, rel=1e-12)
    assert small.fit["k"] == 100 and small.spectrum == trained.spectrum
    assert claims.at_k(trained, 301) is None and claims.at_k(None, 100) is None

    # The reference run appears in two groups (its control under one key): one network, one control in the counts.
    rows = {"checkpoints": [Row("lenet-mnist-sgd", trained, init, "ctl")], "optimizers": [Row("sgd", trained, init, "ctl")]}
    refits = report.refit_groups(rows, ks=(300, 100))
    assert refits.ks == [100, 300]
    text = report.claims_at_other_k(rows, refits)
    assert "| checkpoints | Trained networks show a power law (d_KS < d_c); randomly initialised ones do not. " \
           "| agree | disagree |" in text
    assert "| 100 | 1 of 1 | 0 of 1 |" in text and "| 300 | 0 of 1 | 0 of 1 |" in text
    assert "sharpest at K = 100: 1 of 1 trained networks against 0 of 1 controls" in text
    assert report.claims_at_other_k({}) == "No network measured at these K yet."
    assert report.refit_groups(rows, ks=(301,)) is None  # no network has 301 eigenvalues
    # The bottom line: the checkpoints' two claims and the optimizers' three, judged at K = 300 (their own K).
    brief = report.in_brief(rows, refits)
    a, d, u = map(int, re.search(r"(\d+) agree, (\d+) disagree and (\d+) (?:is|are) undecided", brief).groups())
    assert "of the 5 claims with results (one per group and claim)" in brief and a + d + u == 5 and brief.endswith(report.contrast_sentence(refits))


def test_a_step_claim_with_no_power_law_anywhere_says_there_is_nothing_to_break_down():
    rows = [row(f"n{n}", synth(exponential(), trained=True), value=n) for n in (600, 3000, 60000)]
    text = report.disagreements_section({"train-size": rows}, {})
    assert "**train-size**" in text and "there is no structure to break down or to appear" in text
    # Power laws at both ends and none between: a disagreement, but not for want of any power law.
    rows[0] = row("n600", synth(power_law(1.0), trained=True), value=600)
    rows[-1] = row("n60000", synth(power_law(1.0), trained=True), value=60000)
    text = report.disagreements_section({"train-size": rows}, {})
    assert "**train-size**" in text and "no structure" not in text


def test_a_large_networks_cost_is_read_from_its_records():
    """The ResNet18 note's numbers come from the run's record and its control's, not from typed text: here a
    network of 2.5 million parameters, 120 Lanczos steps (its control 200) and 600 s of Lanczos."""
    import dataclasses

    res = dataclasses.replace(synth(power_law(1.0), test_acc=0.416, lanczos_steps=120, epochs=15),
                              timing={"lanczos_s": 600.4, "trace_s": 90.0, "device": "cpu (2 cores)"},
                              num_params=2_500_000)
    control = synth(power_law(0.5), lanczos_steps=200, trained=False)
    text = report.spectrum_cost(row("net", res, control=control))
    assert text.startswith("net: 41.6% test accuracy after 15 epochs (train loss 0.10)")
    assert f"top {K} converged after 120 Lanczos steps, 600 s on cpu (2 cores) (and 90 s for the trace)" in text
    assert f"its initialisation's top {K} after 200 steps" in text
    # 4 bytes a parameter a step: 10 MB; the longer of the two runs, 200 steps, holds 2.0 GB.
    assert text.endswith("10 MB a step for its 2.5 million parameters (2.0 GB at 200 steps).")


def test_the_report_reads_the_plan_and_the_layout_never_a_runner():
    """Importing the report loads train.study.plan and train.study.layout, and none of the runners."""
    import subprocess
    import sys

    code = ("import sys, train.report; print(sorted(m for m in ('train.study.sweep', 'train.study.sensitivity', "
            "'train.run', 'train.driver', 'train.sweep', 'train.sensitivity') if m in sys.modules)); "
            "print('train.study.plan' in sys.modules and 'train.study.layout' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"]


def test_the_old_module_paths_stay_importable():
    """train.claims, train.sweep, train.sensitivity and train.lock re-export the moved names (the same objects)."""
    import train.claims
    import train.lock
    import train.sensitivity
    import train.sweep
    from train.study import layout, lock, sensitivity, sweep

    assert train.claims.CLAIMS is claims.CLAIMS and train.claims.rule_width is claims.rule_width
    assert train.sweep.GROUPS is plan.GROUPS and train.sweep.sweep is sweep.sweep and train.sweep.Roots is layout.Roots
    assert train.sweep.RunLock is lock.RunLock is train.lock.RunLock
    assert train.sensitivity.sensitivity is sensitivity.sensitivity
    assert train.sensitivity.SensitivitySpec is plan.SensitivitySpec
