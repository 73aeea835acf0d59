"""Audio files -> mono float32 at the framing's sample rate, normalised like Wav2Vec2FeatureExtractor,
and cut to a whole number of motion frames.

Read with soundfile (librosa for formats it does not know), mixed to mono, resampled with soxr. A
wav file whose data is shorter than its header says is reported as truncated (``DataError``).
"""
from __future__ import annotations

import os

import numpy as np

from utils.errors import DataError
from utils.framing import AUDIO_NORM_EPS, WAV2VEC2_SAMPLE_RATE


def wav_header_frames(path: str) -> int | None:
    """Frames a RIFF/WAVE file's header promises (size of its 'data' chunk / block size), or None
    when the file is not a plain RIFF wav or the writer left the size open (0 or 0xFFFFFFFF).
    libsndfile quietly shrinks its own frame count to what the file holds, so truncation is only
    visible here."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    if len(fmt) >= 14:
                        block = struct.unpack("<H", fmt[12:14])[0]
                elif cid == b"data":
                    if not block or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block
                else:
                    f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


def load_audio(path: str, sr: int = WAV2VEC2_SAMPLE_RATE) -> np.ndarray:
    """Audio file (any rate, any channel count) -> (N,) float32 mono at ``sr``, not normalised.

    Read with soundfile; formats soundfile does not know (e.g. .m4a) fall back to librosa. A file
    soundfile knows but cannot decode is corrupt and raises at once; a wav holding fewer frames
    than its header says is truncated and raises too (soundfile would return the shorter data).
    """
    import soundfile as sf

    if not os.path.isfile(path):
        raise DataError(f"audio file not found: {path}")
    try:
        x, in_sr = sf.read(path, dtype="float32", always_2d=True)  # (N, C)
        x = x.mean(axis=1)
    except Exception as e:  # soundfile.LibsndfileError (a RuntimeError) for corrupt files
        ext = os.path.splitext(path)[1].lstrip(".").upper()
        if ext in sf.available_formats() or ext in ("WAV", "FLAC", "OGG"):
            raise DataError(f"cannot read audio file {path} (corrupt or not audio): {e}") from None
        try:
            import librosa
            x, in_sr = librosa.load(path, sr=None, mono=True)
        except Exception as e2:
            raise DataError(f"cannot read audio file {path}: soundfile: {e}; librosa: {e2}") from None
    if x.shape[0] == 0:
        raise DataError(f"audio file {path} is empty (0 samples)")
    promised = wav_header_frames(path)
    if promised is not None and x.shape[0] < promised:
        raise DataError(f"audio file {path} is truncated: its header says {promised} frames "
                        f"({promised / in_sr:.3f} s at {in_sr} Hz) but the file holds {x.shape[0]} "
                        f"({x.shape[0] / in_sr:.3f} s); re-export or re-copy it")
    if not np.isfinite(x).all():
        raise DataError(f"audio file {path} has NaN/inf samples")
    if in_sr != sr:
        import soxr
        x = soxr.resample(x, in_sr, sr)
        if x.shape[0] == 0:
            raise DataError(f"audio file {path} is too short to resample ({in_sr} Hz -> {sr} Hz gives 0 samples)")
    return np.ascontiguousarray(x, dtype=np.float32)


def normalize_audio(x: np.ndarray, eps: float = AUDIO_NORM_EPS) -> np.ndarray:
    """(x - mean) / sqrt(var + eps), as Wav2Vec2FeatureExtractor(do_normalize=True); silence -> zeros."""
    x = np.asarray(x, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + eps)).astype(np.float32)


def fit_audio_to_frames(audio: np.ndarray, n_frames: int, samples_per_frame: int) -> np.ndarray:
    """Exactly ``n_frames`` frames of audio: (N,) -> (n_frames * samples_per_frame,), cut, or
    zero-padded at the end (by less than one frame when n_frames = Framing.frames_in(N))."""
    n = int(n_frames) * int(samples_per_frame)
    if audio.shape[0] >= n:
        return audio[:n]
    return np.concatenate([audio, np.zeros(n - audio.shape[0], dtype=audio.dtype)])


def as_float_pcm(pcm) -> np.ndarray:
    """int16 (scaled by 1/32768, as soundfile reads 16-bit files) or float samples -> (N,) float32."""
    x = np.asarray(pcm)
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.ndim != 1:
        raise ValueError(f"pcm must be mono samples (N,), got shape {x.shape}")
    return x.astype(np.float32)
