"""Kept importable: the paper's claims and their rules moved to train.report.claims."""

from train.report.claims import *  # noqa: F401,F403
