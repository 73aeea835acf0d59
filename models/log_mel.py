"""Log-mel spectrogram in plain torch: a fixed spectral front end that keeps what a phone is.

Frame j covers samples [hop j, hop j + win) (no centring, no padding), so like a strided convolution
its frames depend on their own window only: a clip gives the same frames alone, padded in a batch,
cut into chunks at multiples of the hop, or streamed. The filterbank is Slaney's (librosa's default
``htk=False, norm="slaney"``), computed here so that loading a model does not import librosa.

    mel = LogMel(n_mels=40, win=400, hop=320)
    x = mel(audio (B,N))                  # (B, n_mels, F), F = (N - win) // hop + 1
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from utils.framing import WAV2VEC2_SAMPLE_RATE

LOG_FLOOR = 1e-6  # the power floor: -60 dB under a full-scale sine in unit-variance audio


def _hz_to_mel(f):
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equal area (Slaney normalisation)."""
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower = (bins[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - bins[None]) / (edges[2:] - edges[1:-1])[:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.astype(np.float32)


class LogMel(nn.Module):
    """(B,N) audio -> (B, n_mels, F) natural-log mel power, one frame per ``hop`` samples."""

    def __init__(self, n_mels: int = 40, win: int = 400, hop: int = 320, sample_rate: int = WAV2VEC2_SAMPLE_RATE,
                 fmin: float = 60.0, fmax: float | None = None):
        super().__init__()
        self.n_mels, self.win, self.hop = int(n_mels), int(win), int(hop)
        self.n_fft = 1 << (self.win - 1).bit_length()  # next power of two
        fmax = sample_rate / 2 if fmax is None else float(fmax)
        # buffers, not parameters: nothing here learns; not saved either (they follow from the arguments)
        self.register_buffer("window", torch.hann_window(self.win, periodic=True), persistent=False)
        self.register_buffer("filters", torch.from_numpy(
            mel_filterbank(sample_rate, self.n_fft, self.n_mels, fmin, fmax)), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.shape[-1] < self.win:
            raise ValueError(f"audio of {audio.shape[-1]} samples is shorter than one {self.win}-sample window")
        frames = audio.unfold(-1, self.win, self.hop) * self.window.to(audio.dtype)  # (B,F,win)
        power = torch.fft.rfft(frames.float(), n=self.n_fft).abs().pow(2)            # (B,F,n_fft/2+1)
        mel = power @ self.filters.T                                                 # (B,F,n_mels)
        return torch.log(mel + LOG_FLOOR).transpose(-1, -2).to(audio.dtype)


# ---- the log-mel front end of a wav2vec2 encoder ---------------------------------------------------
FRONTENDS = ("cnn", "logmel")
N_MELS = 80
# log-mel of unit-variance speech spans about -14 (silence) to +5 (loud vowels) per band: centred and
# scaled to a few units so the projection starts in the range it would with the CNN's features
MEL_CENTRE, MEL_SCALE = -5.0, 5.0


class SpectralLayer(nn.Module):
    """Stands in for the wav2vec2 CNN's conv layers: (B,1,N) audio -> (B, n_mels, F) scaled log-mel,
    one frame per ``hop`` samples from a ``win``-sample window (the CNN's stride and receptive field)."""

    def __init__(self, n_mels: int, win: int, hop: int, sample_rate: int = WAV2VEC2_SAMPLE_RATE):
        super().__init__()
        self.mel = LogMel(n_mels=n_mels, win=win, hop=hop, sample_rate=sample_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.mel(x[:, 0]) - MEL_CENTRE) / MEL_SCALE


def frontend_config(overrides: dict, frontend: str, sample_rate: int = WAV2VEC2_SAMPLE_RATE) -> dict:
    """Wav2Vec2Config kwargs for ``frontend``: unchanged for the CNN; for ``logmel`` one 'layer' of
    25 ms windows every 20 ms, which gives the encoder the CNN's geometry (400-sample receptive field,
    320-sample stride at 16 kHz) and per-window features (no statistics over the clip, like the
    layer-norm CNN). The name goes into the config, so a checkpoint rebuilds the same encoder."""
    if frontend not in FRONTENDS:
        raise ValueError(f"audio front end {frontend!r}; expected one of {', '.join(FRONTENDS)}")
    if frontend == "cnn":
        return dict(overrides)
    n_mels = int(overrides.get("num_mel_bins", N_MELS))
    return {**overrides, "audio_frontend": "logmel", "num_mel_bins": n_mels, "conv_dim": [n_mels],
            "conv_kernel": [int(0.025 * sample_rate)], "conv_stride": [int(0.02 * sample_rate)],
            "feat_extract_norm": "layer"}


def install_frontend(model) -> None:
    """Put the log-mel front end into a wav2vec2 model (HF's or models/wav2vec2_runtime.py's) built
    from a ``frontend_config``: the conv layers become one SpectralLayer and the projection's layer
    norm goes, since normalising each frame over its bands would remove its loudness. No-op for the CNN."""
    c = model.config
    if getattr(c, "audio_frontend", "cnn") != "logmel":
        return
    model.feature_extractor.conv_layers = nn.ModuleList(
        [SpectralLayer(c.num_mel_bins, c.conv_kernel[0], c.conv_stride[0])])
    model.feature_projection.layer_norm = nn.Identity()
