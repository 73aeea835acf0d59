"""Before a long run writes anything: can its output folders be written, and is there room on their disks?"""
from __future__ import annotations

import os
import shutil
import tempfile

from utils.errors import ResultsError


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_can_write(need: dict[str, int], what: str = "results"):
    """need: {folder: bytes to be written under it}. Every folder must be creatable and writable (probed
    with a temporary file in its nearest existing ancestor) and each filesystem must have the bytes
    planned on it free, else ResultsError with the folder and the estimate in MB."""
    per_device: dict[int, list] = {}
    for folder, n in need.items():
        anc = _existing_ancestor(folder)
        if not os.path.isdir(anc):
            raise ResultsError(f"cannot write {what} in {folder}: {anc} is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=anc):
                pass
        except OSError as e:
            raise ResultsError(f"cannot write {what} in {folder}: {anc} is not writable ({e.strerror or e})") from None
        entry = per_device.setdefault(os.stat(anc).st_dev, [anc, 0, []])
        entry[1] += n
        entry[2].append(folder)
    for anc, n, folders in per_device.values():
        free = shutil.disk_usage(anc).free
        if n > free:
            raise ResultsError(f"not enough free space for {what}: about {n / 2**20:.1f} MB needed under "
                               f"{folders[0]}{' (and others on the same disk)' if len(folders) > 1 else ''}, "
                               f"{free / 2**20:.1f} MB free on {anc}'s filesystem")
