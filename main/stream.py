"""Live animation: 16 kHz mono PCM in, 25 fps FLAME motion out, each frame final when it is returned.

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
  GroupNorm normalises each channel over the whole input; it uses running per-channel statistics,
  like the audio.
- Frame i (audio [640 i, 640 (i+1))) is emitted once the audio up to its end plus ``lookahead_ms`` has
  arrived. The wav2vec2 transformer (bidirectional) is re-run on a sliding window: ``left_context_ms``
  of frames already emitted, the frames to emit, and the lookahead frames.
- The decoder continues its KV cache across chunks, bounded by ``attention_window`` frames.

Algorithmic latency (end of a frame's audio -> frame emitted, before compute) is at most chunk +
lookahead. With a lookahead longer than the input, nothing is emitted before ``flush`` and the result
equals offline generation (``FaceFormer.generate`` on the normalised audio) when the left context and
the attention window are unbounded (None).

The CLI (``python inference.py --audio FILE --stream`` / ``--audio -``) is ``run_stream`` below.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time

import numpy as np
import torch

SR, FPS, HOP = 16000, 25, 640       # audio rate, motion rate, samples per motion frame
NORM_EPS = 1e-7                      # as dataset.audio.normalize_audio

log = logging.getLogger("inference")


def as_float_pcm(pcm) -> np.ndarray:
    """int16 (scaled by 1/32768, as soundfile reads 16-bit files) or float samples -> (N,) float32."""
    x = np.asarray(pcm)
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.ndim != 1:
        raise ValueError(f"pcm must be mono samples (N,), got shape {x.shape}")
    return x.astype(np.float32)


class _RunningStats:
    """Running mean / variance per channel over samples seen so far (float64 sums)."""

    def __init__(self, channels: int = 1):
        self.n, self.s1, self.s2 = 0, np.zeros(channels), np.zeros(channels)

    def add(self, x: np.ndarray):
        """x (channels, n) or (n,)."""
        x = np.asarray(x, dtype=np.float64).reshape(self.s1.shape[0], -1)
        self.n += x.shape[1]
        self.s1 += x.sum(1)
        self.s2 += np.square(x).sum(1)

    def mean_var(self):
        m = self.s1 / max(self.n, 1)
        return m, np.maximum(self.s2 / max(self.n, 1) - m * m, 0.0)


class Streamer:
    """Streaming FaceFormer. ``model``: a FaceFormer (eval mode) or a checkpoint path; ``style``: a
    class index or, with a checkpoint (or ``styles``), a style name.

    chunk_ms: processing granularity (audio is encoded and decoded at every chunk boundary);
    lookahead_ms: audio after a frame's end needed before it is emitted; left_context_ms: past audio
    the wav2vec2 transformer sees (None = all); attention_window: decoder attention in frames
    (None = unbounded). ``stats`` holds one dict per processed chunk (audio_end_s, frames, compute_s
    wall seconds, cpu_s process CPU seconds).
    """

    def __init__(self, model, style=0, chunk_ms: float = 200, lookahead_ms: float = 300,
                 left_context_ms: float | None = 1000, attention_window: int | None = 600, styles=None,
                 device=None, cfg=None):
        if isinstance(model, (str, os.PathLike)):
            from main.inference import load_model
            from utils.config import load_config
            model, styles = load_model(str(model), cfg or load_config(None), torch.device(device or "cpu"))
        if isinstance(style, str):
            if not styles or style not in styles:
                raise ValueError(f"style '{style}' is not one of the trained styles {styles}")
            style = list(styles).index(style)
        if chunk_ms <= 0 or lookahead_ms < 0 or (left_context_ms is not None and left_context_ms < 0):
            raise ValueError(f"chunk_ms ({chunk_ms}) must be > 0, lookahead_ms ({lookahead_ms}) and "
                             f"left_context_ms ({left_context_ms}) >= 0")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        enc = model.audio_encoder
        self.enc, self.cnn = enc, enc.model.feature_extractor
        if enc.samples_per_frame != HOP or HOP % enc.stride:
            raise ValueError(f"streaming needs 640 samples per frame, a multiple of the CNN stride ({enc.stride})")
        self.fpf = HOP // enc.stride                                  # CNN features per frame (2)
        self.group_norm = enc.model.config.feat_extract_norm == "group"
        conv0 = self.cnn.conv_layers[0].conv
        self.k0, self.s0 = conv0.kernel_size[0], conv0.stride[0]
        self.chunk = max(1, int(round(chunk_ms * SR / 1000)))
        self.lookahead = int(round(lookahead_ms * SR / 1000))
        self.left = None if left_context_ms is None else int(round(left_context_ms * FPS / 1000))
        self.chunk_ms, self.lookahead_ms, self.left_context_ms = chunk_ms, lookahead_ms, left_context_ms
        self.state = model.start_generation(torch.tensor([int(style)], device=self.device), attention_window)
        self.audio_stats, self.conv0_stats = _RunningStats(), _RunningStats(conv0.out_channels)
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
        return (self.chunk + self.lookahead) / SR

    # ---- public API --------------------------------------------------------------------------
    def push(self, pcm) -> np.ndarray:
        """Append samples (16 kHz mono); returns the motion frames (n,51) that became final."""
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
        if self.group_norm and x.shape[0] >= self.k0:
            mean, var = self.audio_stats.mean_var()
            a = torch.from_numpy((x - np.float32(mean[0])) / np.float32(np.sqrt(var[0] + NORM_EPS)))
            self.conv0_stats.add(self.cnn.conv_layers[0].conv(a[None, None].to(self.device))[0].double().cpu().numpy())

    def flush(self) -> np.ndarray:
        """End of the utterance: the remaining frames, round(samples / 640) in all, as offline (the
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
            T = int(np.floor(n / HOP + 0.5))                       # Framing.frames_in: round, halves up
            if T * HOP > n:  # zero padding in normalised units = the mean in raw units
                mean = self.audio_stats.mean_var()[0][0]
                self.raw = np.concatenate([self.raw, np.full(T * HOP - n, mean, np.float32)])
            n_audio = T * HOP
            n_target = T
        else:
            n_audio = n
            n_target = max(0, (n - self.lookahead) // HOP)
        if not final and n_target <= self.n_emitted:
            # nothing to emit yet: leave the CNN for later, when the running statistics know more
            self._record(n, 0, t0, c0)
            return np.zeros((0, self.model.motion_dim), np.float32)
        self._update_cnn(n_audio, final)
        if final:
            n_valid = self.enc.cnn_lengths(torch.tensor(T * HOP)).item() if T else 0
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
        self.stats.append({"audio_end_s": n / SR, "frames": int(frames), "compute_s": time.perf_counter() - t0,
                           "cpu_s": time.process_time() - c0})

    def _normalised(self, a: int, b: int) -> torch.Tensor:
        """Samples [a, b) normalised with the current running statistics -> (1,b-a)."""
        mean, var = self.audio_stats.mean_var()
        x = (self.raw[a - self.raw_start:b - self.raw_start] - np.float32(mean[0])) / np.float32(
            np.sqrt(var[0] + NORM_EPS))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)

    def _update_cnn(self, n_audio: int, final: bool):
        """CNN features for all audio < n_audio, computing only the new ones."""
        enc = self.enc
        F = int(enc.cnn_lengths(torch.tensor(n_audio)).item()) if n_audio >= enc.receptive_field else 0
        if self.group_norm:
            # running GroupNorm statistics over the first conv layer's outputs of all audio so far
            P = (n_audio - self.k0) // self.s0 + 1 if n_audio >= self.k0 else 0
            if P > self.n_conv0:
                a = self.n_conv0 * self.s0
                y = self.cnn.conv_layers[0].conv(self._normalised(a, (P - 1) * self.s0 + self.k0)[:, None])
                self.conv0_stats.add(y[0].double().cpu().numpy())
                self.n_conv0 = P
        if F <= self.n_feat:
            return
        a, b = self.n_feat * enc.stride, (F - 1) * enc.stride + enc.receptive_field
        h = self._normalised(a, b)[:, None]                            # (1,1,b-a)
        layers = self.cnn.conv_layers
        if self.group_norm:
            l0 = layers[0]
            mean, var = (torch.from_numpy(v).to(h) for v in self.conv0_stats.mean_var())
            y = l0.conv(h)
            y = (y - mean[:, None]) / torch.sqrt(var[:, None] + l0.layer_norm.eps)
            h = l0.activation(y * l0.layer_norm.weight[:, None] + l0.layer_norm.bias[:, None])
            layers = layers[1:]
        for layer in layers:
            h = layer(h)
        new = h[0]                                                     # (C, F - n_feat)
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


class VertexFrames:
    """The FLAME vertices of a motion sequence, converted chunk by chunk as frames are read:
    behaves as a (T,V,3) float32 array for ``shape``, ``len`` and ``frames[i]`` (what the results
    writer uses) while holding one chunk of ``chunk`` frames, so writing 10 minutes of frames never
    holds all of them (0.9 GB at 25 fps). ``np.asarray`` (e.g. rendering) converts them all."""

    def __init__(self, flame, motion: np.ndarray, shape=None, chunk: int = 250):
        self.flame, self.motion, self.shape_vec, self.chunk = flame, motion, shape, int(chunk)
        self.shape = (motion.shape[0], int(flame.v_template.shape[0]), 3)
        self._start, self._block = None, None

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        start = (int(i) // self.chunk) * self.chunk
        if start != self._start:
            self._block = np.asarray(self.flame.motion_to_vertices(self.motion[start:start + self.chunk],
                                                                   self.shape_vec), dtype=np.float32)
            self._start = start
        return self._block[int(i) - start]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.flame.motion_to_vertices(self.motion, self.shape_vec), dtype=np.float32)
        return out if dtype is None else out.astype(dtype)


# ----------------------------------------------------------------------------------------------
# Command line: python inference.py --audio FILE --stream  /  --audio - (raw PCM on stdin)
# ----------------------------------------------------------------------------------------------

def stream_settings(cfg, args=None) -> dict:
    """Streamer keyword arguments from INFER.stream_* / INFER.attention_window and the CLI flags
    (--chunk_ms, --lookahead_ms, --left_context_ms override the config), checked."""
    from main.inference import InferenceError, attention_window

    inf = cfg.INFER
    pick = lambda flag, key: getattr(args, flag, None) if getattr(args, flag, None) is not None else inf[key]
    chunk, la, left = (pick("chunk_ms", "stream_chunk_ms"), pick("lookahead_ms", "stream_lookahead_ms"),
                       pick("left_context_ms", "stream_left_context_ms"))
    if not chunk > 0 or not la >= 0:
        raise InferenceError(f"streaming needs a chunk > 0 ms and a lookahead >= 0 ms; got chunk {chunk} ms "
                             f"(--chunk_ms / INFER.stream_chunk_ms), lookahead {la} ms (--lookahead_ms / "
                             f"INFER.stream_lookahead_ms)")
    return {"chunk_ms": float(chunk), "lookahead_ms": float(la),
            "left_context_ms": None if left < 0 else float(left),  # negative: all past audio
            "attention_window": attention_window(cfg)}


def _pcm_chunks_from_stdin(chunk_samples: int):
    """Raw 16-bit little-endian mono PCM at 16 kHz from stdin, chunk by chunk as it arrives."""
    stdin = sys.stdin.buffer
    carry = b""
    while True:
        data = stdin.read(2 * chunk_samples - len(carry))
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
    from main import results as RT
    from main.inference import (InferenceError, check_framing, check_infer_config, load_model,
                                pick_condition_style, read_speech, resolve_checkpoint, results_mode,
                                sample_arrays)
    from models.flame import load_flame_for
    from utils.framing import framing_from_config
    from utils.runtime import pick_device

    logger = logger or log
    live = args.audio == "-"
    if args.stdout_vertices:  # stdout carries the vertex bytes: the console log goes to stderr
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
                h.setStream(sys.stderr)
    fr = framing_from_config(cfg)
    if (fr.sample_rate, fr.fps) != (SR, FPS):
        raise InferenceError(f"streaming runs at {SR} Hz / {FPS} fps; the config has DATA.sample_rate="
                             f"{fr.sample_rate}, DATA.target_fps={fr.fps}")
    if cfg.INFER.output_fps not in ("native", FPS):
        raise InferenceError(f"streaming emits {FPS} fps frames as they are made; INFER.output_fps is "
                             f"{cfg.INFER.output_fps} (use native or {FPS}, or run without --stream)")
    check_infer_config(cfg)
    settings = stream_settings(cfg, args)
    stem = "stdin" if live else os.path.splitext(os.path.basename(args.audio))[0]
    out_dir = args.out or os.path.join("results", "single", stem)
    vert_dir = os.path.join(out_dir, "vertices")
    mode = results_mode(bool(args.overwrite or cfg.INFER.overwrite), bool(args.resume or cfg.INFER.resume))
    if mode == "resume" and not live and RT.is_complete(vert_dir, out_dir):
        logger.info("--resume: %s already holds complete results: nothing to do", out_dir)
        return dict(RT.read_meta(out_dir), out_dir=out_dir)
    files = [os.path.join(out_dir, n) for n in ("motion.npy", "coeffs287.npy", "video.mp4", "stream_stats.json")]
    meta_path = os.path.join(out_dir, RT.META)
    if mode == "new" and ((os.path.isdir(vert_dir) and os.listdir(vert_dir)) or os.path.exists(meta_path)
                          or any(map(os.path.exists, files))):
        raise InferenceError(f"{out_dir} already holds results; rerun with --overwrite to replace them or "
                             f"choose another --out")
    audio = None if live else read_speech(args.audio, SR, logger, FPS, normalise=False)
    ckpt_path = os.path.abspath(resolve_checkpoint(cfg, args.checkpoint))
    device = pick_device(cfg.INFER.device, logger)
    model, styles = load_model(ckpt_path, cfg, device, logger)
    check_framing(model.framing, cfg, ckpt_path)
    style = args.style
    if style is None:
        style = pick_condition_style(cfg, styles)
    elif style not in styles:
        raise InferenceError(f"--style '{style}' is not a trained style; trained styles: {', '.join(styles)}")
    flame = load_flame_for(cfg, None, device=device)

    # the old result's marker goes first, so an interruption never pairs old and new files
    for path in [meta_path] + files:
        if os.path.exists(path):
            os.remove(path)
    if os.path.isdir(vert_dir):
        shutil.rmtree(vert_dir)
    os.makedirs(vert_dir)
    streamer = Streamer(model, styles.index(style), **settings)
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
             "algorithmic_latency_s": streamer.latency_s, "audio_s": audio_s, "frames": int(motion.shape[0]),
             "compute_s": float(sum(compute)), "real_time_factor": float(sum(compute)) / audio_s,
             "max_chunk_compute_s": max(compute), "mean_chunk_compute_s": float(np.mean(compute)),
             "device": str(device), "chunks": chunks}
    with open(os.path.join(out_dir, "stream_stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    for name, arr in sample_arrays(flame, motion, None).items():
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
