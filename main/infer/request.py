"""What one inference run is asked to do, as a type: the command line builds a ``Request`` from its
flags, and Python callers build one directly (``main.infer.pipeline.run(cfg, Request(...))``)."""
from __future__ import annotations

from dataclasses import dataclass

MODES = ("test", "file", "stream")
STREAM_ONLY = ("chunk_ms", "lookahead_ms", "left_context_ms", "warmup_ms", "prime_audio", "stdout_vertices")


@dataclass(frozen=True)
class Request:
    """mode: ``test`` (every dataset's INFER.split), ``file`` (one audio file) or ``stream`` (a file fed
    chunk by chunk as if live, or ``audio="-"``: raw 16-bit mono PCM at the model's rate on stdin).

    audio, style (a trained style; None: INFER.condition_style or the first), out (the result folder;
    None: results/single/<audio stem>) and render (also DIR/video.mp4) belong to the file and stream
    modes, and so does identity (a file holding the FLAME shape to animate, dataset/identity.py; None: FLAME's
    mean shape); checkpoint (None: INFER.checkpoint, else TRAIN.save_path's best model); overwrite / resume:
    what to do with existing results (neither: INFER.overwrite / INFER.resume, else refuse).
    Stream mode only: chunk_ms, lookahead_ms, left_context_ms, warmup_ms (None: the INFER.stream_* key),
    prime_audio (a recording that starts the normalisation statistics warm), stdout_vertices (each
    final frame's vertices also to stdout).
    """
    mode: str = "test"
    audio: str | None = None
    style: str | None = None
    out: str | None = None
    checkpoint: str | None = None
    overwrite: bool = False
    resume: bool = False
    render: bool = False
    identity: str | None = None
    chunk_ms: float | None = None
    lookahead_ms: float | None = None
    left_context_ms: float | None = None
    warmup_ms: float | None = None
    prime_audio: str | None = None
    stdout_vertices: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Request mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "test" and (self.audio or self.style or self.out or self.render or self.identity):
            raise ValueError("audio, style, out, render and identity belong to the file and stream modes")
        if self.mode != "test" and not self.audio:
            raise ValueError(f"a {self.mode} request needs audio (a file, or '-' for stdin in stream mode)")
        if self.mode == "file" and self.audio == "-":
            raise ValueError("audio '-' (stdin) is read in stream mode")
        if self.mode == "stream" and self.render:
            raise ValueError("a stream request does not render")
        if self.mode != "stream" and any(getattr(self, k) not in (None, False) for k in STREAM_ONLY):
            raise ValueError(f"{', '.join(STREAM_ONLY)} belong to stream requests")
