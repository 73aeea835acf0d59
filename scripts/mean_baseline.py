"""Mean-motion baseline: the training set's mean 51-dim motion, repeated for every test frame.

Writes the same layout as inference (main/results/layout.py) under INFER.exp_name=mean_baseline (override it
with INFER.exp_name=...), so main/evaluate.py scores it exactly like a model. A model that learned
anything from the audio must beat it on LVE.

    python scripts/mean_baseline.py --config config/demo.yaml [--overwrite | --resume] [SECTION.key=value ...]

Results are written like inference's (main/results/layout.py): whole or not at all, existing ones refused
unless --overwrite (redo all) or --resume (keep complete samples).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from dataset.dataset import FaceDataset
from dataset.styles import style_classes
from main.infer.jobs import check_clashes, jobs_to_write, plan_jobs
from main.results import layout as RT
from main.results.formats import sample_arrays, to_output_fps
from main.results.writer import write_sample
from models.flame import load_flame
from utils.config import flame_path_for, load_config
from utils.errors import run_reporting_user_errors
from utils.runtime import setup_logger


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/faceformer.yaml")
    p.add_argument("--overwrite", action="store_true", help="redo all results (INFER.overwrite=true)")
    p.add_argument("--resume", action="store_true", help="keep complete results (INFER.resume=true)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, ["INFER.exp_name=mean_baseline", *args.overrides])
    log = setup_logger("mean_baseline")
    mode = RT.results_mode(bool(args.overwrite or cfg.INFER.overwrite), bool(args.resume or cfg.INFER.resume))
    styles = style_classes(cfg)
    mean = training_mean_motion(cfg, styles, log)
    log.info("training mean motion: jaw %.4f, |expr| %.4f", mean[50], float(np.abs(mean[:50]).mean()))

    test = FaceDataset(cfg, cfg.INFER.split, styles, train=False, check=True, log=log, progress=False)
    check_clashes(cfg, test.refs)
    flames = {name: load_flame(flame_path_for(cfg, name)) for name in {r.dataset for r in test.refs}}
    index_of = {(r.json_path, r.sample_id): i for i, r in enumerate(test.refs)}
    jobs = jobs_to_write(cfg, plan_jobs(cfg, test.refs, styles, log), mode, flames.__getitem__, log)
    for job in jobs:
        item = test[index_of[(job.ref.json_path, job.ref.sample_id)]]
        motion = to_output_fps(np.repeat(mean[None], int(item["n_frames"]), axis=0), job.out_fps, test.framing.fps)
        flame, shape = flames[job.ref.dataset], item["shape"].numpy()
        meta = RT.build_meta(job.ref.sample_id, job.ref.dataset, job.ref.style_id, job.ref.speaker,
                             job.ref.audio_path, job.out_fps, motion.shape[0], "mean_baseline", None)
        write_sample(job.vert_dir, job.coeff_dir, flame.motion_to_vertices(motion, shape),
                        sample_arrays(motion, shape, item["detail"].numpy()), meta)
    log.info("wrote %d baseline sample(s) to %s", len(jobs),
             os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name))


if __name__ == "__main__":
    run_reporting_user_errors("mean_baseline", main)
