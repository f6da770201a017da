"""The LLM claim on one CPU core: a small GPT-2 trained past its test-loss minimum, K = 1000 at every checkpoint.

    python -m train.llm.overfit                       (re)start the whole queue; finished pieces are skipped
    python -m train.llm.overfit --status              what is finished and what is left
    python -m train.llm.overfit --only tracking       rebuild tracking.json, the figure and sensitivity.json

The queue, in order (each piece resumable: a killed process started again continues where it saved):

1. train      the preset's training run, with the test loss and the training loss (both in evaluation mode,
              on fixed samples) every `EVAL_EVERY` steps (<out>/curve.json); checkpoints in <work>/checkpoints
              (the measured steps kept, resume points every save_every steps).
2. key        K = 1000 of the last block, every value converged, at the checkpoints before, at and after the
              test-loss minimum (<out>/steps/<step>/results.json, the layout of `python -m train llm`); the Krylov
              state of the measurement under way is kept in <work>/lanczos/, so that a kill loses a minute, not
              the spectrum.
3. draws      two more Hessian-sample draws (independent samples of the same size) at those three checkpoints
              (<out>/draws/draw-<d>/steps/<step>/): the error bars of the turn at the minimum come early.
4. spectra    the same at every other checkpoint step.
5. sizes      the Hessian sample at half and twice its size, before and after the minimum
              (<out>/sensitivity/sample-<tokens>/steps/<step>/).
6. paper      the paper's literal procedure before and after the minimum: 3 Lanczos runs of 1000 steps, their
              Ritz values pooled, top 1000 of the 3000, unconverged values kept
              (<out>/sensitivity/paper-literal/steps/<step>/results.json).
After each piece: <out>/tracking.json (rows, draws' mean and sd, correlations with the test loss and the
generalisation gap, partial on the step), tracking.png, sensitivity.json and table.txt.

The checkpoints "before, at and after the minimum" are found from the test losses at the checkpoint steps: at =
the lowest, before = the checkpoint halfway (by index) between step 0 and it, after = the last.

Run it on one core: `taskset -c 1` with XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1" (results/llm/<preset>/README.md has the exact command).

The package, by job: plan.py (the preset, the paths, what is written), queue.py (the pieces), stats.py (partial
correlations, the key steps), analysis.py (tracking.json, sensitivity.json), figures.py (table.txt, tracking.png),
cli.py (the command line).
"""

from train.llm.overfit.analysis import analyse, draw_summary, overfit_claims, sensitivity
from train.llm.overfit.cli import main, status
from train.llm.overfit.figures import plot, table, track_label
from train.llm.overfit.plan import (DRAWS, EVAL_EVERY, K_PREFIXES, MEASURES, PAPER_LITERAL, PIECES, PRESET,
                                    SIZE_FACTORS, TARGETS, Plan, plan)
from train.llm.overfit.queue import draws_piece, paper_literal, paper_piece, sizes_piece, spectra_piece, train_piece
from train.llm.overfit.stats import correlation_views, key_steps, mean_sd, partial_kendall, partial_pearson

__all__ = ["PRESET", "Plan", "plan", "key_steps", "partial_pearson", "partial_kendall", "correlation_views",
           "analyse", "main", "PIECES", "EVAL_EVERY", "DRAWS", "SIZE_FACTORS", "K_PREFIXES", "PAPER_LITERAL",
           "MEASURES", "TARGETS", "mean_sd", "draw_summary", "overfit_claims", "sensitivity", "table", "plot",
           "track_label", "status", "train_piece", "spectra_piece", "draws_piece", "sizes_piece", "paper_piece",
           "paper_literal"]
