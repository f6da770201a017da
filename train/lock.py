"""An exclusive lock file with a heartbeat: the claim of a run directory, a sweep's run or a control.

`RunLock(path).acquire()` creates the file with O_EXCL (atomic, also on NFS v3+) and keeps it fresh from a daemon
thread; a lock not refreshed for LOCK_STALE_S seconds, or whose owner is a dead process on this host, is taken
over. Used by `python -m train` (the run directory, train.rundir.claimed) and by the sweeps (train.study.sweep).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

LOCK_STALE_S = 600.0
LOCK_HEARTBEAT_S = 60.0


def _duration(seconds: float) -> str:
    """"42 s", "12 min", "3 h 12 min": an age for a person."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class RunLock:
    """An exclusive lock file with a heartbeat: held while its owner refreshes it, stale after LOCK_STALE_S.

    `acquire()` creates the file with O_EXCL (atomic, also on NFS v3+); a lock whose file has not been
    touched for `stale_after` seconds, or whose owner is a dead process on this host, is taken over. While
    held, a daemon thread touches the file every `heartbeat` seconds.
    """

    def __init__(self, path: Path, *, stale_after: float = LOCK_STALE_S, heartbeat: float = LOCK_HEARTBEAT_S):
        self.path = Path(path)
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> dict[str, Any] | None:
        """The lock file's owner record, or None when there is no (readable) lock."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def describe(self) -> str:
        """Who holds the lock and when it frees, for a message: "held by pid 4242 on host gpu7 since 3 h 12 min,
        refreshed 20 s ago (lock file ...); it frees when that process ends, or once not refreshed for 10 min"."""
        owner = self.owner() or {}
        now = time.time()
        try:
            refreshed = f"refreshed {_duration(now - self.path.stat().st_mtime)} ago"
        except FileNotFoundError:
            refreshed = "just released"
        since = owner.get("since")
        since = f" for {_duration(now - since)}" if isinstance(since, (int, float)) else ""
        here = " (this host)" if owner.get("host") == socket.gethostname() else ""
        return (f"held by pid {owner.get('pid', '?')} on host {owner.get('host', '?')}{here}{since}, {refreshed} "
                f"(lock file {self.path}); it frees when that process ends (a dead process on this host at once, "
                f"on another host once the lock is not refreshed for {_duration(self.stale_after)})")

    def is_stale(self) -> bool:
        """Not refreshed for `stale_after` seconds, or owned by a process of this host that is gone."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        owner = self.owner() or {}
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return age > self.stale_after

    def _take_over(self) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile (then leave it)."""
        seen = (self.owner() or {}).get("token")
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = None
        try:
            moved = json.loads(aside.read_text()).get("token")
        except (OSError, ValueError):
            pass
        if moved != seen:  # a fresh lock was renamed by mistake: put it back
            os.rename(aside, self.path)
        else:
            aside.unlink(missing_ok=True)

    def acquire(self) -> bool:
        """Take the lock if free (or stale). Returns whether this process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.is_stale():
                    return False
                self._take_over()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "since": time.time()}, f)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the file if it is still this process's lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self.owner() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
