"""The names of an LLM run as they were imported before the pipeline was split (build, driver, spectrum, run).

    from train.llm import train
    train.run(cfg, out, work=...)           train.llm.run.run
    train.build(cfg, data_dir=...)          train.llm.build.build (a frozen LMRun; `Run` is its old name)
    train.load_params(r, ckpt_dir, step)    train.llm.driver.load_params

The run itself reads top to bottom in train/llm/run.py.
"""

from __future__ import annotations

from train import rundir
from train.llm.build import LMRun, Run, WeightsNotFoundError, build, build_model
from train.llm.driver import SPECTRUM_FIELDS, load_params, save_checkpoint, train_steps
from train.llm.run import run
from train.llm.spectrum import KEY_USE, capped_k, measure_state, run_setting, subset_pattern

__all__ = ["run", "build", "Run", "LMRun", "subset_pattern", "capped_k", "SPECTRUM_FIELDS", "WeightsNotFoundError",
           "load_params", "build_model", "measure_state", "run_setting", "save_checkpoint", "train_steps", "KEY_USE",
           "rundir", "CONFIG", "METRICS"]

CONFIG = rundir.CONFIG
METRICS = rundir.METRICS
