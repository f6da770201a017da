"""Named configurations: the default CPU run, every CNN/FCN setting of METHOD.md §5, and tiny test runs.

Paper presets carry the paper's full hyperparameters (METHOD.md §5): batch 128, weight decay 5e-4, the
paper's learning rate per optimizer and dataset (`learning_rate` left to the rule), ÷10 at 40% and 80% of
training (CIFAR-10 at epochs 80 and 160, CIFAR-100 at 100 and 150), MNIST 50 epochs, Fashion-MNIST and
CIFAR 200, K = 1000 (ResNet18 and the Avila FCN K = 50), Lanczos steps 3·K, 1000 Hessian samples.

Choices the paper leaves open, made here and recorded in each preset's description: FCN sweeps train with
momentum SGD on MNIST for 50 epochs; the linear networks have 2 hidden layers of width 100; the Avila
FCN has 2 hidden layers of width 100, momentum SGD, lr 0.1, 50 epochs; the batch-size sweep at fixed epochs
uses 50 epochs; the training-set-size and label-noise sweeps keep 50 epochs.
"""

from __future__ import annotations

import dataclasses
import difflib

from train.catalog import OPTIMIZERS, PAPER_WEIGHT_DECAY
from train.config import Config, ConfigError

_DATASET_SLUG = {"mnist": "mnist", "fashion_mnist": "fashion-mnist", "cifar10": "cifar10", "cifar100": "cifar100"}
_PAPER_EPOCHS = {"mnist": 50, "fashion_mnist": 200, "cifar10": 200, "cifar100": 200}
# The paper's CIFAR schedules name epochs; MNIST-like ones drop at 40% and 80% of training.
_PAPER_DROP_EPOCHS = {"cifar10": (80, 160), "cifar100": (100, 150)}
BATCH_SIZES = (128, 512, 640, 768, 1024, 8192, 16384, 32768, 50000, 60000)
# Batches above this train in micro-batches of MICRO_BATCH (the same gradient at float rounding): at batch
# 60000 the whole-batch LeNet-5 gradient is memory-bound on XLA:CPU, ~2x slower (benchmarks/large_batch_cpu.py).
MICRO_BATCH_ABOVE, MICRO_BATCH = 10000, 2000
TRAIN_SIZES = (600, 800, 1000, 3000, 6000, 60000)
FCN_DEPTHS = (1, 2, 4)
FCN_WIDTHS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
# Checkpoint spectra of the reference run, METHOD.md §5 (50, the last epoch, is the final spectrum).
REFERENCE_SPECTRUM_EPOCHS = (1, 2, 3, 10, 20, 30)

_PAPER = dict(batch_size=128, weight_decay=PAPER_WEIGHT_DECAY, learning_rate=None, k=1000, hessian_samples=1000,
              lanczos_steps=None, init_control=True)


def _lenet(dataset: str, optimizer: str, **extra) -> Config:
    """The paper's LeNet-5 setting on one dataset with one optimizer."""
    drops = _PAPER_DROP_EPOCHS.get(dataset, ())
    fields = dict(_PAPER, dataset=dataset, model="lenet5", optimizer=optimizer, epochs=_PAPER_EPOCHS[dataset],
                  lr_drop_epochs=drops)
    return Config(**{**fields, **extra})


def _fcn(depth: int, width: int, **extra) -> Config:
    """The paper's FCN on MNIST (momentum SGD, 50 epochs)."""
    fields = dict(_PAPER, dataset="mnist", model="fcn", depth=depth, width=width, activation="relu",
                  optimizer="sgd", epochs=50)
    return Config(**{**fields, **extra})


def _build() -> dict[str, tuple[str, Config]]:
    """Every preset: name -> (one-line description, Config with its name in `preset`)."""
    p: dict[str, tuple[str, Config]] = {}
    p["default"] = ("LeNet-5 on full MNIST, momentum SGD lr 0.1, 3 epochs, K=100: the 10-minute CPU run", Config())
    for ds, slug in _DATASET_SLUG.items():
        for opt in OPTIMIZERS:
            extra = {"spectrum_epochs": REFERENCE_SPECTRUM_EPOCHS} if (ds, opt) == ("mnist", "sgd") else {}
            note = "; spectra also after epochs 1,2,3,10,20,30" if extra else ""
            p[f"lenet-{slug}-{opt.replace('_', '-')}"] = (
                f"LeNet-5 on {ds}, {opt}, paper hyperparameters ({_PAPER_EPOCHS[ds]} epochs){note}",
                _lenet(ds, opt, **extra))
    for d in FCN_DEPTHS:
        p[f"fcn-mnist-depth{d}"] = (f"FCN, {d} hidden layer(s) of width 100, ReLU, MNIST, SGD, 50 epochs", _fcn(d, 100))
    for w in FCN_WIDTHS:
        p[f"fcn-mnist-width{w}"] = (f"FCN, 2 hidden layers of width {w}, ReLU, MNIST, SGD, 50 epochs", _fcn(2, w))
    for name, act, bn in (("", None, False), ("-relu", "relu", False), ("-bn", None, True), ("-relu-bn", "relu", True)):
        p[f"linear-mnist{name}"] = (
            f"linear network, 2 hidden layers of width 100, activation {act}, batchnorm {bn}, MNIST, SGD, 50 epochs",
            Config(**dict(_PAPER, dataset="mnist", model="linear", depth=2, width=100, activation=act,
                          batchnorm=bn, optimizer="sgd", epochs=50)))
    p["resnet18-cifar10-sgd"] = ("ResNet18 on CIFAR-10, SGD lr 0.1, 200 epochs, drops at 80/160, augmentation, K=50",
                                 Config(**dict(_PAPER, dataset="cifar10", model="resnet18", optimizer="sgd",
                                               epochs=200, lr_drop_epochs=(80, 160), k=50,
                                               # 11M parameters: per-example Jacobians cost hours on a CPU
                                               curvature="none")))
    p["fcn-avila"] = ("FCN (2x100, ReLU) on Avila, SGD lr 0.1, 50 epochs, K=50",
                      Config(**dict(_PAPER, dataset="avila", model="fcn", depth=2, width=100, activation="relu",
                                    optimizer="sgd", learning_rate=0.1, epochs=50, k=50)))
    for b in BATCH_SIZES:
        micro = dict(micro_batch=MICRO_BATCH) if b > MICRO_BATCH_ABOVE else {}
        p[f"lenet-mnist-batch{b}"] = (f"LeNet-5, MNIST, SGD, batch {b}, 50 epochs",
                                      _lenet("mnist", "sgd", batch_size=b, **micro))
        p[f"lenet-mnist-iters1000-batch{b}"] = (
            f"LeNet-5, MNIST, SGD, batch {b}, 1000 iterations (lr drops at 40%/80% of them)",
            _lenet("mnist", "sgd", batch_size=b, epochs=None, max_steps=1000, **micro))
    for n in TRAIN_SIZES:
        p[f"lenet-mnist-n{n}"] = (f"LeNet-5, MNIST, SGD, {n}-example training subset (seeded), 50 epochs, "
                                  f"Hessian on {min(n, 1000)} of them",
                                  _lenet("mnist", "sgd", train_size=n, hessian_samples=min(n, 1000)))
    for pct in (40, 80):
        p[f"lenet-mnist-noise{pct}"] = (f"LeNet-5, MNIST, SGD, {pct}% symmetric label noise, 50 epochs",
                                        _lenet("mnist", "sgd", label_noise=pct / 100))
    p["lenet-mnist-random-labels"] = ("LeNet-5, MNIST, SGD, every label random, 50 epochs",
                                      _lenet("mnist", "sgd", random_labels=True))
    # The paper gives no LeNet layers (METHOD.md §5): the variants a reader could have meant, for the
    # sensitivity of the verdict to that choice.
    p["lenet-mnist-sgd-nopad"] = ("LeNet-5 variant without the first convolution's padding (44,426 parameters), "
                                  "MNIST, SGD, 50 epochs", _lenet("mnist", "sgd", conv1_padding=0))
    p["lenet-mnist-sgd-avgpool"] = ("LeNet-5 variant with average pooling (LeCun 1998's subsampling), MNIST, SGD, "
                                    "50 epochs", _lenet("mnist", "sgd", pooling="avg"))
    tiny = dict(dataset="mnist", train_size=512, epochs=1, k=10, hessian_samples=128, lanczos_steps=40,
                hessian_batch_size=128, trace_samples=4, batch_size=64)
    p["tiny-fcn-mnist"] = ("tests: FCN 2x16 on 512 MNIST examples, 1 epoch, K=10",
                           Config(**dict(tiny, model="fcn", depth=2, width=16, activation="relu")))
    p["tiny-fcn-mnist-2epochs"] = ("tests: as tiny-fcn-mnist for 2 epochs with a spectrum after epoch 1",
                                   Config(**dict(tiny, model="fcn", depth=2, width=16, activation="relu", epochs=2,
                                                 spectrum_epochs=(1,))))
    p["tiny-lenet-mnist"] = ("tests: LeNet-5 on 256 MNIST examples, 1 epoch, K=10",
                             Config(**dict(tiny, model="lenet5", train_size=256)))
    return {name: (desc, dataclasses.replace(cfg, preset=name)) for name, (desc, cfg) in p.items()}


PRESETS = _build()


def names() -> list[str]:
    """All preset names, in definition order.

    Returns:
        The names.
    """
    return list(PRESETS)


def get(name: str) -> Config:
    """The Config of a named preset.

    Args:
        name: a preset name (see `names()`, or `python -m train --list-presets`).

    Returns:
        The preset's Config (unresolved: rule-valued fields are None).

    Raises:
        ConfigError: unknown name, listing the valid ones.
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name][1]


def describe(name: str) -> str:
    """The one-line description of a preset.

    Args:
        name: a preset name.

    Returns:
        The description.
    """
    get(name)
    return PRESETS[name][0]


def listing() -> str:
    """A printable table of every preset: its K, whether it measures the control at initialisation too (a
    second spectrum of the same cost: a one-epoch lenet-mnist-adam still computes two K = 1000 spectra), and
    its description.

    Returns:
        One line per preset.
    """
    width = max(len(n) for n in PRESETS)
    return "\n".join(f"{n:<{width}}  K={c.k:<4} {'+ init control' if c.init_control else '              '}  {d}"
                     for n, (d, c) in PRESETS.items())
