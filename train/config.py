"""The run configuration: a frozen dataclass, typed overrides from strings, validation and resolution.

A `Config` holds every choice a training run makes. Presets (`train.presets`) are named `Config`s; the
command line overrides any field with `key=value` strings, parsed with the field's declared type. The
resolved config (`resolve`) fills the fields whose default is a rule (learning rate, Lanczos steps, data
augmentation, activation) and is what `config.json` records beside every result.

Rules for the spectrum defaults (METHOD.md §2), written here once:
  * `lanczos_steps` defaults to max(3·K, K + 100), at most the parameter count (the rule of
    `hspec.default_num_steps`): a Ritz value at rank ~K is an eigenvalue only when the Krylov
    dimension is well above K, and the spectrum is computed strictly, so a run whose top K did not
    converge stops with that message instead of fitting unconverged values.
  * `hessian_samples` defaults to 1000 training examples (fixed by `seed`, recorded by index); "all" takes the
    whole training set, the Hessian of the training loss as METHOD.md §1 defines it. The
    Gauss-Newton part of a cross-entropy Hessian on N samples and C classes has rank at most N·(C−1), so
    N·(C−1) must be well above K for the top K to be anything but the rank limit; validation requires
    N·(C−1) ≥ 2·K (1000 samples serve K ≤ 4500 on 10 classes).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from typing import Any, Mapping

from train import overrides
from train.catalog import DATASETS, NUM_CLASSES, OPTIMIZERS, PAPER_WEIGHT_DECAY

MODELS = ("lenet5", "fcn", "resnet18", "linear")
# Which config fields each model reads; a field set for a model that ignores it is an error, so that
# an override never silently does nothing.
MODEL_FIELDS = {
    "lenet5": ("conv1_padding", "pooling"),
    "resnet18": (),
    "fcn": ("depth", "width", "activation"),
    "linear": ("depth", "width", "activation", "batchnorm"),
}


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or inconsistent with another."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run and its spectra depend on.

    Fields left at None are rules resolved by `resolve` (the resolved value is what config.json holds).
    """

    preset: str = "default"
    # data
    dataset: str = "mnist"
    data_dir: str | None = None
    train_size: int | None = None  # None: the full training set
    label_noise: float = 0.0  # fraction of training labels replaced by a different class
    random_labels: bool = False  # every training label drawn uniformly at random
    gaussian_inputs: bool = False  # inputs replaced by standard normal noise
    augment: bool | None = None  # None: random flip + pad-4 crop on CIFAR, none elsewhere
    # model
    model: str = "lenet5"
    depth: int | None = None  # hidden layers (fcn, linear)
    width: int | None = None  # hidden width (fcn, linear)
    activation: str | None = None  # fcn: None means "relu"; linear: None (plain) or "relu"
    batchnorm: bool = False  # linear only
    conv1_padding: int | None = None  # lenet5: None gives 2 on 28x28 inputs (the paper's form), else 0
    pooling: str | None = None  # lenet5: None or "max" (the paper's form), "avg" (a sensitivity variant)
    # optimisation
    optimizer: str = "sgd"
    learning_rate: float | None = None  # None: the paper's rate, train.optim.paper_learning_rate
    weight_decay: float = PAPER_WEIGHT_DECAY
    batch_size: int = 128
    epochs: int | None = 3
    max_steps: int | None = None  # stop after this many steps (fixed-iteration sweeps)
    lr_drop_fractions: tuple[float, ...] = (0.4, 0.8)  # of the run's length, at epoch boundaries
    lr_drop_epochs: tuple[int, ...] = ()  # when given, replaces lr_drop_fractions
    lr_drop_factor: float = 0.1
    drop_last: bool = False  # drop the last partial batch of each epoch
    # Accumulate each step's gradient over micro-batches of this many examples (None: the whole batch at
    # once). The same gradient at float rounding, far less memory, and faster for huge batches on a CPU.
    micro_batch: int | None = None
    seed: int = 0
    # spectrum
    k: int = 100
    # The Hessian sample: this many training examples, or "all" (the whole training set, the paper's definition of
    # H; resolved to the count when the data is loaded, and recorded so).
    hessian_samples: int | str = 1000
    lanczos_steps: int | None = None  # None: max(3k, k + 100), see the module docstring
    max_lanczos_steps: int | None = None  # grow the Krylov space up to this until the top k converge (None: 4x)
    hessian_batch_size: int = 1000
    # Who carries the curvature (hspec.curvature: per-example Gauss-Newton traces): over the Hessian sample
    # ("sample", ~20-45 ms per LeNet-5 example on a 2-core CPU), also over the whole training set ("all"), or not.
    curvature: str = "sample"
    trace_samples: int = 20
    spectrum_epochs: tuple[int, ...] = ()  # spectra also after these epochs
    init_control: bool = True  # the spectrum at initialisation, written to init/results.json
    # checkpoints
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    keep_checkpoints: int = 2  # most recent ones kept (epoch 0 and spectrum epochs are always kept)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Config))
# hessian_samples=ALL_SAMPLES: the whole training set.
ALL_SAMPLES = "all"
CURVATURE_SCOPES = ("sample", "all", "none")
# Fields that do not change the trained network (what is measured, and where): the only ones --resume, `spectrum`
# and `sensitivity` may change; every other field must match the stored run.
SPECTRUM_FIELDS = ("k", "hessian_samples", "lanczos_steps", "max_lanczos_steps", "hessian_batch_size", "curvature",
                   "trace_samples",
                   "spectrum_epochs", "init_control", "data_dir", "keep_checkpoints")


def field_types() -> dict[str, Any]:
    """The declared type of every Config field.

    Returns:
        Mapping from field name to its (evaluated) type annotation.
    """
    return typing.get_type_hints(Config)


def parse_value(name: str, text: str) -> Any:
    """Parse a command-line string into the type of the Config field `name` (train.overrides.parse_typed).

    "none"/"null" give None for optional fields; tuples are comma-separated ("" or "()" is empty).

    Args:
        name: a Config field name.
        text: the value as typed on the command line.

    Returns:
        The value, of the field's type.

    Raises:
        ConfigError: unknown field, or a value that does not parse as the field's type.
    """
    check_known(name)
    return overrides.typed_changes({name: text}, field_types(), error=ConfigError)[name]


def check_known(name: str) -> None:
    """Raise a ConfigError listing the valid fields when `name` is not a Config field.

    Args:
        name: the field name to check.
    """
    if name not in FIELD_NAMES:
        close = difflib.get_close_matches(name, FIELD_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config field {name!r}{hint}; valid fields: {', '.join(FIELD_NAMES)}")


def apply_overrides(cfg: Config, changes: Mapping[str, Any]) -> Config:
    """Return `cfg` with fields replaced; string values are parsed with the field's type.

    Args:
        cfg: the base configuration.
        changes: field name -> value (a string from the command line, or a typed Python value).

    Returns:
        The new Config (not yet validated against the other fields; see `validate`).

    Raises:
        ConfigError: an unknown field or a value of the wrong type.
    """
    for name in changes:
        check_known(name)
    return dataclasses.replace(cfg, **overrides.typed_changes(changes, field_types(), error=ConfigError))


def parse_assignments(items: list[str]) -> dict[str, str]:
    """Split command-line `key=value` strings into a dict (values stay strings; train.overrides).

    Args:
        items: strings such as "epochs=5".

    Returns:
        Mapping key -> value string, in the given order.

    Raises:
        ConfigError: an item without "=", with an unknown key, or a key set twice (in any spelling: `--set k=12
            --set k=8`, `k=12 --set k=8`, `--k 12 k=8`), naming both values: no silent "last one wins".
    """
    return overrides.parse_assignments(items, error=ConfigError, check_key=check_known, hint="epochs=5")


def _require(cond: bool, message: str) -> None:
    """Raise a ConfigError with `message` unless `cond` holds."""
    if not cond:
        raise ConfigError(message)


def _validate_data(cfg: Config) -> None:
    """Checks of the data fields."""
    _require(cfg.dataset in DATASETS, f"unknown dataset {cfg.dataset!r}; valid: {', '.join(DATASETS)}")
    _require(cfg.train_size is None or cfg.train_size >= 1,
             f"train_size must be a positive integer or none (full set), got {cfg.train_size}")
    _require(0.0 <= cfg.label_noise <= 1.0, f"label_noise must lie in [0, 1], got {cfg.label_noise}")
    if cfg.train_size is not None:
        _require(cfg.batch_size <= cfg.train_size,
                 f"batch_size={cfg.batch_size} exceeds train_size={cfg.train_size}; use batch_size <= {cfg.train_size}")
        _require(cfg.hessian_samples == ALL_SAMPLES or cfg.hessian_samples <= cfg.train_size,
                 f"hessian_samples={cfg.hessian_samples} exceeds train_size={cfg.train_size}: the Hessian sample is "
                 f"drawn from the training set; use hessian_samples <= {cfg.train_size}")
    _require(not (cfg.augment and cfg.dataset == "avila"), "augment (flip + crop) needs images; avila is tabular")
    _require(not (cfg.random_labels and cfg.label_noise > 0),
             "random_labels and label_noise are exclusive; set label_noise=0 with random_labels=true")


def _validate_model(cfg: Config) -> None:
    """Checks of the model fields: known model, and only the fields that model reads."""
    _require(cfg.model in MODELS, f"unknown model {cfg.model!r}; valid: {', '.join(MODELS)}")
    used = MODEL_FIELDS[cfg.model]
    for name, unset in (("depth", None), ("width", None), ("activation", None), ("batchnorm", False),
                        ("conv1_padding", None), ("pooling", None)):
        if name not in used:
            _require(getattr(cfg, name) == unset,
                     f"{name}={getattr(cfg, name)!r} is not used by model {cfg.model!r} "
                     f"(it reads {', '.join(used) or 'none of depth/width/activation/batchnorm'}); unset it")
    if cfg.model in ("fcn", "linear"):
        _require(cfg.depth is not None and cfg.depth >= 1, f"model {cfg.model!r} needs depth >= 1")
        _require(cfg.width is not None and cfg.width >= 1, f"model {cfg.model!r} needs width >= 1")
    if cfg.model == "resnet18" or cfg.model == "lenet5":
        _require(cfg.dataset != "avila", f"model {cfg.model!r} needs image data; avila is tabular (use fcn)")
    if cfg.model == "resnet18":
        _require(cfg.dataset in ("cifar10", "cifar100"), "resnet18 is the CIFAR ResNet; use cifar10/cifar100")
    _require(cfg.pooling in (None, "max", "avg"), f"pooling must be 'max' or 'avg' (or none), got {cfg.pooling!r}")
    _require(cfg.conv1_padding is None or cfg.conv1_padding >= 0,
             f"conv1_padding must be >= 0 (or none), got {cfg.conv1_padding}")


def _validate_optim(cfg: Config) -> None:
    """Checks of the optimisation fields."""
    _require(cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    _require(cfg.learning_rate is None or cfg.learning_rate > 0, f"learning_rate must be > 0, got {cfg.learning_rate}")
    _require(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    _require(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _require(cfg.micro_batch is None or cfg.micro_batch >= 1,
             f"micro_batch must be >= 1 (or none for the whole batch), got {cfg.micro_batch}")
    _require(cfg.micro_batch is None or not (cfg.batchnorm or cfg.model == "resnet18"),
             f"micro_batch={cfg.micro_batch} with BatchNorm (model {cfg.model!r}): BatchNorm normalises by the "
             f"whole batch's statistics, which micro-batches would change; unset micro_batch")
    _require(cfg.epochs is not None or cfg.max_steps is not None,
             "set epochs or max_steps (or both: the run stops at whichever comes first)")
    _require(cfg.epochs is None or cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    _require(cfg.max_steps is None or cfg.max_steps >= 1, f"max_steps must be >= 1, got {cfg.max_steps}")
    _require(all(0.0 < f < 1.0 for f in cfg.lr_drop_fractions),
             f"lr_drop_fractions must lie strictly between 0 and 1, got {cfg.lr_drop_fractions}")
    _require(all(e >= 1 for e in cfg.lr_drop_epochs), f"lr_drop_epochs must be >= 1, got {cfg.lr_drop_epochs}")
    _require(0.0 < cfg.lr_drop_factor <= 1.0, f"lr_drop_factor must lie in (0, 1], got {cfg.lr_drop_factor}")
    _require(cfg.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {cfg.checkpoint_every}")
    _require(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")


def _validate_spectrum(cfg: Config) -> None:
    """Checks of the spectrum fields, including the Hessian-sample rank rule."""
    _require(cfg.k >= 2, f"k must be >= 2 (a power-law fit needs at least two eigenvalues), got {cfg.k}")
    _require(cfg.hessian_samples == ALL_SAMPLES or (isinstance(cfg.hessian_samples, int) and cfg.hessian_samples >= 1),
             f"hessian_samples must be a count >= 1 or {ALL_SAMPLES!r} (the whole training set), got "
             f"{cfg.hessian_samples!r}")
    _require(cfg.hessian_batch_size >= 1, f"hessian_batch_size must be >= 1, got {cfg.hessian_batch_size}")
    _require(cfg.curvature in CURVATURE_SCOPES,
             f"curvature must be one of {', '.join(CURVATURE_SCOPES)} (over the Hessian sample, also the whole "
             f"training set, or not at all), got {cfg.curvature!r}")
    _require(cfg.trace_samples >= 2,
             f"trace_samples must be >= 2 (the trace's standard error needs two probes), got {cfg.trace_samples}")
    _require(cfg.max_lanczos_steps is None or cfg.lanczos_steps is None or cfg.max_lanczos_steps >= cfg.lanczos_steps,
             f"max_lanczos_steps ({cfg.max_lanczos_steps}) must be >= lanczos_steps ({cfg.lanczos_steps})")
    if cfg.epochs is not None:
        late = [e for e in cfg.spectrum_epochs if not 1 <= e <= cfg.epochs]
        _require(not late, f"spectrum_epochs {late} lie outside 1..epochs={cfg.epochs}")


def validate(cfg: Config) -> Config:
    """Check a configuration's fields against each other (data-dependent checks happen at run time).

    Args:
        cfg: the configuration.

    Returns:
        The same configuration, for chaining.

    Raises:
        ConfigError: naming the field, the problem and the fix.
    """
    _validate_data(cfg)
    _validate_model(cfg)
    _validate_optim(cfg)
    _validate_spectrum(cfg)
    return cfg


def check_against_model(cfg: Config, num_params: int) -> None:
    """The spectrum fields against the model's size: K and the Lanczos steps first (the hard limit,
    the number of parameters), then the Hessian sample's rank rule (see the module docstring).

    Raises:
        ConfigError: naming the limit and the fix.
    """
    _require(cfg.k <= num_params, f"k={cfg.k} exceeds the model's {num_params} parameters (the Hessian has "
                                  f"{num_params} eigenvalues); use k <= {num_params}")
    _require(cfg.lanczos_steps is None or cfg.lanczos_steps <= num_params,
             f"lanczos_steps={cfg.lanczos_steps} exceeds the model's {num_params} parameters (the Krylov dimension "
             f"cannot); use lanczos_steps <= {num_params} or leave it unset")
    _require(cfg.lanczos_steps is None or cfg.lanczos_steps > cfg.k,
             f"lanczos_steps ({cfg.lanczos_steps}) must exceed k ({cfg.k}); leave it unset for max(3k, k + 100)")
    if cfg.hessian_samples == ALL_SAMPLES:  # the training set's size is checked when the data is loaded
        return
    check_sample_rank(cfg, cfg.hessian_samples)


def hessian_sample_size(cfg: Config, n_train: int) -> int:
    """The number of Hessian examples: `hessian_samples`, or the training set's size for "all"."""
    return n_train if cfg.hessian_samples == ALL_SAMPLES else int(cfg.hessian_samples)


def check_sample_rank(cfg: Config, size: int) -> None:
    """The Hessian sample's rank rule (module docstring): size · (C − 1) >= 2K."""
    classes = NUM_CLASSES[cfg.dataset]
    rank = size * (classes - 1)
    _require(rank >= 2 * cfg.k,
             f"hessian_samples={cfg.hessian_samples} on {classes} classes bounds the Gauss-Newton rank by {rank}, "
             f"too close to k={cfg.k}: use hessian_samples >= {math.ceil(2 * cfg.k / (classes - 1))} or a smaller k")


def resolve(cfg: Config, num_params: int | None = None) -> Config:
    """Fill the rule-valued fields (learning rate, Lanczos steps, augmentation, activation) of a validated config
    (`validate`: train.experiment.build_experiment validates once, then resolves).

    Args:
        cfg: the configuration as given, validated.
        num_params: the model's parameter count, when known: K must not exceed it, and the Lanczos
            rule is clamped to it (an explicit lanczos_steps above it is an error).

    Returns:
        The resolved configuration that config.json records.

    Raises:
        ConfigError: K / lanczos_steps larger than the parameter count, max_lanczos_steps below lanczos_steps.
    """
    from hspec import default_num_steps  # the one Lanczos-steps rule, max(3k, k + 100)
    from train import optim

    steps = cfg.lanczos_steps
    if num_params is not None:
        check_against_model(cfg, num_params)
    if steps is None:
        steps = default_num_steps(cfg.k, num_params)  # num_params None: no bound yet
    _require(cfg.max_lanczos_steps is None or cfg.max_lanczos_steps >= steps,
             f"max_lanczos_steps={cfg.max_lanczos_steps} is below the {steps} Lanczos steps the run starts with; "
             f"use max_lanczos_steps >= {steps} or leave it unset (4x lanczos_steps)")
    lr = cfg.learning_rate
    if lr is None:
        lr = float(optim.paper_learning_rate(cfg.optimizer, cfg.dataset))
    return dataclasses.replace(
        cfg,
        learning_rate=lr,
        lanczos_steps=steps,
        augment=cfg.augment if cfg.augment is not None else cfg.dataset.startswith("cifar"),
        activation=resolved_activation(cfg),
    )


def resolved_activation(cfg: Config) -> str | None:
    """The activation a config's model uses: the FCN's default is ReLU; other models have their own."""
    return "relu" if cfg.model == "fcn" and cfg.activation is None else cfg.activation


def model_kwargs(cfg: Config) -> dict[str, Any]:
    """The keyword arguments `train.models.build` takes for this config's model.

    Args:
        cfg: a configuration (resolved or not: the activation's default is filled here too).

    Returns:
        The subset of depth/width/activation/batchnorm/conv1_padding/pooling that the model reads.
    """
    # For the LeNet options None means "the model's own default" (the paper's form): not passed on.
    given = {name: resolved_activation(cfg) if name == "activation" else getattr(cfg, name)
             for name in MODEL_FIELDS[cfg.model]}
    return {name: v for name, v in given.items() if not (name in ("conv1_padding", "pooling") and v is None)}


def to_dict(cfg: Config) -> dict[str, Any]:
    """A JSON-ready dict of a configuration (tuples become lists).

    Args:
        cfg: the configuration.

    Returns:
        Field name -> value.
    """
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a run's config.json), checking names and types.

    Args:
        data: field name -> value.

    Returns:
        The configuration.

    Raises:
        ConfigError: an unknown field or a value of the wrong type.
    """
    return apply_overrides(Config(), dict(data))


def load_json(path: str) -> Config:
    """Read a config.json written by a run.

    Args:
        path: the file.

    Returns:
        The configuration it holds.
    """
    with open(path) as f:
        return from_dict(json.load(f))


def differences(a: Config, b: Config, *, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """The fields on which two configurations differ.

    Args:
        a: one configuration.
        b: the other.
        ignore: field names not compared.

    Returns:
        Field name -> (value in a, value in b), for each differing field.
    """
    return {n: (getattr(a, n), getattr(b, n)) for n in FIELD_NAMES
            if n not in ignore and getattr(a, n) != getattr(b, n)}
