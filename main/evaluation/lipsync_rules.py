"""What the lip-sync checks (main/evaluation/lipsync.py) and their report (main/evaluation/lipsync_report.py) share: the
thresholds the report's definitions name, the error type, and runs of a boolean mask."""
from __future__ import annotations

import numpy as np

from utils.errors import UserError

CLOSED_SHARE = 0.2   # near-closed: opening <= this share of the clip's 5-95% aperture range
JITTER_HZ = 8.0      # jitter: lip motion energy above this frequency
STATIC_M = 5e-4      # an aperture range under this (m) is a static mouth


class LipSyncError(UserError, RuntimeError):
    """Nothing to score, or a clip that cannot be scored; the message names the folder."""


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]))
