"""The registry of the paper's eleven optimizers: names, paper settings, and `get`.

`get(name, **overrides)` returns the optimizer wrapped in `optax.inject_hyperparams`, so that a
schedule can drive the learning rate (the paper's ÷10 at 40% and 80% of training) and the current
rate can be read for logging as `state.hyperparams["learning_rate"]` (for every name, Lookahead
included: its whole factory is wrapped, so the rate shown is that of its default inner SGD).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

from train import catalog
from train.optim.adabound import adabound
from train.optim.adai import adai
from train.optim.adam import adam, amsgrad, yogi
from train.optim.diffgrad import diffgrad
from train.optim.lookahead import lookahead
from train.optim.pnm import pnm
from train.optim.radam import radam
from train.optim.sgd import sgd, vanilla_sgd

#: The optimizer names, in the paper's order (METHOD.md §5; written once, in train.catalog).
NAMES: tuple[str, ...] = catalog.OPTIMIZERS

#: The dataset names `paper_learning_rate` accepts, and the family whose rates each one uses.
DATASET_FAMILY: dict[str, str] = {
    "mnist": "mnist", "fashion_mnist": "mnist", "cifar10": "cifar", "cifar100": "cifar",
    # The paper gives no Avila rates; its Avila FCN is a small tabular model, so the MNIST-family
    # rates are used and `describe()` says so.
    "avila": "mnist",
}

#: Weight decay the paper passes to every optimizer (L2 for most, decoupled for PNM and RAdam).
PAPER_WEIGHT_DECAY = catalog.PAPER_WEIGHT_DECAY

_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd, "vanilla_sgd": vanilla_sgd, "adam": adam, "amsgrad": amsgrad,
    "adabound": adabound, "yogi": yogi, "radam": radam, "diffgrad": diffgrad, "adai": adai,
    "pnm": pnm, "lookahead": lookahead,
}

# Paper learning rates (METHOD.md §5): per dataset family.
_SGD_LIKE_MNIST = {"sgd", "vanilla_sgd", "adai", "pnm", "lookahead"}
_CIFAR_ONE = {"vanilla_sgd", "adai", "pnm"}
_CIFAR_POINT_ONE = {"sgd", "lookahead"}

# Arguments that must stay Python values under inject_hyperparams (bools are kept static by optax
# itself; Lookahead's period k is an int used in `count % k`).
_STATIC_ARGS: dict[str, tuple[str, ...]] = {"lookahead": ("k",)}

_REFERENCES: dict[str, str] = {
    "sgd": "torch.optim.SGD (momentum 0.9, dampening 0): b <- mu b + g, theta <- theta - eta b",
    "vanilla_sgd": "torch.optim.SGD without momentum",
    "adam": "torch.optim.Adam",
    "amsgrad": "torch.optim.Adam(amsgrad=True)",
    "adabound": "Luolc/AdaBound, adabound.py (AdaBound)",
    "yogi": "jettify/pytorch-optimizer (torch_optimizer.Yogi)",
    "radam": "LiyuanLucasLiu/RAdam, radam.py (RAdam)",
    "diffgrad": "shivram1987/diffGrad, diffGrad_v2.py (corrected diffgrad)",
    "adai": "zeke-xie/adaptive-inertia-adai, adai_optim/adai.py (Adai; AdaiW with decoupled=True)",
    "pnm": "zeke-xie/Positive-Negative-Momentum, pnm_optim/pnm.py (PNM)",
    "lookahead": "michaelrzhang/lookahead, lookahead_pytorch.py (same rule as lonePatient/"
                 "lookahead_pytorch), inner torch.optim.SGD momentum 0.9",
}

_DECAY_MODE: dict[str, str] = {name: "L2 (coupled)" for name in NAMES}
_DECAY_MODE.update({"radam": "decoupled", "pnm": "decoupled",
                    "adai": "L2 (coupled); decoupled with decoupled=True (AdaiW)",
                    "lookahead": "L2 (coupled) in the inner SGD"})


def _check_name(name: str) -> str:
    """Normalise an optimizer name, or raise a ValueError that lists the known ones.

    Args:
      name: the name asked for.

    Returns:
      The name in the registry's spelling.
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _FACTORIES:
        close = difflib.get_close_matches(str(key), NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown optimizer {name!r}.{hint} Known optimizers: {', '.join(NAMES)}.")
    return key


def paper_learning_rate(name: str, dataset: str) -> float:
    """The learning rate the paper uses for an optimizer on a dataset (METHOD.md §5).

    Args:
      name: one of `NAMES`.
      dataset: one of "mnist", "fashion_mnist", "cifar10", "cifar100", "avila" (Avila uses the
        MNIST-family rates: the paper gives none for it).

    Returns:
      The learning rate (before the ÷10 steps at 40% and 80% of training).
    """
    key = _check_name(name)
    ds = dataset.lower().replace("-", "_") if isinstance(dataset, str) else dataset
    if ds not in DATASET_FAMILY:
        raise ValueError(f"Unknown dataset {dataset!r}; known: {', '.join(DATASET_FAMILY)}.")
    if DATASET_FAMILY[ds] == "mnist":
        return 0.1 if key in _SGD_LIKE_MNIST else 1e-3
    if key in _CIFAR_ONE:
        return 1.0
    return 0.1 if key in _CIFAR_POINT_ONE else 1e-3


def paper_hyperparams(name: str, dataset: str) -> dict[str, float]:
    """The keyword arguments of `get` that reproduce the paper's setting on a dataset.

    Args:
      name: one of `NAMES`.
      dataset: see `paper_learning_rate`.

    Returns:
      {"learning_rate": ..., "weight_decay": 5e-4}; the schedule (÷10 at 40%/80%) is the
      training loop's to add.
    """
    return {"learning_rate": paper_learning_rate(name, dataset),
            "weight_decay": PAPER_WEIGHT_DECAY}


def _defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of an optimizer's factory (required arguments are left out).

    Args:
      name: a registry name.

    Returns:
      {keyword: default}.
    """
    sig = inspect.signature(_FACTORIES[name])
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def describe() -> list[dict[str, Any]]:
    """One record per optimizer: name, defaults, paper learning rates, weight decay, reference.

    Returns:
      A list of dicts with keys "name", "defaults", "paper_learning_rate" (per dataset),
      "paper_weight_decay", "weight_decay_mode", "reference", "note".
    """
    return [{
        "name": name,
        "defaults": _defaults(name),
        "paper_learning_rate": {ds: paper_learning_rate(name, ds) for ds in DATASET_FAMILY},
        "paper_weight_decay": PAPER_WEIGHT_DECAY,
        "weight_decay_mode": _DECAY_MODE[name],
        "reference": _REFERENCES[name],
        "note": "avila uses the MNIST-family learning rates (the paper gives none for it).",
    } for name in NAMES]


def _prepare_overrides(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Check the keywords of `get` against the factory and make integer rates floats.

    Args:
      name: a registry name.
      overrides: the keyword arguments given to `get`.

    Returns:
      The keyword arguments to pass on.
    """
    params = inspect.signature(_FACTORIES[name]).parameters
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise TypeError(f"get({name!r}): unknown keyword(s) {', '.join(unknown)}; {name} accepts: "
                        f"{', '.join(params)}.")
    missing = [k for k, p in params.items()
               if p.default is inspect.Parameter.empty and k not in overrides]
    if missing:
        raise TypeError(
            f"get({name!r}) needs {', '.join(missing)}=...; the paper's value is "
            f"train.optim.paper_learning_rate({name!r}, dataset), e.g. "
            f"{paper_learning_rate(name, 'mnist')} on MNIST.")
    out = {}
    for k, v in overrides.items():
        # A Python int would be injected as an int32 hyperparameter; rates and decays are floats.
        if isinstance(v, int) and not isinstance(v, bool) and k not in _STATIC_ARGS.get(name, ()):
            v = float(v)
        out[k] = v
    return out


def get(name: str, **overrides: Any) -> optax.GradientTransformationExtraArgs:
    """Build a registered optimizer with `optax.inject_hyperparams`, so its rate can be scheduled.

    Args:
      name: one of `NAMES` (case-insensitive).
      **overrides: the factory's keyword arguments (see `describe()` for each one's defaults);
        `learning_rate` may be a number or an optax schedule. "sgd", "vanilla_sgd", "adai" and
        "pnm" have no default rate: pass one (`paper_learning_rate(name, dataset)` gives the
        paper's).

    Returns:
      An optax transformation whose state has `hyperparams` (read
      `state.hyperparams["learning_rate"]` for the current rate; for Lookahead it is the rate of
      the default inner SGD). Its update needs `params`.

    Raises:
      ValueError: an unknown name (the message lists the known ones) or a hyperparameter outside
        its valid range.
      TypeError: an unknown or missing keyword.
    """
    key = _check_name(name)
    kwargs = _prepare_overrides(key, overrides)
    factory = _FACTORIES[key]
    factory(**kwargs)  # Validate now: inject_hyperparams would only call it at init.
    static_args = _STATIC_ARGS.get(key, ())

    def injected(params) -> optax.GradientTransformationExtraArgs:
        # inject_hyperparams casts hyperparameters to the params' dtype by default; in bfloat16 that
        # turns b2 = 0.999 into 1.0. Keep them at least float32 (float64 params keep float64).
        if params is None:
            raise ValueError(f"{key}: update needs params (weight decay and the hyperparameter dtype "
                             "read them); call update(grads, state, params).")
        dtype = jnp.promote_types(optax.tree.dtype(params, "highest"), jnp.float32)
        return optax.inject_hyperparams(factory, static_args=static_args,
                                        hyperparam_dtype=dtype)(**kwargs)

    def init_fn(params):
        return injected(params).init(params)

    def update_fn(updates, state, params=None, **extra_args):
        return injected(params).update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
