"""Mean-motion baseline: the training set's mean 51-dim motion, repeated for every test frame.

Writes the same layout as inference (main/results/layout.py) under INFER.exp_name=mean_baseline (override it
with INFER.exp_name=...), so main/evaluate.py scores it exactly like a model. A model that learned
anything from the audio must beat it on LVE.

    python scripts/mean_baseline.py --config config/demo.yaml [--overwrite | --resume] [SECTION.key=value ...]

Results are written like inference's (main/results/layout.py): whole or not at all, existing ones refused
unless --overwrite (redo all) or --resume (keep complete samples).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from dataset.dataset import FaceDataset
from scripts.baseline_results import baseline_setup, write_baseline_results
from utils.errors import run_reporting_user_errors


def training_mean_motion(cfg, styles, log) -> np.ndarray:
    """(51,) frame-weighted mean of the training motion (whole clips, at 25 fps)."""
    data = FaceDataset(cfg, "train", styles, train=False, check=False, log=log, progress=False)
    total, n = np.zeros(data.framing.motion_dim, np.float64), 0
    for i in range(len(data)):
        m = data[i]["motion"].numpy()
        total += m.sum(0)
        n += m.shape[0]
    return (total / max(n, 1)).astype(np.float32)


def main(argv=None):
    _, cfg, styles, mode, log = baseline_setup(argv, __doc__.splitlines()[0], "mean_baseline")
    mean = training_mean_motion(cfg, styles, log)
    log.info("training mean motion: jaw %.4f, |expr| %.4f", mean[50], float(np.abs(mean[:50]).mean()))

    write_baseline_results(cfg, styles, lambda item, style: np.repeat(mean[None], int(item["n_frames"]), axis=0),
                           "mean_baseline", mode, log)


if __name__ == "__main__":
    run_reporting_user_errors("mean_baseline", main)
