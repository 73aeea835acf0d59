"""Write the embedded demo's synthetic datasets under --out (default demo_data/).

Three small datasets in their real formats, the JSON indices/splits that config/demo.yaml names, and
the procedural STAND-IN FLAME files (not the licensed model):

    FLAME/standin_generic_model.pkl, FLAME/standin_FLAME_masks.pkl
    digital_human/   emoca .npz (expcode, posecode, shapecode, cam, detailcode), 25 fps, train only
    MEAD_VHAP/       vhap tracked_flame_params_30.npz (expr, jaw_pose, shape, ...), 25 fps
    MultiModal200/   vhap, 20 fps; its JSON uses the alias 'flame_path'
    dataset_jsons/digital_human.json, dataset_jsons/splits/{MEAD_VHAP,MultiModal200}_{train,val,test}.json

The motion is a deterministic function of the audio, so a model that learns can beat the mean motion:
each clip is a sequence of syllables (optional consonant 'm' or 's', then one of five vowels) and
pauses. A vowel is a harmonic sound at the speaker's pitch shaped by the vowel's two formants, under a
smooth loudness envelope. Jaw opening = vowel openness x envelope; expression coefficients 0-9 =
vowel (and consonant) pattern x envelope; coefficient 10 (brow raise) follows stressed syllables;
all smoothed (coarticulation, Gaussian of 70 ms) and delayed by 20 ms, then scaled and offset by a
per-speaker style (and the emotion in MEAD), plus a slow drift and a little tracking jitter. Like real
25 fps tracking, the previous frame predicts the next one well (lag-1 R^2 of the jaw ~0.87), while what
changes it (syllables, vowels, pauses) is only in the audio: a teacher-forced decoder is tempted to
copy its input, which is the exposure bias the training modes address. Motion is sampled at each dataset's
native fps from the same
continuous-time signals, so the 20 fps data is a true 20 fps sampling.

Same --seed, same bytes (the .npz files are written with fixed zip timestamps).

    python scripts/make_demo_data.py --out demo_data --seed 0
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
import zlib

import numpy as np
import soundfile as sf
from scipy.ndimage import gaussian_filter1d

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.flame_standin import write_standin_files
from utils.framing import WAV2VEC2_SAMPLE_RATE as SR

SMOOTH_S = 0.07      # motion is the activation smoothed by a Gaussian of this std (seconds) ...
DELAY_S = 0.02       # ... and lagging the audio by this much
NOISE = 0.003        # per-frame tracking jitter of the expression coefficients (jaw: a fifth of it)
GRID_HZ = 1000       # continuous-time signals are evaluated on this grid, then sampled per frame

# vowel -> formants F1, F2 (Hz), jaw openness (0..1), expression pattern {coefficient: value}
VOWELS = {
    "a": ((750, 1250), 1.0, {0: 1.4, 4: 0.8}),
    "e": ((500, 1850), 0.55, {2: 1.0, 0: 0.5}),
    "i": ((300, 2300), 0.25, {2: 1.7, 5: 0.5}),
    "o": ((480, 900), 0.6, {1: 1.5, 0: 0.6}),
    "u": ((330, 750), 0.3, {1: 2.0, 6: 0.3}),
}
# consonant -> duration (s), expression pattern (lips pressed for 'm', spread for 's')
CONSONANTS = {"m": (0.07, {6: 1.5, 0: -0.6}), "s": (0.09, {2: 0.6, 3: 0.4})}

# speaker -> f0 (Hz); distinct pitches, so the voice identifies the speaker. A name shared by two
# datasets (M003) is one speaker with one style.
F0 = {"M005": 100, "mm_003": 110, "dh_ben": 122, "M003": 135, "mm_001": 150, "mm_002": 165,
      "dh_chloe": 180, "W009": 195, "dh_anna": 210, "W011": 228}
# emotion -> (f0 factor, loudness factor, expression offsets)
EMOTIONS = {"neutral": (1.0, 1.0, {}), "happy": (1.1, 1.05, {5: 0.8, 10: 0.3}),
            "angry": (1.05, 1.2, {11: 0.8, 7: 0.4}), "sad": (0.92, 0.8, {7: 0.5, 11: 0.3})}

# (dataset, split) -> list of (speaker, emotion) per clip
PLAN = {
    ("digital_human", "train"): [(s, None) for s in ("dh_anna", "dh_ben", "dh_chloe") for _ in range(4)],
    ("MEAD_VHAP", "train"): [(s, e) for s in ("M003", "M005", "W009", "W011") for e in ("neutral", "happy", "angry")],
    ("MEAD_VHAP", "val"): [("M003", "sad"), ("W009", "neutral"), ("M005", "angry")],
    ("MEAD_VHAP", "test"): [("M003", "neutral"), ("M005", "happy"), ("W009", "angry"), ("W011", "neutral")],
    ("MultiModal200", "train"): [(s, None) for s in ("mm_001", "mm_002", "mm_003", "M003") for _ in range(3)][:10],
    ("MultiModal200", "val"): [("mm_001", None), ("mm_003", None)],
    ("MultiModal200", "test"): [("mm_002", None), ("M003", None), ("mm_001", None)],
}
FPS = {"digital_human": 25, "MEAD_VHAP": 25, "MultiModal200": 20}
# clips written at 44.1 kHz stereo, to exercise resampling and down-mixing in the loader
HI_RATE = {("digital_human", "train", 1), ("MultiModal200", "train", 2)}


def _rng(seed: int, *names) -> np.random.Generator:
    """A generator that depends only on seed and the given names (stable across runs and platforms)."""
    return np.random.default_rng([seed] + [zlib.crc32(str(n).encode()) for n in names])


def speaker_style(seed: int, speaker: str) -> dict:
    r = _rng(seed, "style", speaker)
    offset = np.zeros(50)
    offset[:13] = r.normal(0, 0.25, 13)
    offset[13:] = r.normal(0, 0.1, 37)
    return {"jaw_gain": r.uniform(0.7, 1.3), "jaw_rest": r.uniform(0.0, 0.02), "expr_gain": r.uniform(0.8, 1.2),
            "expr_offset": offset, "shape": r.normal(0, 1, 300) / (1 + np.arange(300) / 10),
            "detail": r.normal(0, 0.3, 128)}


def _window(u):
    """Smooth syllable envelope on u in [0,1]: 0 at both ends, 1 in the middle."""
    def ss(x):
        x = np.clip(x, 0, 1)
        return x * x * (3 - 2 * x)
    return ss(u / 0.25) * ss((1 - u) / 0.35)


def make_script(r: np.random.Generator, loud_factor: float):
    """A random clip: list of syllables and its duration (seconds)."""
    target = r.uniform(3.0, 8.0)
    t = r.uniform(0.15, 0.35)
    syllables = []
    while t < target - 0.5:
        cons = r.choice(["", "m", "s"], p=[0.5, 0.25, 0.25])
        c_dur = CONSONANTS[cons][0] if cons else 0.0
        v_dur = r.uniform(0.12, 0.35 - c_dur)
        loud = r.uniform(0.45, 1.0) * loud_factor
        syllables.append({"t0": t, "cons": cons, "c_dur": c_dur, "v_dur": v_dur, "vowel": r.choice(list(VOWELS)),
                          "loud": loud, "stress": loud > 0.85, "f0_jitter": r.normal(0, 0.05)})
        t += c_dur + v_dur
        t += r.uniform(0.1, 0.4) if r.random() < 0.25 else r.uniform(0.0, 0.04)
    return syllables, t + r.uniform(0.2, 0.4)


def _harmonic(n, sr, f0, formants, gains, r):
    """n samples of a periodic sound at f0 whose harmonics follow a formant envelope; RMS 1."""
    spec = np.zeros(n // 2 + 1, complex)
    h = np.arange(1, int(min(5000, 0.45 * sr) / f0) + 1)
    f = h * f0
    amp = 0.03 + sum(g / (1 + ((f - F) / (60 + 0.08 * F)) ** 2) for F, g in zip(formants, gains))
    k = np.round(f * n / sr).astype(int)
    np.add.at(spec, k, amp * np.exp(2j * np.pi * r.random(len(k))))
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _noise_band(n, sr, lo, hi, r):
    spec = np.fft.rfft(r.normal(size=n))
    f = np.fft.rfftfreq(n, 1 / sr)
    x = np.fft.irfft(spec * ((f > lo) & (f < hi)), n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def render_audio(syllables, duration, sr, f0, r):
    """Audio (N,) at sample rate sr of the syllable script; the same continuous signal at any sr."""
    x = np.zeros(int(round(duration * sr)))
    for s in syllables:
        if s["cons"]:
            i0, n = int(round(s["t0"] * sr)), int(round(s["c_dur"] * sr))
            env = _window((np.arange(n) + 0.5) / n)
            src = (_harmonic(n, sr, f0, (250, 1100), (1.0, 0.05), r) if s["cons"] == "m"
                   else _noise_band(n, sr, 4000, 7000, r))
            x[i0:i0 + n] += (0.15 if s["cons"] == "m" else 0.1) * s["loud"] * env * src
        formants = VOWELS[s["vowel"]][0]
        i0, n = int(round((s["t0"] + s["c_dur"]) * sr)), int(round(s["v_dur"] * sr))
        env = _window((np.arange(n) + 0.5) / n)
        pitch = f0 * (1 + s["f0_jitter"]) * (1.08 if s["stress"] else 1.0)
        # open vowels are intrinsically louder (as in speech): the loudness also tells the openness
        gain = 0.3 * (0.5 + 0.5 * VOWELS[s["vowel"]][1])
        x[i0:i0 + n] += gain * s["loud"] * env * _harmonic(n, sr, pitch, formants + (2700,), (1.0, 0.6, 0.15), r)
    return x + 0.003 * r.normal(size=len(x))


def motion_signals(syllables, duration):
    """Continuous-time activations on a GRID_HZ grid -> (grid times, jaw (G,), expr (G,50)), before style."""
    tg = np.arange(int(np.ceil((duration + 0.2) * GRID_HZ))) / GRID_HZ
    jaw = np.zeros_like(tg)
    expr = np.zeros((len(tg), 50))
    for s in syllables:
        if s["cons"]:
            u = (tg - s["t0"]) / s["c_dur"]
            env = np.where((u > 0) & (u < 1), _window(u), 0.0) * s["loud"]
            for k, v in CONSONANTS[s["cons"]][1].items():
                expr[:, k] += v * env
        _, openness, pattern = VOWELS[s["vowel"]]
        u = (tg - s["t0"] - s["c_dur"]) / s["v_dur"]
        env = np.where((u > 0) & (u < 1), _window(u), 0.0) * s["loud"]
        jaw += openness * env
        for k, v in pattern.items():
            expr[:, k] += v * env
        if s["stress"]:
            expr[:, 10] += 0.8 * env
    jaw = gaussian_filter1d(jaw, SMOOTH_S * GRID_HZ, mode="constant", truncate=4.0)
    expr = gaussian_filter1d(expr, SMOOTH_S * GRID_HZ, axis=0, mode="constant", truncate=4.0)
    return tg + DELAY_S, jaw, expr


def sample_motion(tg, jaw, expr, style, emotion, fps, n_frames, r):
    """Per-frame motion at fps (frame k at k/fps): jaw (T,), expr (T,50), after style and noise."""
    t = np.arange(n_frames) / fps
    j = np.interp(t, tg, jaw, left=0.0, right=0.0)
    e = np.stack([np.interp(t, tg, expr[:, k], left=0.0, right=0.0) for k in range(50)], 1)
    j = style["jaw_rest"] + 0.22 * style["jaw_gain"] * j
    e = style["expr_gain"] * e + style["expr_offset"]
    for k, v in EMOTIONS[emotion or "neutral"][2].items():
        e[:, k] += v
    # unpredictable part: a slow drift and a little per-frame noise
    drift = _smooth_noise(r, n_frames, 14, 0.1)
    j = j + 0.05 * drift[:, 13] + r.normal(0, NOISE * 0.2, n_frames)
    e[:, :13] += drift[:, :13] + r.normal(0, NOISE, (n_frames, 13))
    e[:, 13:] += r.normal(0, NOISE, (n_frames, 37))
    return np.clip(j, 0.0, None), e


def save_npz(path, **arrays):
    """np.savez with fixed zip timestamps, so the same data gives the same bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def _smooth_noise(r, n, dims, scale):
    x = np.cumsum(r.normal(0, 1, (n, dims)), 0)
    x -= x.mean(0)
    return scale * x / np.sqrt(max(n, 1))


def write_sample(out, dataset, split, index, speaker, emotion, audio, sr, jaw, expr, style, r, valid_frames=None):
    """Write one clip's wav (audio (N,) or (N,C) at sr) and its FLAME file in the dataset's format, from
    per-frame jaw (T,) and expr (T,50); r draws the tracker's extra channels (head pose, shape noise...).
    Return (sample id, JSON entry, seconds)."""
    T = len(jaw)

    if dataset == "MEAD_VHAP":
        sid = f"{speaker}_{emotion}_{split}_{index:03d}"
        audio_rel = f"MEAD_VHAP/audio/{speaker}/{emotion}/{sid}.wav"
        flame_rel = f"MEAD_VHAP/vhap/{speaker}/{emotion}/{sid}/tracked_flame_params_30.npz"
    else:
        sid = f"{speaker}_{split}_{index:03d}"
        audio_rel = f"{dataset}/audio/{sid}.wav"
        flame_rel = (f"{dataset}/emoca/{sid}.npz" if dataset == "digital_human"
                     else f"{dataset}/vhap/{sid}/tracked_flame_params_30.npz")
    os.makedirs(os.path.dirname(os.path.join(out, audio_rel)), exist_ok=True)
    sf.write(os.path.join(out, audio_rel), np.clip(audio, -1, 1).astype(np.float32), sr, subtype="PCM_16")

    f32 = lambda a: np.asarray(a, dtype=np.float32)
    jaw3 = np.stack([jaw, r.normal(0, 0.003, T), r.normal(0, 0.003, T)], 1)
    head = _smooth_noise(r, T, 3, 0.05)
    if dataset == "digital_human":
        save_npz(os.path.join(out, flame_rel),
                 expcode=f32(expr), posecode=f32(np.concatenate([head, jaw3], 1)),
                 shapecode=f32(style["shape"][:100] + r.normal(0, 0.01, (T, 100))),
                 cam=f32(np.array([9.0, 0.0, 0.02]) + _smooth_noise(r, T, 3, 0.01)),
                 detailcode=f32(style["detail"] + r.normal(0, 0.05, (T, 128))))
    else:
        save_npz(os.path.join(out, flame_rel),
                 expr=f32(np.concatenate([expr, r.normal(0, 0.02, (T, 50))], 1)), jaw_pose=f32(jaw3),
                 shape=f32(style["shape"]), rotation=f32(head), neck_pose=f32(_smooth_noise(r, T, 3, 0.02)),
                 eyes_pose=f32(_smooth_noise(r, T, 6, 0.03)),
                 translation=f32(np.array([0.0, 0.0, 0.0]) + _smooth_noise(r, T, 3, 0.005)))

    entry = {"audio_path": audio_rel}
    entry["flame_path" if dataset == "MultiModal200" else "flame_coeff_save_path"] = flame_rel
    entry["speaker_id"] = [speaker, emotion] if dataset == "MEAD_VHAP" else speaker
    if valid_frames is not None:
        entry["valid_frames_num"] = valid_frames      # e.g. drops the 3 extra frames of demo clip 2
    return sid, entry, audio.shape[0] / sr


def write_clip(out, dataset, split, index, speaker, emotion, seed):
    """Synthesise one clip, write its wav and FLAME file; return (sample id, JSON entry, seconds)."""
    fps = FPS[dataset]
    r = _rng(seed, dataset, split, index)
    style = speaker_style(seed, speaker)
    f0_fac, loud_fac, _ = EMOTIONS[emotion or "neutral"]
    syllables, duration = make_script(r, loud_fac)

    hi = (dataset, split, index) in HI_RATE
    sr = 44100 if hi else SR
    audio = render_audio(syllables, duration, sr, F0[speaker] * f0_fac, r)
    if hi:  # stereo with slightly different channel gains
        audio = np.stack([audio, 0.8 * audio], 1)
    n_frames = int(round(audio.shape[0] / sr * fps))
    extra = 3 if (dataset, index) == ("digital_human", 2) else 0   # tracker wrote 3 frames too many
    tg, jaw_c, expr_c = motion_signals(syllables, duration)
    jaw, expr = sample_motion(tg, jaw_c, expr_c, style, emotion, fps, n_frames + extra, r)
    return write_sample(out, dataset, split, index, speaker, emotion, audio, sr, jaw, expr, style, r,
                        valid_frames=n_frames if dataset == "digital_human" else None)


JSON_PATH = {
    "digital_human": lambda split: "dataset_jsons/digital_human.json",
    "MEAD_VHAP": lambda split: f"dataset_jsons/splits/MEAD_VHAP_{split}.json",
    "MultiModal200": lambda split: f"dataset_jsons/splits/MultiModal200_{split}.json",
}


def write_index(out: str, dataset: str, split: str, index: dict) -> str:
    """Write the JSON index {sample id: entry} of one dataset split where config/demo.yaml looks; return its path."""
    rel = JSON_PATH[dataset](split)
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    with open(os.path.join(out, rel), "w") as f:
        json.dump(index, f, indent=2)
    return rel


def make_demo_data(out: str = "demo_data", seed: int = 0, verbose: bool = True) -> dict:
    """Write everything under out; return {(dataset, split): {"clips", "seconds", "speakers", "json"}}."""
    os.makedirs(out, exist_ok=True)
    write_standin_files(os.path.join(out, "FLAME"), seed=seed)
    summary = {}
    for (dataset, split), clips in PLAN.items():
        index = {}
        seconds = 0.0
        for i, (speaker, emotion) in enumerate(clips):
            sid, entry, dur = write_clip(out, dataset, split, i, speaker, emotion, seed)
            index[sid] = entry
            seconds += dur
        rel = write_index(out, dataset, split, index)
        summary[(dataset, split)] = {"clips": len(clips), "seconds": seconds, "json": rel,
                                     "speakers": sorted({s for s, _ in clips})}
    if verbose:
        total = sum(v["seconds"] for v in summary.values())
        print(f"Synthetic demo data (seed {seed}) in {out}/  [stand-in FLAME: FLAME/standin_generic_model.pkl]")
        for (dataset, split), v in summary.items():
            print(f"  {dataset:14s} {split:5s} {v['clips']:3d} clips {v['seconds']:6.1f} s  "
                  f"{FPS[dataset]} fps  speakers {', '.join(v['speakers'])}")
        print(f"  total {sum(v['clips'] for v in summary.values())} clips, {total / 60:.1f} min of audio")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_data", help="output folder (the demo's DATA.data_root)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    make_demo_data(args.out, args.seed)


if __name__ == "__main__":
    main()
