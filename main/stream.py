"""Live animation: mono PCM at the model's rate in, FLAME motion at its fps out (16 kHz / 25 fps by
default, ``model.framing``), each frame final when it is returned.

    s = Streamer(model, style=0, chunk_ms=200, lookahead_ms=300, left_context_ms=1000)
    for pcm in microphone():          # any number of samples per call, float in [-1, 1] or int16
        frames = s.push(pcm)          # (n,51): the frames that became final
    frames = s.flush()                # (m,51): the rest, at the end of the utterance

Audio is processed at every ``chunk_ms`` boundary of the input (not per ``push`` call, so the output
does not depend on how the caller slices the samples). At a boundary, with N samples received:

- Normalisation: offline, the whole utterance is normalised to zero mean and unit variance, which
  needs the future. Here the mean and variance are running estimates over all samples received so far
  (the estimate at the boundary normalises the samples that are new to the CNN). Long streams
  converge to the offline statistics; the first second is where they differ (measured in
  docs/BENCHMARKS.md, "Streaming").
- CNN: the convolutions are local, so CNN features of past audio are cached and the CNN runs only on
  the new samples plus its receptive-field overlap. wav2vec2-base's first layer is not local: its
  GroupNorm normalises each channel over the whole input; it uses running per-channel statistics.
  These are kept over the first convolution of the *raw* audio: GroupNorm removes each channel's
  offset and scale, so the utterance's mean and variance cancel out of it (the variance only enters
  through GroupNorm's eps, scaled here by the running variance). Features computed at different times
  then share one unit, instead of each chunk being normalised with the audio estimate of its time
  (measured: 60 s stream deviation 12.4% -> 8.2%, docs/BENCHMARKS.md). With a layer-norm CNN the
  audio is normalised with the running estimates.
- Frame i (audio [spf i, spf (i+1)), spf = samples per frame) is emitted once the audio up to its end plus ``lookahead_ms`` has
  arrived. The wav2vec2 transformer (bidirectional) is re-run on a sliding window: ``left_context_ms``
  of frames already emitted, the frames to emit, and the lookahead frames.
- The decoder continues its KV cache across chunks, bounded by ``attention_window`` frames.

Algorithmic latency (end of a frame's audio -> frame emitted, before compute) is at most chunk +
lookahead. With a lookahead longer than the input, nothing is emitted before ``flush`` and the result
equals offline generation (``FaceFormer.generate`` on the normalised audio) when the left context and
the attention window are unbounded (None).

The command line (``python inference.py --audio FILE --stream`` / ``--audio -``) is main/pipeline.py's
``run_stream``.
"""
from __future__ import annotations

import copy
import logging
import os
import time

import numpy as np
import torch

from main.model_io import load_model
from main.session import check_stream_value
from main.speech import NORM_EPS, as_float_pcm
from models.wav2vec import Conv0Moments
from utils.config import load_config

log = logging.getLogger("inference")


class _RunningStats:
    """Running mean / variance of the samples seen so far (float64 sums)."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        self.n += x.size
        self.s1 += float(x.sum())
        self.s2 += float(np.square(x).sum())

    def mean_var(self) -> tuple[float, float]:
        m = self.s1 / max(self.n, 1)
        return m, max(self.s2 / max(self.n, 1) - m * m, 0.0)


class Streamer:
    """Streaming FaceFormer. ``model``: a FaceFormer (eval mode) or a checkpoint path; ``style``: a
    class index or, with a checkpoint (or ``styles``), a style name.

    chunk_ms: processing granularity (audio is encoded and decoded at every chunk boundary);
    lookahead_ms: audio after a frame's end needed before it is emitted; left_context_ms: past audio
    the wav2vec2 transformer sees (None = all); attention_window: decoder attention in frames
    (None = unbounded); warmup_ms: audio held before the first frame is emitted (once: the first
    frames then use warmer normalisation statistics; after it, latency is chunk + lookahead again).
    ``stats`` holds one dict per processed chunk (audio_end_s, frames, compute_s wall seconds, cpu_s
    process CPU seconds).
    """

    def __init__(self, model, style=0, chunk_ms: float = 200, lookahead_ms: float = 300,
                 left_context_ms: float | None = 1000, attention_window: int | None = 600, styles=None,
                 device=None, cfg=None, warmup_ms: float = 0):
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
        enc = model.audio_encoder
        self.enc, self.cnn = enc, enc.model.feature_extractor
        fr = self.framing = model.framing
        self.sr, self.fps, self.hop = fr.sample_rate, fr.fps, fr.samples_per_frame
        if enc.samples_per_frame != self.hop or self.hop % enc.stride:
            raise ValueError(f"streaming needs {self.hop} samples per frame, a multiple of the CNN stride "
                             f"({enc.stride})")
        self.fpf = self.hop // enc.stride                                 # CNN features per frame (2)
        self.group_norm = enc.model.config.feat_extract_norm == "group"
        conv0 = self.cnn.conv_layers[0].conv
        self.k0, self.s0 = conv0.kernel_size[0], conv0.stride[0]
        self.chunk = max(1, int(round(chunk_ms * self.sr / 1000)))
        self.lookahead = int(round(lookahead_ms * self.sr / 1000))
        self.warmup = int(round(warmup_ms * self.sr / 1000))
        self.left = None if left_context_ms is None else int(round(left_context_ms * self.fps / 1000))
        self.chunk_ms, self.lookahead_ms, self.left_context_ms = chunk_ms, lookahead_ms, left_context_ms
        self.style, self.attention_window = int(style), attention_window
        self.state = model.start_generation(torch.tensor([int(style)], device=self.device), attention_window)
        self.audio_stats, self.conv0_stats = _RunningStats(), Conv0Moments(self.k0, self.s0)
        self.raw = np.zeros(0, np.float32)  # received samples from global index raw_start on
        self.raw_start = 0
        self.n_in = 0           # samples received
        self.n_done = 0         # samples up to the last processed boundary
        self.n_conv0 = 0        # conv0 positions in conv0_stats
        self.cnn_feats = None   # (C, F) CNN features from global index cnn_start
        self.cnn_start = 0
        self.n_feat = 0         # CNN features computed
        self.proj = None        # (n, H) projected frames from global frame proj_start
        self.proj_start = 0
        self.n_proj = 0         # frames projected
        self.n_emitted = 0
        self.finished = False
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
        self.raw = np.concatenate([self.raw, x])
        self.n_in += x.shape[0]
        out = []
        while self.n_done + self.chunk <= self.n_in:
            out.append(self._process(self.n_done + self.chunk, final=False))
        return np.concatenate(out) if out else np.zeros((0, self.model.motion_dim), np.float32)

    @torch.no_grad()
    def prime(self, pcm):
        """Seed the running normalisation statistics with audio recorded beforehand (e.g. a few
        seconds of the speaker on the same microphone); it is not animated. Call before push()."""
        x = as_float_pcm(pcm)
        self.audio_stats.add(x)
        if self.group_norm:
            self.conv0_stats.add(torch.from_numpy(x))

    def next_utterance(self, style=None) -> "Streamer":
        """A Streamer for the next utterance of a live session (same model and settings, a fresh
        decoder), whose normalisation statistics continue from everything this one received: the
        same speaker on the same microphone then starts warm instead of cold (docs/BENCHMARKS.md,
        "Streaming"). ``style``: a class index (default: this one's)."""
        nxt = Streamer(self.model, self.style if style is None else style, self.chunk_ms, self.lookahead_ms,
                       self.left_context_ms, self.attention_window, warmup_ms=0)
        nxt.audio_stats, nxt.conv0_stats = copy.deepcopy(self.audio_stats), copy.deepcopy(self.conv0_stats)
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
        t0, c0 = time.perf_counter(), time.process_time()
        self.audio_stats.add(self.raw[self.n_done - self.raw_start:n - self.raw_start])
        self.n_done = n
        if final:
            T = self.framing.frames_in(n)
            if T * self.hop > n:  # zero padding in normalised units = the mean in raw units
                mean = self.audio_stats.mean_var()[0]
                self.raw = np.concatenate([self.raw, np.full(T * self.hop - n, mean, np.float32)])
            n_audio = T * self.hop
            n_target = T
        else:
            n_audio = n
            n_target = max(0, (n - self.lookahead) // self.hop) if n >= self.warmup else 0
        if not final and n_target <= self.n_emitted:
            # nothing to emit yet: leave the CNN for later, when the running statistics know more
            self._record(n, 0, t0, c0)
            return np.zeros((0, self.model.motion_dim), np.float32)
        self._update_cnn(n_audio, final)
        if final:
            n_valid = self.enc.cnn_lengths(torch.tensor(T * self.hop)).item() if T else 0
            n_ready = T
        else:
            n_valid = self.n_feat
            n_ready = self.n_feat // self.fpf if self.n_feat else 0  # frames with both features
        self._project(n_ready, n_valid)
        n_target = min(n_target, n_ready)
        frames = np.zeros((0, self.model.motion_dim), np.float32)
        if n_target > self.n_emitted:
            frames = self._emit(n_target, n_ready)
        self._trim()
        self._record(n, frames.shape[0], t0, c0)
        return frames

    def _record(self, n: int, frames: int, t0: float, c0: float):
        # cpu_s: process CPU time (all threads); on a shared machine it tracks the work better than wall
        self.stats.append({"audio_end_s": n / self.sr, "frames": int(frames),
                           "compute_s": time.perf_counter() - t0,
                           "cpu_s": time.process_time() - c0})

    def _cnn_input(self, a: int, b: int) -> torch.Tensor:
        """Samples [a, b) as the CNN takes them -> (1,1,b-a): raw with a group-norm CNN (see the module
        docstring), else normalised with the current running statistics."""
        x = self.raw[a - self.raw_start:b - self.raw_start]
        if not self.group_norm:
            mean, var = self.audio_stats.mean_var()
            x = (x - np.float32(mean)) / np.float32(np.sqrt(var + NORM_EPS))
        return self._raw_tensor(x)

    def _raw_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(self.device)

    def _update_cnn(self, n_audio: int, final: bool):
        """CNN features for all audio < n_audio, computing only the new ones."""
        enc = self.enc
        F = int(enc.cnn_lengths(torch.tensor(n_audio)).item()) if n_audio >= enc.receptive_field else 0
        if self.group_norm:
            # running GroupNorm statistics over the first conv layer's outputs of all audio so far
            P = (n_audio - self.k0) // self.s0 + 1 if n_audio >= self.k0 else 0
            if P > self.n_conv0:
                self.conv0_stats.add(self._cnn_input(self.n_conv0 * self.s0, (P - 1) * self.s0 + self.k0))
                self.n_conv0 = P
        if F <= self.n_feat:
            return
        a, b = self.n_feat * enc.stride, (F - 1) * enc.stride + enc.receptive_field
        stats = eps = None
        if self.group_norm:  # layer 0's GroupNorm with the running statistics of all audio so far
            stats = self.conv0_stats.mean_var(self.cnn.conv_layers[0].conv)
            # offline, eps is added to the variance of normalised audio's conv outputs: in raw units
            # that is eps times the audio's variance
            eps = self.cnn.conv_layers[0].layer_norm.eps * (self.audio_stats.mean_var()[1] + NORM_EPS)
        new = enc.cnn_chunk(self._cnn_input(a, b), stats, eps)[0]      # (C, F - n_feat)
        self.cnn_feats = new if self.cnn_feats is None else torch.cat([self.cnn_feats, new], 1)
        self.n_feat = F

    def _project(self, n_ready: int, n_valid: int):
        """Resample + feature projection for frames n_proj..n_ready-1 (local per frame, so cached)."""
        if n_ready <= self.n_proj:
            return
        f0 = self.fpf * self.n_proj - self.cnn_start                   # frame n_proj reads from feature 2 n_proj
        feats = self.cnn_feats[None, :, f0:]
        x = self.enc.resample(feats, n_ready - self.n_proj,
                              torch.tensor([n_valid - self.fpf * self.n_proj], device=self.device))
        x = self.enc.model.feature_projection(x)[0][0]                  # (n,H)
        self.proj = x if self.proj is None else torch.cat([self.proj, x])
        self.n_proj = n_ready

    def _emit(self, n_target: int, n_ready: int) -> np.ndarray:
        """Transformer over [emitted - left context, n_ready), decoder over the frames to emit."""
        a = 0 if self.left is None else max(0, self.n_emitted - self.left)
        window = self.proj[a - self.proj_start:n_ready - self.proj_start]
        h = self.enc.model.encoder(window[None])[0]                    # (1,w,H)
        h = h[:, self.n_emitted - a:n_target - a]
        motion = self.model.generate_steps(self.state, self.model.audio_feature_map(h))
        self.n_emitted = n_target
        return motion[0].float().cpu().numpy()

    def _trim(self):
        """Drop what no later chunk needs, so memory stays bounded (unless left context is None)."""
        keep_feat = self.fpf * self.n_proj                             # next frame's first feature
        if self.cnn_feats is not None and keep_feat > self.cnn_start:
            self.cnn_feats = self.cnn_feats[:, keep_feat - self.cnn_start:]
            self.cnn_start = keep_feat
        if self.left is not None and self.proj is not None:
            keep = max(0, self.n_emitted - self.left)
            if keep > self.proj_start:
                self.proj = self.proj[keep - self.proj_start:]
                self.proj_start = keep
        keep_raw = min(self.n_feat * self.enc.stride, self.n_conv0 * self.s0 if self.group_norm else 1 << 62,
                       self.n_done)
        if keep_raw > self.raw_start:
            self.raw = self.raw[keep_raw - self.raw_start:]
            self.raw_start = keep_raw
