"""Names that become file or folder names (a test sample's style_id, a dataset's name, INFER.exp_name):
what the file system and the results layout accept, checked by the data check and config loading,
before anything is written, instead of failing after some results are out."""
from __future__ import annotations

# NAME_MAX of the usual Linux file systems (ext4, xfs, btrfs, tmpfs), in bytes.
NAME_MAX = 255
# The longest thing the results writer adds to a name: its temporary sibling ".tmp-<name>-<pid>"
# (main/results/layout.py; pids go up to 4194304) and the renderer's "<name>.mp4".
_NAME_OVERHEAD = len(".tmp-") + len("-4194304")
MAX_NAME_BYTES = NAME_MAX - _NAME_OVERHEAD


def folder_name_problem(name) -> str | None:
    """Why ``name`` cannot be one folder name of the results tree, or None when it can."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if "\0" in name:
        return "it contains a NUL byte"
    if "/" in name or "\\" in name:
        return "it contains '/' or '\\'"
    if name in (".", ".."):
        return f"'{name}' names a folder's own or parent folder"
    if name.startswith(".tmp-"):
        return "names starting with '.tmp-' are the results writer's temporary folders (left out of results)"
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if bad:
        return f"it contains the control character {bad[0]!r}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate such as \\ud800 in the JSON)"
    if size > MAX_NAME_BYTES:
        return (f"it is {size} bytes long in UTF-8; at most {MAX_NAME_BYTES} fit in a file name (the file "
                f"system allows {NAME_MAX}, the results writer adds up to {_NAME_OVERHEAD} for temporary names)")
    return None


def shown_name(name, limit: int = 60) -> str:
    """A name for a one-line message: repr, cut to about ``limit`` characters."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(name)} characters)"
