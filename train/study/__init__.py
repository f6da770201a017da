"""The paper's study: its plan (groups, configurations, controls), the results layout, and the runners.

    plan.py         the groups and their runs, each run's configuration and control key, the sensitivity studies
    layout.py       the results/ and runs/ trees, publishing, run states and recorded failures
    lock.py         the run lock (an exclusive lock file with a heartbeat)
    sweep.py        the sweep runner and `python -m train sweep`
    sensitivity.py  the sensitivity runner and `python -m train sensitivity`

Readers of the results (train.report) import plan and layout only, never a runner. Importing this package imports
none of its modules.
"""
