"""Live animation: mono PCM at the model's rate in, FLAME motion at its fps out (16 kHz / 25 fps by
default, ``model.framing``), each frame final when it is returned.

    s = Streamer(model, style=0)     # chunk, lookahead, context: the INFER.stream_* defaults
    for pcm in microphone():          # any number of samples per call, float in [-1, 1] or int16
        frames = s.push(pcm)          # (n,51): the frames that became final
    frames = s.flush()                # (m,51): the rest, at the end of the utterance

Audio is processed at every ``chunk_ms`` boundary of the input (not per ``push`` call, so the output
does not depend on how the caller slices the samples): the audio encoder runs incrementally
(models/wav2vec_stream.py), frame i (samples [spf i, spf (i+1))) is emitted once the audio up to its end
plus ``lookahead_ms`` has arrived, and the decoder continues its KV cache across chunks, bounded by
``attention_window`` frames.

Algorithmic latency (end of a frame's audio -> frame emitted, before compute) is at most chunk +
lookahead. With a lookahead longer than the input, nothing is emitted before ``flush`` and the result
equals offline generation (``FaceFormer.generate`` on the normalised audio) when the left context and
the attention window are unbounded (None).

A model trained for streaming (``MODEL.encoder_block_frames`` = B > 0, models/block_encoder.py) streams
exactly as it runs offline: the chunk is rounded up to whole blocks of B frames, the lookahead is the
trained one (``MODEL.encoder_lookahead_frames``) plus the CNN's overhang past a frame (5 ms at 16 kHz),
each chunk is processed as soon as that much audio past its last block has arrived, and the left context
is the trained one (``lookahead_ms``, ``left_context_ms``, ``warmup_ms`` and priming do not apply).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from dataset.audio import as_float_pcm
from models.loading import load_model
from models.wav2vec_stream import StreamingEncoder
from utils.config import load_config
from utils.config_schema import DEFAULTS, NUMERIC_RANGES, STREAM_MS_UNBLOCKED, check_number

log = logging.getLogger("inference")


_INFER = DEFAULTS["INFER"]  # the defaults of the Streamer's arguments are the config's (one home)
STREAM_FLAGS = {"chunk_ms": "stream_chunk_ms", "lookahead_ms": "stream_lookahead_ms",
                "left_context_ms": "stream_left_context_ms", "warmup_ms": "stream_warmup_ms"}


def check_stream_value(flag: str, value, name: str | None = None, where: str = "Streamer") -> float | None:
    """One streaming setting (a Streamer argument) in its INFER.stream_* key's range, else ConfigError
    (a UserError and a ValueError) naming it. ``left_context_ms`` None or negative: all past audio (None);
    ``chunk_ms``, ``lookahead_ms`` None: the model's (see ``Streamer``)."""
    if value is None and flag in ("chunk_ms", "lookahead_ms"):
        return None
    if flag == "left_context_ms" and (value is None or check_number(value, name or flag, False, None, None, where) < 0):
        return None
    return float(check_number(value, name or flag, *NUMERIC_RANGES[f"INFER.{STREAM_FLAGS[flag]}"], where=where))


class Streamer:
    """Streaming FaceFormer. ``model``: a FaceFormer (eval mode) or a checkpoint path; ``style``: a
    class index or, with a checkpoint (or ``styles``), a style name.

    chunk_ms: processing granularity (audio is encoded and decoded at every chunk boundary);
    lookahead_ms: audio after a frame's end needed before it is emitted (both None: a block-causal
    encoder's block and trained lookahead, else utils/config_schema.py STREAM_MS_UNBLOCKED); left_context_ms: past audio
    the wav2vec2 transformer sees (None = all); attention_window: decoder attention in frames
    (None = unbounded); warmup_ms: audio held before the first frame is emitted (once: the first
    frames then use warmer normalisation statistics; after it, latency is chunk + lookahead again).
    ``stats`` holds one dict per processed chunk (audio_end_s, frames, compute_s wall seconds, cpu_s
    process CPU seconds).
    """

    def __init__(self, model, style=0, chunk_ms: float = _INFER["stream_chunk_ms"],
                 lookahead_ms: float = _INFER["stream_lookahead_ms"],
                 left_context_ms: float | None = _INFER["stream_left_context_ms"],
                 attention_window: int | None = _INFER["attention_window"] or None, styles=None,
                 device=None, cfg=None, warmup_ms: float = _INFER["stream_warmup_ms"]):
        if isinstance(model, (str, os.PathLike)):
            model, styles = load_model(str(model), cfg or load_config(None), torch.device(device or "cpu"))
        if isinstance(style, str):
            if not styles or style not in styles:
                raise ValueError(f"style '{style}' is not one of the trained styles {styles}")
            style = list(styles).index(style)
        chunk_ms, lookahead_ms, left_context_ms, warmup_ms = (
            check_stream_value(k, v) for k, v in (("chunk_ms", chunk_ms), ("lookahead_ms", lookahead_ms),
                                                  ("left_context_ms", left_context_ms), ("warmup_ms", warmup_ms)))
        self.model = model.eval()
        self.device = next(model.parameters()).device
        fr = self.framing = model.framing
        self.sr, self.fps, self.hop = fr.sample_rate, fr.fps, fr.samples_per_frame
        enc = model.audio_encoder
        self.block = enc.block
        if self.block:  # whole blocks, each processed once its audio, the lookahead and the CNN's overhang are in
            block = self.block * self.hop
            self.chunk = block if chunk_ms is None else -(-int(round(chunk_ms * self.sr / 1000)) // block) * block
            self.lookahead, self.warmup = enc.frame_overhang() + enc.lookahead * self.hop, 0
        else:
            chunk_ms = STREAM_MS_UNBLOCKED["stream_chunk_ms"] if chunk_ms is None else chunk_ms
            lookahead_ms = STREAM_MS_UNBLOCKED["stream_lookahead_ms"] if lookahead_ms is None else lookahead_ms
            self.chunk = max(1, int(round(chunk_ms * self.sr / 1000)))
            self.lookahead = int(round(lookahead_ms * self.sr / 1000))
            self.warmup = int(round(warmup_ms * self.sr / 1000))
        left = None if left_context_ms is None else int(round(left_context_ms * self.fps / 1000))
        self.audio = StreamingEncoder(model.audio_encoder, self.hop, left)
        # the settings in force (a block-causal encoder's own), as the user would pass them again
        self.chunk_ms, self.lookahead_ms = 1000 * self.chunk / self.sr, 1000 * self.lookahead / self.sr
        self.left_context_ms = 1000 * enc.left / self.fps if self.block else left_context_ms
        self.style, self.attention_window = int(style), attention_window
        self.state = model.start_generation(torch.tensor([int(style)], device=self.device), attention_window)
        self.n_in, self.n_emitted, self.finished = 0, 0, False  # samples received, frames emitted
        self.next_point = self.chunk + (self.lookahead if self.block else 0)  # the next processing point
        self.stats: list[dict] = []

    @property
    def latency_s(self) -> float:
        """Algorithmic latency: chunk + lookahead (seconds)."""
        return (self.chunk + self.lookahead) / self.sr

    # ---- public API --------------------------------------------------------------------------
    def push(self, pcm) -> np.ndarray:
        """Append samples (mono, at the model's sample rate); returns the motion frames (n,51) that became final."""
        if self.finished:
            raise RuntimeError("push() after flush(): start a new Streamer for a new utterance")
        x = as_float_pcm(pcm)
        if x.size and not np.isfinite(x).all():
            raise ValueError("pcm holds NaN or inf samples")
        self.audio.receive(x)
        self.n_in += x.shape[0]
        out = []
        while self.next_point <= self.n_in:
            out.append(self._process(self.next_point, final=False))
            self.next_point += self.chunk
        return np.concatenate(out) if out else np.zeros((0, self.model.motion_dim), np.float32)

    def prime(self, pcm):
        """Seed the running normalisation statistics with audio recorded beforehand (e.g. a few
        seconds of the speaker on the same microphone); it is not animated. Call before push()."""
        self.audio.prime(as_float_pcm(pcm))

    def next_utterance(self, style=None) -> "Streamer":
        """A Streamer for the next utterance of a live session (same model and settings, a fresh
        decoder), whose normalisation statistics continue from everything this one received: the
        same speaker on the same microphone then starts warm instead of cold (docs/BENCHMARKS.md,
        "Streaming"). ``style``: a class index (default: this one's)."""
        nxt = Streamer(self.model, self.style if style is None else style, self.chunk_ms, self.lookahead_ms,
                       self.left_context_ms, self.attention_window, warmup_ms=0)
        nxt.audio.continue_statistics(self.audio)
        return nxt

    def flush(self) -> np.ndarray:
        """End of the utterance: the remaining frames, round(samples / samples per frame) in all, as offline (the
        audio is cut or zero-padded to whole frames)."""
        if self.finished:
            return np.zeros((0, self.model.motion_dim), np.float32)
        self.finished = True
        return self._process(self.n_in, final=True)

    # ---- internals ---------------------------------------------------------------------------
    @torch.no_grad()
    def _process(self, n: int, final: bool) -> np.ndarray:
        """The chunk boundary at sample n (or the end of the stream): the frames that became final."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.audio.advance(n)
        if final:  # cut or zero-padded to whole frames, as offline
            n_target = self.framing.frames_in(n)
            n_audio = n_target * self.hop
            self.audio.pad_to(n_audio)
        else:
            n_audio = n
            n_target = max(0, (n - self.lookahead) // self.hop) if n >= self.warmup else 0
            if self.block:
                n_target -= n_target % self.block
        frames = np.zeros((0, self.model.motion_dim), np.float32)
        # nothing to emit yet: the CNN waits, until the running statistics know more
        if final or n_target > self.n_emitted:
            n_target = min(n_target, self.audio.encode_to(n_audio, final))
            if n_target > self.n_emitted:
                h = self.audio.hidden(self.n_emitted, n_target, final)          # (1,n,H)
                frames = self.model.generate_steps(self.state, self.model.audio_feature_map(h))[0].float().cpu().numpy()
                self.n_emitted = n_target
            self.audio.trim(self.n_emitted)
        # cpu_s: process CPU time (all threads); on a shared machine it tracks the work better than wall
        self.stats.append({"audio_end_s": n / self.sr, "frames": int(frames.shape[0]),
                           "compute_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
        return frames
