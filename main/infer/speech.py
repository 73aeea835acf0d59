"""Speech in: an audio file or raw PCM as it streams in -> mono float samples at the model's rate, and
the one rule for input that will not animate well (silent, clipped, noise), for files and streams."""
from __future__ import annotations

import logging
import os
import sys

import numpy as np

from dataset.audio import load_audio, normalize_audio
from utils.errors import AudioError, DataError
from utils.framing import AUDIO_NORM_EPS, DEFAULT_FPS, WAV2VEC2_SAMPLE_RATE

# Raw RMS below this (-80 dBFS) counts as silence. normalize_audio maps a raw RMS s to
# s / sqrt(s^2 + eps), so audio that arrives normalised is judged by the image of the same threshold.
SILENT_RMS = 1e-4
SILENT_NORMALISED_STD = SILENT_RMS / np.sqrt(SILENT_RMS ** 2 + AUDIO_NORM_EPS)

# Input that will not animate well, warned about (not refused: it may be what the user means):
# a share of samples at full scale above CLIPPED_SHARE is heavily clipped (distorted, often a gain set
# too high); an average power spectrum as flat as noise (spectral flatness above NOISE_FLATNESS; white
# noise is near 1, speech well below 0.1, its energy sits in harmonics and formants) is not speech.
FULL_SCALE = 0.99
CLIPPED_SHARE = 0.01
NOISE_FLATNESS = 0.5

log = logging.getLogger("inference")


class AudioCheck:
    """Running statistics of raw audio (as read or as it streams in; memory does not grow): RMS, the
    share of clipped samples and the average power spectrum. ``warnings()``: what offline and streaming
    mode warn about, one rule for both."""

    FRAME = 512

    def __init__(self):
        self.n, self.sum_sq, self.clipped = 0, 0.0, 0
        self.power, self.frames = np.zeros(self.FRAME // 2 + 1), 0
        self._rest = np.zeros(0, np.float32)
        self._window = np.hanning(self.FRAME)

    def add(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        self.n += x.size
        self.sum_sq += float(np.square(x, dtype=np.float64).sum())
        self.clipped += int(np.count_nonzero(np.abs(x) >= FULL_SCALE))
        x = np.concatenate([self._rest, x])
        k = x.size // self.FRAME
        if k:
            frames = x[:k * self.FRAME].reshape(k, self.FRAME) * self._window
            self.power += (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(0)
            self.frames += k
        self._rest = x[k * self.FRAME:]

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.sum_sq / max(self.n, 1)))

    def warnings(self) -> list[str]:
        """Each as the end of a sentence about the input ("... is silent (...)")."""
        if self.n == 0:
            return []
        if self.rms < SILENT_RMS:
            return [f"is silent (RMS {self.rms:.2g} < {SILENT_RMS:.0e}): the face will barely move"]
        out = []
        share = self.clipped / self.n
        if share > CLIPPED_SHARE:
            out.append(f"is heavily clipped ({100 * share:.1f}% of samples at full scale): distorted speech "
                       f"animates poorly; lower the input gain")
        if self.frames >= 8:
            p = self.power[1:] + 1e-20  # without DC
            flatness = float(np.exp(np.mean(np.log(p))) / np.mean(p))
            if flatness > NOISE_FLATNESS:
                out.append(f"sounds like noise, not speech (spectral flatness {flatness:.2f} > {NOISE_FLATNESS}; "
                           f"speech is below 0.1): check the input device and format")
        return out


def read_speech(path: str, sr: int = WAV2VEC2_SAMPLE_RATE, logger: logging.Logger | None = None,
                fps: float = DEFAULT_FPS, normalise: bool = True) -> np.ndarray:
    """Audio file of any rate / channel count -> (N,) float32 mono at ``sr``, normalised (raw with
    ``normalise=False``: streaming normalises as the audio arrives).

    Defined behaviour for bad input: missing, empty (0 bytes or 0 samples), corrupt, truncated, or
    shorter than one motion frame at ``fps`` (40 ms at 25 fps) -> AudioError naming the file (and
    its duration); all-silent audio works (normalisation gives zeros, not NaN) with a warning.
    """
    logger = logger or log
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    if os.path.getsize(path) == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes); expected a wav/flac/ogg/mp3 with speech")
    try:
        raw = load_audio(path, sr)
    except DataError as e:
        raise AudioError(str(e)) from None
    seconds = raw.shape[0] / sr
    if seconds < 1.0 / fps:
        raise AudioError(f"audio file {path} is {seconds * 1000:.1f} ms long; expected at least "
                         f"{1000 / fps:.0f} ms (one motion frame at {fps} fps)")
    check = AudioCheck()
    check.add(raw)
    for warning in check.warnings():
        logger.warning("audio file %s %s", path, warning)
    if not normalise:
        return raw.astype(np.float32)
    audio = normalize_audio(raw)
    if not np.isfinite(audio).all():  # normalize_audio's eps should make this impossible; never pass NaN on
        raise AudioError(f"audio file {path}: normalisation produced NaN/inf (RMS {check.rms:.3g})")
    return audio


def is_silent(normalised: np.ndarray) -> bool:
    """Audio that was normalised before it was checked (a test-split item): silent by ``SILENT_RMS``."""
    return float(np.std(normalised)) < SILENT_NORMALISED_STD


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


def pcm_chunks_from_stdin(chunk_samples: int):
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
