"""Loading rows: each group's runs and controls as the report sees them, read from the published results.

A Row (train.report.claims) is one measured network: its record, its control, the group's value and the notes that
say how it departs from the paper's setting. Only the results tree is read (train.study.layout), through the plan
of the groups (train.study.plan).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from train import config as config_lib
from train import record, rundir
from train.catalog import FULL_TRAIN_SIZE
from train.record import SpectrumResult
from train.report.claims import Row, listed
from train.study import layout, plan


# Config fields that do not change what is measured (micro_batch: the same gradient at float rounding), and
# rule fields whose preset value is "the rule".
_BOOKKEEPING = ("preset", "data_dir", "init_control", "keep_checkpoints", "checkpoint_every", "hessian_batch_size",
                "spectrum_epochs", "micro_batch")
_RULE_FIELDS = ("learning_rate", "lanczos_steps", "max_lanczos_steps", "augment", "activation")


def reductions(config: dict[str, Any], nominal: config_lib.Config, data: dict[str, Any],
               overrides: dict[str, Any] | None) -> list[str]:
    """How a run departs from the paper's setting (its preset), in words; [] when it does not.

    Args:
        config: the run's config.json.
        nominal: the sweep's configuration of the run without overrides (the paper's setting).
        data: the record's data block (a data subset shows as fewer training examples).
        overrides: the run's overrides.json, or None.
    """
    nom, out = config_lib.to_dict(nominal), []
    if nom["epochs"] is not None and config.get("epochs") is not None and config["epochs"] < nom["epochs"]:
        out.append(f"{config['epochs']} of {nom['epochs']} epochs")
    if config.get("max_steps") is not None and (nom["max_steps"] is None or config["max_steps"] < nom["max_steps"]):
        out.append(f"stopped at {config['max_steps']} steps" + (f" of {nom['max_steps']}" if nom["max_steps"] else ""))
    for name in sorted(nom):
        if name in _BOOKKEEPING or name in ("epochs", "max_steps") or (name in _RULE_FIELDS and nom[name] is None):
            continue
        if name in config and config[name] != nom[name]:
            out.append(f"{name}={config[name]} (paper {nom[name]})")
    full, n = FULL_TRAIN_SIZE.get(config.get("dataset")), data.get("num_train")
    if config.get("train_size") is None and full and n and n < full:
        out.append(f"data: {n} of {full} training examples")
    if overrides:
        out.append("sweep overrides: " + _assignments(overrides))
    return out


def _assignments(fields: dict[str, Any]) -> str:
    """"k=20, learning_rate=0.01": fields with their JSON values, sorted by name."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(fields.items()))


def failure_note(attempt: dict[str, Any]) -> str:
    """One failed training attempt in words (results/failed/<group>/<run>.json)."""
    over = attempt.get("overrides") or {}
    setting = f"with {_assignments(over)}" if over else "in the paper's setting"
    last = attempt.get("last_finished_epoch") or {}
    before = (f"; after epoch {last['epoch']} the training loss was {last['train_loss']:.3g}, accuracy "
              f"{100 * last['train_acc']:.1f}%" if "train_loss" in last and "train_acc" in last else "")
    return (f"diverged {setting}: the training loss became {attempt.get('loss')} at epoch {attempt.get('epoch')}, "
            f"step {attempt.get('step')}{before}")


def visible(path: Path) -> bool:
    """Not a hidden entry (a staging directory of a publish in progress, or left by a killed one)."""
    return not path.name.startswith(".") and not path.parent.name.startswith(".")


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


def load_control(run_dir: Path) -> tuple[SpectrumResult | None, str | None]:
    """The control a published run points to (control.json), if it is published."""
    pointer = read_json(run_dir / layout.CONTROL_POINTER)
    if not pointer:
        return None, None
    path = Path(os.path.normpath(run_dir / pointer["path"])) / rundir.RESULTS
    return (record.load(path) if path.is_file() else None), pointer["key"]


def run_row(results: Path, group: plan.Group, spec: plan.SweepRun) -> tuple[Row, Path | None]:
    """The row of a run (following same_as) and its published directory (None when not run yet)."""
    src_group, src = plan.source_of(group, spec)
    where = results / src_group.name / src.name
    alias = () if spec.same_as is None else (f"same run as {src_group.name}/{src.name}",)
    failures = layout.read_failures(layout.failure_path(results, src_group.name, src.name))
    failed = tuple(failure_note(a) for a in failures)
    if not layout.is_published(where):
        return Row(spec.name, None, notes=failed + alias, failed=bool(failures)), None
    result = record.load(where / rundir.RESULTS)
    control, key = load_control(where)
    config = read_json(where / rundir.CONFIG) or {}
    # Against the source's own nominal setting: an alias trains the same network (plan.same_training) but may
    # spell it differently (n60000's train_size=60000 is the reference's whole set).
    reduced = reductions(config, plan.nominal_config(src), result.data, read_json(where / layout.OVERRIDES))
    why = (src.why,) if src.why and src.departures else ()
    notes = ((("reduced: " + "; ".join(reduced),) if reduced else ()) + why + failed + alias + device_note(result)
             + micro_batch_note(config))
    value = result.setting.get(group.axis) if group.axis else None
    if group.axis and value is None:  # the source leaves the axis at its default (the whole training set)
        value = getattr(plan.nominal_config(spec), group.axis)
    return Row(spec.name, result, control, key, value, True, notes), where


def micro_batch_note(config: dict[str, Any]) -> tuple[str, ...]:
    """A run that summed its gradient over micro-batches says so (the same gradient at float rounding, not a
    departure from the paper's setting, but another float arithmetic than its whole-batch neighbours)."""
    c = config.get("micro_batch")
    return (f"gradient summed over micro-batches of {c}",) if c is not None else ()


def device_note(result: SpectrumResult) -> tuple[str, ...]:
    """A row measured elsewhere than on a CPU says where (float32 on an accelerator rounds differently)."""
    device = result.timing.get("device")
    return (f"measured on {device}",) if device and not device.startswith("cpu") else ()


def _epoch_rows(row: Row, where: Path) -> list[Row]:
    """Rows of the spectra after intermediate epochs of a run, and of its control as epoch 0."""
    rows = []
    if row.control is not None:
        rows.append(Row("epoch 0 (initialisation)", row.control, value=0, final=False,
                        notes=("the run's random-initialisation control",)))
    epochs = sorted(int(p.name) for p in (where / "epochs").glob("*") if p.name.isdigit())
    for e in epochs:
        if (where / "epochs" / str(e) / rundir.RESULTS).is_file() and e != row.value:
            rows.append(Row(f"epoch {e}", record.load(where / "epochs" / str(e) / rundir.RESULTS), value=e,
                            final=False, notes=row.notes))
    return rows + [dataclasses.replace(row, run=f"epoch {row.value} (final)")]


def control_reductions(fields: dict[str, Any], users: list[str]) -> list[str]:
    """How a control departs from the paper's setting: its fields against those of the first run using it."""
    for user in users:
        try:
            nominal = plan.nominal_config(plan.find_run(user)[1])
        except plan.SweepError:  # a run of a group that no longer exists
            continue
        paper = plan.control_fields(nominal)
        differs = [name for name in plan.CONTROL_FIELDS if name in fields and fields[name] != paper[name]]
        return [f"{name}={fields[name]} (paper {paper[name]})" for name in differs
                if not (name in _RULE_FIELDS and paper[name] is None)]
    return []


def planned_control_users() -> dict[str, list[str]]:
    """control key -> the runs of the sweep groups (in the paper's setting) that will use it."""
    planned: dict[str, list[str]] = {}
    for group in plan.iter_groups():
        for spec in group.runs:
            if spec.same_as is None:
                planned.setdefault(plan.control_key(plan.run_config(spec, {})), []).append(f"{group.name}/{spec.name}")
    return planned


def _is_published_run(where: Path) -> bool:
    """A published run of a sweep group: not a stray folder (a copy, a run of a removed group) that holds one."""
    try:
        plan.find_run(f"{where.parent.name}/{where.name}")
    except plan.SweepError:
        return False
    return layout.is_published(where)


def control_rows(results: Path) -> list[Row]:
    """Every published control, with the published runs that use it (and how it departs from the paper's setting).
    A stray folder with a control.json (not a run of any group, or not published) is not counted as a user."""
    users: dict[str, list[str]] = {}
    for pointer in sorted(p for p in results.glob(f"*/*/{layout.CONTROL_POINTER}") if visible(p.parent)):
        if not _is_published_run(pointer.parent):
            continue
        key = (read_json(pointer) or {}).get("key")
        users.setdefault(key, []).append(f"{pointer.parent.parent.name}/{pointer.parent.name}")
    rows, planned = [], planned_control_users()
    for where in sorted(p for p in (results / plan.CONTROLS).glob("*") if visible(p) and layout.is_published(p)):
        used = users.get(where.name, [])
        if used:
            note = f"used by {len(used)} run(s): {listed(used[:4])}" + (", ..." if len(used) > 4 else "")
        else:
            later = planned.get(where.name, [])
            note = "used by no published run yet" + (f"; the control of {listed(later[:4])}" +
                                                     (", ..." if len(later) > 4 else "") if later else "")
        reduced = control_reductions((read_json(where / layout.CONTROL_KEY) or {}).get("fields", {}),
                                     used or planned.get(where.name, []))
        result = record.load(where / rundir.RESULTS)
        notes = (("reduced: " + "; ".join(reduced),) if reduced else ()) + (note,) + device_note(result)
        rows.append(Row(where.name, result, value=None, notes=notes))
    return rows


def load_group(results: str | os.PathLike, name: str) -> list[Row]:
    """The rows of a group from a results directory (runs not yet published have result None).

    The checkpoints group gives one row per measured epoch of the reference run (its control as epoch 0);
    the controls group one row per published control.
    """
    results = Path(results)
    group = plan.get_group(name)
    if group.name == plan.CONTROLS:
        return control_rows(results)
    rows = []
    for spec in group.runs:
        row, where = run_row(results, group, spec)
        rows += _epoch_rows(row, where) if group.name == "checkpoints" and where is not None else [row]
    return rows


def study_docs(results: Path) -> dict[str, dict[str, Any]]:
    """Each published sensitivity folder's study files (None where a study is not run), by folder name."""
    folders = sorted(p for p in (results / layout.SENSITIVITY).glob("*") if visible(p) and p.is_dir())
    return {where.name: {s: read_json(where / f"{s}.json") for s in plan.STUDIES} for where in folders}
