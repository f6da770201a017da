"""Kept importable: the sweeps moved to train.study (plan: groups and configurations; layout: the results tree;
sweep: the runner and `python -m train sweep`)."""

from train.catalog import ADAM_FAMILY, FULL_TRAIN_SIZE, OPTIMIZERS  # noqa: F401
from train.config import Config, ConfigError  # noqa: F401
from train.study.layout import (CONTROL_KEY, CONTROL_POINTER, FAILED, OVERRIDES, PUBLISHED_FILES,  # noqa: F401
                                RESULTS_ROOT, SENSITIVITY, SPECTRUM_FILES, WORK_ROOT, Roots, control_pointer,
                                failure_attempt, failure_path, is_published, lanczos_progress, publish,
                                published_overrides, read_failures, record_failure, run_files, run_state)
from train.lock import LOCK_HEARTBEAT_S, LOCK_STALE_S, RunLock  # noqa: F401
from train.study.plan import (CIFAR_LR1_STUCK, CIFAR_LR1_WHY, CONTROL_FIELDS, CONTROLS, GROUPS,  # noqa: F401
                              LINEAR_LR_WHY, REFERENCE, Group, SweepError, SweepRun, applied_overrides,
                              control_config, control_fields, control_key, control_state_key, distinct_controls,
                              find_run, get_group, iter_groups, nominal_config, run_config, same_training, source_of)
from train.study.sweep import (add_common_args, compute_control, ensure_control, failure_hint,  # noqa: F401
                               listed_control, listing, main, parse_shard, shard, sweep, sweep_controls, sweep_run,
                               use_data_dir)
# The old private spellings, for modules written against the single-file train.sweep (e.g. a CLI's --data-dir).
from train.study.sweep import add_common_args as _common_args  # noqa: E402,F401
from train.study.sweep import use_data_dir as _use_data_dir  # noqa: E402,F401
