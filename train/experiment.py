"""Assembling an experiment from a Config: data, model, optimizer, Hessian sample and the run's keys.

`build_experiment` does every check that needs the data or the model (batch size against N, K against
the parameter count, spectrum epochs against the run's length) before anything is trained or written,
so that a run that cannot finish fails at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from train import config as config_lib
from train import loop
from train.config import Config, ConfigError
from train.keys import RunKeys, run_keys


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built once per run from its configuration.

    Attributes:
        cfg: the resolved configuration (what config.json records).
        keys: the run's named PRNG streams (train.keys).
        ds: the training data after the run's options (subset, label noise, ...).
        model_defs: the split model (train and eval graph definitions).
        tx: the optimizer, weight decay and learning-rate schedule included.
        template: the initial training state (epoch 0).
        num_params: the model's parameter count.
        steps_per_epoch, num_epochs, total_steps: the run's plan.
        hessian: the fixed Hessian sample (x, y, indices).
    """

    cfg: Config
    keys: RunKeys
    ds: Any
    model_defs: loop.FunctionalModel
    tx: Any
    template: loop.TrainState
    num_params: int
    steps_per_epoch: int
    num_epochs: int
    total_steps: int
    hessian: Any


def load_data(cfg: Config, keys: RunKeys, progress: bool = True) -> Any:
    """The training data after the run's options (subset, label noise, random labels, Gaussian inputs)."""
    from train import data

    ds = data.load(cfg.dataset, cfg.data_dir, progress=progress)
    return data.apply_options(ds, train_size=cfg.train_size, label_noise=cfg.label_noise,
                              random_labels=cfg.random_labels, gaussian_inputs=cfg.gaussian_inputs,
                              key=keys.data_options)


def _check_sizes(cfg: Config, n_train: int) -> None:
    """Data-dependent checks: batch size and Hessian sample no larger than the training set."""
    if cfg.batch_size > n_train:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {n_train} training examples of {cfg.dataset}"
                          f"{f' (train_size={cfg.train_size})' if cfg.train_size else ''}; use batch_size <= {n_train}")
    if config_lib.hessian_sample_size(cfg, n_train) > n_train:
        raise ConfigError(f"hessian_samples={cfg.hessian_samples} exceeds the {n_train} training examples; "
                          f"use hessian_samples <= {n_train}, or hessian_samples=all for the whole training set")


def build_model(cfg: Config, ds: Any, keys: RunKeys) -> Any:
    """The configured NNX model, initialised from the run's `init` stream."""
    from flax import nnx

    from train import models

    return models.build(cfg.model, num_classes=ds.num_classes, input_shape=tuple(ds.input_shape),
                        rngs=nnx.Rngs(keys.init), **config_lib.model_kwargs(cfg))


def _plan(cfg: Config, n_train: int) -> tuple[int, int, int]:
    """(steps per epoch, epochs, total steps), checking the spectrum epochs lie within the run."""
    from train import data

    steps_per_epoch = data.num_batches(n_train, cfg.batch_size, cfg.drop_last)
    num_epochs, total = loop.plan(cfg.epochs, cfg.max_steps, steps_per_epoch)
    late = [e for e in cfg.spectrum_epochs if e > num_epochs]
    if late:
        raise ConfigError(f"spectrum_epochs {late} lie beyond the run's {num_epochs} epochs "
                          f"({total} steps of {steps_per_epoch} per epoch)")
    return steps_per_epoch, num_epochs, total


def _optimizer(cfg: Config, steps_per_epoch: int) -> Any:
    """The optimizer with the paper's weight decay and step-wise learning-rate drops."""
    from train import optim

    bounds = loop.drop_boundaries(epochs=cfg.epochs, max_steps=cfg.max_steps, steps_per_epoch=steps_per_epoch,
                                  fractions=cfg.lr_drop_fractions, drop_epochs=cfg.lr_drop_epochs)
    return optim.get(cfg.optimizer, learning_rate=loop.lr_schedule(cfg.learning_rate, bounds, cfg.lr_drop_factor),
                     weight_decay=cfg.weight_decay)


def build_experiment(cfg: Config, progress: bool = True) -> Experiment:
    """Load the data, build and split the model, make the optimizer and draw the Hessian sample.

    Args:
        cfg: a configuration (validated here, the one place a run validates it; rule fields resolved against
            the model's size).
        progress: show a download progress bar if data must be fetched.

    Returns:
        The Experiment; `template` is the initial training state (epoch 0).

    Raises:
        ConfigError: a bad field, batch size above N, K above the parameter count...
        train.data.DataError: the data set is missing or damaged (the message says what to do).
    """
    from train import data, models

    config_lib.validate(cfg)
    keys = run_keys(cfg.seed)
    ds = load_data(cfg, keys, progress)
    _check_sizes(cfg, len(ds.y_train))
    # "all" is recorded as the count from here on (config.json, results.json).
    cfg = dataclasses.replace(cfg, hessian_samples=config_lib.hessian_sample_size(cfg, len(ds.y_train)))
    model = build_model(cfg, ds, keys)
    num_params = int(models.count_params(model))
    cfg = config_lib.resolve(cfg, num_params=num_params)
    model_defs, params, rest = loop.split_model(model)
    steps_per_epoch, num_epochs, total = _plan(cfg, len(ds.y_train))
    tx = _optimizer(cfg, steps_per_epoch)
    hessian = data.hessian_sample(ds, cfg.hessian_samples, keys.hessian_sample)
    return Experiment(cfg, keys, ds, model_defs, tx, loop.TrainState(params, rest, tx.init(params)), num_params,
                      steps_per_epoch, num_epochs, total, hessian)


def hessian_record(exp: Experiment) -> dict[str, Any]:
    """The recorded Hessian sample: its size and indices (into the run's and the full training set)."""
    idx = np.asarray(exp.hessian.indices)
    full = exp.ds.train_indices
    return {"size": int(len(idx)), "stream": "hessian_sample", "seed": exp.cfg.seed, "indices": idx,
            "dataset_indices": None if full is None else np.asarray(full)[idx]}


def data_record(ds: Any, data_dir: str | None = None) -> dict[str, Any]:
    """Where the data came from (the data root written as <data_dir>: no machine paths in committed
    results) and what the options did to it."""
    from train.data import without_data_root

    noise = None if ds.y_train_clean is None else float(np.mean(ds.y_train != ds.y_train_clean))
    return {"source": without_data_root(ds.source, data_dir), "num_train": int(len(ds.y_train)),
            "num_test": int(len(ds.y_test)), "realised_label_noise": noise,
            "train_label_entropy": label_entropy(ds.y_train)}


def label_entropy(labels: np.ndarray) -> float:
    """Entropy (nats) of the labels' class frequencies: the cross-entropy of the best prediction that ignores
    the inputs (train.record.did_not_learn compares the final train loss with it)."""
    p = np.bincount(np.asarray(labels).astype(np.int64)) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
