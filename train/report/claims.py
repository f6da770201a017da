"""The paper's claims and the rules that test them: pure functions of a group's rows (train.report reads them).

A Row is one measured network as the report sees it (its record, its random-initialisation control, the
group's varying value). Each claim of docs/method.md §5 is a `Claim`: its text, a rule (`rule_*`, rows -> Outcome:
agree, disagree or undecided with the numbers it rests on) and the rule in words. Networks that did not learn
(train.record.did_not_learn) are shown by the report but kept out of every rule (`learned`). `at_k` refits a
record at a smaller K from the prefix of its converged spectrum, so that any rule can be asked at any K.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from train import catalog, record
from train.record import SpectrumResult, did_not_learn
from train.study.plan import CONTROLS

AGREE, DISAGREE, UNDECIDED = "agree", "disagree", "undecided"


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured network of a group, as the report sees it.

    Attributes:
        run: the run's name in its group (or "epoch <e>", or a control's key).
        result: its record, or None when not run yet.
        control: the record of its random-initialisation control, or None.
        control_key: the control's key (rows sharing a control share it).
        value: the group's varying setting (batch size, width, epoch...), or None.
        final: the end of a run (False for the spectra after intermediate epochs).
        notes: departures from the paper's setting, and where the result comes from.
        failed: not published, and an attempt to train it diverged (results/failed/).
    """

    run: str
    result: SpectrumResult | None
    control: SpectrumResult | None = None
    control_key: str | None = None
    value: Any = None
    final: bool = True
    notes: tuple[str, ...] = ()
    failed: bool = False

    @property
    def reduced(self) -> bool:
        return any(n.startswith("reduced") for n in self.notes)

    @property
    def learned(self) -> bool:
        """False for a trained network that learned nothing from its inputs (`did_not_learn`)."""
        return self.result is None or not did_not_learn(self.result)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A claim's status (agree, disagree, undecided) and the numbers it rests on."""

    status: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of the paper (text), the rule that tests it on our rows, and the rule in words."""

    text: str
    rule: Callable[[list[Row]], Outcome]
    how: str


# --- small helpers ----------------------------------------------------------------------------------------


def test_error(result: SpectrumResult) -> float | None:
    """1 − test accuracy of a record, or None."""
    acc = result.metrics.get("test_acc")
    return None if acc is None else 1.0 - float(acc)


def learned(rows: Sequence[Row]) -> list[Row]:
    """The rows the claims and statistics are computed from: every row but networks that did not learn."""
    return [r for r in rows if r.learned]


def not_learned_runs(rows: Sequence[Row]) -> list[str]:
    return [r.run for r in rows if r.final and not r.learned]


def exponent(result: SpectrumResult) -> float | None:
    return result.fit.get("s")


def measured(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.result is not None]


def listed(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) or "none"


def _test(fn: Callable, x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """A correlation statistic and its two-sided p-value, or None when undefined (fewer than 3 points, a
    constant input)."""
    import warnings

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(x, y)
    value, p = float(res.statistic), float(res.pvalue)
    return (value, p) if math.isfinite(value) else None


def pearson_test(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """Pearson r and its p-value (scipy.stats.pearsonr), None when undefined."""
    from scipy import stats

    return _test(stats.pearsonr, x, y)


def kendall_test(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """Kendall τ and its p-value (scipy.stats.kendalltau), None when undefined."""
    from scipy import stats

    return _test(stats.kendalltau, x, y)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r, None when undefined."""
    res = pearson_test(x, y)
    return None if res is None else res[0]


def kendall(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall τ, None when undefined."""
    res = kendall_test(x, y)
    return None if res is None else res[0]


def with_p(res: tuple[float, float] | None, spec: str = "+.2f") -> str:
    """"+0.36 (p 0.15)": a correlation with its two-sided p-value; "—" when undefined."""
    return "—" if res is None else f"{res[0]:{spec}} (p {res[1]:.2g})"


# --- the rules (pure functions of rows) --------------------------------------------------------------------


def rule_trained_vs_init(rows: list[Row]) -> Outcome:
    """Agree iff every trained network (end of run) shows a power law and none of their controls does."""
    finals = [r for r in measured(rows) if r.final]
    if not finals:
        return Outcome(UNDECIDED, "no results yet")
    trained = [r.result.is_power_law for r in finals]
    controls = {r.control_key: r.control.is_power_law for r in finals if r.control is not None}
    detail = (f"{sum(trained)} of {len(trained)} trained networks show a power law; "
              f"{sum(controls.values())} of {len(controls)} random-initialisation controls do")
    if not all(trained) or any(controls.values()):
        return Outcome(DISAGREE, detail)
    if not controls:
        return Outcome(UNDECIDED, detail + " (no control computed yet)")
    return Outcome(AGREE, detail)


def rule_no_power_law(rows: list[Row]) -> Outcome:
    """Agree iff none of the networks shows a power law."""
    done = [r for r in measured(rows) if r.final]
    if not done:
        return Outcome(UNDECIDED, "no results yet")
    hits = [r.run for r in done if r.result.is_power_law]
    detail = f"{len(hits)} of {len(done)} show a power law" + (f" ({listed(hits)})" if hits else "")
    return Outcome(DISAGREE if hits else AGREE, detail)


def rule_step(rows: list[Row], *, power_law_below: bool, what: str) -> Outcome:
    """Agree iff, in increasing order of the group's value, the verdict changes exactly once, from power law
    to none (power_law_below) or from none to power law (not power_law_below)."""
    points = sorted((r.value, r.result.is_power_law) for r in measured(rows) if r.final and r.value is not None)
    if len(points) < 2:
        return Outcome(UNDECIDED, f"{len(points)} result(s); a step needs at least two")
    flags = [f for _, f in points]
    changes = sum(a != b for a, b in zip(flags, flags[1:]))
    detail = step_detail(points, what)
    agree = changes == 1 and flags[0] == power_law_below
    return Outcome(AGREE if agree else DISAGREE, detail)


def step_detail(points: list[tuple[Any, bool]], what: str) -> str:
    """Where along the axis the verdict is a power law, in words that read right when it is everywhere or
    nowhere."""
    yes = [v for v, f in points if f]
    no = [v for v, f in points if not f]
    if not yes:
        return f"no power law at any {what} ({listed(no)})"
    if not no:
        return f"a power law at every {what} ({listed(yes)})"
    return f"power law at {what} {listed(yes)}; none at {listed(no)}"


def rule_batch_size(rows: list[Row]) -> Outcome:
    """Agree iff the verdict flips once, from power law to none, as the batch size grows."""
    return rule_step(rows, power_law_below=True, what="batch size")


def rule_train_size(rows: list[Row]) -> Outcome:
    """Agree iff the verdict flips once, from none to power law, as the training set grows."""
    return rule_step(rows, power_law_below=False, what="training-set size")


def rule_depth(rows: list[Row]) -> Outcome:
    """Agree iff the verdict flips once, from none to power law, as the depth grows."""
    return rule_step(rows, power_law_below=False, what="depth")


def rule_width(rows: list[Row]) -> Outcome:
    """Agree iff the verdict flips once, from none to power law, as the width grows."""
    return rule_step(rows, power_law_below=False, what="width")


def rule_sgd_below_adam(rows: list[Row]) -> Outcome:
    """Agree iff momentum SGD's s is smaller than the s of every Adam-family optimizer with a result."""
    s = {r.result.setting.get("optimizer"): exponent(r.result) for r in measured(rows) if r.final and exponent(r.result) is not None}
    adam = {o: s[o] for o in catalog.ADAM_FAMILY if o in s}
    if "sgd" not in s or not adam:
        return Outcome(UNDECIDED, "needs SGD and at least one Adam-family optimizer with a defined s")
    lowest = min(adam, key=adam.get)
    detail = (f"s(SGD) = {s['sgd']:.3f}; smallest Adam-family s = {adam[lowest]:.3f} ({lowest}), "
              f"over {len(adam)} of them")
    return Outcome(AGREE if s["sgd"] < adam[lowest] else DISAGREE, detail)


MEASURES = ("lambda_max", "Tr(H)", "test error")


def _measures(result: SpectrumResult) -> dict[str, float | None]:
    """λ_max, Tr(H) and test error of a record (None where the record lacks them)."""
    return {"lambda_max": result.sharpness.get("lambda_max"), "Tr(H)": result.sharpness.get("trace"),
            "test error": test_error(result)}


def _usable(result: SpectrumResult, names: Sequence[str]) -> bool:
    return exponent(result) is not None and all(_measures(result)[n] is not None for n in names)


def _left_out(rows: list[Row], names: Sequence[str] = MEASURES) -> str:
    """"; left out, their records holding no metrics: adam, radam" for the rows with a defined s that a
    correlation cannot use (no λ_max, Tr(H) or test error), so that no run drops out of a claim unnamed."""
    left = [r.run for r in measured(rows) if exponent(r.result) is not None and not _usable(r.result, names)]
    return f"; left out, their records holding no metrics: {listed(left)}" if left else ""


def _series(rows: list[Row], names: Sequence[str] = MEASURES) -> dict[str, tuple[list[float], list[float]]]:
    """(s, measure) pairs of the rows with a defined s and each of the named measures, per measure."""
    done = [r for r in measured(rows) if _usable(r.result, names)]
    s = [exponent(r.result) for r in done]
    return {name: (s, [_measures(r.result)[name] for r in done]) for name in names}


def rule_s_tracks_sharpness(rows: list[Row]) -> Outcome:
    """Agree iff Kendall τ between s and each of λ_max, Tr(H) and test error is positive (at least 3 runs)."""
    finals = [r for r in rows if r.final]
    tests = {name: kendall_test(x, y) for name, (x, y) in _series(finals).items()}
    n = len(_series(finals)["test error"][0])
    if any(t is None for t in tests.values()):
        return Outcome(UNDECIDED, f"{n} run(s) with a defined s; τ needs at least three distinct values"
                       + _left_out(finals))
    detail = ", ".join(f"τ(s, {name}) = {with_p(t)}" for name, t in tests.items()) + f" over {n} runs"
    # The rule is the claim's direction; the p-values say how far so few runs can carry it.
    weak = [name for name, t in tests.items() if t[1] >= 0.05]
    if weak:
        detail += f"; not significant at 5%: {', '.join(weak)}"
    return Outcome(AGREE if all(t[0] > 0 for t in tests.values()) else DISAGREE, detail + _left_out(finals))


def rule_s_tracks_test_error(rows: list[Row]) -> Outcome:
    """Across checkpoints of one run: agree iff Pearson r between s and test error is positive."""
    trained = [r for r in measured(rows) if (r.value or 0) > 0]
    x, y = _series(trained, ("test error",))["test error"]
    left = _left_out(trained, ("test error",))
    res = pearson_test(x, y)
    if res is None:
        return Outcome(UNDECIDED, f"{len(x)} checkpoint(s) with a defined s; r needs at least three" + left)
    return Outcome(AGREE if res[0] > 0 else DISAGREE,
                   f"Pearson r(s, test error) = {with_p(res)} over {len(x)} checkpoints" + left)


def rule_controls(rows: list[Row]) -> Outcome:
    """The controls group: agree iff no randomly initialised network shows a power law."""
    return rule_no_power_law(rows)


def rule_baseline_seeds(rows: list[Row]) -> Outcome:
    """Agree iff every seed of the baseline shows a power law and none of its controls does."""
    return rule_trained_vs_init([r for r in rows if r.run.startswith("baseline")])


PL_CLAIM = "Trained networks show a power law (d_KS < d_c); randomly initialised ones do not."
_TRAINED = Claim(PL_CLAIM, rule_trained_vs_init, "every trained network is a power law and none of its controls is")


def _s_tracks_sharpness(across: str) -> Claim:
    """The paper's sharpness claim, tested by Kendall τ across the networks of a group (`across`: what varies)."""
    return Claim("Smaller ŝ goes with smaller λ_max, smaller Tr(H) and lower test error.", rule_s_tracks_sharpness,
                 f"Kendall τ of s against each of λ_max, Tr(H) and test error is positive across the {across}")


_OPTIMIZER_CLAIMS = (
    _TRAINED,
    Claim("Momentum SGD gives a smaller ŝ than the Adam family.", rule_sgd_below_adam,
          "s(SGD) below the s of every Adam-family optimizer (Adam, AMSGrad, AdaBound, Yogi, RAdam, DiffGrad)"),
    _s_tracks_sharpness("optimizers"),
)
# The batch-size sweeps: the paper's step claim, and its sharpness claim across the batch sizes (networks trained
# on the same data that differ in how they were trained, the large-batch sharp-minima reading).
_BATCH_CLAIMS = (
    Claim("The power-law structure breaks down abruptly above a critical batch size.", rule_batch_size,
          "in increasing batch size the verdict changes once, from power law to none"),
    _s_tracks_sharpness("batch sizes"),
)
CLAIMS: dict[str, tuple[Claim, ...]] = {
    "checkpoints": (
        Claim(PL_CLAIM, rule_trained_vs_init, "the network after the last epoch is a power law and its "
              "initialisation is not"),
        Claim("Smaller ŝ goes with lower test error: the generalisation claim is a correlation across "
              "checkpoints of one training run (docs/method.md §4).", rule_s_tracks_test_error,
              "Pearson r between s and test error across the checkpoints is positive"),
    ),
    "optimizers": _OPTIMIZER_CLAIMS,
    "batch-size": _BATCH_CLAIMS,
    "batch-size-iters1000": _BATCH_CLAIMS,
    "train-size": (Claim("The structure breaks down with too little data.", rule_train_size,
                         "in increasing training-set size the verdict changes once, from none to power law"),),
    "label-noise": (Claim("The structure breaks down under label noise (40%, 80%) and random labels.",
                          rule_no_power_law, "none of the three networks is a power law"),),
    "fcn-depth": (Claim("The structure needs enough capacity (depth).", rule_depth,
                        "in increasing depth the verdict changes once, from none to power law"),),
    "fcn-width": (Claim("The structure needs enough capacity (width).", rule_width,
                        "in increasing width the verdict changes once, from none to power law"),),
    "linear": (_TRAINED,),
    "lenet-variants": (_TRAINED,),
    CONTROLS: (Claim("Randomly initialised networks do not show a power law.", rule_controls,
                           "no control is a power law"),),
    "seeds": (Claim(PL_CLAIM, rule_baseline_seeds, "all 3 seeds of the baseline are power laws and none of "
                    "their controls is"),),
    "fashion-mnist": _OPTIMIZER_CLAIMS,
    "cifar10-lenet": _OPTIMIZER_CLAIMS,
    "avila": (_TRAINED,),
    "resnet18": (_TRAINED,),
}


# Claims that the verdict changes once along the group's axis: the axis, and the sign of Kendall τ(value, d_KS)
# the claim implies (d_KS grows where the structure breaks down, with the batch size; it shrinks where the
# structure appears, with more data, depth or width).
STEP_TRENDS: dict[Callable, tuple[str, int]] = {rule_batch_size: ("batch size", +1),
                                                rule_train_size: ("training-set size", -1),
                                                rule_depth: ("depth", -1), rule_width: ("width", -1)}
STEP_RULES = tuple(STEP_TRENDS)
# Claims about an ordering or a correlation of s (not about a verdict): their reasons are the resolution of s.
ORDERING_RULES = (rule_sgd_below_adam, rule_s_tracks_sharpness, rule_s_tracks_test_error)


def at_k(result: SpectrumResult | None, k: int) -> SpectrumResult | None:
    """A record as measured with K = k: the fit of the top k of its converged spectrum (the top k of a converged
    top K are the converged top k, so this is exact, not an approximation). None when it holds fewer than k."""
    if result is None or (result.fit.get("k") or 0) < k or result.spectrum.get("num_converged", 0) < k:
        return None
    entry = record.refit(result.eigenvalues[:k], k)
    return dataclasses.replace(result, fit=entry["fit"], verdict=entry["verdict"])


def rows_at_k(rows: list[Row], k: int, refit: Callable = at_k) -> list[Row] | None:
    """A group's rows with every record refitted at K = k by `refit` (at_k, or a caching wrapper of it); rows of
    networks measured with fewer than k left out (the controls of Avila and ResNet18, K = 50). None when no
    measured network is left."""
    out = []
    for r in rows:
        result = refit(r.result, k)
        if r.result is None or result is not None:
            out.append(dataclasses.replace(r, result=result, control=refit(r.control, k)))
    return out if measured(out) else None


def step_trend(rows: Sequence[Row], rule: Callable) -> str | None:
    """How d_KS moves along a step claim's axis (Kendall τ with its p-value), and whether that is the direction
    the claim implies: a claim can fail at the threshold d_c while its direction holds. None under 3 networks."""
    what, sign = STEP_TRENDS[rule]
    points = sorted((r.value, r.result.fit["d_ks"]) for r in measured(rows)
                    if r.final and r.value is not None and r.result.fit.get("d_ks") is not None)
    res = kendall_test([v for v, _ in points], [d for _, d in points]) if len(points) >= 3 else None
    if res is None:
        return None
    implied = f"d_KS {'rising' if sign > 0 else 'falling'} as the {what} grows"
    direction = f"the direction the claim implies ({implied})" if res[0] * sign > 0 else \
        f"not the direction the claim implies ({implied})"
    significance = "" if res[1] < 0.05 else ", not significant at 5%"
    return f"d_KS against {what}: Kendall τ = {with_p(res)} over {len(points)} networks: {direction}{significance}"
