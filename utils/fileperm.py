"""The permissions of files written under a temporary name and renamed into place.

``tempfile.mkstemp`` and ``NamedTemporaryFile`` create files 0600 whatever the umask, and a rename
keeps that mode, so a checkpoint or video written that way would be unreadable to the user's group
even where the umask shares everything else. ``give_umask_mode`` sets the mode a plain ``open()``
would have given: 0666 less the umask.
"""
from __future__ import annotations

import os


def umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_umask_mode(path: str):
    """chmod ``path`` to 0666 less the umask, as if it had been created with ``open(path, "w")``."""
    os.chmod(path, 0o666 & ~umask())
