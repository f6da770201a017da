"""The run lock, importable here for the study's modules: it lives in train.lock, beside train.rundir, which claims
run directories with it (the core of train does not import the study)."""

from train.lock import LOCK_HEARTBEAT_S, LOCK_STALE_S, RunLock

__all__ = ["LOCK_HEARTBEAT_S", "LOCK_STALE_S", "RunLock"]
