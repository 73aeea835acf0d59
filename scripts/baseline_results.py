"""Write a baseline's predictions for the test split in inference's layout (main/results.py), so that
main/evaluate.py scores a baseline exactly like a model: whole or not at all, existing results refused
unless --overwrite (redo all) or --resume (keep complete samples)."""
from __future__ import annotations

import argparse
import os

import numpy as np

from dataset.dataset import FaceDataset
from dataset.styles import style_classes
from main.infer.jobs import check_clashes, jobs_to_write, plan_jobs
from main.results import layout as RT
from main.results.formats import sample_arrays, to_output_fps
from main.results.writer import write_sample
from models.flame import load_flame
from utils.config import flame_path_for, load_config
from utils.runtime import setup_logger


def baseline_setup(argv, description: str, name: str, extra=None):
    """The command line every baseline script shares -> (args, cfg, styles, results mode, logger).
    ``INFER.exp_name`` defaults to ``name``; ``extra(parser)`` adds the script's own options."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="config/faceformer.yaml")
    p.add_argument("--overwrite", action="store_true", help="redo all results (INFER.overwrite=true)")
    p.add_argument("--resume", action="store_true", help="keep complete results (INFER.resume=true)")
    if extra is not None:
        extra(p)
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(args.config, [f"INFER.exp_name={name}", *args.overrides])
    mode = RT.results_mode(bool(args.overwrite or cfg.INFER.overwrite), bool(args.resume or cfg.INFER.resume))
    return args, cfg, style_classes(cfg), mode, setup_logger(name)


def write_baseline_results(cfg, styles: list[str], predict, label: str, mode: str, log) -> int:
    """``predict(item, style_index)`` -> (T, 51) motion at the model's 25 fps for one test item
    (FaceDataset's dict, the whole clip); each sample is conditioned on the style inference would use.
    Writes ``{INFER.output_root}/{INFER.exp_name}`` and its coefficient tree; returns the samples written."""
    test = FaceDataset(cfg, cfg.INFER.split, styles, train=False, check=True, log=log, progress=False)
    check_clashes(cfg, test.refs)
    flames = {name: load_flame(flame_path_for(cfg, name)) for name in {r.dataset for r in test.refs}}
    index_of = {(r.json_path, r.sample_id): i for i, r in enumerate(test.refs)}
    jobs = jobs_to_write(cfg, plan_jobs(cfg, test.refs, styles, log), mode, flames.__getitem__, log)
    for job in jobs:
        item = test[index_of[(job.ref.json_path, job.ref.sample_id)]]
        motion25 = np.asarray(predict(item, styles.index(job.style)), dtype=np.float32)
        motion = to_output_fps(motion25, job.out_fps, test.framing.fps)
        flame, shape = flames[job.ref.dataset], item["shape"].numpy()
        meta = RT.build_meta(job.ref.sample_id, job.ref.dataset, job.ref.style_id, job.ref.speaker,
                             job.ref.audio_path, job.out_fps, motion.shape[0], label, None, flame.source, shape,
                             job.ref.template_path or job.ref.flame_path)
        write_sample(job.vert_dir, job.coeff_dir, flame.motion_to_vertices(motion, shape),
                     sample_arrays(motion, shape, item["detail"].numpy()), meta)
    log.info("wrote %d %s sample(s) to %s", len(jobs), label, os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name))
    return len(jobs)
