"""Where a stream's frames go besides the results tree: raw vertex bytes on stdout for a reader
(``--stdout_vertices``), and the run's timings (``stream_stats.json``)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

import numpy as np

STATS = "stream_stats.json"


class ReaderGone(Exception):
    """The reader of --stdout_vertices closed the pipe: the stream ends there."""


class StdoutVertices:
    """Each frame's vertices to stdout as soon as final, raw float32 (V,3) little-endian bytes. The console
    log moves to stderr, since stdout carries the bytes."""

    def __init__(self, logger: logging.Logger):
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
                h.setStream(sys.stderr)
        self.out = sys.stdout.buffer

    def send(self, vertices: np.ndarray):
        """(n,V,3) frames out at once (flushed)."""
        try:
            self.out.write(np.ascontiguousarray(vertices, dtype="<f4").tobytes())
            self.out.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise ReaderGone() from None

    def close(self):
        """After the reader left, stdout points at /dev/null: the interpreter's flush at exit would
        otherwise fail again on the closed pipe and print a traceback."""
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def stream_stats(settings: dict, streamer, chunks: list[dict], audio_s: float, n_frames: int, device,
                 primed_s: float, stopped: int | None) -> dict:
    """stream_stats.json: the settings, latency, per-chunk compute times and what ended the stream."""
    compute = [c["compute_s"] for c in chunks] or [0.0]
    return {**settings, "chunk_ms": streamer.chunk_ms, "lookahead_ms": streamer.lookahead_ms,  # those in force
            "left_context_ms": streamer.left_context_ms, "primed_s": primed_s, "algorithmic_latency_s": streamer.latency_s,
            "audio_s": audio_s, "frames": int(n_frames),
            "compute_s": float(sum(compute)), "real_time_factor": float(sum(compute)) / max(audio_s, 1e-9),
            "max_chunk_compute_s": max(compute), "mean_chunk_compute_s": float(np.mean(compute)),
            "device": str(device), "stopped_by": None if stopped is None else signal.Signals(stopped).name,
            "chunks": chunks}


@contextlib.contextmanager
def signals_held():
    """SIGINT/SIGTERM wait until the block is done (then they are delivered as usual)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # POSIX, as fcntl's locks
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
