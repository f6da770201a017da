"""The run lock, kept importable here: it lives in train.study.lock."""

from train.study.lock import LOCK_HEARTBEAT_S, LOCK_STALE_S, RunLock

__all__ = ["LOCK_HEARTBEAT_S", "LOCK_STALE_S", "RunLock"]
