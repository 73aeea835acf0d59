"""Test-split requests: the samples -> jobs (output folders, conditioning style, output fps), the
clash check, which jobs to (re)make and whether they fit, the log file, and the per-dataset summary
table (main/infer/pipeline.py, scripts/mean_baseline.py)."""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

import soundfile as sf

from dataset.styles import pick_condition_style, style_for
from main.results import layout as RT
from utils.disk import check_can_write
from utils.errors import InferenceError
from utils.framing import output_fps

log = logging.getLogger("inference")


def default_log_file(path: str) -> str:
    """Where the evaluation-mode log goes for an output root: for a relative root, ``<its first
    component>/inference.log`` (the default root gives ``results/inference.log``); for an absolute root,
    ``<the nearest ancestor folder named results>/inference.log``, else ``<parent of the root>/inference.log``."""
    path = os.path.normpath(path)
    if not os.path.isabs(path):
        return os.path.join(path.split(os.sep)[0], "inference.log")
    parts = path.split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "results":
            return os.path.join(os.sep.join(parts[:i + 1]) or os.sep, "inference.log")
    return os.path.join(os.path.dirname(path), "inference.log")


def check_roots(cfg):
    """Evaluation mode writes vertex folders that hold nothing but frames: the coefficients need their own root."""
    if os.path.abspath(cfg.INFER.output_root) == os.path.abspath(cfg.INFER.coeff_root):
        raise InferenceError(f"INFER.output_root and INFER.coeff_root are both {cfg.INFER.output_root}; the vertex "
                             f"folders must hold nothing but frames: give the coefficients another root")


@dataclass
class Job:
    """One test sample and where its results go."""
    ref: object            # dataset.data_item.SampleRef
    vert_dir: str
    coeff_dir: str
    style: str             # the training style it is conditioned on
    out_fps: float


RERUN_HOW = ("rerun with --resume (INFER.resume=true) to keep complete samples and make the missing ones, "
             "with --overwrite (INFER.overwrite=true) to redo all, or set another INFER.exp_name")


def check_clashes(cfg, refs):
    """Two samples with the same output folder (dataset + style id) -> ResultsError listing them all."""
    RT.check_clashes(refs, lambda r: RT.sample_dirs(cfg, r.dataset, r.style_id)[0])


def plan_jobs(cfg, refs, styles: list[str], logger: logging.Logger | None = None) -> list[Job]:
    """SampleRefs -> Jobs (output folders, conditioning style, output fps); logs untrained speakers."""
    fallback = pick_condition_style(cfg, styles)  # checked even when every speaker was trained
    for speaker, n in Counter(ref.speaker for ref in refs if ref.speaker not in styles).items():
        (logger or log).info("speaker '%s' (%d test sample(s)) is not a training style: conditioned on '%s' "
                             "(INFER.condition_style)", speaker, n, fallback)
    return [Job(ref, *RT.sample_dirs(cfg, ref.dataset, ref.style_id), style_for(cfg, styles, ref.speaker),
                output_fps(cfg, ref.fps)) for ref in refs]


def jobs_to_write(cfg, jobs: list[Job], mode: str, flame_of, logger: logging.Logger) -> list[Job]:
    """Pick the jobs ``mode`` asks for (select_todo), clean a crashed run's temporary folders, and check
    that their results fit: writable folders, free space for the planned frames. ``flame_of(dataset)``:
    the dataset's FLAME model (its vertex count sizes the frames)."""
    dirs = [(j.vert_dir, j.coeff_dir) for j in jobs]
    todo = [j for j, t in zip(jobs, RT.select_todo(dirs, mode, RERUN_HOW)) if t]
    RT.clean_stale_temps([d for pair in dirs for d in pair], logger)  # not before: a refused run changes nothing
    if mode == "resume":
        logger.info("--resume: %d complete sample(s) kept, %d to generate", len(jobs) - len(todo), len(todo))
    vert_bytes = coeff_bytes = 0
    for j in todo:
        frames = int(round(audio_seconds(j.ref.audio_path) * j.out_fps)) + 1
        coeff_bytes += RT.sample_bytes(frames, 0)
        vert_bytes += RT.sample_bytes(frames, flame_of(j.ref.dataset).n_vertices) - RT.sample_bytes(frames, 0)
    check_can_write({os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name): vert_bytes,
                     os.path.join(cfg.INFER.coeff_root, cfg.INFER.exp_name): coeff_bytes}, "inference results")
    return todo


def audio_seconds(path: str) -> float:
    """Duration from the file header (cheap); 0 if unreadable (the load reports the real error)."""
    try:
        return float(sf.info(path).duration)
    except Exception:
        return 0.0


def summary_row(dataset: str, samples: int, frames: int, audio_s: float, wall_s: float) -> dict:
    """One row of the summary table; RTF = wall seconds / audio seconds (< 1: faster than real time)."""
    return {"dataset": dataset, "samples": samples, "frames": frames, "audio_s": audio_s, "wall_s": wall_s,
            "rtf": wall_s / audio_s if audio_s else float("nan")}


def format_summary(rows: list[dict]) -> str:
    """Per-dataset table plus a total: samples, frames, seconds of audio, wall seconds, real-time factor."""
    head = f"{'dataset':<20} {'samples':>8} {'frames':>9} {'audio_s':>9} {'wall_s':>8} {'RTF':>7}"
    if len(rows) != 1:
        totals = (sum(r[k] for r in rows) for k in ("samples", "frames", "audio_s", "wall_s"))
        rows = rows + [summary_row("total", *totals)]
    lines = [f"{r['dataset']:<20} {r['samples']:>8d} {r['frames']:>9d} {r['audio_s']:>9.1f} {r['wall_s']:>8.1f} "
             f"{r['rtf']:>7.3f}" for r in rows]
    return "\n".join([head, "-" * len(head), *lines, "RTF = wall seconds / audio seconds (< 1: faster than real time)"])
