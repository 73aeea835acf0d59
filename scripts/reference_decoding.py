"""The original FaceFormer decoding loop, kept as the reference the KV-cached ``FaceFormer.generate``
is checked against (tests/test_model.py) and timed against (scripts/benchmark.py train / decode)."""
from __future__ import annotations

import torch


def generate_naive_from_features(model, feats, style):
    """At step t re-run the decoder over the whole prefix 0..t and keep the last output: O(T^2)
    decoder work. feats (B,T,d), style (B,) -> motion (B,T,51); start input motion[-1] = 0 as in
    ``generate``."""
    B, T, _ = feats.shape
    prev = feats.new_zeros(B, 1, model.motion_dim)
    for t in range(T):
        out = model.decode(feats[:, :t + 1], style, prev)
        prev = torch.cat([prev, out[:, -1:]], 1)
    return prev[:, 1:]


def generate_naive(model, audio, style, n_frames: int, audio_mask=None):
    """``model.generate`` the original way: audio (B,N), style (B,) -> motion (B,T,51)."""
    return generate_naive_from_features(model, model.encode(audio, n_frames, audio_mask), style)
