"""Streaming from the command line: ``python inference.py --audio FILE --stream`` feeds a file chunk by
chunk as if it arrived live, ``--audio -`` reads raw 16-bit mono PCM from stdin; frames are written
as soon as they are final (main/stream.py's Streamer makes them), plus ``stream_stats.json``."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time

import numpy as np

from main import results as RT
from main.generation import AudioCheck, read_speech, sample_arrays
from main.jobs import single_out_todo
from main.model_io import (InferenceError, attention_window, check_framing, check_infer_config, choose_style,
                           load_model, resolve_checkpoint, results_mode)
from main.stream import Streamer, as_float_pcm
from utils.errors import Interrupted
from utils.framing import DEFAULT_FRAMING, framing_from_config
from utils.runtime import pick_device

STATS = "stream_stats.json"

log = logging.getLogger("inference")


def stream_settings(cfg, args=None) -> dict:
    """Streamer keyword arguments from INFER.stream_* / INFER.attention_window and the CLI flags
    (--chunk_ms, --lookahead_ms, --left_context_ms, --warmup_ms override the config), each checked
    against its config key's range (finite; the chunk bounded, as stdin is read a chunk at a time)."""
    from utils.config_schema import NUMERIC_RANGES, ConfigError, check_number

    values = {}
    for flag, key in (("chunk_ms", "stream_chunk_ms"), ("lookahead_ms", "stream_lookahead_ms"),
                      ("left_context_ms", "stream_left_context_ms"), ("warmup_ms", "stream_warmup_ms")):
        given = getattr(args, flag, None)
        where = "command line" if given is not None else "config"
        value = given if given is not None else cfg.INFER[key]
        try:
            values[flag] = float(check_number(value, f"INFER.{key}" if given is None else f"--{flag} (INFER.{key})",
                                              *NUMERIC_RANGES[f"INFER.{key}"], where=where))
        except ConfigError as e:
            raise InferenceError(str(e)) from None
    left = values["left_context_ms"]
    return {"chunk_ms": values["chunk_ms"], "lookahead_ms": values["lookahead_ms"],
            "left_context_ms": None if left < 0 else left,  # negative: all past audio
            "attention_window": attention_window(cfg), "warmup_ms": values["warmup_ms"]}


def _read_upto(stream, n: int, piece: int = 1 << 16) -> bytes:
    """Up to n bytes, fewer only at the end of the stream; read in pieces of at most ``piece`` bytes so
    that memory follows what arrives, not what was asked for."""
    parts, got = [], 0
    while got < n:
        data = stream.read(min(piece, n - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _pcm_chunks_from_stdin(chunk_samples: int):
    """Raw 16-bit little-endian mono PCM at 16 kHz from stdin, chunk by chunk as it arrives."""
    stdin = sys.stdin.buffer
    carry = b""
    while True:
        data = _read_upto(stdin, 2 * chunk_samples - len(carry))
        if not data:
            break
        data, carry = carry + data, b""
        if len(data) % 2:
            data, carry = data[:-1], data[-1:]
        yield np.frombuffer(data, dtype="<i2")
    if carry:
        log.warning("stdin ended with an odd byte: ignored (expected 16-bit samples)")


def run_stream(cfg, args, logger: logging.Logger | None = None) -> dict:
    """``--stream`` (args.audio a file, fed chunk by chunk as if it arrived live) or ``--audio -``
    (raw 16-bit mono 16 kHz PCM on stdin). Each frame's vertices go to DIR/vertices/{i}.npy as soon as
    the frame is final (and with --stdout_vertices as raw float32 (V,3) bytes on stdout); at the end
    DIR/motion.npy, DIR/coeffs287.npy, DIR/stream_stats.json and DIR/meta.json (last: it marks the
    result complete, as in main/results.py). Returns the meta dict plus ``out_dir`` and ``stats``.

    The result is built beside DIR and put in place at the end (main/results.py ``FrameWriter``): a
    failed or refused rerun leaves an older result whole. Ctrl-C / SIGTERM (how a live stream is
    stopped) and a reader closing --stdout_vertices end the stream with a complete result of the frames
    emitted; the interrupt then raises Interrupted saying so (exit 130 / 143), the closed pipe ends
    normally. DIR is locked for the run (``output_lock``)."""
    logger = logger or log
    live = args.audio == "-"
    if args.stdout_vertices:  # stdout carries the vertex bytes: the console log goes to stderr
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
                h.setStream(sys.stderr)
    fr, std = framing_from_config(cfg), DEFAULT_FRAMING  # the Streamer's CNN caching assumes this framing
    if (fr.sample_rate, fr.fps) != (std.sample_rate, std.fps):
        raise InferenceError(f"streaming runs at {std.sample_rate} Hz / {std.fps} fps; the config has "
                             f"DATA.sample_rate={fr.sample_rate}, DATA.target_fps={fr.fps}")
    if cfg.INFER.output_fps not in ("native", fr.fps):
        raise InferenceError(f"streaming emits {fr.fps} fps frames as they are made; INFER.output_fps is "
                             f"{cfg.INFER.output_fps} (use native or {fr.fps}, or run without --stream)")
    check_infer_config(cfg)
    settings = stream_settings(cfg, args)
    stem = "stdin" if live else os.path.splitext(os.path.basename(args.audio))[0]
    out_dir = args.out or os.path.join("results", "single", stem)
    with RT.output_lock([out_dir], "wait for it to finish, or choose another --out"):
        return _stream_locked(cfg, args, logger, settings, out_dir, stem, live)


class _ReaderGone(Exception):
    """The reader of --stdout_vertices closed the pipe: the stream ends there."""


def _stream_locked(cfg, args, logger, settings: dict, out_dir: str, stem: str, live: bool) -> dict:
    """run_stream once DIR is locked: checks, then the stream, then the result put in place whole."""
    from models.flame import load_flame_for

    fr = framing_from_config(cfg)
    SR, FPS, HOP = fr.sample_rate, fr.fps, fr.samples_per_frame
    vert_dir = os.path.join(out_dir, "vertices")
    mode = results_mode(bool(args.overwrite or cfg.INFER.overwrite), bool(args.resume or cfg.INFER.resume))
    RT.clean_stale_temps([vert_dir, os.path.join(out_dir, RT.META)], logger)
    if not single_out_todo(out_dir, mode, ["motion.npy", "coeffs287.npy", "video.mp4", STATS], logger,
                           can_resume=not live):
        return dict(RT.read_meta(out_dir), out_dir=out_dir)
    # Every check and every input is read before anything is written: a failed rerun keeps the old result.
    audio = None if live else read_speech(args.audio, SR, logger, FPS, normalise=False)
    prime_path = getattr(args, "prime_audio", None)
    prime = read_speech(prime_path, SR, logger, FPS, normalise=False) if prime_path else None
    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, args.checkpoint))
    device = pick_device(cfg.INFER.device, logger)
    model, styles = load_model(ckpt_path, cfg, device, logger)
    check_framing(model.framing, cfg, ckpt_path)
    style = choose_style(cfg, styles, args.style, logger)
    flame = load_flame_for(cfg, None, device=device)
    n_vertices = int(flame.v_template.shape[0])
    # a file's length is known: its frames must fit (a live stream's is not: a full disk is reported then)
    RT.check_can_write({out_dir: RT.sample_bytes(fr.frames_in(1 if live else len(audio)), n_vertices)}, "results")
    streamer = Streamer(model, styles.index(style), **settings)
    primed_s = 0.0
    if prime is not None:
        streamer.prime(prime)
        primed_s = prime.shape[0] / SR
        logger.info("normalisation statistics primed with %.2f s of %s", primed_s, prime_path)
    logger.info("streaming %s (style %s): chunk %g ms, lookahead %g ms, left context %s ms, attention window "
                "%s frames; algorithmic latency %.3f s", "stdin (16-bit 16 kHz mono PCM)" if live else args.audio,
                style, settings["chunk_ms"], settings["lookahead_ms"], settings["left_context_ms"],
                settings["attention_window"], streamer.latency_s)

    out = sys.stdout.buffer if args.stdout_vertices else None
    motion, chunks = [], []
    check = AudioCheck() if live else None  # a file was checked when it was read
    writer = RT.FrameWriter(vert_dir)

    def emit(frames: np.ndarray, audio_end: float, t0: float):
        model_s = time.perf_counter() - t0
        if frames.shape[0]:
            motion.append(frames)  # first: the result keeps as many rows as frames written
            for v in np.asarray(flame.motion_to_vertices(frames, None), dtype=np.float32):  # (n,V,3)
                writer.add(v)
                if out is not None:
                    _to_reader(out, v.tobytes())
            if out is not None:
                _to_reader(out, None)
        chunks.append({"audio_end_s": round(audio_end, 6), "frames": int(frames.shape[0]),
                       "model_s": model_s, "compute_s": time.perf_counter() - t0})

    chunk, n_in, stopped = streamer.chunk, 0, None
    pieces = _pcm_chunks_from_stdin(chunk) if live else (audio[i:i + chunk] for i in range(0, len(audio), chunk))
    try:
        try:
            for pcm in pieces:
                t0 = time.perf_counter()
                n_in += len(pcm)
                if check is not None:
                    check.add(as_float_pcm(pcm))
                emit(streamer.push(pcm), n_in / SR, t0)
            if live and n_in < HOP:
                raise InferenceError(f"stdin gave {n_in} samples ({n_in / SR * 1000:.1f} ms); expected 16-bit "
                                     f"mono PCM at {SR} Hz, at least one frame ({HOP} samples)")
            t0 = time.perf_counter()
            emit(streamer.flush(), n_in / SR, t0)
        except (Interrupted, KeyboardInterrupt) as e:
            stopped = getattr(e, "signum", signal.SIGINT)
        except _ReaderGone:
            _quiet_stdout()
            logger.info("the reader of --stdout_vertices closed the pipe after %d frame(s): stream ended", writer.n)
        for warning in check.warnings() if check is not None else ():
            logger.warning("stdin audio %s", warning)
        if writer.n == 0:
            if stopped is not None:
                raise Interrupted(stopped, f"interrupted ({signal.Signals(stopped).name}) before the first frame "
                                           f"was emitted: nothing written, {out_dir} is as it was")
            raise InferenceError(f"the stream ended before its first frame: nothing written to {out_dir}")
        with _signals_held():  # the result goes in place whole, even if Ctrl-C is pressed again
            result = _commit(writer, out_dir, motion, chunks, n_in / SR, settings, primed_s, streamer, device,
                             stem, style, None if live else args.audio, ckpt_path, FPS, stopped)
    finally:
        writer.discard()
    meta, stats = result
    logger.info("%s: %.2f s of audio -> %d frames in %s; compute %.2f s (real-time factor %.3f), per chunk "
                "mean %.1f ms / max %.1f ms for %g ms chunks", stem, stats["audio_s"], meta["n_frames"], out_dir,
                stats["compute_s"], stats["real_time_factor"], 1000 * stats["mean_chunk_compute_s"],
                1000 * stats["max_chunk_compute_s"], settings["chunk_ms"])
    if stopped is not None:
        raise Interrupted(stopped, f"stream stopped by {signal.Signals(stopped).name} after {meta['n_frames']} "
                                   f"frame(s) ({stats['audio_s']:.2f} s of audio): {out_dir} holds them as a complete "
                                   f"result (meta.json, motion.npy, coeffs287.npy, {STATS}); to stream again into "
                                   f"it run the same command with --overwrite, or give another --out")
    return dict(meta, out_dir=out_dir, stats=stats)


def _commit(writer, out_dir, motion, chunks, audio_s, settings, primed_s, streamer, device, stem, style, audio_path,
            ckpt_path, fps, stopped) -> tuple[dict, dict]:
    """The arrays, stream_stats.json and meta.json of the frames written, and everything put in place."""
    motion = np.concatenate(motion)[:writer.n]
    compute = [c["compute_s"] for c in chunks] or [0.0]
    stats = {"chunk_ms": settings["chunk_ms"], "lookahead_ms": settings["lookahead_ms"],
             "left_context_ms": settings["left_context_ms"], "attention_window": settings["attention_window"],
             "warmup_ms": settings["warmup_ms"], "primed_s": primed_s, "algorithmic_latency_s": streamer.latency_s,
             "audio_s": audio_s, "frames": int(motion.shape[0]),
             "compute_s": float(sum(compute)), "real_time_factor": float(sum(compute)) / max(audio_s, 1e-9),
             "max_chunk_compute_s": max(compute), "mean_chunk_compute_s": float(np.mean(compute)),
             "device": str(device), "stopped_by": None if stopped is None else signal.Signals(stopped).name,
             "chunks": chunks}
    meta = RT.build_meta(stem, None, style, None, audio_path, fps, motion.shape[0], ckpt_path, style)
    writer.commit(out_dir, sample_arrays(motion, None), meta, {STATS: stats}, stale=("video.mp4",))
    return meta, stats


def _to_reader(out, data: bytes | None):
    """Write (or with None flush) --stdout_vertices bytes; a closed pipe ends the stream (_ReaderGone)."""
    try:
        out.write(data) if data is not None else out.flush()
    except (BrokenPipeError, ConnectionResetError):
        raise _ReaderGone() from None


def _quiet_stdout():
    """After the reader left, stdout points at /dev/null: the interpreter's flush at exit would otherwise
    fail again on the closed pipe and print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def _signals_held():
    """SIGINT/SIGTERM wait until the block is done (then they are delivered as usual)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
