"""Phones -> continuous-time FLAME motion of the stand-in model (jaw opening + expression 0-12).

Each phone (ARPAbet, stress digits removed; 'SIL' = silence) has a viseme target: jaw openness
(0 closed .. 1 wide open; make_demo_data.sample_motion scales it to radians with 0.22 x the speaker's
gain) and a few stand-in expression coefficients (0 lip opening, 1 rounding/protrusion, 2 spreading,
3 upper-lip raise, 4 lower-lip depress, 5 smile, 6 lip press, 10 brow raise). Coarticulation is
dominance blending (Cohen & Massaro 1993): at time t the pose is the average of the phone targets
weighted by each phone's dominance, which is its strength inside the phone and decays exponentially
outside it. Lips closures (p, b, m), labiodentals (f, v) and rounded glides (w) dominate strongly, so
their neighbours cannot open them; h, k, g, t, d, n, l dominate weakly and take their neighbours'
shape. Diphthongs move between two targets. The blend is smoothed by a Gaussian (SMOOTH_S) and leads
the audio by LEAD_S (articulators move before the sound). Louder vowels open more (loudness 0..1 per
phone, optional), and loud stressed vowels raise the brows a little.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

GRID_HZ = 1000       # signals are evaluated on this grid (ms), then sampled per frame at any fps
SMOOTH_S = 0.01      # Gaussian smoothing after the dominance blend (std, seconds)
LEAD_S = 0.03        # the motion leads the audio by this much
N_EXPR = 50

# phone -> (jaw openness, {expression coefficient: value}, dominance, decay time constant in s)
_V, _C_WEAK, _C_MID, _C_STRONG = (1.0, 0.015), (0.25, 0.009), (0.8, 0.009), (8.0, 0.006)
_TABLE = {
    # vowels: openness drives the jaw and lip opening; rounding -> 1, spreading -> 2
    "AA": (1.00, {0: 1.3, 4: 0.6}, *_V),
    "AE": (0.80, {0: 1.0, 2: 0.6, 4: 0.5}, *_V),
    "AH": (0.60, {0: 0.9, 4: 0.2}, *_V),
    "AO": (0.75, {0: 0.8, 1: 0.9}, *_V),
    "EH": (0.50, {0: 0.6, 2: 0.8}, *_V),
    "ER": (0.35, {0: 0.3, 1: 0.6, 3: 0.3}, *_V),
    "IH": (0.30, {0: 0.3, 2: 1.0}, *_V),
    "IY": (0.20, {2: 1.6, 5: 0.4}, *_V),
    "UH": (0.35, {0: 0.3, 1: 1.2}, *_V),
    "UW": (0.25, {1: 1.9, 6: 0.2}, *_V),
    # bilabials: lips shut and pressed, jaw nearly closed
    "P": (0.02, {6: 1.5, 0: -0.7}, *_C_STRONG),
    "B": (0.02, {6: 1.3, 0: -0.7}, *_C_STRONG),
    "M": (0.03, {6: 1.2, 0: -0.6}, *_C_STRONG),
    # labiodentals: lower lip up to the upper teeth, upper lip slightly raised
    "F": (0.10, {4: -0.9, 3: 0.5, 0: -0.2}, *_C_STRONG),
    "V": (0.10, {4: -0.8, 3: 0.4, 0: -0.2}, *_C_STRONG),
    "W": (0.10, {1: 2.0, 6: 0.3}, 2.0, 0.009),
    "SH": (0.12, {1: 1.2, 3: 0.5}, *_C_MID),
    "ZH": (0.12, {1: 1.1, 3: 0.4}, *_C_MID),
    "CH": (0.12, {1: 1.1, 3: 0.4, 6: 0.3}, *_C_MID),
    "JH": (0.12, {1: 1.0, 3: 0.4, 6: 0.2}, *_C_MID),
    "S": (0.08, {2: 0.8, 3: 0.2}, *_C_MID),
    "Z": (0.08, {2: 0.7, 3: 0.2}, *_C_MID),
    "TH": (0.15, {0: 0.3, 2: 0.3}, *_C_MID),
    "DH": (0.15, {0: 0.3, 2: 0.3}, *_C_WEAK),
    "R": (0.20, {1: 0.9}, *_C_MID),
    "Y": (0.15, {2: 1.0}, *_C_MID),
    "T": (0.18, {0: 0.2, 2: 0.2}, *_C_WEAK),
    "D": (0.18, {0: 0.2, 2: 0.2}, *_C_WEAK),
    "N": (0.18, {0: 0.2, 2: 0.2}, *_C_WEAK),
    "L": (0.22, {0: 0.3}, *_C_WEAK),
    "K": (0.25, {}, *_C_WEAK),
    "G": (0.25, {}, *_C_WEAK),
    "NG": (0.25, {}, *_C_WEAK),
    "HH": (0.30, {}, 0.1, 0.009),
    "SIL": (0.0, {}, 0.6, 0.012),       # mouth at rest
}
# diphthongs: first target for the first half, second for the rest
DIPHTHONGS = {"AW": ("AA", "UH"), "AY": ("AA", "IH"), "EY": ("EH", "IH"), "OW": ("AO", "UH"), "OY": ("AO", "IH")}
VOWELS = frozenset(k for k, v in _TABLE.items() if v[2:] == _V) | frozenset(DIPHTHONGS)


def _target(label: str) -> tuple:
    """(51-vector [jaw, expr0..49], dominance, decay) of one phone."""
    jaw, pattern, dom, tau = _TABLE[label]
    v = np.zeros(1 + N_EXPR)
    v[0] = jaw
    for k, x in pattern.items():
        v[1 + k] = x
    return v, dom, tau


def expand(phones):
    """[(label, t0, t1)] -> the same with diphthongs split in two halves and labels checked."""
    out = []
    for label, t0, t1 in phones:
        if label in DIPHTHONGS:
            mid = 0.5 * (t0 + t1)
            a, b = DIPHTHONGS[label]
            out += [(a, t0, mid), (b, mid, t1)]
        elif label in _TABLE:
            out.append((label, t0, t1))
        else:
            raise ValueError(f"unknown phone {label!r} (expected ARPAbet without stress digits, or SIL)")
    return out


def motion_signals(phones, duration: float, loudness=None):
    """Continuous-time motion of an aligned utterance, before speaker style.

    phones: [(ARPAbet label, start s, end s)], silence as 'SIL' (gaps between phones are silence too);
    loudness: None or one value in 0..1 per phone (e.g. its RMS relative to the utterance's loudest).
    Returns (tg (G,) seconds, jaw openness (G,), expr (G, 50)) for make_demo_data.sample_motion, which
    samples any fps by linear interpolation: 20 and 25 fps clips are samplings of the same signals.
    """
    loud = np.ones(len(phones)) if loudness is None else np.clip(np.asarray(loudness, float), 0, 1)
    items, t_end = [], -1.0             # rest (silence) before the first phone and after the last
    for (label, t0, t1), ld in zip(phones, loud):
        if t0 > t_end + 1e-6:           # a gap is silence
            items.append(("SIL", t_end, t0, 0.0, False))
        t_end = max(t_end, t1)
        for sub in expand([(label, t0, t1)]):
            items.append((*sub, ld, label in VOWELS))
    items.append(("SIL", t_end, max(duration, t_end) + 1.0, 0.0, False))
    n = int(np.ceil((duration + 0.3) * GRID_HZ))
    tg = np.arange(n) / GRID_HZ
    num = np.zeros((n, 1 + N_EXPR))
    den = np.full(n, 1e-6)
    for label, t0, t1, ld, vowel in items:
        target, dom, tau = _target(label)
        if vowel:                       # louder vowels open more, loud ones raise the brows
            target = target * (0.6 + 0.4 * ld)
            target[1 + 10] += 0.5 * max(ld - 0.8, 0) / 0.2
        dist = np.maximum(np.maximum(t0 - tg, tg - t1), 0.0)
        w = dom * np.exp(-dist / tau)
        num += w[:, None] * target
        den += w
    pose = num / den[:, None]
    pose = gaussian_filter1d(pose, SMOOTH_S * GRID_HZ, axis=0, mode="nearest", truncate=4.0)
    return tg - LEAD_S, pose[:, 0], pose[:, 1:]
