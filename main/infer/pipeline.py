"""Inference as one pipeline: request (a test split: ``run_test_splits``, one audio file: ``run_single``,
a stream: ``run_stream``) -> outputs (main/results/layout.py, locked) -> session (main/infer/session.py) ->
generation (main/infer/decode.py or models/streaming.py; frames arrive in order) -> the one writer
(main/results/writer.py, ``meta.json`` last) -> summary; drawn in docs/ARCHITECTURE.md. The three
requests differ only in their source and in how frames arrive. Every check that can fail runs before
anything is written, so a failed rerun leaves an older result whole; Ctrl-C / SIGTERM end a run with
one line saying what was kept and how to continue.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import numpy as np
import torch
from tqdm import tqdm

from dataset.audio import as_float_pcm, fit_audio_to_frames
from dataset.flame_params import fit_shape
from dataset.identity import fit_identity, identity_flame_path, read_identity
from dataset.index import split_refs
from dataset.split_check import check_split, decode_outcomes
from dataset.styles import choose_style
from main.infer.decode import add_vertices, decode_blocks, encode_one, generate_motion, write_frames
from main.infer.jobs import check_clashes, check_roots, format_summary, jobs_to_write, plan_jobs, summary_row
from main.infer.request import Request
from main.infer.session import attention_window, open_session, stream_settings
from main.infer.speech import AudioCheck, is_silent, pcm_chunks_from_stdin, read_speech
from main.infer.stream_sink import STATS, ReaderGone, StdoutVertices, signals_held, stream_stats
from main.rendering import video as renderer
from main.results import layout as RT
from main.results.formats import ARRAY_FILES, sample_arrays, to_output_fps
from main.results.lock import output_lock
from main.results.reader import load_frames, read_meta
from main.results.writer import FrameWriter, write_sample
from models.flame import load_flame
from models.streaming import Streamer
from utils.disk import check_can_write
from utils.errors import DataError, InferenceError, Interrupted
from utils.framing import DEFAULT_FRAMING, framing_from_config, output_fps

log = logging.getLogger("inference")

SINGLE_HOW = "rerun with --overwrite to replace them, --resume to keep them if complete, or choose another --out"
LIVE_HOW = "a live stream cannot be made again: rerun with --overwrite to replace them, or choose another --out"


@contextlib.contextmanager
def interrupts_say(what):
    """Ctrl-C / SIGTERM in the block -> Interrupted whose line is ``interrupted (SIG...) <what()>``."""
    try:
        yield
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}) {what()}") from None


@contextlib.contextmanager
def one_cpu_thread(device):
    """On a CPU, torch's intra-op threads set to one while the block runs, as they were after: a stream's
    chunk is a few small operations, and threads would spend more time waiting for each other than
    computing (docs/BENCHMARKS.md, "Trained for streaming")."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def single_meta(session, audio: str, style: str, fps: float, n_frames: int, flame, shape, identity) -> dict:
    """meta.json of a single-audio or streamed result: no dataset, the audio's stem as sample id."""
    return RT.build_meta(RT.audio_stem(audio), None, style, None, None if audio == "-" else audio, fps, n_frames,
                         session.checkpoint, style, flame.source, shape, identity and identity.file)


def single_flame(cfg, session, identity, logger: logging.Logger):
    """The FLAME model and shape ((n_shape,) float32, or None: the mean face) of a single-audio or streamed
    result; ``identity``: dataset/identity.py ``Identity`` or None. A shape too long for the model -> DataError."""
    if identity is None:
        return session.flame(), None
    flame = load_flame(identity_flame_path(cfg, identity), device=session.device)
    shape = fit_identity(identity, flame.n_shape, flame.source)
    logger.info("identity %s: %d shape coefficients (%s), FLAME model %s", identity.file, identity.shape.shape[0],
                identity.fmt or "plain array", flame.source)
    return flame, shape


def single_todo(out_dir: str, mode: str, logger: logging.Logger, live: bool = False) -> bool:
    """Whether DIR (single-audio and streaming mode) is to be (re)made; False: --resume finds it complete.
    ``live`` (stdin): --resume never keeps a complete result in place of the stream (that stream would be
    lost: it is refused) and makes an incomplete one afresh."""
    vert_dir = os.path.join(out_dir, "vertices")
    todo = RT.select_todo([(vert_dir, out_dir)], mode, LIVE_HOW if live else SINGLE_HOW, RT.SINGLE_FILES)[0]
    if live and not todo:
        raise InferenceError(f"--resume: {out_dir} already holds a complete result and the live stream on stdin "
                             f"cannot be resumed into it (nor made again); rerun with --overwrite to replace it, "
                             f"or choose another --out")
    # stale temporaries go only once the run goes ahead: a refused run changes nothing
    RT.clean_stale_temps([vert_dir, os.path.join(out_dir, RT.META)], logger)
    if not todo:
        logger.info("--resume: %s already holds complete results: nothing to do", out_dir)
    return todo


# ---- test split -----------------------------------------------------------------------------------

def _key(ref) -> tuple[str, str]:
    return ref.json_path, ref.sample_id


def run(cfg, request: Request, logger: logging.Logger | None = None, loaded: tuple | None = None):
    """The one entry point: ``request`` (main/infer/request.py) -> its mode's run below. ``loaded``: a
    ``(model, styles)`` pair from ``load_model`` to reuse (file mode)."""
    if request.mode == "test":
        return run_test_splits(cfg, request, logger)
    if request.mode == "file":
        return run_single(cfg, request, logger, loaded)
    return run_stream(cfg, request, logger)


def run_test_splits(cfg, request: Request = Request(), logger: logging.Logger | None = None) -> list[dict]:
    """Every dataset's ``INFER.split`` JSONs -> the results tree. Returns the summary rows (dataset,
    samples, frames, audio_s, wall_s, rtf)."""
    logger = logger or log
    inf = cfg.INFER
    mode, split = RT.results_mode(request.overwrite, request.resume, cfg), inf.split or "test"
    check_roots(cfg)
    roots = [os.path.join(inf.output_root, inf.exp_name), os.path.join(inf.coeff_root, inf.exp_name)]
    with output_lock(roots, "wait for it to finish, or set another INFER.exp_name"):
        refs = split_refs(cfg, split, problems=[])  # bad entries are reported by the validation below
        if not refs and not any(ds.get(split) for ds in cfg.DATA.datasets.values()):
            raise InferenceError(f"no dataset of the config has a '{split}' split (DATA.datasets.*.{split})")
        check_clashes(cfg, refs)
        session = open_session(cfg, request.checkpoint, logger)
        jobs = jobs_to_write(cfg, plan_jobs(cfg, refs, session.styles, logger), mode, session.flame, logger)
        items = _validated_items(cfg, split, jobs, logger)
        jobs = [j for j in jobs if _key(j.ref) in items]
        logger.info("%s split: %d sample(s) to generate, output %s, coefficients %s, output fps %s", split,
                    len(jobs), *roots, inf.output_fps)
        rows, written = [], []
        with interrupts_say(lambda: f"after {len(written)} of {len(jobs)} sample(s); complete samples are kept, "
                                    f"the one in progress was discarded; continue with --resume (INFER.resume=true)"):
            for name in cfg.DATA.datasets:
                ds_jobs = [j for j in jobs if j.ref.dataset == name]
                if ds_jobs:
                    rows.append(_generate_dataset(cfg, session, name, ds_jobs, items, written, split, logger))
    logger.info("summary (%s, checkpoint %s):\n%s", split, session.checkpoint, format_summary(rows))
    return rows


def _generate_dataset(cfg, session, name, jobs, items, written: list, split, logger) -> dict:
    """One dataset's jobs, longest first in batches of INFER.batch_size (little padding), generated from
    their validated ``items`` (each popped, so held only until generated) and written; each written
    sample's id is appended to ``written``. -> the dataset's summary row."""
    t0, fps, batch_size = time.perf_counter(), session.model.framing.fps, int(cfg.INFER.batch_size)
    flame = session.flame(name)
    style_index = {s: i for i, s in enumerate(session.styles)}
    order = sorted(jobs, key=lambda j: -items[_key(j.ref)]["n_frames"])
    n_out, audio_s = 0, 0.0
    for s in tqdm(range(0, len(order), batch_size), desc=f"{split}/{name}", unit="batch"):
        batch = order[s:s + batch_size]
        batch_items = [items.pop(_key(j.ref)) for j in batch]
        for j, it in zip(batch, batch_items):
            if is_silent(it["audio"]):
                logger.warning("%s: audio %s is silent", j.ref.where, j.ref.audio_path)
        motions = generate_motion(session.model, [torch.from_numpy(it["audio"]) for it in batch_items],
                                  [style_index[j.style] for j in batch], [it["n_frames"] for it in batch_items],
                                  cfg, session.device)
        for j, it, m in zip(batch, batch_items, motions):
            motion, shape = to_output_fps(m, j.out_fps, fps), fit_shape(it["shape"], cfg.FLAME.n_shape)
            meta = RT.build_meta(j.ref.sample_id, name, j.ref.style_id, j.ref.speaker, j.ref.audio_path,
                                 j.out_fps, motion.shape[0], session.checkpoint, j.style, flame.source, shape,
                                 None if it["shape"] is None else j.ref.template_path or j.ref.flame_path)
            write_sample(j.vert_dir, j.coeff_dir, flame.motion_to_vertices(motion, shape),
                         sample_arrays(motion, shape, it["detail"]), meta)
            written.append(j.ref.sample_id)
            n_out, audio_s = n_out + motion.shape[0], audio_s + it["n_frames"] / fps
    return summary_row(name, len(order), n_out, audio_s, time.perf_counter() - t0)


def _validated_items(cfg, split, jobs, logger) -> dict:
    """Every sample of the split loaded once and checked (``check_split``; DATA.bad_samples: error
    raises, skip leaves them out) -> the loaded items of the ``jobs`` that passed, by ``_key``. They
    are kept for generation instead of being decoded again; validation holds every item at once
    anyway, so the peak memory is the same."""
    wanted, items = {_key(j.ref) for j in jobs}, {}

    def outcomes(name, refs):
        found = decode_outcomes(cfg, refs, desc=f"{split}/{name}")
        items.update((_key(r), it) for r, it in zip(refs, found) if _key(r) in wanted and not isinstance(it, DataError))
        return found
    good = {_key(r) for r in check_split(cfg, split, logger, outcomes=outcomes)["refs"]}
    return {k: it for k, it in items.items() if k in good}


# ---- one audio file -------------------------------------------------------------------------------

def run_single(cfg, request: Request, logger: logging.Logger | None = None, loaded: tuple | None = None) -> dict:
    """One audio file -> DIR/vertices/{i}.npy, the arrays of main/results/formats.py and DIR/meta.json (+
    DIR/video.mp4 with ``render``). Returns the meta dict plus ``out_dir``. ``loaded``: a ``(model,
    styles)`` pair from ``load_model`` to reuse. Frames are converted and written while later ones are
    still decoded (``write_frames``)."""
    logger = logger or log
    audio_path = request.audio
    mode, out_dir = RT.results_mode(request.overwrite, request.resume, cfg), RT.single_dir(audio_path, request.out)
    with output_lock([out_dir], "wait for it to finish, or choose another --out"):
        if not single_todo(out_dir, mode, logger):
            return dict(read_meta(out_dir), out_dir=out_dir)
        fr = framing_from_config(cfg)
        out_fps = output_fps(cfg, fr.fps)
        audio = read_speech(audio_path, fr.sample_rate, logger, fr.fps)  # before the (slow) model load
        identity = read_identity(request.identity) if request.identity else None
        session = open_session(cfg, request.checkpoint, logger, loaded)
        style = choose_style(cfg, session.styles, request.style, logger)
        flame, shape = single_flame(cfg, session, identity, logger)
        t0, n = time.perf_counter(), fr.frames_in(audio.shape[0])
        check_can_write({out_dir: RT.sample_bytes(int(round(n * out_fps / fr.fps)), flame.n_vertices)})
        feats = encode_one(session.model, torch.from_numpy(fit_audio_to_frames(audio, n, fr.samples_per_frame)),
                           n, cfg, session.device)
        with interrupts_say(lambda: f"before {out_dir} was complete; the partial result was discarded; run the "
                                    f"same command with --resume to make it"), \
                FrameWriter(os.path.join(out_dir, "vertices"), out_dir) as writer:
            blocks = decode_blocks(session.model, feats, session.styles.index(style), attention_window(cfg))
            if out_fps != fr.fps:  # resampling to the output fps needs the whole motion first
                motion = to_output_fps(np.concatenate(list(blocks)), out_fps, fr.fps)
                blocks = (motion[i:i + 50] for i in range(0, len(motion), 50))
            motion = write_frames(writer, flame, blocks, shape, progress=int(feats.shape[1] * out_fps / fr.fps))
            meta = single_meta(session, audio_path, style, out_fps, len(motion), flame, shape, identity)
            writer.commit(sample_arrays(motion, shape), meta)
    wall = time.perf_counter() - t0
    logger.info("%s: %.2f s of audio -> %d frames at %s fps in %s (%.1f s, RTF %.3f)", audio_path, n / fr.fps,
                len(motion), out_fps, out_dir, wall, wall / (n / fr.fps))
    if request.render:
        mp4 = os.path.join(out_dir, "video.mp4")  # from the frames written: the vertices are computed once
        renderer.render_sequence(load_frames(os.path.join(out_dir, "vertices")), flame.faces, mp4, out_fps,
                        audio=os.path.abspath(audio_path))
        logger.info("video: %s", mp4)
    return dict(meta, out_dir=out_dir)


# ---- a stream -------------------------------------------------------------------------------------

def run_stream(cfg, request: Request, logger: logging.Logger | None = None) -> dict:
    """A stream request: ``request.audio`` a file fed chunk by chunk as if live, or ``-`` (raw 16-bit
    mono 16 kHz PCM on stdin). Each frame's vertices are written as soon as the frame is final (and with
    --stdout_vertices sent to stdout); at the end motion, coefficients, ``stream_stats.json`` and
    ``meta.json``. Returns the meta dict plus ``out_dir`` and ``stats``. Ctrl-C / SIGTERM (how a live
    stream is stopped) and a reader closing --stdout_vertices end the stream with a complete result
    of the frames emitted; the interrupt then raises Interrupted saying so (exit 130 / 143)."""
    logger = logger or log
    live, out = request.audio == "-", StdoutVertices(logger) if request.stdout_vertices else None
    fr, std = framing_from_config(cfg), DEFAULT_FRAMING  # the Streamer's CNN caching assumes this framing
    if fr != std:
        raise InferenceError(f"streaming runs at {std.fps} fps; the config has DATA.target_fps={fr.fps}")
    if output_fps(cfg, fr.fps) != fr.fps:
        raise InferenceError(f"streaming emits {fr.fps} fps frames as they are made; INFER.output_fps is "
                             f"{cfg.INFER.output_fps} (use native or {fr.fps}, or run without --stream)")
    settings = stream_settings(cfg, request)
    out_dir, mode = RT.single_dir(request.audio, request.out), RT.results_mode(request.overwrite, request.resume, cfg)
    with output_lock([out_dir], "wait for it to finish, or choose another --out"):
        if not single_todo(out_dir, mode, logger, live):
            return dict(read_meta(out_dir), out_dir=out_dir)
        audio = None if live else read_speech(request.audio, fr.sample_rate, logger, fr.fps, normalise=False)
        prime = read_speech(request.prime_audio, fr.sample_rate, logger, fr.fps, normalise=False) \
            if request.prime_audio else None
        identity = read_identity(request.identity) if request.identity else None
        session = open_session(cfg, request.checkpoint, logger)
        style = choose_style(cfg, session.styles, request.style, logger)
        flame, shape = single_flame(cfg, session, identity, logger)
        # a file's length is known: its frames must fit (a live stream's is not: a full disk is reported then)
        check_can_write({out_dir: RT.sample_bytes(fr.frames_in(1 if live else len(audio)), flame.n_vertices)})
        streamer = Streamer(session.model, session.styles.index(style), **settings)
        if prime is not None:
            streamer.prime(prime)
            logger.info("normalisation statistics primed with %.2f s of %s", len(prime) / fr.sample_rate,
                        request.prime_audio)
        logger.info("streaming %s (style %s): chunk %g ms, lookahead %g ms, left context %s ms, attention window "
                    "%s frames; algorithmic latency %.3f s", "stdin (16-bit 16 kHz mono PCM)" if live else request.audio,
                    style, streamer.chunk_ms, streamer.lookahead_ms, streamer.left_context_ms,
                    settings["attention_window"], streamer.latency_s)
        chunk = streamer.chunk
        pieces = pcm_chunks_from_stdin(chunk) if live else (audio[i:i + chunk] for i in range(0, len(audio), chunk))
        with one_cpu_thread(session.device), FrameWriter(os.path.join(out_dir, "vertices"), out_dir) as writer:
            motion, chunks, n_in, stopped = _stream_frames(streamer, pieces, (flame, shape), writer, out, live, logger)
            if writer.n == 0:
                if stopped is not None:
                    raise Interrupted(stopped, f"interrupted ({signal.Signals(stopped).name}) before the first frame "
                                               f"was emitted: nothing written, {out_dir} is as it was")
                raise InferenceError(f"the stream ended before its first frame: nothing written to {out_dir}")
            motion = np.concatenate(motion)[:writer.n]
            stats = stream_stats(settings, streamer, chunks, n_in / fr.sample_rate, motion.shape[0], session.device,
                                 len(prime) / fr.sample_rate if prime is not None else 0.0, stopped)
            meta = single_meta(session, request.audio, style, fr.fps, motion.shape[0], flame, shape, identity)
            with signals_held():  # the result goes in place whole, even if Ctrl-C is pressed again
                writer.commit(sample_arrays(motion, shape), meta, {STATS: stats})
    logger.info("%s: %.2f s of audio -> %d frames in %s; compute %.2f s (real-time factor %.3f), per chunk "
                "mean %.1f ms / max %.1f ms for %g ms chunks", meta["sample_id"], stats["audio_s"], meta["n_frames"],
                out_dir, stats["compute_s"], stats["real_time_factor"], 1000 * stats["mean_chunk_compute_s"],
                1000 * stats["max_chunk_compute_s"], streamer.chunk_ms)
    if stopped is not None:
        raise Interrupted(stopped, f"stream stopped by {signal.Signals(stopped).name} after {meta['n_frames']} "
                                   f"frame(s) ({stats['audio_s']:.2f} s of audio): {out_dir} holds them as a complete "
                                   f"result (meta.json, {', '.join(ARRAY_FILES)}, {STATS}); to stream again into "
                                   f"it run the same command with --overwrite, or give another --out")
    return dict(meta, out_dir=out_dir, stats=stats)


def _stream_frames(streamer, pieces, body, writer, out, live: bool, logger):
    """Push the pieces, write each frame as it becomes final (``body``: the FLAME model and shape or None)
    -> (motion blocks, per-chunk timings, samples in, the signal that stopped the stream or None)."""
    motion, chunks, n_in, stopped = [], [], 0, None
    flame, shape = body
    check = AudioCheck() if live else None  # a file was checked when it was read
    sr, hop = streamer.sr, streamer.hop

    def emit(frames: np.ndarray, t0: float):
        model_s = time.perf_counter() - t0
        if frames.shape[0]:
            motion.append(frames)  # first: the result keeps as many rows as frames written
            add_vertices(writer, flame, frames, shape, sink=out)
        chunks.append({"audio_end_s": round(n_in / sr, 6), "frames": int(frames.shape[0]),
                       "model_s": model_s, "compute_s": time.perf_counter() - t0})
    try:
        for pcm in pieces:
            t0 = time.perf_counter()
            n_in += len(pcm)
            if check is not None:
                check.add(as_float_pcm(pcm))
            emit(streamer.push(pcm), t0)
        if live and n_in < hop:
            raise InferenceError(f"stdin gave {n_in} samples ({n_in / sr * 1000:.1f} ms); expected 16-bit "
                                 f"mono PCM at {sr} Hz, at least one frame ({hop} samples)")
        t0 = time.perf_counter()
        emit(streamer.flush(), t0)
    except (Interrupted, KeyboardInterrupt) as e:
        stopped = getattr(e, "signum", signal.SIGINT)
    except ReaderGone:
        out.close()
        logger.info("the reader of --stdout_vertices closed the pipe after %d frame(s): stream ended", writer.n)
    for warning in check.warnings() if check is not None else ():
        logger.warning("stdin audio %s", warning)
    return motion, chunks, n_in, stopped
