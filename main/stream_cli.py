"""Streaming from the command line: ``python inference.py --audio FILE --stream`` feeds a file chunk by
chunk as if it arrived live, ``--audio -`` reads raw 16-bit mono PCM from stdin; frames are written
as soon as they are final (main/stream.py's Streamer makes them), plus ``stream_stats.json``."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time

import numpy as np

from main import results as RT
from main.generation import read_speech, sample_arrays
from main.jobs import single_out_todo
from main.model_io import (InferenceError, attention_window, check_framing, check_infer_config, choose_style,
                           load_model, resolve_checkpoint, results_mode)
from main.stream import Streamer
from utils.framing import DEFAULT_FRAMING, framing_from_config
from utils.runtime import pick_device

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
    result complete, as in main/results.py). Returns the meta dict plus ``out_dir`` and ``stats``."""
    from models.flame import load_flame_for

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
    SR, FPS, HOP = fr.sample_rate, fr.fps, fr.samples_per_frame
    if cfg.INFER.output_fps not in ("native", FPS):
        raise InferenceError(f"streaming emits {FPS} fps frames as they are made; INFER.output_fps is "
                             f"{cfg.INFER.output_fps} (use native or {FPS}, or run without --stream)")
    check_infer_config(cfg)
    settings = stream_settings(cfg, args)
    stem = "stdin" if live else os.path.splitext(os.path.basename(args.audio))[0]
    out_dir = args.out or os.path.join("results", "single", stem)
    vert_dir = os.path.join(out_dir, "vertices")
    mode = results_mode(bool(args.overwrite or cfg.INFER.overwrite), bool(args.resume or cfg.INFER.resume))
    files = ["motion.npy", "coeffs287.npy", "video.mp4", "stream_stats.json"]
    if not single_out_todo(out_dir, mode, files, logger, can_resume=not live):
        return dict(RT.read_meta(out_dir), out_dir=out_dir)
    meta_path = os.path.join(out_dir, RT.META)
    files = [os.path.join(out_dir, n) for n in files]
    audio = None if live else read_speech(args.audio, SR, logger, FPS, normalise=False)
    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, args.checkpoint))
    device = pick_device(cfg.INFER.device, logger)
    model, styles = load_model(ckpt_path, cfg, device, logger)
    check_framing(model.framing, cfg, ckpt_path)
    style = choose_style(cfg, styles, args.style, logger)
    flame = load_flame_for(cfg, None, device=device)

    # the old result's marker goes first, so an interruption never pairs old and new files
    for path in [meta_path] + files:
        if os.path.exists(path):
            os.remove(path)
    if os.path.isdir(vert_dir):
        shutil.rmtree(vert_dir)
    os.makedirs(vert_dir)
    streamer = Streamer(model, styles.index(style), **settings)
    primed_s = 0.0
    if getattr(args, "prime_audio", None):
        prime = read_speech(args.prime_audio, SR, logger, FPS, normalise=False)
        streamer.prime(prime)
        primed_s = prime.shape[0] / SR
        logger.info("normalisation statistics primed with %.2f s of %s", primed_s, args.prime_audio)
    logger.info("streaming %s (style %s): chunk %g ms, lookahead %g ms, left context %s ms, attention window "
                "%s frames; algorithmic latency %.3f s", "stdin (16-bit 16 kHz mono PCM)" if live else args.audio,
                style, settings["chunk_ms"], settings["lookahead_ms"], settings["left_context_ms"],
                settings["attention_window"], streamer.latency_s)
    out = sys.stdout.buffer if args.stdout_vertices else None
    motion, chunks, n_written = [], [], 0

    def emit(frames: np.ndarray, audio_end: float, t0: float):
        nonlocal n_written
        model_s = time.perf_counter() - t0
        if frames.shape[0]:
            verts = np.asarray(flame.motion_to_vertices(frames, None), dtype=np.float32)  # (n,V,3)
            for v in verts:
                np.save(os.path.join(vert_dir, f"{n_written}.npy"), v)
                n_written += 1
                if out is not None:
                    out.write(v.tobytes())
            if out is not None:
                out.flush()
            motion.append(frames)
        chunks.append({"audio_end_s": round(audio_end, 6), "frames": int(frames.shape[0]),
                       "model_s": model_s, "compute_s": time.perf_counter() - t0})

    chunk = streamer.chunk
    pieces = _pcm_chunks_from_stdin(chunk) if live else (audio[i:i + chunk] for i in range(0, len(audio), chunk))
    n_in = 0
    for pcm in pieces:
        t0 = time.perf_counter()
        n_in += len(pcm)
        emit(streamer.push(pcm), n_in / SR, t0)
    if live and n_in < HOP:
        raise InferenceError(f"stdin gave {n_in} samples ({n_in / SR * 1000:.1f} ms); expected 16-bit mono "
                             f"PCM at {SR} Hz, at least one frame ({HOP} samples)")
    t0 = time.perf_counter()
    emit(streamer.flush(), n_in / SR, t0)
    motion = np.concatenate(motion)
    audio_s = n_in / SR
    compute = [c["compute_s"] for c in chunks]
    stats = {"chunk_ms": settings["chunk_ms"], "lookahead_ms": settings["lookahead_ms"],
             "left_context_ms": settings["left_context_ms"], "attention_window": settings["attention_window"],
             "warmup_ms": settings["warmup_ms"], "primed_s": primed_s, "algorithmic_latency_s": streamer.latency_s,
             "audio_s": audio_s, "frames": int(motion.shape[0]),
             "compute_s": float(sum(compute)), "real_time_factor": float(sum(compute)) / audio_s,
             "max_chunk_compute_s": max(compute), "mean_chunk_compute_s": float(np.mean(compute)),
             "device": str(device), "chunks": chunks}
    with open(os.path.join(out_dir, "stream_stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    for name, arr in sample_arrays(motion, None).items():
        np.save(os.path.join(out_dir, f"{name}.npy"), arr)
    meta = RT.build_meta(stem, None, style, None, None if live else args.audio, FPS, motion.shape[0], ckpt_path,
                         style)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    logger.info("%s: %.2f s of audio -> %d frames in %s; compute %.2f s (real-time factor %.3f), per chunk "
                "mean %.1f ms / max %.1f ms for %g ms chunks", stem, audio_s, motion.shape[0], out_dir,
                stats["compute_s"], stats["real_time_factor"], 1000 * stats["mean_chunk_compute_s"],
                1000 * stats["max_chunk_compute_s"], settings["chunk_ms"])
    return dict(meta, out_dir=out_dir, stats=stats)
