"""Write a held-out dataset of REAL recorded human speech with FLAME motion driven by the phones spoken,
in exactly the demo data's layout (config/demo.yaml runs on it with DEMO_DATA_ROOT=speech_data).

It is the project's standing check that training yields a model that listens: the motion depends on
what is said and when (forced-aligned phones), never on anything a decoder could guess from the
previous frames alone.

Sources (Debian packages, installed by this script when run as root; no audio is committed):
  asterisk-core-sounds-en(-g722)  English, female, CC-BY-SA-3.0      (voice 'allison')
  asterisk-core-sounds-it(-g722)  Italian, male, CC-BY-3.0           (voice 'carlo')
  pocketsphinx-testdata           English LibriVox + "cards", BSD-2  (voice 'ps_male')
  alsa-utils                      "front left" ... test words, GPL-2 (voice 'alsa')
and PyPI pocketsphinx 5 (its US English acoustic model and dictionary) for the alignment.

Alignment (main/evaluation/align.py; checks in scripts/speech_set/alignment_checks.py): pocketsphinx forced
alignment of the transcript, words then phones (10 ms); Italian words are converted to the nearest US
English phones by spelling rules and aligned with the same model (rougher). Utterances are dropped when the
aligner fails, a word has no
pronunciation, or the alignment does not fit the audio (implausibly long phones, vowels on silence,
loud audio labelled silence, odd speaking rate). `--check N` prints the phone timings of N prompts per
voice next to their energy envelope and saves plots under OUT/alignment_check/.

Motion (scripts/speech_set/visemes.py): each phone has a viseme target in the stand-in FLAME's space
(jaw from vowel openness, rounding, spreading, lip press on p/b/m, lower lip to teeth on f/v, rest in
silence), blended by dominance functions of short reach (coarticulation), smoothed (10 ms Gaussian),
leading the audio by 30 ms; louder vowels open more. The transitions are sharp on purpose (jaw lag-1 R^2
0.59 at 25 fps, demo 0.87): continuing the previous frame explains little, listening explains the rest. Then,
as in make_demo_data.sample_motion: the speaker's style (jaw
gain and rest, expression gain and offsets, shape), the MEAD emotion's expression offsets, a slow drift
and a small per-frame noise, sampled per frame at each dataset's native fps (20 fps for MultiModal200).

Speakers: each real voice is split among several speaker ids, each with its own style and its own
tape-speed factor (0.96-1.05: resampling with soxr changes tempo and pitch together, phone times scaled
to match); MEAD emotions add their own speed and loudness (happy 1.05 x, angry 1.03 x and louder, sad
0.94 x and softer). Prompts are deduplicated by text and split by prompt: a sentence in val or test is
never in train. Short prompts are joined (with 0.2-0.5 s pauses) into 2-8 s clips, long ones cut at
pauses. About 12% of the clips are written at 44.1 / 48 kHz stereo. Same --seed, same bytes.

    python scripts/make_speech_set.py --out speech_data --seed 0 [--max_minutes 10] [--check 3]
    DEMO_DATA_ROOT=speech_data python train.py --config config/demo.yaml TRAIN.save_path=outputs/speech
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from main.evaluation.align import Aligner, normalise
from scripts.flame_standin import write_standin_files
from scripts.make_demo_data import FPS, _rng, sample_motion, speaker_style, write_index, write_sample
from scripts.speech_set import clips as C
from scripts.speech_set.alignment_checks import check_alignment
from scripts.speech_set.sources import VOICES, decode, ensure_installed, list_prompts
from scripts.speech_set.visemes import motion_signals

# (dataset, speaker id, voice, splits, tape-speed factor). M003 is one speaker in two datasets.
SPEAKERS = [
    ("digital_human", "dh_anna", "allison", ("train",), 1.0),
    ("digital_human", "dh_chloe", "allison", ("train",), 1.05),
    ("digital_human", "dh_ben", "carlo", ("train",), 1.0),
    ("digital_human", "dh_dan", "alsa", ("train",), 1.0),
    ("MEAD_VHAP", "W009", "allison", ("train", "val", "test"), 0.97),
    ("MEAD_VHAP", "W011", "allison", ("train", "test"), 1.03),
    ("MEAD_VHAP", "M005", "carlo", ("train", "val", "test"), 0.96),
    ("MEAD_VHAP", "M003", "ps_male", ("train", "test"), 1.0),
    ("MultiModal200", "mm_001", "allison", ("train", "val", "test"), 1.0),
    ("MultiModal200", "mm_002", "carlo", ("train", "test"), 1.04),
    ("MultiModal200", "mm_003", "carlo", ("train", "val"), 1.0),
    ("MultiModal200", "M003", "ps_male", ("train",), 1.0),
]
SPLIT_SHARE = {"test": 0.14, "val": 0.12}             # of a voice's prompts, when it has that split
VOICE_SHARE = {"allison": 0.55, "carlo": 0.45}        # of what ps_male and alsa (used whole) leave
EMOTION_SPEED = {"neutral": (1.0, 1.0), "happy": (1.05, 1.1), "angry": (1.03, 1.3), "sad": (0.94, 0.7)}
HI_RATE_SHARE = 0.12
DATASETS = ("digital_human", "MEAD_VHAP", "MultiModal200")


def _voice_splits(voice):
    return sorted({s for _, _, v, splits, _ in SPEAKERS if v == voice for s in splits},
                  key=("train", "val", "test").index)


class AlignCache:
    """Phone alignments by (file, size, words) in OUT/.align_cache.json, so reruns skip the aligner."""

    def __init__(self, path):
        self.path, self.aligner, self.prepared = path, None, set()
        try:
            with open(path) as f:
                self.data = json.load(f)
        except (OSError, ValueError):
            self.data = {}

    def phones(self, prompt, words, audio, lang, vocabulary=()):
        key = f"{prompt.path}|{os.path.getsize(prompt.path)}|{' '.join(words)}"
        if key not in self.data:
            if self.aligner is None:
                self.aligner = Aligner()
            if vocabulary and lang not in self.prepared:
                self.aligner.dictionary_words(sorted(vocabulary), lang)
                self.prepared.add(lang)
            dict_words, why = self.aligner.dictionary_words(words, lang)
            if dict_words is None:
                self.data[key] = {"error": why}
            else:
                try:
                    self.data[key] = {"phones": self.aligner.align(audio, dict_words)}
                except RuntimeError as e:
                    self.data[key] = {"error": f"aligner: {e}"}
        hit = self.data[key]
        return ([tuple(p) for p in hit["phones"]], None) if "phones" in hit else (None, hit["error"])

    def save(self):
        with open(self.path, "w") as f:
            json.dump(self.data, f)


def collect(seed, max_minutes, cache, dropped, checks):
    """Align prompts voice by voice (shuffled) until each voice's budget; -> {(voice, split): [Segment]}."""
    prompts = list_prompts()
    fixed = sum(sum(p.seconds for p in prompts[v]) for v in ("ps_male", "alsa")) / 60
    budget = {v: 60 * max(max_minutes - fixed, 0) * share for v, share in VOICE_SHARE.items()}
    budget.update(ps_male=float("inf"), alsa=float("inf"))
    out = defaultdict(list)
    for voice, lang_desc in VOICES.items():
        lang = lang_desc[0]
        r = _rng(seed, "prompts", voice)
        splits = _voice_splits(voice)
        share = {s: SPLIT_SHARE.get(s, 0.0) for s in splits}
        share["train"] = 1 - sum(v for k, v in share.items() if k != "train")
        seen, used, got = set(), 0.0, Counter()
        order = r.permutation(len(prompts[voice]))
        # Italian words are added to the dictionary in one go (each update rebuilds the decoder's search)
        vocabulary = {w for p in prompts[voice] for w in (normalise(p.text, lang) or [])} if lang == "it" else ()
        for i in order:
            if used >= budget[voice]:
                break
            p = prompts[voice][i]
            words = normalise(p.text, lang)
            if words is None or not 0.5 <= p.seconds <= 20:
                dropped[(voice, "not speech or length")] += 1
                continue
            if " ".join(words) in seen:
                dropped[(voice, "duplicate text")] += 1
                continue
            seen.add(" ".join(words))
            audio = decode(p.path)
            phones, err = cache.phones(p, words, audio, lang, vocabulary)
            if phones is None:
                dropped[(voice, err.split(":")[0])] += 1
                continue
            reason, loud = check_alignment(phones, audio)
            if reason is not None:
                dropped[(voice, "alignment check")] += 1
                continue
            segs = C.segments(f"{voice}/{p.uid}", audio, phones, loud)
            if not segs:
                dropped[(voice, "too long to cut")] += 1
                continue
            if len(checks[voice]) < checks["n"]:
                checks[voice].append((p, audio, phones, loud))
            # the split furthest behind its share of the voice's seconds so far takes the prompt
            split = max(splits, key=lambda s: share[s] * (used + 1.0) - got[s])
            seconds = sum(len(s.audio) for s in segs) / C.SR + 0.4 * len(segs)
            out[(voice, split)] += segs
            got[split] += seconds
            used += seconds
    return out


def plan_clips(seed, segments):
    """-> {(dataset, split): [(speaker, emotion, factor, [Segment])]}, clips dealt round-robin to the
    voice's speakers that have that split."""
    plan = defaultdict(list)
    for (voice, split), segs in sorted(segments.items()):
        r = _rng(seed, "clips", voice, split)
        targets = [(d, s, f) for d, s, v, splits, f in SPEAKERS if v == voice and split in splits]
        for k, group in enumerate(C.group(segs, r)):
            dataset, speaker, factor = targets[k % len(targets)]
            emotion = None
            if dataset == "MEAD_VHAP":
                emotion = list(EMOTION_SPEED)[int(_rng(seed, "emotion", voice, split, k).integers(4))]
            plan[(dataset, split)].append((speaker, emotion, factor, group))
    return plan


def write_clip(out, seed, dataset, split, index, speaker, emotion, factor, group):
    r = _rng(seed, "speech", dataset, split, index)
    audio, phones, loud = C.join(group, r)
    tempo, gain = EMOTION_SPEED[emotion or "neutral"]
    audio, phones = C.speed(audio, phones, factor * tempo)
    audio = np.clip(audio * (0.5 * gain / (np.abs(audio).max() + 1e-9)), -1, 1)
    hi = r.random() < HI_RATE_SHARE
    sr = int(r.choice([44100, 48000])) if hi else C.SR
    audio = C.to_rate(audio, sr, stereo=hi)
    fps = FPS[dataset]
    duration = audio.shape[0] / sr
    n_frames = int(round(duration * fps))
    tg, jaw_c, expr_c = motion_signals(phones, duration, loud)
    style = speaker_style(seed, speaker)
    jaw, expr = sample_motion(tg, jaw_c, expr_c, style, emotion, fps, n_frames, r)
    sid, entry, seconds = write_sample(out, dataset, split, index, speaker, emotion, audio, sr, jaw, expr,
                                       style, r, valid_frames=n_frames if dataset == "digital_human" else None)
    # the phones that made the motion, in the clip's own time: main/evaluation/lipsync.py's closure check reads them
    with open(os.path.join(out, os.path.splitext(entry["audio_path"])[0] + ".phones.json"), "w") as f:
        json.dump([[p, round(a, 4), round(b, 4)] for p, a, b in phones], f)
    return sid, entry, seconds, jaw, {s.uid for s in group}


def own_style_ids(index: dict) -> None:
    """A speaker (and emotion) with several clips in an evaluation split: give the second and later ones a
    style_id of their own (the output folder name; the default one would be shared)."""
    seen = Counter()
    for entry in index.values():
        spk = entry["speaker_id"]
        folder = json.dumps(spk if isinstance(spk, list) else [spk]) + "_passionate"
        if seen[folder]:
            entry["style_id"] = f"{folder}_{seen[folder]}"
        seen[folder] += 1


def lag1_r2(jaws):
    step = sum(float(((j[1:] - j[:-1]) ** 2).sum()) for j in jaws) / sum(len(j) - 1 for j in jaws)
    return 1 - step / float(np.concatenate(jaws).var())


def make_speech_set(out="speech_data", seed=0, max_minutes=10.0, check=0, verbose=True):
    """Write everything under out; return {(dataset, split): {"clips", "seconds", "speakers", "json"}}."""
    t_start = time.time()
    ensure_installed()
    os.makedirs(out, exist_ok=True)
    write_standin_files(os.path.join(out, "FLAME"), seed=seed)
    cache = AlignCache(os.path.join(out, ".align_cache.json"))
    dropped, checks = Counter(), defaultdict(list, n=check)
    segments = collect(seed, max_minutes, cache, dropped, checks)
    cache.save()
    plan = plan_clips(seed, segments)
    summary, jaws25, prompts_in = {}, [], defaultdict(set)
    for dataset in DATASETS:
        for split in ("train", "val", "test"):
            if (dataset, split) not in plan:
                continue
            index, seconds = {}, 0.0
            for i, clip in enumerate(plan[(dataset, split)]):
                sid, entry, dur, jaw, uids = write_clip(out, seed, dataset, split, i, *clip)
                index[sid] = entry
                seconds += dur
                prompts_in[split] |= uids
                if FPS[dataset] == 25:
                    jaws25.append(jaw)
            if split != "train":
                own_style_ids(index)
            rel = write_index(out, dataset, split, index)
            summary[(dataset, split)] = {"clips": len(index), "seconds": seconds, "json": rel,
                                         "speakers": sorted({c[0] for c in plan[(dataset, split)]})}
    assert not (prompts_in["train"] & (prompts_in["val"] | prompts_in["test"])), "a prompt in two splits"
    summary["lag1_r2_jaw_25fps"] = lag1_r2(jaws25)
    if check:
        from scripts.speech_set.report import show_checks
        show_checks(checks, os.path.join(out, "alignment_check"))
    if verbose:
        _print_summary(out, seed, summary, dropped, time.time() - t_start)
    return summary


def _print_summary(out, seed, summary, dropped, seconds):
    rows = {k: v for k, v in summary.items() if isinstance(k, tuple)}
    n = sum(v["clips"] for v in rows.values())
    total = sum(v["seconds"] for v in rows.values())
    test = sum(v["clips"] for (d, s), v in rows.items() if s == "test")
    print(f"Real-speech set (seed {seed}) in {out}/  [stand-in FLAME: FLAME/standin_generic_model.pkl; "
          f"aligner: pocketsphinx {_ps_version()}]")
    for (dataset, split), v in rows.items():
        print(f"  {dataset:14s} {split:5s} {v['clips']:3d} clips {v['seconds']:6.1f} s  "
              f"{FPS[dataset]} fps  speakers {', '.join(v['speakers'])}")
    print(f"  total {n} clips, {total / 60:.1f} min of audio; test {test} clips ({test / max(n, 1):.0%})")
    print(f"  jaw lag-1 R^2 (25 fps clips): {summary['lag1_r2_jaw_25fps']:.2f}")
    by_voice = defaultdict(list)
    for (voice, why), k in sorted(dropped.items()):
        by_voice[voice].append(f"{why} {k}")
    for voice, items in by_voice.items():
        print(f"  dropped prompts, {voice}: {'; '.join(items)}")
    print(f"  took {seconds:.0f} s")


def _ps_version():
    try:
        from importlib.metadata import version
        return version("pocketsphinx")
    except Exception:
        return "?"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="speech_data", help="output folder (use as DEMO_DATA_ROOT / DATA.data_root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_minutes", type=float, default=10.0, help="about this much audio in all")
    p.add_argument("--check", type=int, default=0,
                   help="print phone timings vs energy for N prompts per voice and plot them")
    args = p.parse_args(argv)
    from scripts.speech_set.sources import MissingPackages
    try:
        make_speech_set(args.out, args.seed, args.max_minutes, args.check)
    except MissingPackages as e:
        sys.exit(f"make_speech_set: {e}")


if __name__ == "__main__":
    main()
