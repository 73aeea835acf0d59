"""The one file lock: an exclusive ``fcntl.flock`` on a file, held through an open descriptor. The lock
goes with the process, also on SIGKILL, so a crashed run never blocks the next one. Used by the results
tree (main/results/lock.py, one writer per output folder) and the prepared-data store (dataset/store.py).
"""
from __future__ import annotations

import fcntl
import os
from typing import Callable


class LockHeld(OSError):
    """Another process holds the lock; ``holder`` names it ('pid N' where /proc/locks says)."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is locked by {holder}")
        self.holder = holder


def lock_file(path: str, on_wait: Callable[[], None] | None = None) -> int:
    """An open descriptor of ``path`` (made if missing) holding its exclusive lock; close it to release.
    Held by another process: LockHeld at once, or with ``on_wait``, that is called once and the lock
    waited for. An OSError from opening the file passes through."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if on_wait is None:
                raise LockHeld(path, flock_holder(os.fstat(fd).st_ino)) from None
            if not isinstance(e, BlockingIOError):
                raise
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def flock_holder(inode: int) -> str:
    """'pid N' of the process holding a flock on ``inode`` (from /proc/locks, Linux), or a vaguer word."""
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
                    return f"pid {parts[4]}"
    except OSError:
        pass
    return "pid unknown"
