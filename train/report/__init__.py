"""The reproduction report: REPRODUCTION.md and its figures, computed from the published results alone.

    python -m train report [--results DIR] [--out FILE]

reads `results/` (train.study.layout's tree; every results.json through train.record) and rewrites
`REPRODUCTION.md` and the PNGs in `reproduction/` beside it. The same results give the same bytes: no
timestamps, host names, absolute paths, git hashes or state of runs in progress; figures are written
without the "Software" PNG tag at a fixed DPI.

Per group: a table of our measurements beside the paper's claims (docs/method.md §5, as text; never the
paper's per-row numbers: this is a blind reproduction), and for each claim an "agree"/"disagree"
computed from our numbers by a small pure rule (train.report.claims), or "undecided" while results
are missing. Runs that depart from the paper's setting (fewer epochs, a smaller K, sweep overrides, a data
subset) are flagged in their row and never presented as the paper's setting.

    claims.py         the paper's claims and the rules that test them (pure functions of rows)
    rows.py           loading each group's rows from the results tree
    tables.py         the markdown tables
    figures.py        the figures
    methods.py        which method choice moves the baseline's verdict
    sensitivity.py    the sensitivity section
    disagreements.py  the disagreement diagnosis
    at_k.py           the claims at other K
    render.py         assembling REPRODUCTION.md, and `python -m train report`

The report reads the plan and the results layout (train.study.plan, train.study.layout), never a runner. Every name
that notebooks and users imported from the single module train.report before it became this package is kept here.
"""

from train.record import SpectrumResult, did_not_learn_note  # noqa: F401
from train.report.claims import (AGREE, CLAIMS, Claim, DISAGREE, ORDERING_RULES, Outcome, PL_CLAIM, Row, STEP_RULES,
                                 UNDECIDED, at_k, exponent, kendall, kendall_test, learned, listed, measured,
                                 not_learned_runs, pearson, pearson_test, rows_at_k, rule_baseline_seeds,
                                 rule_batch_size, rule_controls, rule_depth, rule_no_power_law, rule_s_tracks_sharpness,
                                 rule_s_tracks_test_error, rule_sgd_below_adam, rule_step, rule_train_size,
                                 rule_trained_vs_init, rule_width, step_trend, test_error, with_p)
from train.report.rows import (control_reductions, control_rows, failure_note, load_control, load_group,
                               planned_control_users, reductions, study_docs)
from train.report.tables import (TABLE_HEAD, claims_table, correlation_table, curvature_cells, data_section,
                                 group_table, seeds_table, short_verdict, table_row)
from train.report.figures import FIGURES, counts_figure, rank_figure, save_figure, sharpness_figure
from train.report.methods import (PAPER_BASELINE, REACH_FLOOR, SEED_CHOICE, SETTING_STUDIES, method_choice_summary,
                                  method_choices)
from train.report.sensitivity import sensitivity_section, start_agreement
from train.report.disagreements import (NEAR_THRESHOLD, SMALL_K, controls_passing_at_small_k, disagreements_section,
                                        final_spectra, label_fit, near_threshold, s_resolution, stuck_setting)
from train.report.at_k import Refits, claims_at_other_k, contrast_sentence, power_law_counts, refit_groups
from train.report.render import (CLAIMS_AT_K_FIGURE, HEADER, SHARPNESS_GROUPS, UNRECORDED_DEVICE, group_section,
                                 in_brief, machines, main, overview, render, spectrum_cost)

__all__ = ["render", "main", "load_group", "AGREE", "DISAGREE", "UNDECIDED", "CLAIMS", "PL_CLAIM", "Claim",
           "Outcome", "Row", "rule_baseline_seeds", "rule_batch_size", "rule_controls", "rule_depth",
           "rule_no_power_law", "rule_sgd_below_adam", "rule_s_tracks_sharpness", "rule_s_tracks_test_error",
           "rule_step", "rule_train_size", "rule_trained_vs_init", "rule_width"]
