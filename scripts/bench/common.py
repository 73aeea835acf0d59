"""What every benchmark section shares: timing side by side, the model config, speech-like audio."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from utils.config import load_config
from utils.framing import DEFAULT_FRAMING

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR, FPS, HOP = DEFAULT_FRAMING.sample_rate, DEFAULT_FRAMING.fps, DEFAULT_FRAMING.samples_per_frame
TINY = {"conv_dim": [64] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "feat_extract_norm": "layer", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=2, warmup=1):
    """Best wall time of ``repeat`` calls after ``warmup`` calls (seconds)."""
    return timed_in_turn([fn], device, repeat, warmup)[0]


def timed_in_turn(fns, device, repeat=2, warmup=1):
    """Best wall time of each function, calling them in turn ``repeat`` times, so that load from
    other jobs on a shared machine hits the compared methods alike (seconds, one per function)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def model_config(encoder: str, flame_dir: str):
    overrides = ["MODEL.audio_encoder_pretrained=false", f"DATA.data_root={flame_dir}",
                 "FLAME.model_path=standin_generic_model.pkl", "FLAME.masks_path=standin_FLAME_masks.pkl"]
    cfg = load_config(None, overrides)
    if encoder == "tiny":
        cfg.MODEL.audio_encoder_config = dict(TINY)
    return cfg


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Audio with speech-like amplitude modulation (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (env * np.sin(2 * np.pi * 150 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def legacy_padded_forward(enc, audio, n_frames, audio_mask=None):
    """The audio encoder's training path before per-clip encoding (--compare_old_padding only): one
    CNN pass over the padded batch and, with group norm, no transformer mask, so a clip's features
    depended on its batch-mates. Kept here to measure what exactness costs."""
    B, N = audio.shape
    n_samples = audio_mask.long().sum(1) if audio_mask is not None else torch.full((B,), N, device=audio.device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not enc.cnn_frozen):
        feats = enc.model.feature_extractor(audio)
    x = enc.model.feature_projection(enc.resample(feats, n_frames, enc.cnn_lengths(n_samples).clamp(min=1)))[0]
    return enc.model.encoder(x)[0]


def table(rows, cols):
    lines = ["  ".join(f"{c:>22}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{r[c]:>22.4g}" if isinstance(r[c], float) else f"{str(r[c]):>22}" for c in cols))
    return "\n".join(lines)
