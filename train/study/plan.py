"""The paper's plan: the sweep groups and their runs, each run's configuration and control key, the sensitivity studies.

A group (GROUPS) is a list of runs, each a preset plus the few fields that define it (a seed); a run that is the
same training as a run of another group is declared `same_as` it (source_of follows it). `run_config` derives a
run's configuration (its departures from the paper's setting, then a sweep's overrides); `control_key` names the
random-initialisation control it shares with every run of the same initial network and Hessian sample. The
sensitivity study's settings (SensitivitySpec) are defined here too, so that the report reads them without the
runners (train.study.sweep, train.study.sensitivity) that produce the results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator

from train import config as config_lib
from train import presets
from train.catalog import FULL_TRAIN_SIZE, OPTIMIZERS
from train.config import Config, ConfigError

# The group of the random-initialisation controls (no runs of its own; results/controls/<key>/).
CONTROLS = "controls"

# A random-initialisation control is a function of these fields only: the initial network (data, model,
# seed) and the Hessian sample (training-set options, sample size) and how its spectrum is measured.
CONTROL_FIELDS = ("dataset", "model", "depth", "width", "activation", "batchnorm", "conv1_padding", "pooling", "seed",
                  "train_size",
                  "label_noise", "random_labels", "gaussian_inputs", "hessian_samples", "k", "lanczos_steps",
                  "max_lanczos_steps", "hessian_batch_size", "trace_samples")


class SweepError(ConfigError):
    """A bad group name, shard or root (the CLI answers it with one line and exit status 2)."""


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One run of a group.

    Attributes:
        name: the run's directory name within its group.
        preset: the preset it trains (train.presets).
        fields: the fields that define the run beyond its preset, as (name, value) pairs (e.g. a seed).
        same_as: "group/run" of the identical run trained in another group, or None.
        departures: fields on which the run must leave the paper's setting, as (name, value) pairs: applied
            like a sweep's --set (so recorded in overrides.json and marked in the report), before it.
        why: the reason for the departures, measured (the report prints it).
    """

    name: str
    preset: str
    fields: tuple[tuple[str, Any], ...] = ()
    same_as: str | None = None
    departures: tuple[tuple[str, Any], ...] = ()
    why: str = ""


@dataclasses.dataclass(frozen=True)
class Group:
    """A named sweep: its runs in a fixed order (the order shards split) and the setting that varies."""

    name: str
    description: str
    axis: str | None
    runs: tuple[SweepRun, ...]


def _slug(name: str) -> str:
    return name.replace("_", "-")


REFERENCE = "checkpoints/lenet-mnist-sgd"
# Measured (results/failed/linear/linear.json): without ReLU or BatchNorm, SGD at the paper's lr 0.1 ends
# epoch 1 at train loss 0.88 (78% accuracy) and reaches a NaN loss in epoch 2.
LINEAR_LR_WHY = ("at the paper's lr 0.1 the network without ReLU or BatchNorm diverges (the training loss is NaN in "
                 "epoch 2), so it trains at lr 0.01")


# Measured (results/cifar10-lenet/vanilla-sgd, adai): at the paper's CIFAR lr 1, LeNet-5 on the CIFAR-10 subset
# with vanilla SGD or Adai ends 200 epochs at train loss 2.3017 against ln 10 = 2.3026 and 9% test accuracy
# (PNM, also at lr 1, learns). Both stay in the group at the paper's rate; these runs sit beside them at 0.1.
CIFAR_LR1_WHY = ("at the paper's CIFAR lr 1 this optimizer does not learn on the CIFAR-10 subset (train loss "
                 "2.3017 after 200 epochs against ln 10 = 2.3026, test accuracy 9%; the run beside it), so this "
                 "one trains at lr 0.1")
CIFAR_LR1_STUCK = ("vanilla_sgd", "adai")


def _optimizer_runs(slug: str, sgd_same_as: str | None = None) -> tuple[SweepRun, ...]:
    """One run per optimizer of the paper's table on one dataset."""
    return tuple(SweepRun(_slug(o), f"lenet-{slug}-{_slug(o)}", same_as=sgd_same_as if o == "sgd" else None)
                 for o in OPTIMIZERS)


def _seed_runs(series: str, preset: str, source: str) -> tuple[SweepRun, ...]:
    """Seeds 0, 1, 2 of a preset; seed 0 is the run `source` (no spectra after intermediate epochs)."""
    return tuple(SweepRun(f"{series}-seed{s}", preset, (("seed", s), ("spectrum_epochs", ())),
                          same_as=source if s == 0 else None) for s in range(3))


def _build_groups() -> dict[str, Group]:
    """Every group of METHOD.md §5, in the order `--list` shows them."""
    g = [
        Group("checkpoints", "the reference run (LeNet-5, MNIST, momentum SGD, 50 epochs): spectra after epochs "
              "1, 2, 3, 10, 20, 30 and 50", "epochs", (SweepRun("lenet-mnist-sgd", "lenet-mnist-sgd"),)),
        Group("optimizers", "LeNet-5 on MNIST with the paper's eleven optimizers", "optimizer",
              _optimizer_runs("mnist", REFERENCE)),
        Group("batch-size", "LeNet-5, MNIST, SGD: batch size at a fixed 50 epochs", "batch_size",
              tuple(SweepRun(f"batch{b}", f"lenet-mnist-batch{b}", same_as=REFERENCE if b == 128 else None)
                    for b in presets.BATCH_SIZES)),
        Group("batch-size-iters1000", "LeNet-5, MNIST, SGD: batch size at a fixed 1000 iterations", "batch_size",
              tuple(SweepRun(f"batch{b}", f"lenet-mnist-iters1000-batch{b}") for b in presets.BATCH_SIZES)),
        Group("train-size", "LeNet-5, MNIST, SGD: training-set size", "train_size",
              # All 60000 examples is the reference run itself (same_training): never trained twice.
              tuple(SweepRun(f"n{n}", f"lenet-mnist-n{n}", same_as=REFERENCE if n == FULL_TRAIN_SIZE["mnist"] else None)
                    for n in presets.TRAIN_SIZES)),
        Group("label-noise", "LeNet-5, MNIST, SGD: 40% and 80% symmetric label noise, random labels", None,
              (SweepRun("noise40", "lenet-mnist-noise40"), SweepRun("noise80", "lenet-mnist-noise80"),
               SweepRun("random-labels", "lenet-mnist-random-labels"))),
        Group("fcn-depth", "FCN on MNIST: 1, 2, 4 hidden layers of width 100", "depth",
              tuple(SweepRun(f"depth{d}", f"fcn-mnist-depth{d}") for d in presets.FCN_DEPTHS)),
        Group("fcn-width", "FCN on MNIST: 2 hidden layers of width 10...100", "width",
              tuple(SweepRun(f"width{w}", f"fcn-mnist-width{w}", same_as="fcn-depth/depth2" if w == 100 else None)
                    for w in presets.FCN_WIDTHS)),
        Group("linear", "linear networks on MNIST, with or without ReLU and BatchNorm", None,
              (SweepRun("linear", "linear-mnist", departures=(("learning_rate", 0.01),), why=LINEAR_LR_WHY),)
              + tuple(SweepRun(n.removeprefix("linear-mnist-"), n)
                      for n in ("linear-mnist-relu", "linear-mnist-bn", "linear-mnist-relu-bn"))),
        Group("lenet-variants", "LeNet-5 on MNIST with SGD in the layer variants the paper leaves open: padding "
              "of the first convolution, max or average pooling", None,
              (SweepRun("paper-form", "lenet-mnist-sgd", same_as=REFERENCE),
               SweepRun("nopad", "lenet-mnist-sgd-nopad"), SweepRun("avgpool", "lenet-mnist-sgd-avgpool"))),
        Group(CONTROLS, "the random-initialisation control of every run above and below, once per distinct "
              "network and Hessian sample (no training)", None, ()),
        Group("seeds", "seeds 0, 1, 2 of the reference run and of batch sizes 640 and 768 (error bars)", "seed",
              _seed_runs("baseline", "lenet-mnist-sgd", REFERENCE)
              + _seed_runs("batch640", "lenet-mnist-batch640", "batch-size/batch640")
              + _seed_runs("batch768", "lenet-mnist-batch768", "batch-size/batch768")),
        Group("fashion-mnist", "LeNet-5 on Fashion-MNIST with the eleven optimizers (200 epochs)", "optimizer",
              _optimizer_runs("fashion-mnist")),
        Group("cifar10-lenet", "LeNet-5 on the CIFAR-10 subset (4000 train / 1000 test) with the eleven "
              "optimizers (200 epochs); vanilla SGD and Adai also at lr 0.1", "optimizer",
              _optimizer_runs("cifar10")
              + tuple(SweepRun(f"{_slug(o)}-lr0.1", f"lenet-cifar10-{_slug(o)}", departures=(("learning_rate", 0.1),),
                               why=CIFAR_LR1_WHY) for o in CIFAR_LR1_STUCK)),
        Group("avila", "FCN (2x100) on Avila, K = 50", None, (SweepRun("fcn-avila", "fcn-avila"),)),
        Group("resnet18", "ResNet18 on the CIFAR-10 subset, K = 50", None,
              (SweepRun("resnet18-cifar10-sgd", "resnet18-cifar10-sgd"),)),
    ]
    return {group.name: group for group in g}


GROUPS = _build_groups()


def get_group(name: str, groups: dict[str, Group] | None = None) -> Group:
    """The named group.

    Raises:
        SweepError: unknown name, listing the valid ones.
    """
    groups = GROUPS if groups is None else groups
    if name not in groups:
        raise SweepError(f"unknown sweep group {name!r}; valid groups: {', '.join(groups)}")
    return groups[name]


def find_run(ref: str, groups: dict[str, Group] | None = None) -> tuple[Group, SweepRun]:
    """The (group, run) a "group/run" reference names."""
    group_name, _, run_name = ref.partition("/")
    group = get_group(group_name, groups)
    for spec in group.runs:
        if spec.name == run_name:
            return group, spec
    raise SweepError(f"group {group_name!r} has no run {run_name!r}")


def source_of(group: Group, spec: SweepRun, groups: dict[str, Group] | None = None) -> tuple[Group, SweepRun]:
    """The run that holds `spec`'s results: itself, or the run it is the same as (followed to the end)."""
    seen = set()
    while spec.same_as is not None:
        if spec.same_as in seen:
            raise SweepError(f"same_as cycle through {spec.same_as}")
        seen.add(spec.same_as)
        group, spec = find_run(spec.same_as, groups)
    return group, spec


def iter_groups(groups: dict[str, Group] | None = None) -> Iterator[Group]:
    """The groups with runs of their own (every group but `controls`), in order."""
    for group in (GROUPS if groups is None else groups).values():
        if group.name != CONTROLS:
            yield group


# --- configurations -------------------------------------------------------------------------------------


def nominal_config(spec: SweepRun) -> Config:
    """The run's configuration in the paper's setting: its preset and fields, trained without the init control."""
    cfg = config_lib.apply_overrides(presets.get(spec.preset), dict(spec.fields))
    return dataclasses.replace(cfg, init_control=False)


def run_config(spec: SweepRun, overrides: dict[str, Any]) -> Config:
    """The run's configuration: its departures from the paper's setting, then the sweep's overrides, validated.

    A smaller `epochs` drops the spectrum epochs beyond it (they cannot be measured), so that `epochs=2`
    works on the reference run; the change is recorded with the overrides.

    Raises:
        ConfigError: an unknown field, a bad value, or an inconsistent result (naming the run).
    """
    base = nominal_config(spec)
    cfg = config_lib.apply_overrides(base, {**dict(spec.departures), **overrides})
    if "spectrum_epochs" not in overrides and cfg.epochs is not None:
        cfg = dataclasses.replace(cfg, spectrum_epochs=tuple(e for e in cfg.spectrum_epochs if e <= cfg.epochs))
    try:
        return config_lib.validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"run {spec.name} ({spec.preset}): {err}") from None


def same_training(a: Config, b: Config) -> bool:
    """Whether two configurations train the same network: equal but for the preset's name and the spectrum's
    settings, with a `train_size` of the whole training set read as no subset (the loader keeps it whole)."""
    def canonical(cfg: Config) -> Config:
        whole = cfg.train_size is not None and cfg.train_size == FULL_TRAIN_SIZE.get(cfg.dataset)
        return dataclasses.replace(cfg, train_size=None) if whole else cfg

    return not config_lib.differences(canonical(a), canonical(b), ignore=("preset",) + config_lib.SPECTRUM_FIELDS)


def applied_overrides(spec: SweepRun, cfg: Config) -> dict[str, Any]:
    """The fields on which the run's configuration departs from its nominal one (JSON-ready), for overrides.json."""
    diff = config_lib.differences(nominal_config(spec), cfg)
    return {name: config_lib.to_dict(cfg)[name] for name in sorted(diff)}


def control_fields(cfg: Config) -> dict[str, Any]:
    """The fields a random-initialisation control depends on (CONTROL_FIELDS), JSON-ready."""
    data = config_lib.to_dict(cfg)
    # The LeNet layer options came later: left out while unset (the paper's form), so that the keys of
    # controls computed before them stay valid.
    optional = ("conv1_padding", "pooling")
    return {name: data[name] for name in CONTROL_FIELDS if not (name in optional and data[name] is None)}


def control_key(cfg: Config) -> str:
    """The name of the control a run shares with every run of the same initial network and Hessian sample.

    Readable prefix (dataset, model, seed), then 10 hex digits of the sha256 of the sorted CONTROL_FIELDS.
    """
    fields = control_fields(cfg)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.dataset}-{cfg.model}-seed{cfg.seed}-{digest}"


def control_state_key(cfg: Config) -> str:
    """Where a control's Lanczos state is kept while it is computed: its key without the step budget
    (lanczos_steps, max_lanczos_steps), which the Krylov space does not depend on (a run truncated at j steps
    is exactly a j-step run; hspec.KrylovStore checks the start vector and the operator before it continues)."""
    return control_key(dataclasses.replace(cfg, lanczos_steps=None, max_lanczos_steps=None))


def control_config(cfg: Config) -> Config:
    """A canonical config of a run's control: the control fields, and defaults for everything training-only.

    The control's record therefore does not depend on which of its runs computed it first.
    """
    base = Config()
    fields = {name: getattr(cfg, name) for name in CONTROL_FIELDS}
    batch = base.batch_size if cfg.train_size is None else min(base.batch_size, cfg.train_size)
    return dataclasses.replace(base, preset="init-control", batch_size=batch, epochs=1, init_control=True,
                               spectrum_epochs=(), **fields)


def distinct_controls(groups: dict[str, Group], overrides: dict[str, Any]) -> list[tuple[str, Config]]:
    """(key, config) of every distinct control of the groups' own runs (not `same_as`), in group order."""
    out: dict[str, Config] = {}
    for group in groups.values():
        for spec in group.runs:
            if spec.same_as is None:
                cfg = run_config(spec, overrides)
                out.setdefault(control_key(cfg), cfg)
    return list(out.items())


# --- the sensitivity studies ---------------------------------------------------------------------------


SENSITIVITY_KS = (100, 300, 500, 1000)
SENSITIVITY_SAMPLES = (500, 1000, 2000)
SENSITIVITY_STARTS = 3
# Hessian samples of the run's size drawn anew: draw 0 is the run's own, draw i uses fold_in(hessian_sample, i).
SENSITIVITY_DRAWS = 3
# The paper's procedure: one Lanczos run of m = K ... 3K steps, its Ritz values taken as they are.
PAPER_MULTIPLIERS = (1.0, 1.25, 1.5, 2.0, 3.0)
STUDIES = ("k_prefix", "hessian_samples", "lanczos_starts", "paper_procedure", "hessian_draws")


@dataclasses.dataclass(frozen=True)
class SensitivitySpec:
    """What the sensitivity study varies (each tuple filtered to what the network allows)."""

    ks: tuple[int, ...] = SENSITIVITY_KS
    samples: tuple[int, ...] = SENSITIVITY_SAMPLES
    starts: int = SENSITIVITY_STARTS
    draws: int = SENSITIVITY_DRAWS
    multipliers: tuple[float, ...] = PAPER_MULTIPLIERS
    studies: tuple[str, ...] = STUDIES
