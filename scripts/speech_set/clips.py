"""Aligned prompts -> clips of 2-8 s: long prompts cut at pauses, short ones joined with short pauses;
tempo/pitch variants by resampling (tape-speed: both change by the same factor, as do the phone times)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.framing import WAV2VEC2_SAMPLE_RATE

SR = WAV2VEC2_SAMPLE_RATE
MAX_CLIP_S = 8.0
MIN_CLIP_S = 2.0
MAX_EDGE_SIL_S = 0.15      # silence kept at each end of a cut-out segment


@dataclass
class Segment:
    uid: str               # the prompt it comes from (splits are drawn per prompt)
    audio: np.ndarray      # 16 kHz float32
    phones: list           # [(phone, start s, end s)] relative to the segment's start
    loud: np.ndarray       # loudness 0..1 per phone


def _cut(audio, phones, loud, t0, t1, uid):
    """The part [t0, t1) of an aligned prompt, its phones clipped and shifted."""
    ph, ld = [], []
    for (p, a, b), x in zip(phones, loud):
        a, b = max(a, t0), min(b, t1)
        if b > a + 1e-9:
            ph.append((p, a - t0, b - t0))
            ld.append(x)
    return Segment(uid, audio[int(round(t0 * SR)):int(round(t1 * SR))], ph, np.asarray(ld))


def segments(uid, audio, phones, loud, max_s=MAX_CLIP_S - 0.6):
    """One aligned prompt -> segments of at most max_s seconds, cut in the middle of pauses (SIL of at
    least 0.12 s) and trimmed to MAX_EDGE_SIL_S of silence at both ends; [] when it cannot be cut."""
    speech = [(a, b) for p, a, b in phones if p != "SIL"]
    start = max(0.0, speech[0][0] - MAX_EDGE_SIL_S)
    end = min(len(audio) / SR, speech[-1][1] + MAX_EDGE_SIL_S)
    cuts = [0.5 * (a + b) for p, a, b in phones if p == "SIL" and b - a >= 0.12 and start < a and b < end]
    out, t0 = [], start
    while end - t0 > max_s:
        fitting = [c for c in cuts if t0 + 0.5 < c <= t0 + max_s]
        if not fitting:
            return []
        c = fitting[-1]
        out.append((t0, c))
        t0 = c
    out.append((t0, end))
    segs = []
    for a, b in out:            # trim the silence a cut leaves at the segment's ends
        inner = [(x, y) for p, x, y in phones if p != "SIL" and x < b and y > a]
        a2, b2 = max(a, inner[0][0] - MAX_EDGE_SIL_S), min(b, inner[-1][1] + MAX_EDGE_SIL_S)
        segs.append(_cut(audio, phones, loud, a2, b2, uid))
    return segs


def join(segs, r: np.random.Generator):
    """Segments -> one clip (audio, phones, loudness) with pauses of 0.2-0.5 s between them and 0.1-0.3 s
    at the ends; the inserted silence has a faint noise floor like the recordings'."""
    parts, phones, loud = [np.zeros(int(round(r.uniform(0.1, 0.3) * SR)), np.float32)], [], []
    for i, s in enumerate(segs):
        if i:
            parts.append(np.zeros(int(round(r.uniform(0.2, 0.5) * SR)), np.float32))
        t = sum(len(p) for p in parts) / SR
        phones += [(p, a + t, b + t) for p, a, b in s.phones]
        loud += list(s.loud)
        parts.append(s.audio.astype(np.float32))
    parts.append(np.zeros(int(round(r.uniform(0.1, 0.3) * SR)), np.float32))
    audio = np.concatenate(parts)
    audio = audio + r.normal(0, 2e-4, len(audio)).astype(np.float32)
    return audio, phones, np.asarray(loud)


def group(segs, r: np.random.Generator):
    """Segments in order -> lists of segments whose joined length is 2-8 s (a random target per clip)."""
    out, cur, cur_s = [], [], 0.0
    target = r.uniform(2.5, 7.5)
    for s in segs:
        d = len(s.audio) / SR
        if cur and cur_s + 0.5 + d + 0.6 > MAX_CLIP_S:
            out.append(cur)
            cur, cur_s, target = [], 0.0, r.uniform(2.5, 7.5)
        cur.append(s)
        cur_s += d + (0.35 if len(cur) > 1 else 0.0)
        if cur_s + 0.4 >= target:
            out.append(cur)
            cur, cur_s, target = [], 0.0, r.uniform(2.5, 7.5)
    if cur:
        if cur_s + 0.4 >= MIN_CLIP_S:
            out.append(cur)
        elif out and sum(len(s.audio) for s in out[-1]) / SR + cur_s + 1.0 <= MAX_CLIP_S:
            out[-1] += cur
    return out


def speed(audio, phones, factor: float):
    """Play audio `factor` times faster (pitch up by the same factor), phone times scaled to match."""
    if abs(factor - 1.0) < 1e-9:
        return audio, phones
    import soxr
    y = soxr.resample(audio.astype(np.float32), SR * factor, SR, quality="HQ")
    return y.astype(np.float32), [(p, a / factor, b / factor) for p, a, b in phones]


def to_rate(audio, sr: int, stereo: bool):
    """16 kHz mono -> sr (optionally stereo with channel gains 1 and 0.8), as some real files are."""
    if sr != SR:
        import soxr
        audio = soxr.resample(audio.astype(np.float32), SR, sr, quality="HQ")
    return np.stack([audio, 0.8 * audio], 1) if stereo else audio
