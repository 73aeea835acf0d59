"""Inference: test splits, one audio file or a stream -> per-frame FLAME vertices, motion and 287-dim
coefficients. The three modes run through one pipeline (main/infer/pipeline.py)::

    python inference.py --config config/faceformer.yaml [--checkpoint P] [--overwrite | --resume] [KEY=value ...]
    python inference.py [--config CFG] --audio speech.wav [--style STYLE] [--out DIR] [--render]
                        [--identity FILE] [--export glb]
    python inference.py --audio speech.wav --stream [--chunk_ms 200] [--lookahead_ms 300]
                        [--left_context_ms 1000] [--warmup_ms 0] [--prime_audio EARLIER.wav]
    ... | python inference.py --audio - [--stdout_vertices]     (raw 16-bit mono 16 kHz PCM on stdin)

Evaluation mode writes every sample of the ``INFER.split`` JSONs of every dataset into the results
tree (layout: main/results/layout.py), at each dataset's own fps (``INFER.output_fps: native``, so frame counts
match the ground truth) or at a given rate. A speaker that is not a training style is conditioned on
``INFER.condition_style`` (default: the first style). Single-audio mode (any rate, channel count and
length) writes ``DIR/vertices/{i}.npy``, ``motion.npy``, ``coeffs287.npy`` and ``meta.json`` in DIR
(default ``results/single/<audio stem>``; + ``video.mp4`` with ``--render``); streaming (models/streaming.py)
writes each frame as soon as it is final, and ``stream_stats.json``. ``--identity FILE`` animates the FLAME
shape of that file (dataset/identity.py: which files, which FLAME model) instead of the mean face;
``--export glb`` also writes ``DIR/animation.glb`` (main/exporting/glb.py, as ``main/export.py`` does).

Checkpoint: ``--checkpoint``, else ``INFER.checkpoint``, else ``{TRAIN.save_path}/best_model.pth``.
Existing results are an error unless ``--overwrite`` (redo all) or ``--resume`` (keep complete results).
Log file (console + file, appended): ``--log FILE``, else ``DIR/inference.log`` in single-audio mode,
else beside the results tree (main/infer/jobs.py ``default_log_file``; ``results/inference.log`` by default).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from main.exporting.glb import write_glb
from main.exporting.result import load_result
from main.infer.jobs import default_log_file
from main.infer.pipeline import run
from main.infer.request import STREAM_ONLY, Request
from main.results.layout import single_dir
from utils.config import load_config
from utils.errors import run_reporting_user_errors
from utils.runtime import setup_logger

DEFAULT_CONFIG = "config/faceformer.yaml"


# ---- CLI ---------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="FaceFormer inference: the test splits of a config (default) or one audio file (--audio).",
        epilog="Overrides: SECTION.key=value, e.g. INFER.exp_name=run2 INFER.output_fps=25 INFER.device=cpu")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    p.add_argument("--checkpoint", help="model checkpoint (default INFER.checkpoint, else "
                                        "TRAIN.save_path/best_model.pth)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results (INFER.overwrite=true)")
    p.add_argument("--resume", action="store_true", help="keep complete results, make the missing ones, e.g. "
                                                         "after a crash (INFER.resume=true)")
    p.add_argument("--audio", help="single-audio mode: this audio file (any rate / channels / length)")
    p.add_argument("--style", help="single-audio mode: trained style to condition on (default: the first)")
    p.add_argument("--out", help="single-audio mode: output folder (default results/single/<audio stem>)")
    p.add_argument("--render", action="store_true", help="single-audio mode: also render DIR/video.mp4")
    p.add_argument("--identity", help="single-audio mode: animate the FLAME shape of this file (a VHAP npz, "
                   "EMOCA/DECA codes, inferno's HDF5, a per-frame folder or a plain .npy of shape coefficients)")
    p.add_argument("--export", choices=["glb"], help="single-audio mode: also write DIR/animation.glb "
                   "(as python main/export.py --results DIR)")
    p.add_argument("--log", help="log file (default: see the module docstring; results/inference.log)")
    p.add_argument("--stream", action="store_true", help="single-audio mode fed chunk by chunk as if live "
                   "(models/streaming.py); --audio - reads raw 16-bit mono 16 kHz PCM from stdin (always streaming)")
    p.add_argument("--chunk_ms", type=float, help="streaming: chunk length (default INFER.stream_chunk_ms)")
    p.add_argument("--lookahead_ms", type=float, help="streaming: lookahead (default INFER.stream_lookahead_ms)")
    p.add_argument("--left_context_ms", type=float, help="streaming: past audio the encoder sees, < 0 = all "
                                                         "(default INFER.stream_left_context_ms)")
    p.add_argument("--warmup_ms", type=float, help="streaming: audio held before the first frame is emitted, "
                   "once (default INFER.stream_warmup_ms)")
    p.add_argument("--prime_audio", help="streaming: audio of the speaker recorded beforehand on the same "
                   "microphone, used only to start the normalisation statistics warm (not animated)")
    p.add_argument("--stdout_vertices", action="store_true", help="streaming: also write each frame's vertices "
                   "to stdout as soon as final, raw float32 (V,3) little-endian bytes (the log goes to stderr)")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value")
    args = p.parse_intermixed_args(argv)
    args.stream = args.stream or args.audio == "-"
    if args.stream and (args.audio is None or args.render):
        p.error("--stream needs --audio FILE (or --audio - for stdin) and does not --render")
    if not args.stream and any(getattr(args, k) not in (None, False) for k in STREAM_ONLY):
        p.error(", ".join(f"--{k}" for k in STREAM_ONLY[:-1]) + f" and --{STREAM_ONLY[-1]} belong to --stream")
    if args.audio is None and (args.style or args.out or args.render or args.identity or args.export):
        p.error("--style, --out, --render, --identity and --export belong to single-audio mode: give --audio too")
    return args


def cli(argv=None):
    """Run as the command line asks; raises a UserError (utils/errors.py) on user errors and
    Interrupted on SIGINT/SIGTERM."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    request = Request("stream" if args.stream else "file" if args.audio else "test", args.audio, args.style,
                      single_dir(args.audio, args.out) if args.audio else None, args.checkpoint, args.overwrite,
                      args.resume, args.render, args.identity, **{k: getattr(args, k) for k in STREAM_ONLY})
    if request.mode == "test":
        logger = setup_logger("inference", args.log or default_log_file(cfg.INFER.output_root))
        logger.info("inference on the %s split (config %s, overrides %s)", cfg.INFER.split, args.config,
                    args.overrides)
    else:
        logger = setup_logger("inference", args.log or os.path.join(request.out, "inference.log"))
        if request.mode == "file":
            logger.info("single-audio inference: %s (config %s, overrides %s)", args.audio, args.config,
                        args.overrides)
    result = run(cfg, request, logger)
    if args.export:  # the result was just made (or found complete): its export is remade with it
        logger.info("glb: %s", write_glb(load_result(result["out_dir"], cfg, vertices=False)))
    return result


def main(argv=None):
    """cli() with user errors and interrupts as one line (console and, once set up, the log file) and
    exit status 1 / 130 (SIGINT) / 143 (SIGTERM)."""
    run_reporting_user_errors("inference", cli, argv, logger=logging.getLogger("inference"))


if __name__ == "__main__":
    main()
