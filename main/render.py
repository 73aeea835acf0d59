"""Render a results tree (or one leaf folder of {i}.npy frames) to mp4: ``python main/render.py --help``;
the README's "Rendering" section has the usage. Videos mirror the tree under results/videos/, and existing
videos follow inference's rule (main/results/layout.py ``select_todo``). The drawing is
main/rendering/video.py.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

if __name__ == "__main__":  # `python main/render.py` puts main/, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from main.rendering.scene import RenderError
from main.rendering.video import BACKENDS, load_faces, render_sequence
from main.results.layout import clean_stale_temps, results_mode, select_todo
from main.results.reader import find_leaves, is_inside, leaf_fps, leaf_meta, load_frames
from utils.config import load_config, resolve_data_path
from utils.errors import ResultsError, run_reporting_user_errors
from utils.runtime import setup_logger

log = logging.getLogger("render")

DEFAULT_VIDEO_ROOT = "results/videos"


def _leaf_dataset(leaf: str, meta: dict | None, cfg) -> str | None:
    if meta and meta.get("dataset"):
        return meta["dataset"]
    parent = os.path.basename(os.path.dirname(os.path.abspath(leaf)))
    return parent if cfg is not None and parent in cfg.DATA.datasets else None


MAX_SIZE = 4096  # a frame is size x size RGB kept in memory per frame (twice with --gt); GL's usual texture limit


def frame_size(text: str) -> int:
    """--size: an even number of pixels from 16 to MAX_SIZE (H.264 wants even sides; past that the frames
    outgrow GL's framebuffers and the memory of a video writer)."""
    try:
        size = int(text)
    except ValueError:
        size = None
    if size is None or size % 2 or not 16 <= size <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not an even number of pixels from 16 to {MAX_SIZE}")
    return size


def main(argv=None):
    p = argparse.ArgumentParser(description="Render {i}.npy vertex frames (+ wav) to mp4.")
    p.add_argument("--config", default="config/faceformer.yaml", help="config for defaults (paths, FLAME)")
    p.add_argument("--results", help="a leaf folder of {i}.npy frames, or a tree of them "
                                     "(default: {INFER.output_root}/{INFER.exp_name})")
    p.add_argument("--audio", help="wav to mux (default: audio_path from the coeff tree's meta.json; "
                                   "else a silent video)")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_VIDEO_ROOT}, mirroring the tree) or, "
                                 "for one leaf, an .mp4 path")
    p.add_argument("--fps", type=float, help="frame rate (default: meta.json fps, else the config's, else 25)")
    p.add_argument("--gt", help="ground truth shown on the right: a folder of {i}.npy (V,3) frames, a "
                                "(T,V,3) .npy, or for a tree of results a tree with the same layout")
    p.add_argument("--flame", help="FLAME model (or mesh file) for the faces (default FLAME.model_path, "
                                   "or the dataset's flame_model)")
    p.add_argument("--size", type=frame_size, default=512, help=f"frame height in pixels (even, 16 to {MAX_SIZE})")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="egl / osmesa: pyrender on that OpenGL platform; cpu: numpy rasteriser, no GL needed; "
                        "auto (default): PYOPENGL_PLATFORM (egl unless set), the other GL platform, then cpu")
    p.add_argument("--overwrite", action="store_true", help="replace existing videos (INFER.overwrite=true)")
    p.add_argument("--resume", "--skip_existing", action="store_true", help="keep existing videos, render the "
                   "missing ones (INFER.resume=true)")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)

    setup_logger("render")
    cfg = load_config(args.config, args.overrides)  # a repo-relative config path works from anywhere

    root = args.results or os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name)
    if not os.path.exists(root):
        raise ResultsError(f"results not found: {root}")
    leaves = [root] if os.path.isfile(root) else find_leaves(root)
    if not leaves:
        raise ResultsError(f"no folder with 0.npy, 1.npy, ... frame files under {root}")
    single_out = args.out is not None and args.out.lower().endswith(".mp4")
    if single_out and len(leaves) > 1:
        raise RenderError(f"--out {args.out} is one file but {root} holds {len(leaves)} sequences")

    # Videos mirror the results tree: relative to INFER.output_root when inside it, else to the
    # folder that holds --results (so its own name is kept).
    rel_base = cfg.INFER.output_root if is_inside(root, cfg.INFER.output_root) else os.path.dirname(
        os.path.abspath(root))
    out_root = args.out or DEFAULT_VIDEO_ROOT
    videos = []
    for leaf in leaves:
        rel = os.path.relpath(os.path.abspath(leaf), os.path.abspath(rel_base))
        # Style folders may contain dots: only a (T,V,3) .npy file loses its extension.
        rel = rel[:-4] if rel.lower().endswith(".npy") else rel
        videos.append(args.out if single_out else os.path.join(out_root, rel + ".mp4"))
    todo = select_todo([(v, None) for v in videos], results_mode(args.overwrite, args.resume, cfg),
                       "rerun with --overwrite to replace them, --resume to keep them, or choose another --out")
    clean_stale_temps([v for v, t in zip(videos, todo) if t])  # a killed render's temporary video
    faces_cache: dict[str, np.ndarray] = {}
    log.info("rendering %d sequence(s) from %s (--backend %s)", len(leaves), root, args.backend)
    for leaf, out_mp4, t in zip(leaves, videos, todo):
        if not t:
            log.info("exists, kept (--resume): %s", out_mp4)
            continue
        meta = leaf_meta(leaf, cfg)
        dataset = _leaf_dataset(leaf, meta, cfg)
        fps, fps_from = leaf_fps(meta, dataset, cfg, args.fps)

        audio = args.audio or (meta or {}).get("audio_path")
        if audio and not os.path.isfile(audio):
            log.warning("%s: audio %s not found: rendering without sound", leaf, audio)
            audio = None

        flame_path = args.flame
        if flame_path is None:
            ds_model = cfg.DATA.datasets[dataset].flame_model if dataset in cfg.DATA.datasets else None
            flame_path = resolve_data_path(cfg, ds_model or cfg.FLAME.model_path)
        if flame_path not in faces_cache:
            faces_cache[flame_path] = load_faces(flame_path)

        gt = None
        if args.gt:
            gt_path = args.gt if len(leaves) == 1 else os.path.join(args.gt, os.path.relpath(leaf, root))
            if os.path.exists(gt_path):
                gt = load_frames(gt_path)
            else:
                log.warning("%s: no ground truth at %s", leaf, gt_path)

        frames = load_frames(leaf)
        log.info("%s: %d frames at %g fps (%s), audio: %s%s", leaf, len(frames), fps, fps_from,
                 audio or "none", ", with ground truth" if gt is not None else "")
        render_sequence(frames, faces_cache[flame_path], out_mp4, fps, audio=audio, gt=gt, size=args.size,
                        backend=args.backend)
        log.info("wrote %s", out_mp4)


if __name__ == "__main__":
    run_reporting_user_errors("render", main)
