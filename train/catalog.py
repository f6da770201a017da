"""The names the paper's experiments are built from, written once: data sets, class counts, optimizers and
the paper's weight decay. Plain constants (no JAX), so that configs and presets load fast; the data
loaders, the optimizer registry, the config and the presets all read them from here.
"""

from __future__ import annotations

#: Data sets the loaders read, with their class counts (the Hessian-sample rank rule needs them before
#: any data is loaded).
NUM_CLASSES: dict[str, int] = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "avila": 12}
DATASETS: tuple[str, ...] = tuple(NUM_CLASSES)

#: The full training sets of the paper's data. A run with `train_size` equal to one trains on every example
#: in the loader's order, exactly as `train_size=None` does (train.data.apply_options keeps the set whole).
FULL_TRAIN_SIZE: dict[str, int] = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000,
                                   "avila": 10430}

#: The paper's eleven optimizers, in its order (METHOD.md §5).
OPTIMIZERS: tuple[str, ...] = ("sgd", "vanilla_sgd", "adam", "amsgrad", "adabound", "yogi", "radam", "diffgrad",
                               "adai", "pnm", "lookahead")

#: The Adam family of the paper's claim "momentum SGD gives a smaller s than the Adam family" (docs/method.md §5).
ADAM_FAMILY: tuple[str, ...] = ("adam", "amsgrad", "adabound", "yogi", "radam", "diffgrad")

#: Weight decay the paper passes to every optimizer (L2 for most, decoupled for PNM and RAdam).
PAPER_WEIGHT_DECAY = 5e-4
