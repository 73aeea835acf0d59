"""scripts/make_speech_set.py without the Debian packages: phones -> visemes -> motion on hand-made
alignments, clip building, native-fps sampling, the alignment checks and the Italian spelling rules."""
import numpy as np

from main.evaluation.align import PHONES as ALIGNED_PHONES, italian_phones, normalise, number_words
from scripts.make_demo_data import sample_motion, speaker_style
from scripts.make_speech_set import SPEAKERS, lag1_r2, own_style_ids
from scripts.speech_set import clips as C
from scripts.speech_set.alignment_checks import check_alignment
from scripts.speech_set.visemes import LEAD_S, motion_signals

# "pa" "mi" "fu" with pauses: SIL, P, AA, SIL, M, IY, SIL, F, UW, SIL
PHONES = [("SIL", 0.0, 0.4), ("P", 0.4, 0.48), ("AA", 0.48, 0.68), ("SIL", 0.68, 1.2),
          ("M", 1.2, 1.28), ("IY", 1.28, 1.46), ("SIL", 1.46, 1.9), ("F", 1.9, 2.0), ("UW", 2.0, 2.2),
          ("SIL", 2.2, 3.0)]


def _at(tg, x, t):
    """Value of a motion signal at audio time t (the signals lead the audio by LEAD_S)."""
    return x[np.argmin(np.abs(tg + LEAD_S - t))]


def test_visemes_of_hand_made_alignment():
    tg, jaw, expr = motion_signals(PHONES, 3.0)
    open_a = _at(tg, jaw, 0.58)
    assert open_a > 0.6 and _at(tg, expr[:, 0], 0.58) > 0.5                     # 'a': jaw and lips open
    # 'p' and 'm': lips shut and pressed, the jaw nearly closed although 'a' / 'i' follow at once
    for t in (0.44, 1.24):
        assert _at(tg, jaw, t) < 0.15 * open_a
        assert _at(tg, expr[:, 6], t) > 1.0 and _at(tg, expr[:, 0], t) < -0.3
    assert _at(tg, expr[:, 2], 1.37) > 1.0 and _at(tg, jaw, 1.37) < 0.3         # 'i': spread, little jaw
    assert _at(tg, expr[:, 1], 2.1) > 1.2                                       # 'u': rounded
    assert _at(tg, expr[:, 4], 1.95) < -0.4                                     # 'f': lower lip up
    # silence: the mouth at rest, in a pause and before / after the utterance
    for t in (0.1, 0.95, 2.8):
        assert abs(_at(tg, jaw, t)) < 0.01 and np.abs(_at(tg, expr, t)).max() < 0.02, t
    # the jaw starts opening for 'a' during the 'p' (coarticulation + lead, the lips stay pressed), not
    # before it, and moves without jumps
    assert _at(tg, jaw, 0.30) < 0.01 < _at(tg, jaw, 0.42) < _at(tg, jaw, 0.44) < _at(tg, jaw, 0.5)
    assert np.abs(np.diff(jaw)).max() < 0.03                                    # per ms


def test_loudness_and_determinism():
    a = motion_signals(PHONES, 3.0)
    b = motion_signals(PHONES, 3.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    soft = motion_signals(PHONES, 3.0, loudness=np.full(len(PHONES), 0.2))
    assert _at(soft[0], soft[1], 0.58) < 0.8 * _at(a[0], a[1], 0.58)           # softer vowels open less
    assert np.abs(soft[2][:, 10]).max() < 1e-6 < a[2][:, 10].max()              # loud ones raise the brows


def test_20_and_25_fps_sample_the_same_signals():
    tg, jaw, expr = motion_signals(PHONES, 3.0)
    style = dict(speaker_style(0, "mm_001"), jaw_gain=1.0, jaw_rest=0.0, expr_gain=1.0, expr_offset=np.zeros(50))
    j25, e25 = sample_motion(tg, jaw, expr, style, None, 25, 75, np.random.default_rng(1))
    j20, e20 = sample_motion(tg, jaw, expr, style, None, 20, 60, np.random.default_rng(1))
    # common instants (every 0.2 s = 5 frames at 25 fps, 4 at 20 fps): the same motion up to the
    # tracking noise and drift
    assert np.abs(j25[::5] - j20[::4]).max() < 0.012
    assert np.abs(e25[::5, :10] - e20[::4, :10]).max() < 0.12
    assert abs(j25.max() - 0.22 * jaw.max()) < 0.02                             # 0.22 rad wide open
    # the 25 fps jaw, interpolated to 20 fps times, follows the 20 fps jaw
    assert np.corrcoef(np.interp(np.arange(60) / 20, np.arange(75) / 25, j25), j20)[0, 1] > 0.98


def _tone_clip(phones, sr=16000):
    """Audio with a loud tone in the speech phones and near-silence in SIL."""
    n = int(round(phones[-1][2] * sr))
    x = np.random.default_rng(0).normal(0, 1e-4, n)
    for p, a, b in phones:
        if p != "SIL":
            i, j = int(a * sr), int(b * sr)
            amp = 0.3 if p in ("AA", "IY", "UW") else 0.1
            x[i:j] += amp * np.sin(2 * np.pi * 180 * np.arange(j - i) / sr)
    return x.astype(np.float32)


def test_alignment_checks():
    audio = _tone_clip(PHONES)
    reason, loud = check_alignment(PHONES, audio)
    assert reason is None and len(loud) == len(PHONES)
    assert loud[2] > 0.9 and loud[0] == 0.0                                     # 'a' loud, silence not
    shifted = [(p, a + 0.3, b + 0.3) for p, a, b in PHONES[:-1]] + [("SIL", 2.5, 3.0)]
    shifted[0] = ("SIL", 0.0, 0.7)
    assert "vowel" in check_alignment(shifted, audio)[0]                        # vowels on silence
    long_a = PHONES[:2] + [("AA", 0.48, 1.2)] + PHONES[4:]
    assert check_alignment(long_a, _tone_clip(long_a))[0].startswith("phone AA")


def test_cut_join_and_speed():
    r = np.random.default_rng(0)
    # a 12 s prompt: 10 words of 1 s with 0.2 s pauses -> pieces of at most 7.4 s, cut in pauses
    phones, t = [("SIL", 0.0, 0.3)], 0.3
    for _ in range(10):
        phones += [("M", t, t + 0.1), ("AA", t + 0.1, t + 1.0), ("SIL", t + 1.0, t + 1.2)]
        t += 1.2
    audio = _tone_clip(phones)
    segs = C.segments("v/long", audio, phones, np.ones(len(phones)))
    assert len(segs) == 2 and all(len(s.audio) / C.SR <= 7.4 for s in segs)
    assert all(s.phones[0][0] != "SIL" or s.phones[0][2] - s.phones[0][1] <= C.MAX_EDGE_SIL_S + 1e-9 for s in segs)
    for s in segs:        # every cut lies in a pause: no speech phone is split
        assert all(round(b - a, 6) in (0.1, 0.9) for p, a, b in s.phones if p != "SIL")
    groups = C.group(segs + segs, r)
    assert all(C.MIN_CLIP_S <= sum(len(s.audio) for s in g) / C.SR + 0.4 <= C.MAX_CLIP_S for g in groups)
    a1, p1, l1 = C.join(segs, np.random.default_rng(5))
    a2, p2, l2 = C.join(segs, np.random.default_rng(5))
    assert np.array_equal(a1, a2) and p1 == p2 and len(l1) == len(p1)
    assert p1[-1][2] < len(a1) / C.SR and p1[0][1] > 0.09                       # silence at both ends
    fast, pf = C.speed(a1, p1, 1.25)
    assert abs(len(fast) - len(a1) / 1.25) <= 2 and np.isclose(pf[-1][2], p1[-1][2] / 1.25)
    stereo = C.to_rate(a1[:1600], 48000, stereo=True)
    assert stereo.shape == (4800, 2) and np.allclose(stereo[:, 1], 0.8 * stereo[:, 0])


def test_text_rules():
    assert normalise("Press 1, then 21 #.", "en") == ["press", "one", "then", "twenty", "one", "pound"]
    assert normalise("[ascending tones]", "en") is None
    assert normalise("Il numero ? stato cos? salvato, premi 8", "it") == [
        "il", "numero", "e", "stato", "cosi", "salvato", "premi", "otto"]
    assert number_words(28, "it") == "ventotto" and number_words(115, "en") == "one hundred fifteen"
    assert italian_phones("chiamata") == "K Y AA M AA T AA"
    assert italian_phones("cancelletto") == "K AA N CH EH L EH T AO"
    assert italian_phones("figlio") == "F IY L Y AO" and italian_phones("gnocchi") == "N Y AO K IY"
    assert italian_phones("sciopero") == "SH AO P EH R AO" and italian_phones("giorno") == "JH AO R N AO"


def test_speaker_plan_and_lag1():
    # every voice that has val or test prompts has a speaker for them; M003 is one speaker, one voice
    for split in ("val", "test"):
        voices = {v for _, _, v, splits, _ in SPEAKERS if split in splits}
        assert voices and voices <= {"allison", "carlo", "ps_male"}
    assert {v for _, s, v, _, _ in SPEAKERS if s == "M003"} == {"ps_male"}
    x = np.sin(np.arange(200) / 5.0)
    assert abs(lag1_r2([x]) - (1 - np.mean(np.diff(x) ** 2) / x.var())) < 1e-6 and lag1_r2([x]) > 0.95


def test_evaluation_clips_get_their_own_output_folders():
    index = {"a": {"speaker_id": ["W009", "sad"]}, "b": {"speaker_id": ["W009", "sad"]},
             "c": {"speaker_id": ["W009", "happy"]}, "d": {"speaker_id": "mm_001"}, "e": {"speaker_id": "mm_001"}}
    own_style_ids(index)
    assert "style_id" not in index["a"] and "style_id" not in index["c"] and "style_id" not in index["d"]
    assert index["b"]["style_id"] == '["W009", "sad"]_passionate_1'
    assert index["e"]["style_id"] == '["mm_001"]_passionate_1'


def test_every_aligned_phone_has_a_viseme_target():
    """The aligner labels with main/evaluation/align.PHONES; the speech set's motion needs a target for each."""
    from scripts.speech_set.visemes import _TABLE, DIPHTHONGS
    assert set(_TABLE) | set(DIPHTHONGS) == ALIGNED_PHONES
