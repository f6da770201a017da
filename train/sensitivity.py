"""Kept importable: the sensitivity study moved to train.study (plan: its settings; sensitivity: the runner and
`python -m train sensitivity`)."""

from train.study.plan import (PAPER_MULTIPLIERS, SENSITIVITY_DRAWS, SENSITIVITY_KS, SENSITIVITY_SAMPLES,  # noqa: F401
                              SENSITIVITY_STARTS, STUDIES, SensitivitySpec)
from train.study.sensitivity import (Cached, converged_top, hessian_draws_study, hessian_samples_study,  # noqa: F401
                                     k_prefix_study, lanczos_starts_study, main_sensitivity, paper_procedure_study,
                                     piece_cache, refuse_training_fields, sensitivity)
