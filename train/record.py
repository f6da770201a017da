"""The result record of one measured network: one frozen type, written as results.json and read back.

Everything that reads or writes a results.json goes through `SpectrumResult`: the run's writer, the
verdict table, the plots, `python -m train spectrum`, the sweep report and the LLM tracking. Its JSON
layout is a contract (users' scripts read it): fields are added, never renamed, and `schema_version`
says which fields a file has. Files of an older schema load with the missing fields null.

The `fit` block has the same keys whether the fit is defined or not: when non-positive eigenvalues lie
among the top K (common at initialisation) the numeric fields are null, `is_power_law` is false, and
`positive_fit` holds the fit over the K' positive values as a secondary figure (METHOD.md §3).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from train.catalog import NUM_CLASSES

SCHEMA_VERSION = 2
# The fit block's keys: hspec.PowerLawFit's fields, then the verdict's positive-value bookkeeping.
FIT_KEYS = ("beta", "sigma", "s", "d_ks", "d_crit", "is_power_law", "k", "xmin", "significance", "lsq_slope",
            "num_dropped", "num_positive", "positive_fit")
_NUMERIC_FIT_KEYS = ("beta", "sigma", "s", "d_ks", "xmin", "lsq_slope")


def fit_block(verdict: Any, significance: float) -> dict[str, Any]:
    """The `fit` block of a record from an `hspec.PowerLawVerdict`: the same keys, defined or not.

    Args:
        verdict: the verdict over the top K.
        significance: α of the KS test.

    Returns:
        {key: value} for every key of FIT_KEYS; numeric fields null when the fit is undefined.
    """
    import hspec

    positive = None if verdict.positive_fit is None else verdict.positive_fit.to_dict()
    if verdict.fit is not None:
        return {**{k: None for k in FIT_KEYS}, **verdict.fit.to_dict(), "num_positive": verdict.num_positive,
                "positive_fit": positive}
    return {**{k: None for k in FIT_KEYS}, "d_crit": hspec.critical_value(verdict.k, significance),
            "is_power_law": False, "k": verdict.k, "significance": significance, "num_dropped": 0,
            "num_positive": verdict.num_positive, "positive_fit": positive}


def refit(values: Any, k: int, significance: float = 0.05) -> dict[str, Any]:
    """The verdict of the top k of `values`: {"k", "verdict", "fit"} with the fit block of a record (the refits of
    the sensitivity study, the Hessian-sample study and the claims at other K all use it)."""
    import hspec

    verdict = hspec.power_law_verdict(values, k, significance)
    return {"k": int(k), "verdict": verdict.verdict, "fit": fit_block(verdict, significance)}


@dataclasses.dataclass(frozen=True)
class SpectrumResult:
    """One network's spectrum, its power-law verdict, sharpness, metrics and how it was measured.

    Attributes:
        setting: flat dict of the run's setting (dataset, model, optimizer, epochs, max_steps, k, ...):
            every way the run departs from the paper's setting is visible here.
        fit: the power-law fit block (FIT_KEYS; see the module docstring).
        verdict: the human-readable verdict.
        spectrum: eigenvalues, residuals, convergence, Lanczos steps, loss at the measured point.
        sharpness: lambda_max, trace (Hutchinson) and its standard error.
        eigengap_fit: the power-law fit of the eigengaps, or None.
        metrics: train/test loss and accuracy of the measured network.
        timing: seconds spent in Lanczos, the trace and the whole measurement, and the device that measured
            (`device`: "cpu (2 cores, Intel(R) Xeon(R) Processor)", "gpu: NVIDIA H200 x1"; the CPU model is kept
            from 2026-12-07 on; absent in records written before the device was kept).
        hessian_sample: size and indices of the examples the Hessian is computed on.
        data: where the data came from and what the options did to it.
        num_params: parameters of the network (or of the measured subset).
        checkpoint: the checkpoint measured, relative to the results file's directory, or None.
        hspec_version: the engine's version.
        keys: how the run's PRNG keys were derived (train.keys.derivation).
        schema_version: the layout of this record.
        curvature: who carries the curvature (hspec.curvature.CurvatureCarriers as a dict) over the Hessian
            sample (`sample`) and, when measured, over the whole training set (`training_set`); None in records
            written before it was kept, or where the config's `curvature` is "none".
    """

    setting: dict[str, Any]
    fit: dict[str, Any]
    verdict: str
    spectrum: dict[str, Any]
    sharpness: dict[str, Any]
    eigengap_fit: dict[str, Any] | None
    metrics: dict[str, Any]
    timing: dict[str, Any]
    hessian_sample: dict[str, Any]
    data: dict[str, Any]
    num_params: int
    checkpoint: str | None
    hspec_version: str
    keys: dict[str, Any] | None
    schema_version: int = SCHEMA_VERSION
    curvature: dict[str, Any] | None = None

    @property
    def is_power_law(self) -> bool:
        """The decision d_KS < d_c (false when the fit is undefined)."""
        return bool(self.fit["is_power_law"])

    @property
    def eigenvalues(self) -> np.ndarray:
        """The top-K eigenvalues, descending."""
        return np.asarray(self.spectrum["eigenvalues"], np.float64)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (numpy to Python, full float64 precision, non-finite floats to null)."""
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpectrumResult:
        """Rebuild a record from `to_json` output (or an older schema's results.json).

        Args:
            data: the parsed JSON.

        Returns:
            The record; fields an older schema lacks are null, and its fit block gains the missing keys.

        Raises:
            ValueError: a newer schema than this code knows, or a required field missing.
        """
        if not isinstance(data, dict):
            raise ValueError(f"not a results.json of this project: it holds a JSON {type(data).__name__}, not an "
                             "object")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"schema_version {version!r} is not one this code knows (1 to {SCHEMA_VERSION})")
        if version > SCHEMA_VERSION:
            raise ValueError(f"results.json has schema_version {version}; this hspec reads up to "
                             f"{SCHEMA_VERSION}: upgrade hspec")
        missing = [f for f in ("setting", "fit", "verdict", "spectrum") if f not in data]
        if missing:
            raise ValueError(f"not a results.json of this project: fields {missing} are missing")
        _check_spectrum(data["spectrum"])
        fields = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        fields["fit"] = {**{k: None for k in FIT_KEYS}, **data["fit"]}
        fields.update(schema_version=version, num_params=int(data.get("num_params") or 0),
                      hspec_version=data.get("hspec_version") or "unknown")
        for name in ("sharpness", "metrics", "timing", "hessian_sample", "data"):
            fields[name] = fields[name] or {}
        return cls(**fields)


def _check_spectrum(spectrum: Any) -> None:
    """A spectrum block whose eigenvalues are a list of numbers (a NaN was written as null: the record is broken)."""
    values = spectrum.get("eigenvalues") if isinstance(spectrum, dict) else None
    if not isinstance(values, list) or not values:
        raise ValueError("its spectrum has no list of eigenvalues")
    bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"eigenvalue {bad[0]} of its {len(values)} is {json.dumps(values[bad[0]])}"
                         + (f" ({len(bad)} such)" if len(bad) > 1 else "") + ": the spectrum was broken when measured")


class RecordError(ValueError):
    """A results.json that cannot be read: the message names the file, what is wrong and the cure."""


def jsonable(obj: Any) -> Any:
    """Plain Python types for JSON: numpy to Python (full float64 precision), non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("jax"):
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename), with NaN/inf written as null.

    Args:
        path: the destination (its directory is created).
        obj: a JSON-serialisable object (numpy scalars and arrays allowed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def save(result: SpectrumResult, path: str | os.PathLike) -> None:
    """Write a record as results.json (atomically)."""
    write_json(path, result.to_json())


def load(path: str | os.PathLike) -> SpectrumResult:
    """Read a results.json.

    Args:
        path: the file.

    Returns:
        The record.

    Raises:
        RecordError: the file is not valid JSON (truncated), has a schema this code does not know, lacks a required
            field, or holds an eigenvalue that is null; the message names the file.
        FileNotFoundError: there is no such file.
    """
    path = Path(path)
    cure = "restore it (git checkout, or a copy) or measure that spectrum again"
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise RecordError(f"{path} is not a text file ({err.reason}): it is damaged; {cure}") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): it is "
                          f"truncated or damaged; {cure}") from None
    try:
        return SpectrumResult.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        if "upgrade hspec" in str(err):
            raise RecordError(f"{path}: {err}") from None
        raise RecordError(f"{path} cannot be used: {str(err).rstrip('.')}; {cure}") from None


def _fmt(x: Any, spec: str) -> str:
    """Format a number, or '-' when missing."""
    return "-" if x is None else format(x, spec)


# Before it learns anything a network's best loss is that of predicting the class frequencies of its training
# labels: their entropy H (data.train_label_entropy), at most ln C. A trained network still within 2% of it has
# learned essentially nothing of its inputs (measured here: learned networks end at most at 0.83 ln C, even on
# 80% noisy labels; the runs stuck at lr 0.1 end at 0.997 - 1.000 ln C and predict the most common class).
STUCK_LOSS_FRACTION = 0.98


def no_input_loss(result: SpectrumResult) -> tuple[float, str] | None:
    """(loss, its name): the train loss of predicting the class frequencies without looking at the inputs.

    The entropy of the training labels where the record keeps it; ln C for older records (equal to it on
    balanced data such as MNIST, an upper bound on imbalanced data such as Avila). None when C is unknown.
    """
    entropy = result.data.get("train_label_entropy")
    if entropy is not None:
        return float(entropy), "the entropy of its training labels"
    classes = NUM_CLASSES.get(result.setting.get("dataset"))
    return None if not classes else (math.log(classes), f"ln {classes}")


def did_not_learn(result: SpectrumResult) -> bool:
    """True when a trained network's final train loss is within 2% of `no_input_loss`: training left it at
    the loss of a network that knows nothing of its inputs."""
    loss, floor = result.metrics.get("train_loss"), no_input_loss(result)
    if not result.setting.get("trained") or loss is None or floor is None:
        return False
    return float(loss) >= STUCK_LOSS_FRACTION * floor[0]


def did_not_learn_note(result: SpectrumResult) -> str:
    """"did not learn: train loss 2.3012 against ln 10 = 2.3026 ..., test accuracy 11.35%" (for did_not_learn)."""
    floor, name = no_input_loss(result)
    acc = result.metrics.get("test_acc")
    return (f"did not learn: train loss {result.metrics['train_loss']:.4f} against {name} = {floor:.4f}, the loss "
            f"of predicting the class frequencies without looking at the inputs"
            + ("" if acc is None else f", test accuracy {100 * acc:.2f}%"))


def verdict_table(rows: list[tuple[str, SpectrumResult]]) -> str:
    """A table a person can read: one row per spectrum with K, d_KS, d_c, s, λ_max, Tr(H), test acc, verdict.

    Args:
        rows: [(label, record)].

    Returns:
        The table as text.
    """
    head = (f"{'network':<10} {'K':>5} {'d_KS':>7} {'d_c':>7} {'s':>7} {'lambda_max':>11} {'Tr(H)':>11} "
            f"{'test acc':>8}  verdict")
    lines = [head, "-" * len(head)]
    for label, r in rows:
        fit, sh = r.fit, r.sharpness
        acc = r.metrics.get("test_acc")
        lines.append(f"{label:<10} {_fmt(fit['k'], 'd'):>5} {_fmt(fit['d_ks'], '.4f'):>7} "
                     f"{_fmt(fit['d_crit'], '.4f'):>7} {_fmt(fit['s'], '.3f'):>7} "
                     f"{_fmt(sh.get('lambda_max'), '.4g'):>11} {_fmt(sh.get('trace'), '.4g'):>11} "
                     f"{_fmt(None if acc is None else 100 * acc, '.2f'):>7}%  {r.verdict}")
    # A spectrum of a network that learned nothing answers no question about trained networks: say so.
    lines += [f"warning: {label} {did_not_learn_note(r)}; its spectrum is that of an untrained network "
              f"(try a smaller learning_rate or another seed)" for label, r in rows if did_not_learn(r)]
    return "\n".join(lines)


def power_law_fit(result: SpectrumResult) -> Any:
    """The record's fit as an `hspec.PowerLawFit`, or None when it is undefined."""
    import hspec

    if result.fit["d_ks"] is None:
        return None
    names = [f.name for f in dataclasses.fields(hspec.PowerLawFit)]
    return hspec.PowerLawFit(**{name: result.fit[name] for name in names})


def plot(result: SpectrumResult, path: str | os.PathLike, title: str | None = None) -> None:
    """Write the record's rank-eigenvalue PNG (log-log) with the fitted power law and the verdict."""
    import hspec

    hspec.plot.plot_rank_eigenvalue(result.eigenvalues, power_law_fit(result), path=str(path),
                                    title=title or result.verdict)
