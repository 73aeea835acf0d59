"""Lip-sync checks without ground truth: does the mouth follow the speech it was made from?

Scores any results tree made from audio (test-split inference, single-audio ``results/single/<name>/``,
streaming output): every folder of ``{i}.npy`` (V,3) frames whose meta.json names its audio. Signals,
per motion frame (frame i at time i / fps):

- speech envelope: RMS of the audio in a one-frame window centred on the frame, in dB; the clip's loud
  level is the 95th percentile of it. For the correlation the envelope is floored ``ENV_FLOOR_DB`` under
  the loud level, so noise in pauses does not count.
- lip aperture: mean height of the upper-lip vertices minus that of the lower-lip vertices. Both are
  taken from the FLAME 'lips' mask (models/flame_regions.py) on the clip's mean frame: the lip vertices
  of the central half of the mouth's width, split at the mouth centre (midpoint of the lips' height).
  Mouth opening = aperture minus the clip's most closed level (its 5th percentile).

Checks (per clip, and pooled over the tree):
- ``lag_ms``, ``corr``: the delay maximising the Pearson correlation between envelope and aperture,
  searched over +-``MAX_LAG_S`` (parabolic refinement between frames). **Positive: the mouth moves
  after the sound**; 0 is in sync. The pooled value maximises the frame-weighted mean of the clips'
  correlation curves (of the frame rate with the most frames, when clips differ: lags are whole frames).
- mouth at rest in silence. Silence: runs of at least ``MIN_SILENCE_S`` whose envelope is ``SILENCE_DB``
  under the loud level, less ``EDGE_S`` at each end next to speech (the mouth closes into a pause and
  opens out of it); speech: frames within ``SPEECH_DB`` of the loud level.
  ``rest_open``: mean opening in silence / mean opening in speech. Its zero is the clip's most closed
  level, which in real speech is the lip press of p/b/m, below the rest position: a mouth that presses
  its lips gets a few tenths here while resting perfectly, one that never presses gets about 0.
  ``rest_move``: mean frame-to-frame change of the aperture in silence / in speech; needs no zero, so it
  is the one that says whether the mouth is still in pauses: about 0 = at rest, 1 = it keeps talking.
- ``closure``: the fraction of bilabial phones (P, B, M; main/evaluation/phones.py says where phones come from)
  during which the lips reach near-closed: an opening at most ``CLOSED_SHARE`` of the clip's range
  (95th minus 5th percentile of the aperture) in a frame within the phone, widened by one frame on each
  side. ``closure_chance``: the same with each phone's window slid over all speech frames of its clip,
  what a mouth gets whose closures are not timed to the phones.
- ``jitter``: the share of the lip vertices' motion energy (about their mean position) above
  ``JITTER_HZ``, from the spectrum of each vertex coordinate. Speech articulation is mostly slower;
  frame-to-frame noise is spread evenly up to fps/2 (white noise: (fps/2 - 8) / (fps/2), 0.36 at 25 fps).

A clip whose aperture range is under ``STATIC_M`` (the mean-motion baseline, a frozen face) is
``static``: lag, correlation, rest_open, rest_move and closure are undefined for it (null, "static" in the table).

The door is ``python main/evaluate.py --lipsync`` (or ``python -m main.lipsync``). It writes a table, a JSON
(``--out``; default ``lipsync_{name}.json`` beside DIR) and a PNG
(``{json stem}.png``; main/evaluation/lipsync_report.py). scripts/lipsync_validation.py shows on data with ground
truth what each number separates (README, "Judging lip sync without ground truth").
"""
from __future__ import annotations

import argparse
import logging
import os

import numpy as np

from main.evaluation.lipsync_report import default_out, write_report
from main.evaluation.lipsync_rules import CLOSED_SHARE, JITTER_HZ, STATIC_M, LipSyncError, runs
from main.evaluation.phones import BILABIALS, MODES, PhoneSource, dataset_entries, load_audio_16k
from main.results.reader import find_leaves, frame_files, leaf_fps, leaf_meta, read_meta
from models.flame_regions import lip_split, region_indices
from utils.config import flame_region_paths
from utils.errors import ResultsError
from utils.framing import WAV2VEC2_SAMPLE_RATE as SR

log = logging.getLogger("lipsync")

MAX_LAG_S = 0.4
ENV_FLOOR_DB = 40.0
SILENCE_DB, SPEECH_DB = 30.0, 20.0
MIN_SILENCE_S, EDGE_S = 0.25, 0.08


# ----------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------

def envelope_db(audio: np.ndarray, fps: float, n_frames: int, sr: int = SR) -> np.ndarray:
    """RMS (dB) of the audio in a window of one frame centred on each frame's time: (N,) -> (n_frames,)."""
    hop = sr / fps
    centres = np.arange(n_frames) * hop
    a = np.clip(np.round(centres - hop / 2), 0, len(audio)).astype(np.int64)
    b = np.clip(np.round(centres + hop / 2), 0, len(audio)).astype(np.int64)
    c = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    ms = (c[b] - c[a]) / np.maximum(b - a, 1)
    return 10 * np.log10(ms + 1e-12)


def aperture(lips: np.ndarray, upper_sel: np.ndarray, lower_sel: np.ndarray) -> np.ndarray:
    """(T,L,3) lip vertices, boolean selections over L -> (T,) upper minus lower mean height."""
    return lips[:, upper_sel, 1].mean(1) - lips[:, lower_sel, 1].mean(1)


def silence_core(env: np.ndarray, loud: float, fps: float) -> np.ndarray:
    """Frames inside silent stretches (>= MIN_SILENCE_S under loud - SILENCE_DB), less EDGE_S each end."""
    out = np.zeros(len(env), bool)
    edge = int(round(EDGE_S * fps))
    for a, b in runs(env < loud - SILENCE_DB):
        a2, b2 = a + (edge if a > 0 else 0), b - (edge if b < len(env) else 0)  # clip ends are not speech
        if (b - a) / fps >= MIN_SILENCE_S and b2 > a2:
            out[a2:b2] = True
    return out


# ----------------------------------------------------------------------------------------------
# Checks on one clip
# ----------------------------------------------------------------------------------------------

def lag_curve(env: np.ndarray, opening: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of env[t] and opening[t + L] for L = -max_lag..max_lag -> (corr, overlap)."""
    n = len(env)
    corr, count = np.full(2 * max_lag + 1, np.nan), np.zeros(2 * max_lag + 1, np.int64)
    for k, lag in enumerate(range(-max_lag, max_lag + 1)):
        x = env[max(0, -lag):n - max(0, lag)]
        y = opening[max(0, lag):n - max(0, -lag)]
        if len(x) >= 3 and x.std() > 0 and y.std() > 0:
            corr[k], count[k] = np.corrcoef(x, y)[0, 1], len(x)
    return corr, count


def peak(curve: np.ndarray, max_lag: int, fps: float) -> tuple[float | None, float | None]:
    """(lag ms at the maximum, refined by a parabola through its neighbours; the maximum)."""
    if not np.isfinite(curve).any():
        return None, None
    k = int(np.nanargmax(curve))
    shift = 0.0
    if 0 < k < len(curve) - 1 and np.isfinite(curve[k - 1:k + 2]).all():
        a, b, c = curve[k - 1:k + 2]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den < 0 else 0.0
    return 1000.0 * (k - max_lag + shift) / fps, float(curve[k])


def jitter(lips: np.ndarray, fps: float) -> float | None:
    """Share of the lip motion energy (about the mean position) above JITTER_HZ; None without motion."""
    x = lips.reshape(len(lips), -1).astype(np.float64)
    x = x - x.mean(0)
    power = (np.abs(np.fft.rfft(x, axis=0)) ** 2).sum(1)
    freqs = np.fft.rfftfreq(len(x), 1.0 / fps)
    total = power[1:].sum()
    return float(power[freqs >= JITTER_HZ].sum() / total) if total > 1e-20 else None


def closure_counts(opening: np.ndarray, threshold: float, phones, fps: float, speech: np.ndarray) -> tuple:
    """(bilabial phones whose widened window reaches opening <= threshold, bilabial phones scored, sum over
    them of the share of speech positions where a window of the same length reaches it)."""
    t = np.arange(len(opening)) / fps
    closed = opening <= threshold
    reached = total = 0
    chance = 0.0
    for label, t0, t1 in phones:
        if label not in BILABIALS:
            continue
        win = (t >= t0 - 1.0 / fps) & (t <= t1 + 1.0 / fps)
        if win.any():
            total += 1
            reached += int(closed[win].any())
            w = min(int(win.sum()), len(opening))
            hit = np.convolve(closed, np.ones(w), "valid") > 0     # window starting at each frame
            starts = speech[:len(hit)]
            chance += float(hit[starts].mean()) if starts.any() else 0.0
    return reached, total, chance


def score_clip(lips: np.ndarray, upper_sel, lower_sel, audio: np.ndarray, fps: float, phones=None) -> dict:
    """All checks on one clip: lips (T,L,3) with upper/lower selections, its 16 kHz audio, optional phones.
    Returns a dict of the clip's numbers and the sums the pooled numbers need (keys starting with _)."""
    T = len(lips)
    ap = aperture(lips, upper_sel, lower_sel)
    env = envelope_db(audio, fps, T)
    loud = float(np.percentile(env, 95))
    lo, hi = np.percentile(ap, [5, 95])
    opening = ap - lo
    static = bool(hi - lo < STATIC_M)
    sil, speech = silence_core(env, loud, fps), env >= loud - SPEECH_DB
    r = {"n_frames": T, "fps": fps, "static": static, "aperture_range_m": float(hi - lo),
         "silence_frames": int(sil.sum()), "speech_frames": int(speech.sum()), "jitter": jitter(lips, fps),
         "lag_ms": None, "corr": None, "rest_open": None, "rest_move": None, "closure": None, "closure_chance": None,
         "bilabials": 0}
    max_lag = int(round(MAX_LAG_S * fps))
    r["_curve"], r["_count"] = np.full(2 * max_lag + 1, np.nan), np.zeros(2 * max_lag + 1, np.int64)
    if static:
        return r
    r["_curve"], r["_count"] = lag_curve(np.maximum(env, loud - ENV_FLOOR_DB), ap, max_lag)
    r["lag_ms"], r["corr"] = peak(r["_curve"], max_lag, fps)
    step = np.abs(np.diff(ap, prepend=ap[0]))
    r["_open"] = (float(opening[sil].sum()), float(opening[speech].sum()))
    r["_move"] = (float(step[sil].sum()), float(step[speech].sum()))
    r["rest_open"], r["rest_move"] = rest_ratios([r], sil.sum(), speech.sum())
    threshold = CLOSED_SHARE * (hi - lo)
    if phones is not None:
        r["_closed"], r["bilabials"], r["_chance"] = closure_counts(opening, threshold, phones, fps, speech)
        if r["bilabials"]:
            r["closure"], r["closure_chance"] = r["_closed"] / r["bilabials"], r["_chance"] / r["bilabials"]
    r["_plot"] = {"env": env, "opening": opening, "silence": sil, "threshold": threshold,
                  "bilabials": [(a, b) for p, a, b in phones or [] if p in BILABIALS]}
    return r


def rest_ratios(clips: list[dict], n_silence: int, n_speech: int) -> tuple:
    """(rest_open, rest_move) from the clips' silence / speech sums; None without both."""
    if not (n_silence and n_speech):
        return None, None
    return tuple((sum(c[key][0] for c in clips) / n_silence) / max(sum(c[key][1] for c in clips) / n_speech, 1e-12)
                 for key in ("_open", "_move"))


def pool(clips: list[dict]) -> dict:
    """Pooled numbers over the clips that are not static (see the module docstring)."""
    moving = [c for c in clips if not c["static"]]
    out = {"n_clips": len(clips), "n_static": len(clips) - len(moving), "n_frames": sum(c["n_frames"] for c in clips),
           "lag_ms": None, "corr": None, "rest_open": None, "rest_move": None, "closure": None, "closure_chance": None,
           "bilabials": 0, "jitter": None}
    jit = [(c["jitter"], c["n_frames"]) for c in clips if c["jitter"] is not None]
    if jit:
        out["jitter"] = float(np.average([j for j, _ in jit], weights=[n for _, n in jit]))
    if not moving:
        return out
    by_len = {}
    for c in moving:  # clips at different fps have curves of different lengths: pool each rate
        by_len.setdefault((len(c["_curve"]), c["fps"]), []).append(c)
    (n, fps), group = max(by_len.items(), key=lambda kv: sum(c["n_frames"] for c in kv[1]))
    w = np.stack([c["_count"] for c in group]).astype(np.float64)
    curves = np.nan_to_num(np.stack([c["_curve"] for c in group]))
    with np.errstate(invalid="ignore"):
        curve = np.where(w.sum(0) > 0, (w * curves).sum(0) / np.maximum(w.sum(0), 1), np.nan)
    out["lag_ms"], out["corr"] = peak(curve, n // 2, fps)
    out["lag_curve"] = {"fps": fps, "lag_ms": (1000.0 * (np.arange(n) - n // 2) / fps).tolist(),
                        "corr": [None if not np.isfinite(v) else float(v) for v in curve]}
    out["rest_open"], out["rest_move"] = rest_ratios(moving, sum(c["silence_frames"] for c in moving),
                                                     sum(c["speech_frames"] for c in moving))
    out["bilabials"] = sum(c["bilabials"] for c in moving)
    if out["bilabials"]:
        out["closure"] = sum(c.get("_closed", 0) for c in moving) / out["bilabials"]
        out["closure_chance"] = sum(c.get("_chance", 0.0) for c in moving) / out["bilabials"]
    return out


# ----------------------------------------------------------------------------------------------
# A results tree
# ----------------------------------------------------------------------------------------------

def load_lips(leaf: str, lip_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (T,L,3) lip vertices of a leaf folder, its (V,3) mean frame; reads one frame at a time."""
    files = frame_files(leaf)
    lips, total = None, None
    for i, f in enumerate(files):
        try:
            v = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ResultsError(f"{f}: unreadable frame file ({e})") from None
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] <= lip_idx.max():
            raise ResultsError(f"{f}: expected (V,3) vertices with the lip ids of the FLAME masks, got {v.shape}")
        if lips is None:
            lips, total = np.empty((len(files), len(lip_idx), 3), np.float32), np.zeros(v.shape, np.float64)
        lips[i] = v[lip_idx]
        total += v
    return lips, (total / len(files)).astype(np.float32)


def score_tree(results: str, lip_idx, cfg=None, coeffs: str | None = None, phones: str = "auto",
               entries: dict | None = None) -> dict:
    """Every leaf under ``results`` -> {"clips": [...], "overall": pooled, "skipped": [...]}, with the
    private per-clip arrays kept for plotting (write_report drops them)."""
    lip_idx = np.asarray(lip_idx, dtype=np.int64)
    leaves = find_leaves(results) if os.path.isdir(results) else []
    if not leaves:
        raise LipSyncError(f"no frame folders ({{i}}.npy) under {results}")
    source = PhoneSource(phones, entries)
    clips, skipped = [], []
    for leaf in leaves:
        rel = os.path.relpath(leaf, results)
        meta = read_meta(os.path.join(coeffs, rel)) if coeffs else leaf_meta(leaf, cfg)
        if not meta or not meta.get("audio_path"):
            skipped.append({"folder": leaf, "reason": "no meta.json with an audio_path"})
            log.warning("%s: no meta.json with an audio_path (pass --coeffs for a test-split tree): skipped", leaf)
            continue
        fps, _ = leaf_fps(meta, meta.get("dataset"), cfg, None)
        lips, mean_frame = load_lips(leaf, lip_idx)
        audio = load_audio_16k(meta["audio_path"])
        try:
            upper, lower = lip_split(mean_frame, lip_idx)
        except ValueError as e:
            raise LipSyncError(f"{leaf}: {e} (FLAME.masks_path / FLAME.lip_indices of another face?)") from None
        ph, ph_source = source.phones(meta["audio_path"], audio, meta)
        c = score_clip(lips, np.isin(lip_idx, upper), np.isin(lip_idx, lower), audio, fps, ph)
        if os.path.basename(leaf) == "vertices":  # single-audio layout: name the clip by its folder
            rel = os.path.dirname(rel) or os.path.basename(os.path.abspath(results))
        c.update(clip=rel, audio_path=meta["audio_path"], phones=ph_source)
        clips.append(c)
    if not clips:
        raise LipSyncError(f"no clip under {results} has a meta.json naming its audio: {skipped[0]['reason']}")
    return {"results_dir": os.path.abspath(results), "clips": clips, "overall": pool(clips), "skipped": skipped}


def run(cfg, results: str, out: str | None = None, coeffs: str | None = None, phones: str = "auto",
        plot: bool = True) -> dict:
    """Score ``results`` with the config's lip mask; print, write JSON and PNG -> the written report."""
    lip_idx = region_indices(**flame_region_paths(cfg))[0]
    entries = dataset_entries(cfg) if phones != "none" else {}
    rep = score_tree(results, lip_idx, cfg, coeffs, phones, entries)
    return write_report(rep, out or default_out(results), plot)


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--phones", choices=MODES, default="auto",
                   help="phones for the P/B/M check: auto (an alignment or transcript beside the audio, "
                        "meta.json or the dataset JSON; without one, no closure check), recognise (pocketsphinx phone "
                        "recognition from the audio alone, alignment-free), none")
