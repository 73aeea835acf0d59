"""The wav2vec2 audio encoder run on audio as it arrives (the state of a stream's encoder).

    enc = StreamingEncoder(model.audio_encoder, samples_per_frame=640, left_frames=25)
    enc.receive(x)                      # raw samples (n,) float32, in order
    enc.advance(n)                      # the running audio statistics now cover samples < n
    ready = enc.encode_to(n_audio)      # CNN + projection of audio < n_audio; frames ready to encode
    h = enc.hidden(start, end)          # (1,end-start,H) transformer output of frames [start, end)
    enc.trim(n_emitted)                 # drop what later calls cannot need

- Normalisation: offline, the whole utterance is normalised to zero mean and unit variance, which needs
  the future. Here the mean and variance are running estimates over all samples received so far (the
  estimate at a call normalises the samples that are new to the CNN). Long streams converge to the
  offline statistics; the first second is where they differ (measured in docs/BENCHMARKS.md, "Streaming").
- CNN: the convolutions are local, so CNN features of past audio are cached and the CNN runs only on
  the new samples plus its receptive-field overlap. wav2vec2-base's first layer is not local: its
  GroupNorm normalises each channel over the whole input; it uses running per-channel statistics.
  These are kept over the first convolution of the *raw* audio: GroupNorm removes each channel's
  offset and scale, so the utterance's mean and variance cancel out of it (the variance only enters
  through GroupNorm's eps, scaled here by the running variance). Features computed at different times
  then share one unit, instead of each chunk being normalised with the audio estimate of its time
  (this lowers the deviation from offline: docs/BENCHMARKS.md, "Streaming"). With a layer-norm CNN the
  audio is normalised with the running estimates.
- Resampling to frames and the feature projection are local per frame: cached as well.
- The transformer (bidirectional) is re-run on a sliding window: ``left_frames`` of frames before
  ``start`` (None: all), then the frames up to the last one ready.

An encoder trained for streaming (``encoder.block`` > 0, models/block_encoder.py) needs none of the
estimates above: each sample is normalised on arrival with the statistics of the samples up to it, as
offline, and the transformer runs block after block with its keys and values cached (``BlockCache``):
its output equals the offline one, and each frame is encoded once.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from models.block_encoder import BlockCache, NormState, causal_normalise
from models.conv0_moments import Conv0Moments
from models.wav2vec import AudioEncoder
from utils.errors import ConfigError
from utils.framing import AUDIO_NORM_EPS


class RunningStats:
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


class StreamingEncoder:
    """An AudioEncoder's features computed incrementally (see the module docstring). Samples are global
    indices from the start of the stream; frame i covers samples [spf i, spf (i+1))."""

    def __init__(self, encoder: AudioEncoder, samples_per_frame: int, left_frames: int | None):
        hop = int(samples_per_frame)
        if encoder.samples_per_frame != hop or hop % encoder.stride:
            raise ValueError(f"streaming needs {hop} samples per frame, a multiple of the CNN stride "
                             f"({encoder.stride})")
        self.enc, self.hop, self.left = encoder, hop, left_frames
        self.fpf = hop // encoder.stride                                  # CNN features per frame (2)
        self.group_norm = encoder.group_norm
        self.layer0 = encoder.model.feature_extractor.conv_layers[0]
        self.k0, self.s0 = encoder.kernels[0], encoder.strides[0]
        self.device = next(encoder.parameters()).device
        self.audio_stats, self.conv0_stats = RunningStats(), Conv0Moments(self.k0, self.s0)
        self.raw = np.zeros(0, np.float32)  # received samples from global index raw_start on
        self.raw_start = 0
        self.n_done = 0         # samples in audio_stats
        self.n_conv0 = 0        # conv0 positions in conv0_stats
        self.cnn_feats = None   # (C, F) CNN features from global index cnn_start
        self.cnn_start = 0
        self.n_feat = 0         # CNN features computed
        self.proj = None        # (n, H) projected frames from global frame proj_start
        self.proj_start = 0
        self.n_proj = 0         # frames projected
        # trained for streaming: raw holds causally normalised samples, the transformer runs block by block
        self.norm = NormState() if encoder.block else None
        self.blocks = BlockCache(encoder.model, encoder.block, encoder.left, encoder.lookahead) \
            if encoder.block else None
        self.n_pushed = 0       # projected frames given to the block cache
        self.gn_state = NormState()  # ... and the first CNN layer's causal GroupNorm sums

    def receive(self, x: np.ndarray):
        if self.norm is not None:
            self.audio_stats.add(x)  # the utterance's mean: the padding at its end (pad_to)
            x = causal_normalise(torch.from_numpy(np.asarray(x, np.float32))[None], self.norm)[0].numpy()
        self.raw = np.concatenate([self.raw, x])

    @torch.no_grad()
    def prime(self, x: np.ndarray):
        """Seed the running statistics with audio recorded beforehand; it is not encoded."""
        if self.norm is not None:
            raise ConfigError(f"priming (--prime_audio, Streamer.prime): this model was trained for streaming "
                              f"(MODEL.encoder_block_frames={self.enc.block}); it starts cold, as in training, and "
                              f"priming would only make it differ from its offline output: leave it out")
        self.audio_stats.add(x)
        if self.group_norm:
            self.conv0_stats.add(torch.from_numpy(x))

    def continue_statistics(self, other: "StreamingEncoder"):
        """Start from the running statistics of an earlier stream (the same speaker and microphone); a
        model trained for streaming starts every utterance cold, as in training."""
        if self.norm is not None:
            return
        self.audio_stats, self.conv0_stats = copy.deepcopy(other.audio_stats), copy.deepcopy(other.conv0_stats)

    def advance(self, n: int):
        if self.norm is not None:  # its statistics are taken on arrival (receive)
            self.n_done = n
            return
        self.audio_stats.add(self.raw[self.n_done - self.raw_start:n - self.raw_start])
        self.n_done = n

    def pad_to(self, n_audio: int):
        """The end of the stream: zero padding (in normalised units: the mean in raw units) up to n_audio."""
        end = self.raw_start + self.raw.shape[0]
        if n_audio > end:
            pad = np.full(n_audio - end, self.audio_stats.mean_var()[0], np.float32)
            if self.norm is not None:
                pad = causal_normalise(torch.from_numpy(pad)[None], self.norm)[0].numpy()
            self.raw = np.concatenate([self.raw, pad])

    @torch.no_grad()
    def encode_to(self, n_audio: int, final: bool = False) -> int:
        """CNN features and projected frames of all audio < n_audio, computing only the new ones ->
        the number of frames ready for ``hidden``. ``final``: n_audio is the end of the stream, a whole
        number of frames, all of them ready."""
        self._update_cnn(n_audio)
        if final:
            n_ready = n_audio // self.hop
            n_valid = int(self.enc.cnn_lengths(torch.tensor(n_audio))) if n_ready else 0
        else:
            n_valid, n_ready = self.n_feat, self.n_feat // self.fpf  # frames with both features
        self._project(n_ready, n_valid)
        return n_ready

    @torch.no_grad()
    def hidden(self, start: int, end: int, final: bool = False) -> torch.Tensor:
        """Transformer output of frames [start, end) -> (1,end-start,H), run over [start - left context,
        last frame ready); a block-causal encoder's frames are asked for once, in order."""
        if self.blocks is not None:
            if start != self.blocks.n_out:
                raise ValueError(f"a block-causal stream encodes its frames once, in order: frame {start} asked, "
                                 f"{self.blocks.n_out} next")
            self.blocks.push(self.proj[self.n_pushed - self.proj_start:self.n_proj - self.proj_start][None])
            self.n_pushed = self.n_proj
            return self.blocks.pop(end - start, final)
        a = 0 if self.left is None else max(0, start - self.left)
        window = self.proj[a - self.proj_start:self.n_proj - self.proj_start]
        return self.enc.model.encoder(window[None])[0][:, start - a:end - a]

    def trim(self, n_emitted: int):
        """Drop what no later call needs, so memory stays bounded (unless the left context is None)."""
        keep_feat = self.fpf * self.n_proj                             # next frame's first feature
        if self.cnn_feats is not None and keep_feat > self.cnn_start:
            self.cnn_feats = self.cnn_feats[:, keep_feat - self.cnn_start:]
            self.cnn_start = keep_feat
        if (self.left is not None or self.blocks is not None) and self.proj is not None:
            keep = max(0, n_emitted - self.left) if self.blocks is None else self.n_pushed
            if keep > self.proj_start:
                self.proj = self.proj[keep - self.proj_start:]
                self.proj_start = keep
        keep_raw = min(self.n_feat * self.enc.stride, self.n_conv0 * self.s0 if self.group_norm and self.norm is None
                       else 1 << 62,
                       self.n_done)
        if keep_raw > self.raw_start:
            self.raw = self.raw[keep_raw - self.raw_start:]
            self.raw_start = keep_raw

    def _cnn_input(self, a: int, b: int) -> torch.Tensor:
        """Samples [a, b) as the CNN takes them -> (1,1,b-a): raw with a group-norm CNN (see the module
        docstring), else normalised with the current running statistics."""
        x = self.raw[a - self.raw_start:b - self.raw_start]
        if not self.group_norm and self.norm is None:
            mean, var = self.audio_stats.mean_var()
            x = (x - np.float32(mean)) / np.float32(np.sqrt(var + AUDIO_NORM_EPS))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(self.device)

    def _update_cnn(self, n_audio: int):
        """CNN features for all audio < n_audio, computing only the new ones."""
        enc = self.enc
        F = int(enc.cnn_lengths(torch.tensor(n_audio)).item()) if n_audio >= enc.receptive_field else 0
        if self.group_norm and self.norm is None:
            # running GroupNorm statistics over the first conv layer's outputs of all audio so far
            P = (n_audio - self.k0) // self.s0 + 1 if n_audio >= self.k0 else 0
            if P > self.n_conv0:
                self.conv0_stats.add(self._cnn_input(self.n_conv0 * self.s0, (P - 1) * self.s0 + self.k0))
                self.n_conv0 = P
        if F <= self.n_feat:
            return
        a, b = self.n_feat * enc.stride, (F - 1) * enc.stride + enc.receptive_field
        if self.norm is not None:  # block-causal: the same computation as offline
            new = enc.cnn_causal(self._cnn_input(a, b), self.gn_state, F - self.n_feat)[0]
        else:
            stats = eps = None
            if self.group_norm:  # layer 0's GroupNorm with the running statistics of all audio so far
                stats = self.conv0_stats.mean_var(self.layer0.conv)
                # offline, eps is added to the variance of normalised audio's conv outputs: in raw units
                # that is eps times the audio's variance
                eps = self.layer0.layer_norm.eps * (self.audio_stats.mean_var()[1] + AUDIO_NORM_EPS)
            new = enc.cnn_chunk(self._cnn_input(a, b), stats, eps)[0]  # (C, F - n_feat)
        self.cnn_feats = new if self.cnn_feats is None else torch.cat([self.cnn_feats, new], 1)
        self.n_feat = F

    def _project(self, n_ready: int, n_valid: int):
        """Resample + feature projection for frames n_proj..n_ready-1 (local per frame, so cached)."""
        if n_ready <= self.n_proj:
            return
        f0 = self.fpf * self.n_proj - self.cnn_start                   # frame n_proj reads from feature 2 n_proj
        x = self.enc.resample(self.cnn_feats[None, :, f0:], n_ready - self.n_proj,
                              torch.tensor([n_valid - self.fpf * self.n_proj], device=self.device))
        x = self.enc.model.feature_projection(x)[0][0]                  # (n,H)
        self.proj = x if self.proj is None else torch.cat([self.proj, x])
        self.n_proj = n_ready
