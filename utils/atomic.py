"""A file written whole or not at all: saved under a temporary name beside it, renamed over it last.

A kill or a full disk then leaves the previous file intact and at most a ``.tmp-<name>-<pid>`` file
(the results tree removes those of dead processes, main/results/layout.py ``clean_stale_temps``). The rename
is atomic because the temporary file is in the same folder, hence on the same filesystem.
"""
from __future__ import annotations

import json
import os

from utils.fileperm import give_umask_mode

TMP_PREFIX = ".tmp-"


def tmp_sibling(path: str) -> str:
    """``.tmp-<name>-<pid>`` beside ``path`` (absolute): unique per process, recognisable by clean-ups."""
    path = os.path.abspath(path)
    return os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{os.path.basename(path)}-{os.getpid()}")


def atomic_write(path: str, save, umask_mode: bool = False):
    """``save(tmp)`` writes the content to a temporary path; it is then renamed to ``path``. No temporary
    file is left behind on any error (the error propagates). ``umask_mode``: give the file the mode a
    plain ``open()`` would have (for writers that create files 0600, as torch.save through mkstemp)."""
    tmp = tmp_sibling(path)
    try:
        save(tmp)
        if umask_mode:
            give_umask_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_json(path: str, obj, indent: int | None = 2, durable: bool = False):
    """``obj`` as JSON at ``path`` through ``atomic_write``, its folder made. ``durable``: flushed to the
    disk before the rename, for files whose loss after a power cut would cost a rebuild (an index);
    results and reports are cheap to rewrite and skip the sync."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def save(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    atomic_write(path, save)
