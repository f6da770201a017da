"""Every preset, checked on its own: its resolved config against METHOD.md §5 read from its name, its model's
parameter count against a closed form, its optimizer and learning-rate schedule, and one training step.

The expectations below are written from METHOD.md, not from train.presets: a preset that drifts from the
paper fails here. Presets that share a model, input shape and optimizer share one real training step
(computed on first use, whatever the test order), but each preset asserts its own config, size and schedule.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import numpy as np
import pytest
from flax import nnx

from train import config as C
from train import loop, models, optim, presets

SHAPES = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10),
          "cifar100": ((32, 32, 3), 100), "avila": ((10,), 12)}
SLUGS = {"mnist": "mnist", "fashion-mnist": "fashion_mnist", "cifar10": "cifar10", "cifar100": "cifar100"}
# METHOD.md §5: learning rates per optimizer on MNIST-like data and on CIFAR.
RATE_MNIST = {"sgd": 0.1, "vanilla_sgd": 0.1, "adai": 0.1, "pnm": 0.1, "lookahead": 0.1, "adam": 1e-3,
              "amsgrad": 1e-3, "adabound": 1e-3, "yogi": 1e-3, "radam": 1e-3, "diffgrad": 1e-3}
RATE_CIFAR = dict(RATE_MNIST, sgd=0.1, vanilla_sgd=1.0, adai=1.0, pnm=1.0, lookahead=0.1)
EPOCHS = {"mnist": 50, "fashion_mnist": 200, "cifar10": 200, "cifar100": 200}
PAPER = dict(batch_size=128, weight_decay=5e-4, k=1000, hessian_samples=1000)


def _nearest(x: float) -> int:
    """x rounded half up (20.5 -> 21), as a step or epoch count."""
    return int(math.floor(x + 0.5))


def _lenet_params(shape, classes, pad=None) -> int:
    """LeNet-5 (METHOD.md §5): conv5x5(6, pad 2 on 28x28) - pool - conv5x5(16) - pool - 120 - 84 - classes."""
    c = shape[2]
    pad = (2 if shape[0] == 28 else 0) if pad is None else pad
    side = ((shape[0] + 2 * pad - 4) // 2 - 4) // 2  # 28 padded or 32: 28 -> 14 -> 10 -> 5; 28 unpadded: 4
    flat = 16 * side * side
    return (5 * 5 * c * 6 + 6) + (5 * 5 * 6 * 16 + 16) + (flat * 120 + 120) + (120 * 84 + 84) + (84 * classes + classes)


def _mlp_params(inputs, depth, width, classes) -> int:
    """An MLP with `depth` hidden layers of `width` (biases everywhere)."""
    sizes = [inputs] + [width] * depth + [classes]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def expected(name: str) -> dict:
    """The fields a preset must have, read from its name and METHOD.md §5."""
    m = re.fullmatch(r"lenet-(mnist|fashion-mnist|cifar10|cifar100)-([a-z-]+)", name)
    if m and m.group(2).replace("-", "_") in RATE_MNIST:
        ds, opt = SLUGS[m.group(1)], m.group(2).replace("-", "_")
        rate = (RATE_CIFAR if ds.startswith("cifar") else RATE_MNIST)[opt]
        drops = {"cifar10": (80, 160), "cifar100": (100, 150)}.get(ds, ())
        return dict(PAPER, dataset=ds, model="lenet5", optimizer=opt, learning_rate=rate, epochs=EPOCHS[ds],
                    lr_drop_epochs=drops)
    lenet_sgd = dict(PAPER, dataset="mnist", model="lenet5", optimizer="sgd", learning_rate=0.1, epochs=50)
    # Batches over 10,000 accumulate micro-batches of 2000 (the same gradient; ~2x faster on a CPU at 60,000).
    if m := re.fullmatch(r"lenet-mnist-batch(\d+)", name):
        b = int(m.group(1))
        return dict(lenet_sgd, batch_size=b, micro_batch=2000 if b > 10000 else None)
    if m := re.fullmatch(r"lenet-mnist-iters1000-batch(\d+)", name):
        b = int(m.group(1))
        return dict(lenet_sgd, batch_size=b, epochs=None, max_steps=1000, micro_batch=2000 if b > 10000 else None)
    if m := re.fullmatch(r"lenet-mnist-n(\d+)", name):
        n = int(m.group(1))
        return dict(lenet_sgd, train_size=n, hessian_samples=min(n, 1000))
    if name == "lenet-mnist-sgd-nopad":
        return dict(lenet_sgd, conv1_padding=0)
    if name == "lenet-mnist-sgd-avgpool":
        return dict(lenet_sgd, pooling="avg")
    if m := re.fullmatch(r"lenet-mnist-noise(\d+)", name):
        return dict(lenet_sgd, label_noise=int(m.group(1)) / 100)
    if name == "lenet-mnist-random-labels":
        return dict(lenet_sgd, random_labels=True)
    fcn = dict(PAPER, dataset="mnist", model="fcn", optimizer="sgd", learning_rate=0.1, epochs=50, activation="relu")
    if m := re.fullmatch(r"fcn-mnist-depth(\d)", name):
        return dict(fcn, depth=int(m.group(1)), width=100)
    if m := re.fullmatch(r"fcn-mnist-width(\d+)", name):
        return dict(fcn, depth=2, width=int(m.group(1)))
    if m := re.fullmatch(r"linear-mnist(-relu)?(-bn)?", name):
        return dict(fcn, model="linear", depth=2, width=100, activation="relu" if m.group(1) else None,
                    batchnorm=bool(m.group(2)))
    if name == "resnet18-cifar10-sgd":
        return dict(PAPER, dataset="cifar10", model="resnet18", optimizer="sgd", learning_rate=0.1, epochs=200,
                    lr_drop_epochs=(80, 160), k=50, augment=True)
    if name == "fcn-avila":
        return dict(fcn, dataset="avila", depth=2, width=100, k=50)
    if name == "default":
        return dict(dataset="mnist", model="lenet5", optimizer="sgd", learning_rate=0.1, epochs=3, k=100,
                    batch_size=128, hessian_samples=1000)
    if name.startswith("tiny-"):
        return dict(dataset="mnist", epochs=2 if name.endswith("2epochs") else 1, k=10)
    raise AssertionError(f"preset {name!r} has no expectation in this test: add one from METHOD.md")


def expected_params(cfg: C.Config) -> int:
    shape, classes = SHAPES[cfg.dataset]
    inputs = int(np.prod(shape))
    if cfg.model == "lenet5":
        return _lenet_params(shape, classes, cfg.conv1_padding)  # pooling has no parameters
    if cfg.model in ("fcn", "linear"):
        bn = 2 * cfg.width * cfg.depth if cfg.batchnorm else 0  # scale and bias per hidden unit
        return _mlp_params(inputs, cfg.depth, cfg.width, classes) + bn
    assert cfg.model == "resnet18"
    return 11_173_962  # the CIFAR ResNet18 of kuangliu/pytorch-cifar


def _batch(shape, n, classes):
    x = np.array(jax.random.normal(jax.random.key(0), (n, *shape)), np.float32)
    return x, np.arange(n, dtype=np.int32) % classes


@functools.lru_cache(maxsize=None)
def one_step(model: str, kwargs: tuple, dataset: str, optimizer: str) -> tuple[int, float, bool]:
    """(parameter count, loss, every parameter leaf changed) of one real step from initialisation."""
    shape, classes = SHAPES[dataset]
    net = models.build(model, num_classes=classes, input_shape=shape, rngs=nnx.Rngs(0), **dict(kwargs))
    model_defs, params, rest = loop.split_model(net)
    tx = optim.get(optimizer, learning_rate=0.01, weight_decay=5e-4)
    x, y = _batch(shape, 2, classes)
    # LeNet's presets share every op shape: run op by op, which compiles each op once, not a whole step each.
    with jax.disable_jit(model == "lenet5"):
        state, loss, _ = loop.make_train_step(model_defs, tx)(loop.TrainState(params, rest, tx.init(params)), x, y,
                                                              jax.random.key(0))
    changed = all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)))
    return models.count_params(net), float(loss), changed


PRESET_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if presets.get(n).model == "resnet18" else n
                 for n in presets.names()]


@pytest.mark.parametrize("name", PRESET_PARAMS)
def test_preset_config_model_optimizer_schedule_and_step(name):
    cfg = C.resolve(presets.get(name))
    assert cfg.preset == name
    for field, value in expected(name).items():
        assert getattr(cfg, field) == pytest.approx(value) if isinstance(value, float) else getattr(cfg, field) == value, \
            f"{name}: {field} is {getattr(cfg, field)!r}, METHOD.md says {value!r}"
    # Schedule: ÷10 at epochs 80/160 (CIFAR), else at 40% and 80% of the run, at epoch boundaries.
    spe = 7
    bounds = loop.drop_boundaries(epochs=cfg.epochs, max_steps=cfg.max_steps, steps_per_epoch=spe,
                                  fractions=cfg.lr_drop_fractions, drop_epochs=cfg.lr_drop_epochs)
    if cfg.lr_drop_epochs:
        want = [e * spe for e in cfg.lr_drop_epochs]
    elif cfg.max_steps is not None and cfg.epochs is None:
        want = [_nearest(0.4 * cfg.max_steps), _nearest(0.8 * cfg.max_steps)]
    else:  # at the nearest epoch boundary, never before the first epoch ends
        want = [max(1, _nearest(0.4 * cfg.epochs)) * spe, max(1, _nearest(0.8 * cfg.epochs)) * spe]
    assert bounds == want
    schedule = loop.lr_schedule(cfg.learning_rate, bounds, cfg.lr_drop_factor)
    for step in (0, want[0] - 1, want[0], want[1] - 1, want[1]):
        drops = sum(step >= b for b in want)
        assert float(schedule(step)) == pytest.approx(cfg.learning_rate * 0.1**drops, rel=1e-6)
    count, loss, changed = one_step(cfg.model, tuple(sorted(C.model_kwargs(cfg).items())), cfg.dataset,
                                    cfg.optimizer)
    assert count == expected_params(cfg)
    assert np.isfinite(loss) and changed
    assert cfg.optimizer in optim.NAMES and callable(optim.get(cfg.optimizer, learning_rate=cfg.learning_rate).update)
