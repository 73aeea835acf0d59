"""Mean-motion baseline: the training set's mean 51-dim motion, repeated for every test frame.

Writes the same layout as inference (DESIGN.md 6) under INFER.exp_name=mean_baseline (override it
with INFER.exp_name=...), so main/evaluate.py scores it exactly like a model. A model that learned
anything from the audio must beat it on LVE.

    python scripts/mean_baseline.py --config config/demo.yaml [--overwrite] [SECTION.key=value ...]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from dataset.dataset import FaceDataset, style_classes  # noqa: E402
from main.inference import (check_clashes, check_writable, fresh_dir, plan_jobs, to_output_fps, write_coeffs,  # noqa: E402
                            write_frames)
from models.flame import load_flame_for  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.utils import setup_logger  # noqa: E402


def training_mean_motion(cfg, styles, log) -> np.ndarray:
    """(51,) frame-weighted mean of the training motion (whole clips, at 25 fps)."""
    data = FaceDataset(cfg, "train", styles, train=False, check=False, log=log, progress=False)
    total, n = np.zeros(51, np.float64), 0
    for i in range(len(data)):
        m = data[i]["motion"].numpy()
        total += m.sum(0)
        n += m.shape[0]
    return (total / max(n, 1)).astype(np.float32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/faceformer.yaml")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, ["INFER.exp_name=mean_baseline", *args.overrides])
    log = setup_logger("mean_baseline")
    styles = style_classes(cfg)
    mean = training_mean_motion(cfg, styles, log)
    log.info("training mean motion: jaw %.4f, |expr| %.4f", mean[50], float(np.abs(mean[:50]).mean()))

    test = FaceDataset(cfg, cfg.INFER.split, styles, train=False, check=True, log=log, progress=False)
    check_clashes(cfg, test.refs)
    jobs = plan_jobs(cfg, test.refs, styles, log)
    check_writable([d for j in jobs for d in (j.vert_dir, j.coeff_dir)], args.overwrite or cfg.INFER.overwrite)
    for i, job in enumerate(jobs):
        item = test[i]
        motion = to_output_fps(np.repeat(mean[None], int(item["n_frames"]), axis=0), job.out_fps)
        flame = load_flame_for(cfg, job.ref.dataset)
        shape = item["shape"].numpy()
        for d in (job.vert_dir, job.coeff_dir):
            fresh_dir(d)
        write_frames(job.vert_dir, flame.motion_to_vertices(motion, shape))
        write_coeffs(job.coeff_dir, flame, motion, shape,
                     {"sample_id": job.ref.sample_id, "dataset": job.ref.dataset, "style_id": job.ref.style_id,
                      "speaker": job.ref.speaker, "audio_path": os.path.abspath(job.ref.audio_path),
                      "fps": job.out_fps, "n_frames": int(motion.shape[0]), "checkpoint": "mean_baseline",
                      "condition_style": None})
    log.info("wrote %d baseline sample(s) to %s", len(jobs),
             os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name))


if __name__ == "__main__":
    main()
