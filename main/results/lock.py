"""One writer per output folder: an exclusive lock held on each output folder for a run.

A second run writing the same results fails at once, naming the pid that holds the lock, instead of
both runs overwriting each other's samples. The lock is utils/filelock.py's: it goes with the process.
"""
from __future__ import annotations

import contextlib
import os

from utils.errors import ResultsError
from utils.filelock import LockHeld, lock_file

LOCK_FILE = ".inference.lock"


@contextlib.contextmanager
def output_lock(folders: list[str], how: str = "wait for it to finish or write elsewhere"):
    """Hold the lock (on the empty file ``folder/.inference.lock``) of each output folder for the block.
    The trees hold nothing but results: a lock file this run made goes at the end, and so does a
    killed run's leftover once this run has finished (a run that fails leaves the folder as it found
    it); folders made only to hold the lock are removed when they stay empty."""
    held, made, ok = [], [], False
    try:
        for folder in sorted({os.path.abspath(f) for f in folders}):
            d = folder
            while not os.path.exists(d):
                made.append(d)
                d = os.path.dirname(d)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise ResultsError(f"cannot write results in {folder}: {e.strerror or e}") from None
            held.append(_lock_one(os.path.join(folder, LOCK_FILE), how))
        yield
        ok = True
    finally:
        for path, fd, created in reversed(held):
            if created or ok:
                with contextlib.suppress(OSError):
                    os.remove(path)  # while still locked: a run that opened it sees the inode gone and retries
            os.close(fd)
        for d in sorted(made, key=lambda d: -d.count(os.sep)):  # deepest first, only if empty
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _lock_one(path: str, how: str) -> tuple[str, int, bool]:
    """(path, open fd holding the lock, whether this call created the file)."""
    while True:
        created = not os.path.exists(path)
        try:
            fd = lock_file(path)
        except LockHeld as e:
            raise ResultsError(f"another inference run ({e.holder}) is writing {os.path.dirname(path)} (it holds "
                               f"{path}); {how}") from None
        except OSError as e:
            raise ResultsError(f"cannot open the lock file {path}: {e.strerror or e}") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return path, fd, created
        os.close(fd)  # its holder removed it as we opened it: lock the file that is there now
