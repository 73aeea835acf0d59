"""Inference: test splits or one audio file -> per-frame FLAME vertices, motion and 287-dim coefficients.

Evaluation mode (every sample of the ``INFER.split`` JSONs of every dataset of the config)::

    python inference.py --config config/faceformer.yaml [--checkpoint P] [--overwrite] [SECTION.key=value ...]

writes, for each sample (DESIGN.md 6)::

    {INFER.output_root}/{INFER.exp_name}/{DATASET}/{STYLE_ID}/{i}.npy   (5023,3) float32, i = 0..N-1, nothing else
    {INFER.coeff_root}/{INFER.exp_name}/{DATASET}/{STYLE_ID}/motion.npy      (N,51) float32
                                                            /coeffs287.npy   (N,287) float32
                                                            /meta.json       sample_id, dataset, style_id, speaker,
                                                                             audio_path, fps, n_frames, checkpoint,
                                                                             condition_style

The model predicts motion at the checkpoint's DATA.target_fps (25 by default; a run config with
another framing is refused). ``INFER.output_fps: native`` (default) resamples it to the sample's
own fps with the linear rule of DESIGN.md 3, so N = round(T * fps / target_fps) equals the ground-truth
frame count (MultiModal200: 20 fps); a number resamples to that rate instead. Vertices are FLAME of
the motion with the sample's shape (its first ``FLAME.n_shape`` dims, as in training) or zeros.

Single-audio mode (any sample rate, channel count and length)::

    python inference.py [--config CFG] --audio speech.wav [--style STYLE] [--out DIR] [--render]

writes ``DIR/vertices/{i}.npy``, ``DIR/motion.npy``, ``DIR/coeffs287.npy``, ``DIR/meta.json`` and with
``--render`` ``DIR/video.mp4`` (main/render.py). Default DIR: ``results/single/<wav stem>``; output fps
DATA.target_fps unless ``INFER.output_fps`` is a number; vertices use zero shape and ``FLAME.model_path``.
Frames are converted and written while later ones are still decoded (main/generation.py).

Streaming (main/stream.py, README "Live / streaming")::

    python inference.py --audio speech.wav --stream [--chunk_ms 200] [--lookahead_ms 300] [--left_context_ms 1000]
                        [--warmup_ms 0] [--prime_audio EARLIER.wav]
    ... | python inference.py --audio - [--stdout_vertices]     (raw 16-bit mono 16 kHz PCM on stdin)

feeds the audio chunk by chunk as if live and writes the single-audio files, each frame's vertices as
soon as the frame is final, plus ``DIR/stream_stats.json``. ``INFER.attention_window`` (default 600
frames) bounds the decoder's attention in every mode.

Checkpoint: ``--checkpoint``, else ``INFER.checkpoint``, else ``{TRAIN.save_path}/best_model.pth``. The
model is built from the MODEL section saved in the checkpoint (the weights must fit it) and its style
classes are the checkpoint's ``styles``. A test speaker that is not a training style is conditioned on
``INFER.condition_style`` (default: the first training style), which the log says.

Results are written whole or not at all (main/results.py): each sample's folders are filled under a
temporary name and renamed into place, ``meta.json`` last. Existing results are never overwritten
silently: a sample that already has results (complete, or left incomplete by a killed run) is an error
unless ``--overwrite`` (``INFER.overwrite=true``: redo all) or ``--resume`` (``INFER.resume=true``: keep
complete samples, make the missing ones). Temporary folders of a crashed run are removed and reported.
Before generating, the output folders are checked for writability and free space for the planned
frames. Two test samples mapping to one folder are an error before anything is written. Ctrl-C /
SIGTERM stop at once (the sample in progress is discarded) with a line saying how to continue.

Log file (console + file, appended): ``--log FILE``, else ``DIR/inference.log`` in single-audio mode, and
in evaluation mode one derived from ``INFER.output_root``: for a relative root,
``<its first component>/inference.log`` (the default root gives ``results/inference.log``); for an
absolute root, ``<the nearest ancestor folder named results>/inference.log``, or
``<parent of the root>/inference.log`` if there is none.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dataset.audio import fit_audio_to_frames  # noqa: E402
from main import results as RT  # noqa: E402
# Set-up, generation and planning live in their own modules; the names are re-exported here for
# callers of the inference entry (tests, scripts).
from main.generation import (SILENT_NORMALISED_STD, BackgroundDecode, VertexFrames, encode_one,  # noqa: E402,F401
                             generate_motion, read_speech, sample_arrays, to_output_fps)
from main.jobs import (audio_seconds, check_clashes, check_roots, default_log_file, format_summary,  # noqa: E402,F401
                       jobs_to_write, plan_jobs, single_out_todo)
from main.model_io import (AudioError, InferenceError, attention_window, check_framing,  # noqa: E402,F401
                           check_infer_config, choose_style, load_model, resolve_checkpoint, results_mode)
from utils.config import load_config  # noqa: E402
from utils.errors import Interrupted, run_reporting_user_errors  # noqa: E402
from utils.framing import framing_from_config  # noqa: E402
from utils.runtime import pick_device, setup_logger  # noqa: E402

DEFAULT_CONFIG = "config/faceformer.yaml"

log = logging.getLogger("inference")


# ---- Evaluation mode ---------------------------------------------------------------------------

def run_test_splits(cfg, checkpoint: str | None = None, overwrite: bool = False,
                    logger: logging.Logger | None = None, resume: bool = False) -> list[dict]:
    """Evaluation inference over every dataset's ``INFER.split`` JSONs. Returns the summary rows
    (dataset, samples, frames, audio_s, wall_s, rtf). The output folders are locked for the run
    (main/results.py ``output_lock``): a second run on them fails at once, naming this one."""
    logger = logger or log
    inf = cfg.INFER
    mode = results_mode(bool(overwrite or inf.overwrite), bool(resume or inf.resume))
    split = inf.split or "test"
    check_roots(cfg)
    check_infer_config(cfg)
    with RT.output_lock([os.path.join(inf.output_root, inf.exp_name), os.path.join(inf.coeff_root, inf.exp_name)],
                        "wait for it to finish, or set another INFER.exp_name"):
        return _generate_test_splits(cfg, checkpoint, mode, split, logger)


def _generate_test_splits(cfg, checkpoint, mode: str, split: str, logger: logging.Logger) -> list[dict]:
    """run_test_splits once its output folders are locked."""
    from tqdm import tqdm

    from dataset.dataset import FaceDataset
    from dataset.index import split_refs
    from models.flame import load_flame_for

    inf = cfg.INFER
    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, checkpoint))
    device = pick_device(inf.device, logger)

    # 1. Plan and check every output folder before anything is loaded or written.
    all_refs = split_refs(cfg, split, problems=[])  # bad entries are reported by the validation below
    if not all_refs and not any(ds.get(split) for ds in cfg.DATA.datasets.values()):
        raise InferenceError(f"no dataset of the config has a '{split}' split (DATA.datasets.*.{split})")
    check_clashes(cfg, all_refs)
    model, styles = load_model(ckpt_path, cfg, device, logger)
    flames = {name: load_flame_for(cfg, name, device=device) for name in {r.dataset for r in all_refs}}
    jobs = jobs_to_write(cfg, plan_jobs(cfg, all_refs, styles, logger), mode, flames, logger)

    # 2. Load-check every sample once (DATA.bad_samples: error raises here, skip leaves them out).
    data = FaceDataset(cfg, split, styles, train=False, check=True, log=logger)
    index_of = {(r.json_path, r.sample_id): i for i, r in enumerate(data.refs)}
    jobs = [j for j in jobs if (j.ref.json_path, j.ref.sample_id) in index_of]
    style_index = {s: i for i, s in enumerate(styles)}
    logger.info("%s split: %d sample(s) to generate, output %s, coefficients %s, output fps %s", split,
                len(jobs), os.path.join(inf.output_root, inf.exp_name), os.path.join(inf.coeff_root, inf.exp_name),
                inf.output_fps)

    rows, written = [], 0
    batch_size = int(inf.batch_size)
    try:
        for name in cfg.DATA.datasets:
            ds_jobs = [j for j in jobs if j.ref.dataset == name]
            if not ds_jobs:
                continue
            t0 = time.perf_counter()
            # Longest first, so a batch holds clips of similar length (little padding).
            order = sorted(ds_jobs, key=lambda j: -audio_seconds(j.ref.audio_path))
            n_frames_out, audio_s = 0, 0.0
            bar = tqdm(total=len(order), desc=f"{split}/{name}", unit="clip")
            for s in range(0, len(order), batch_size):
                batch = order[s:s + batch_size]
                items = [data[index_of[(j.ref.json_path, j.ref.sample_id)]] for j in batch]
                for j, it in zip(batch, items):
                    if float(it["audio"].std()) < SILENT_NORMALISED_STD:
                        logger.warning("%s: audio %s is silent", j.ref.where, j.ref.audio_path)
                motions = generate_motion(model, [it["audio"] for it in items],
                                          [style_index[j.style] for j in batch],
                                          [int(it["n_frames"]) for it in items], cfg, device)
                for j, it, m25 in zip(batch, items, motions):
                    motion = to_output_fps(m25, j.out_fps, model.framing.fps)
                    shape = it["shape"].numpy()
                    meta = RT.build_meta(j.ref.sample_id, name, j.ref.style_id, j.ref.speaker, j.ref.audio_path,
                                         j.out_fps, motion.shape[0], ckpt_path, j.style)
                    RT.write_sample(j.vert_dir, j.coeff_dir, flames[name].motion_to_vertices(motion, shape),
                                    sample_arrays(motion, shape, it["detail"].numpy()), meta)
                    written += 1
                    n_frames_out += motion.shape[0]
                    audio_s += int(it["n_frames"]) / model.framing.fps
                bar.update(len(batch))
            bar.close()
            wall = time.perf_counter() - t0
            rows.append({"dataset": name, "samples": len(ds_jobs), "frames": n_frames_out, "audio_s": audio_s,
                         "wall_s": wall, "rtf": wall / audio_s if audio_s else float("nan")})
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}) after {written} of {len(jobs)} "
                                  f"sample(s); complete samples are kept, the one in progress was discarded; "
                                  f"continue with --resume (INFER.resume=true)") from None
    logger.info("summary (%s, checkpoint %s):\n%s", split, ckpt_path, format_summary(rows))
    return rows


# ---- Single-audio mode -------------------------------------------------------------------------

def run_single(cfg, audio_path: str, style: str | None = None, checkpoint: str | None = None,
               out_dir: str | None = None, overwrite: bool = False, render: bool = False,
               logger: logging.Logger | None = None, loaded: tuple | None = None, resume: bool = False) -> dict:
    """One audio file -> DIR/vertices/{i}.npy, DIR/motion.npy, DIR/coeffs287.npy, DIR/meta.json
    (+ DIR/video.mp4 with ``render``). Returns the meta dict (plus ``out_dir``). Progress bars over the
    generated and the written frames. ``resume``: a complete DIR is kept as it is.

    ``loaded``: a ``(model, styles)`` pair from ``load_model`` to reuse (several files, benchmarks);
    by default the checkpoint is loaded here. DIR is locked for the run (main/results.py ``output_lock``)."""
    logger = logger or log
    mode = results_mode(bool(overwrite or cfg.INFER.overwrite), bool(resume or cfg.INFER.resume))
    out_dir = out_dir or os.path.join("results", "single", os.path.splitext(os.path.basename(audio_path))[0])
    with RT.output_lock([out_dir], "wait for it to finish, or choose another --out"):
        return _generate_single(cfg, audio_path, style, checkpoint, out_dir, mode, render, logger, loaded)


def _generate_single(cfg, audio_path, style, checkpoint, out_dir, mode, render, logger, loaded) -> dict:
    """run_single once its output folder is locked."""
    from models.flame import load_flame_for

    vert_dir = os.path.join(out_dir, "vertices")
    RT.clean_stale_temps([vert_dir, os.path.join(out_dir, RT.META)], logger)
    video = os.path.join(out_dir, "video.mp4")
    if not single_out_todo(out_dir, mode, ["motion.npy", "coeffs287.npy", "video.mp4"], logger):
        return dict(RT.read_meta(out_dir), out_dir=out_dir)
    fr = framing_from_config(cfg)
    out_fps = fr.fps if cfg.INFER.output_fps == "native" else float(cfg.INFER.output_fps)
    check_infer_config(cfg)

    # Audio and style problems are reported before the (slow) model load.
    audio = read_speech(audio_path, fr.sample_rate, logger, fr.fps)
    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, checkpoint))
    device = pick_device(cfg.INFER.device, logger)
    model, styles = loaded or load_model(ckpt_path, cfg, device, logger)
    check_framing(model.framing, cfg, ckpt_path)  # also for a model loaded by the caller
    style = choose_style(cfg, styles, style, logger)

    t0 = time.perf_counter()
    n = fr.frames_in(audio.shape[0])
    flame = load_flame_for(cfg, None, device=device)
    n_out = int(round(n * out_fps / fr.fps))
    RT.check_can_write({out_dir: RT.sample_bytes(n_out, int(flame.v_template.shape[0]))}, "results")
    audio = fit_audio_to_frames(audio, n, fr.samples_per_frame)  # cut or zero-pad by < half a frame
    feats = encode_one(model, torch.from_numpy(audio), n, cfg, device)
    verts = None
    try:
        with BackgroundDecode(model, feats, styles.index(style), attention_window(cfg), progress=True) as decoding:
            if out_fps == fr.fps:  # frames are converted and written while later ones are still decoded
                motion = decoding
                arrays = lambda: sample_arrays(decoding.result(), None)  # noqa: E731 (after the frames)
            else:  # resampling to the output fps needs the whole motion first
                motion = to_output_fps(decoding.result(), out_fps, fr.fps)
                arrays = sample_arrays(motion, None)
            verts = VertexFrames(flame, motion)  # (T,V,3), converted chunk by chunk as they are written

            if os.path.exists(video):
                os.remove(video)  # a video of earlier results must not pass for these
            meta = RT.build_meta(os.path.splitext(os.path.basename(audio_path))[0], None, style, None, audio_path,
                                 out_fps, len(verts), ckpt_path, style)
            RT.write_sample(vert_dir, out_dir, verts, arrays, meta, coeff_in_place=True, progress=True)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}) before {out_dir} was complete; "
                                  f"the partial result was discarded; run the same command with --resume to "
                                  f"make it") from None
    finally:
        if verts is not None:  # the decoder (closed above) no longer holds up the converter it may feed
            verts.close()
    wall = time.perf_counter() - t0
    logger.info("%s: %.2f s of audio -> %d frames at %s fps in %s (%.1f s, RTF %.3f)", audio_path,
                n / fr.fps, len(verts), out_fps, out_dir, wall, wall / (n / fr.fps))
    if render:
        try:
            from main.render import render_sequence
        except ImportError as e:
            raise InferenceError(f"--render needs main/render.py and its dependencies (pyrender, trimesh, "
                                 f"imageio-ffmpeg): {e}") from None
        mp4 = os.path.join(out_dir, "video.mp4")
        render_sequence(verts, flame.faces, mp4, out_fps, audio=os.path.abspath(audio_path))
        logger.info("video: %s", mp4)
    return dict(meta, out_dir=out_dir)


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
    p.add_argument("--log", help="log file (default: see the module docstring; results/inference.log)")
    p.add_argument("--stream", action="store_true", help="single-audio mode fed chunk by chunk as if live "
                   "(main/stream.py); --audio - reads raw 16-bit mono 16 kHz PCM from stdin (always streaming)")
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
    if not args.stream and (args.chunk_ms is not None or args.lookahead_ms is not None
                            or args.left_context_ms is not None or args.stdout_vertices
                            or args.warmup_ms is not None or args.prime_audio):
        p.error("--chunk_ms, --lookahead_ms, --left_context_ms, --warmup_ms, --prime_audio and --stdout_vertices "
                "belong to --stream")
    if args.audio is None and (args.style or args.out or args.render):
        p.error("--style, --out and --render belong to single-audio mode: give --audio too")
    return args


def cli(argv=None):
    """Run as the command line asks; raises a UserError (utils/errors.py) on user errors and
    Interrupted on SIGINT/SIGTERM."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.audio:
        stem = "stdin" if args.audio == "-" else os.path.splitext(os.path.basename(args.audio))[0]
        out = args.out = args.out or os.path.join("results", "single", stem)
        logger = setup_logger("inference", args.log or os.path.join(out, "inference.log"))
        if args.stream:
            from main.stream_cli import run_stream
            return run_stream(cfg, args, logger)
        logger.info("single-audio inference: %s (config %s, overrides %s)", args.audio, args.config, args.overrides)
        return run_single(cfg, args.audio, args.style, args.checkpoint, out, args.overwrite, args.render, logger,
                          resume=args.resume)
    logger = setup_logger("inference", args.log or default_log_file(cfg.INFER.output_root))
    logger.info("inference on the %s split (config %s, overrides %s)", cfg.INFER.split, args.config, args.overrides)
    return run_test_splits(cfg, args.checkpoint, args.overwrite, logger, resume=args.resume)


def main(argv=None):
    """cli() with user errors and interrupts as one line (console and, once set up, the log file) and
    exit status 1 / 130 (SIGINT) / 143 (SIGTERM)."""
    run_reporting_user_errors("inference", cli, argv, logger=logging.getLogger("inference"))


if __name__ == "__main__":
    main()
