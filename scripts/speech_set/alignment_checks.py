"""Checks that reject forced alignments (main/evaluation/align.py) that do not fit the audio, for the held-out
speech set: implausible phone lengths, vowels on silence, loud audio labelled silence, speaking rate.
"""
from __future__ import annotations

import numpy as np

from main.evaluation.align import FRAME_S
from scripts.speech_set.visemes import VOWELS
from utils.framing import WAV2VEC2_SAMPLE_RATE


def frame_db(audio: np.ndarray, sr: int = WAV2VEC2_SAMPLE_RATE) -> np.ndarray:
    """Energy (dB) of each 10 ms frame."""
    hop = int(sr * FRAME_S)
    n = len(audio) // hop
    fr = audio[:n * hop].reshape(n, hop).astype(np.float64)
    return 10 * np.log10((fr ** 2).mean(1) + 1e-10)


MAX_VOWEL_S, MAX_CONSONANT_S = 0.6, 0.35


def check_alignment(phones: list, audio: np.ndarray) -> tuple:
    """-> (reason the alignment looks wrong or None, loudness 0..1 per phone).

    Rejects: a speech phone longer than plausible (a vowel > 0.6 s, a consonant > 0.35 s: the aligner
    stretched it over a pause or over words missing from the transcript), vowels lying on silence
    (> 25% of their frames 35 dB under the utterance's loud level), loud audio labelled silence
    (> 15% of the loud frames: speech the transcript does not have), and speaking rates outside
    4-25 phones per second (utterances of 6 phones or more)."""
    db = frame_db(audio)
    peak = np.percentile(db, 95)
    label = np.array(["SIL"] * len(db), dtype=object)
    loud = np.zeros(len(phones))
    speech_s, n_speech, vowel_frames, vowel_quiet = 0.0, 0, 0, 0
    reason = None
    for k, (p, t0, t1) in enumerate(phones):
        a, b = int(round(t0 / FRAME_S)), max(int(round(t1 / FRAME_S)), int(round(t0 / FRAME_S)) + 1)
        seg = db[a:b]
        loud[k] = float(np.clip((seg.mean() - (peak - 30)) / 30, 0, 1)) if len(seg) else 0.0
        if p == "SIL":
            continue
        label[a:b] = p
        speech_s += t1 - t0
        n_speech += 1
        limit = MAX_VOWEL_S if p in VOWELS else MAX_CONSONANT_S
        if t1 - t0 > limit and reason is None:
            reason = f"phone {p} of {t1 - t0:.2f} s at {t0:.2f} s"
        if p in VOWELS:
            vowel_frames += len(seg)
            vowel_quiet += int((seg < peak - 35).sum())
    if reason:
        return reason, loud
    if vowel_frames and vowel_quiet / vowel_frames > 0.25:
        return f"{vowel_quiet / vowel_frames:.0%} of vowel frames are silent", loud
    loud_frames = db > peak - 20
    unaligned = float((label[loud_frames] == "SIL").mean()) if loud_frames.any() else 1.0
    if unaligned > 0.15:
        return f"{unaligned:.0%} of the loud frames are labelled silence", loud
    rate = n_speech / max(speech_s, 1e-6)
    if n_speech >= 6 and not 4 <= rate <= 25:           # (single words are often spoken slowly)
        return f"{rate:.1f} phones/s", loud
    return None, loud
