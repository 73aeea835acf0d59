"""The data of the browser viewer, small enough to inline: vertex frames as a shared linear basis and
per-frame coefficients, the audio as a 16 kHz 16-bit wav, everything base64.

A face's frames live in FLAME's ~51-dimensional motion space (50 expression offsets, a jaw rotation)
around one identity, so ``N_BASIS`` principal components of all sequences together reproduce them
to a fraction of a millimetre (the error is measured, logged and shown on the page). 60 s at 25 fps,
three sequences: 64 x 15,069 basis floats (3.9 MB) + 4,500 x 64 coefficients (1.2 MB) + 1.9 MB of audio,
instead of 3 x 1,500 x 15,069 floats (271 MB).
"""
from __future__ import annotations

import base64
import io

import numpy as np

from dataset.audio import load_audio
from utils.framing import WAV2VEC2_SAMPLE_RATE

N_BASIS = 64
BASIS_FRAMES = 600  # frames the basis is estimated from (spread over every sequence)


def b64(a: np.ndarray, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def motion_basis(frames: np.ndarray, n_basis: int = N_BASIS) -> tuple[np.ndarray, np.ndarray]:
    """frames (N,3V) float32 -> mean (3V,), basis (k,3V) orthonormal rows, k <= n_basis: the leading
    principal directions of up to ``BASIS_FRAMES`` frames, found from their (n x n) Gram matrix."""
    mean = frames.mean(0)
    pick = np.unique(np.linspace(0, len(frames) - 1, min(BASIS_FRAMES, len(frames))).round().astype(int))
    sample = (frames[pick] - mean).astype(np.float64)
    lam, vec = np.linalg.eigh(sample @ sample.T)
    top = np.argsort(lam)[::-1][:n_basis]
    top = top[lam[top] > max(lam.max(), 1e-30) * 1e-12]
    basis = (vec[:, top].T @ sample) / np.sqrt(lam[top])[:, None]
    return mean.astype(np.float32), basis.astype(np.float32)


def pack_sequences(sequences: list[tuple[str, np.ndarray, float]], faces: np.ndarray) -> dict:
    """[(label, vertices (T,V,3), fps)] and faces (F,3) -> the page's data (JSON-able): mean, basis, faces
    and per-sequence coefficients in base64, plus ``max_error`` (m), the largest vertex error of the packing."""
    flat = np.concatenate([v.reshape(len(v), -1) for _, v, _ in sequences]).astype(np.float32)
    mean, basis = motion_basis(flat)
    coeffs = (flat - mean) @ basis.T
    max_error, start = 0.0, 0
    for i in range(0, len(flat), 256):  # chunks keep the reconstruction's memory small
        r = (flat[i:i + 256] - mean - coeffs[i:i + 256] @ basis).reshape(-1, flat.shape[1] // 3, 3)
        max_error = max(max_error, float(np.sqrt((r ** 2).sum(-1)).max(initial=0.0)))
    seqs = []
    for label, v, fps in sequences:
        seqs.append({"label": label, "fps": float(fps), "n_frames": int(len(v)),
                     "coeffs": b64(coeffs[start:start + len(v)], np.float32)})
        start += len(v)
    return {"n_vertices": int(flat.shape[1] // 3), "n_basis": int(len(basis)), "mean": b64(mean, np.float32),
            "basis": b64(basis, np.float32), "faces": b64(faces, np.uint32), "sequences": seqs,
            "max_error": max_error}


def wav_data_uri(path: str) -> str:
    """An audio file -> ``data:audio/wav;base64,...``: mono, 16 kHz, 16-bit."""
    import soundfile as sf

    audio = load_audio(path, WAV2VEC2_SAMPLE_RATE)
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), WAV2VEC2_SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()
