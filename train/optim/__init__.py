"""The paper's eleven optimizers as optax transformations, each matching its authors' PyTorch code.

Aliases (factories returning `optax.GradientTransformation`): `sgd`, `vanilla_sgd`, `adam`,
`amsgrad`, `yogi`, `radam`, `adabound`, `diffgrad`, `adai`, `pnm`, `lookahead`. The custom ones are
chains built on `scale_by_<name>` transforms with NamedTuple states. The registry (`get`, `NAMES`,
`describe`, `paper_learning_rate`, `paper_hyperparams`) is what the training presets use; `get`
wraps each optimizer in `optax.inject_hyperparams`. See the README (Optimizers) for defaults, references and every
difference from optax.
"""

from train.optim.adabound import ScaleByAdaBoundState, adabound, scale_by_adabound
from train.optim.adai import ScaleByAdaiState, adai, scale_by_adai
from train.optim.adam import ScaleByAmsgradState, adam, amsgrad, scale_by_amsgrad, yogi
from train.optim.diffgrad import ScaleByDiffGradState, diffgrad, scale_by_diffgrad
from train.optim.lookahead import LookaheadState, lookahead
from train.optim.pnm import ScaleByPNMState, pnm, scale_by_pnm
from train.optim.radam import ScaleByRAdamState, radam, scale_by_radam
from train.optim.registry import (DATASET_FAMILY, NAMES, PAPER_WEIGHT_DECAY, describe, get,
                                  paper_hyperparams, paper_learning_rate)
from train.optim.sgd import sgd, vanilla_sgd

__all__ = [
    "DATASET_FAMILY", "NAMES", "PAPER_WEIGHT_DECAY", "describe", "get", "paper_hyperparams",
    "paper_learning_rate",
    "sgd", "vanilla_sgd", "adam", "amsgrad", "yogi", "radam", "adabound", "diffgrad", "adai",
    "pnm", "lookahead",
    "scale_by_amsgrad", "scale_by_radam", "scale_by_adabound", "scale_by_diffgrad",
    "scale_by_adai", "scale_by_pnm",
    "ScaleByAmsgradState", "ScaleByRAdamState", "ScaleByAdaBoundState", "ScaleByDiffGradState",
    "ScaleByAdaiState", "ScaleByPNMState", "LookaheadState",
]
