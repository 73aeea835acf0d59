"""Lip-sync checks without ground truth (main/evaluation/lipsync.py) on synthetic clips whose lag, silences and
closures are known: the stand-in FLAME's jaw is driven by the speech envelope, delayed by a known lag."""
import json
import os

import numpy as np
import pytest

from main.evaluation import lipsync as L
from main.evaluation.lipsync_rules import LipSyncError, runs
from main.lipsync import main as lipsync_main
from models.flame_regions import lip_split

FPS, SR = 25, 16000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    """(FLAME stand-in, lip ids, data root holding FLAME/standin_*.pkl)."""
    from models.flame import FLAME
    from models.flame_regions import load_region_masks
    from scripts.flame_standin import write_standin_files

    root = tmp_path_factory.mktemp("lipsync_data")
    model, masks = write_standin_files(str(root / "FLAME"))
    return FLAME.from_file(model), load_region_masks(masks)["lips"], str(root)


def syllables(n_frames, silences=(), seed=0):
    """Per-frame speech envelope (linear, 0..1): 0.2 s humps of random height, each followed by a 0.12 s
    gap of zero (a lip closure), and zero over the silences [(start s, end s)]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / FPS
    env = np.zeros(n_frames)
    period = 0.32
    phase = t % period
    syll = (t // period).astype(int)
    height = 0.5 + 0.5 * rng.random(syll.max() + 1)
    hump = phase < 0.2
    env[hump] = height[syll[hump]] * np.sin(np.pi * phase[hump] / 0.2)
    for a, b in silences:
        env[(t >= a) & (t < b)] = 0.0
    return env


def audio_of(env, seed=1):
    """Noise whose amplitude follows the per-frame envelope (frame k at k / FPS), plus a faint floor."""
    rng = np.random.default_rng(seed)
    n = int(len(env) * SR / FPS)
    amp = np.interp(np.arange(n) / SR, np.arange(len(env)) / FPS, env)
    return (0.3 * amp * rng.normal(size=n) + 1e-4 * rng.normal(size=n)).astype(np.float32)


def lips_of(face, jaw, expr=None):
    """Jaw opening (T,) radians (and optional expression (T,50)) -> lip vertices (T,L,3), upper/lower selections."""
    flame, lip_idx, _ = face
    motion = np.zeros((len(jaw), 51), np.float32)
    motion[:, 50] = jaw
    if expr is not None:
        motion[:, :50] = expr
    verts = flame.motion_to_vertices(motion)
    upper, lower = lip_split(verts.mean(0), lip_idx)
    return verts[:, lip_idx], np.isin(lip_idx, upper), np.isin(lip_idx, lower)


def delayed(x, frames):
    """x delayed by `frames` (negative: advanced), edges repeated."""
    idx = np.clip(np.arange(len(x)) - frames, 0, len(x) - 1)
    return x[idx]


@pytest.mark.parametrize("lag_frames", [0, 3, -2, 6])
def test_recovers_the_known_lag(face, lag_frames):
    env = syllables(200, silences=[(2.0, 2.8), (5.0, 5.6)])
    lips, up, lo = lips_of(face, 0.2 * delayed(env, lag_frames))
    r = L.score_clip(lips, up, lo, audio_of(env), FPS)
    # positive lag: the mouth moves after the sound; within one frame (40 ms) of the truth
    assert r["lag_ms"] == pytest.approx(1000 * lag_frames / FPS, abs=1000 / FPS)
    assert r["corr"] > 0.8 and not r["static"]


def test_upper_and_lower_lips_split_at_the_mouth_centre(face):
    flame, lip_idx, _ = face
    rest = flame.motion_to_vertices(np.zeros((1, 51), np.float32))[0]
    upper, lower = lip_split(rest, lip_idx)
    assert len(upper) > 5 and len(lower) > 5 and not set(upper) & set(lower)
    assert rest[upper, 1].min() > rest[lower, 1].max()
    lips, up, lo = lips_of(face, np.array([0.0, 0.1, 0.2]))
    ap = L.aperture(lips, up, lo)
    assert ap[0] < ap[1] < ap[2]  # the jaw opens the mouth


def test_mouth_at_rest_in_silence(face):
    silences = [(1.6, 2.6), (4.0, 5.0)]
    env = syllables(175, silences=silences)
    audio = audio_of(env)
    silent = np.zeros(175, bool)  # the pauses with the syllable gaps next to them: where the audio is quiet
    for a, b in runs(env == 0):
        silent[a:b] = b - a >= 0.25 * FPS

    lips, up, lo = lips_of(face, 0.2 * env)
    rest = L.score_clip(lips, up, lo, audio, FPS)
    assert rest["silence_frames"] >= 30 and rest["speech_frames"] > 50
    assert rest["rest_open"] < 0.03 and rest["rest_move"] < 0.03  # the jaw is shut and still in the silences

    # the same speech but the mouth held half open through the silences: opening there / in speech,
    # and still (no movement inside the scored silence)
    jaw = 0.2 * env
    speech = L.envelope_db(audio, FPS, 175) >= np.percentile(L.envelope_db(audio, FPS, 175), 95) - L.SPEECH_DB
    jaw[silent] = 0.5 * jaw[speech].mean()
    lips, up, lo = lips_of(face, jaw)
    held = L.score_clip(lips, up, lo, audio, FPS)
    assert held["rest_open"] == pytest.approx(0.5, abs=0.08)  # the aperture is close to linear in the jaw
    assert held["rest_move"] < 0.03

    # the mouth goes on articulating through the silences as in speech: it moves there as much
    jaw = 0.2 * env
    jaw[silent] = 0.2 * syllables(175, seed=5)[silent]
    lips, up, lo = lips_of(face, jaw)
    talking = L.score_clip(lips, up, lo, audio, FPS)
    assert 0.6 < talking["rest_move"] < 1.6 and talking["rest_open"] > 0.4

    # silence is found from the audio: a copy whose pauses are loud has none scored
    loud = audio_of(np.maximum(env, 0.6))
    assert L.score_clip(lips, up, lo, loud, FPS)["silence_frames"] == 0


def test_closure_fraction_on_a_hand_made_alignment(face):
    env = syllables(100)
    lips, up, lo = lips_of(face, 0.2 * env)
    period = 0.32
    # M over the gaps after syllables 1, 3, 5 (the jaw is shut there); B over the peaks of 2 and 4 (wide open)
    phones = [("M", k * period + 0.21, k * period + 0.3) for k in (1, 3, 5)]
    phones += [("B", k * period + 0.08, k * period + 0.12) for k in (2, 4)]
    phones += [("AA", 0.0, 0.2), ("SIL", 3.5, 4.0)]
    r = L.score_clip(lips, up, lo, audio_of(env), FPS, phones)
    assert r["bilabials"] == 5 and r["closure"] == pytest.approx(3 / 5)
    # chance: the windows slid over the speech frames reach a gap often but not always
    assert 0.2 < r["closure_chance"] < 1
    # the same motion delayed by 160 ms misses the gaps
    late, up, lo = lips_of(face, 0.2 * delayed(env, 4))
    assert L.score_clip(late, up, lo, audio_of(env), FPS, phones)["closure"] < 3 / 5
    # no phones: no closure number
    assert L.score_clip(lips, up, lo, audio_of(env), FPS)["closure"] is None


def test_jitter_higher_for_a_noisier_copy(face):
    env = syllables(150)
    rng = np.random.default_rng(3)
    smooth, up, lo = lips_of(face, 0.2 * env)
    noisy, _, _ = lips_of(face, 0.2 * env + rng.normal(0, 0.01, 150), expr=rng.normal(0, 0.1, (150, 50)))
    j_smooth, j_noisy = L.jitter(smooth, FPS), L.jitter(noisy, FPS)
    assert 0 <= j_smooth < j_noisy
    # white noise spreads its energy evenly up to fps / 2: the share above 8 Hz is (12.5 - 8) / 12.5
    white = rng.normal(size=(2000, 4, 3))
    assert L.jitter(white, FPS) == pytest.approx(4.5 / 12.5, abs=0.02)
    assert L.jitter(np.ones((50, 4, 3)), FPS) is None


def test_a_static_mouth_has_no_timing(face):
    env = syllables(100)
    lips, up, lo = lips_of(face, np.full(100, 0.05))
    r = L.score_clip(lips, up, lo, audio_of(env), FPS, [("M", 0.2, 0.3)])
    assert r["static"] and r["lag_ms"] is None and r["corr"] is None and r["closure"] is None
    moving, up2, lo2 = lips_of(face, 0.2 * delayed(env, 2))
    pooled = L.pool([r, L.score_clip(moving, up2, lo2, audio_of(env), FPS)])
    assert pooled["n_static"] == 1 and pooled["lag_ms"] == pytest.approx(80, abs=40)
    assert L.pool([r])["lag_ms"] is None


def test_cli_on_single_audio_folders(face, tmp_path, capsys):
    """Two single-audio style folders (DIR/vertices, DIR/meta.json) under one root, an alignment file
    beside one wav: table, JSON, PNG; main/evaluate.py --lipsync runs the same."""
    import soundfile as sf

    from main.evaluate import main as evaluate_main
    from main.results.layout import build_meta
    from main.results.writer import write_sample

    flame, _, root = face
    env = syllables(150, silences=[(2.5, 3.3)])
    for name, lag in (("sync", 0), ("late", 5)):
        wav = tmp_path / f"{name}.wav"
        sf.write(wav, audio_of(env), SR)
        motion = np.zeros((150, 51), np.float32)
        motion[:, 50] = 0.2 * delayed(env, lag)
        out = tmp_path / "single" / name
        write_sample(str(out / "vertices"), str(out), flame.motion_to_vertices(motion), {"motion": motion},
                     build_meta(name, None, None, None, str(wav), FPS, 150, "test", None))
    with open(tmp_path / "sync.phones.json", "w") as f:
        json.dump([["M", 0.53, 0.62], ["AA1", 0.62, 0.8], ["P", 0.85, 0.93]], f)

    argv = ["--config", os.path.join(REPO, "config/demo.yaml"), "--results", str(tmp_path / "single"),
            f"DATA.data_root={root}"]
    lipsync_main(argv)
    table = capsys.readouterr().out
    rows = [line.split()[0] for line in table.splitlines()[1:4]]
    assert rows == ["late", "sync", "overall"]
    with open(tmp_path / "lipsync_single.json") as f:
        rep = json.load(f)
    clips = {c["clip"]: c for c in rep["clips"]}
    assert clips["sync"]["lag_ms"] == pytest.approx(0, abs=40)
    assert clips["late"]["lag_ms"] == pytest.approx(200, abs=40)
    assert clips["sync"]["closure"] == 1.0 and clips["sync"]["bilabials"] == 2
    assert clips["sync"]["phones"] == "sync.phones.json"
    assert clips["late"]["closure"] is None and "no alignment" in clips["late"]["phones"]
    assert os.path.isfile(rep["plot"]) and "lag_ms" in rep["definitions"]

    evaluate_main(argv + ["--lipsync", "--no_plots", "--out", str(tmp_path / "via_evaluate.json")])
    with open(tmp_path / "via_evaluate.json") as f:
        assert json.load(f)["overall"]["lag_ms"] == pytest.approx(rep["overall"]["lag_ms"])


def test_test_split_tree_with_a_parallel_coeff_tree(face, tmp_path):
    """{DATASET}/{STYLE}/{i}.npy with meta.json in --coeffs; a folder without meta.json is skipped."""
    import soundfile as sf

    from main.results.layout import build_meta
    from main.results.writer import write_sample

    flame, lip_idx, _ = face
    env = syllables(100)
    sf.write(tmp_path / "a.wav", audio_of(env), SR)
    motion = np.zeros((100, 51), np.float32)
    motion[:, 50] = 0.2 * delayed(env, -1)
    verts = flame.motion_to_vertices(motion)
    for style in ("s1", "s2"):
        write_sample(str(tmp_path / "res" / "DS" / style), str(tmp_path / "co" / "DS" / style), verts, {},
                     build_meta("id", "DS", style, "spk", str(tmp_path / "a.wav"), FPS, 100, "test", None))
    os.remove(tmp_path / "co" / "DS" / "s2" / "meta.json")
    rep = L.score_tree(str(tmp_path / "res"), lip_idx, coeffs=str(tmp_path / "co"), phones="none")
    assert [c["clip"] for c in rep["clips"]] == [os.path.join("DS", "s1")]
    assert rep["clips"][0]["lag_ms"] == pytest.approx(-40, abs=40)
    assert [s["folder"] for s in rep["skipped"]] == [str(tmp_path / "res" / "DS" / "s2")]
    with pytest.raises(LipSyncError, match="meta.json"):
        L.score_tree(str(tmp_path / "res"), lip_idx, phones="none")  # without --coeffs no clip has its audio


def test_transcript_and_alignment_sources(tmp_path):
    from main.evaluation.phones import PhoneSource, clean_label, find_transcript, read_alignment

    wav = str(tmp_path / "a.wav")
    assert find_transcript(wav, None, None) == (None, "")
    assert find_transcript(wav, None, {"transcript": "hello"}) == ("hello", "dataset JSON")
    (tmp_path / "a.lab").write_text("from a lab file")
    assert find_transcript(wav, None, None) == ("from a lab file", "a.lab")
    assert find_transcript(wav, {"transcript": "meta wins"}, {"transcript": "x"})[0] == "meta wins"
    assert [clean_label(x) for x in ("ah0", "M", "<sil>", "+NSN+")] == ["AH", "M", "SIL", "SIL"]
    (tmp_path / "a.phones.json").write_text(json.dumps({"phones": [["m", 0.2, 0.3], ["AA1", 0.0, 0.2]]}))
    assert read_alignment(str(tmp_path / "a.phones.json")) == [("AA", 0.0, 0.2), ("M", 0.2, 0.3)]
    phones, src = PhoneSource("auto").phones(wav, np.zeros(SR, np.float32), None)
    assert src == "a.phones.json" and phones[1][0] == "M"
    assert PhoneSource("none").phones(wav, np.zeros(SR, np.float32), None)[0] is None
    # a bad alignment file costs its clip the P/B/M check, not the whole report
    (tmp_path / "a.phones.json").write_text("[[\"m\", 0.3, 0.2]]")
    phones, src = PhoneSource("auto").phones(wav, np.zeros(SR, np.float32), None)
    assert phones is None and src.startswith("alignment file unreadable: ") and "ends before it starts" in src


def test_pocketsphinx_aligns_a_transcript_and_recognises_phones(tmp_path):
    """Forced alignment and phone recognition on recorded English (pocketsphinx-testdata's LibriVox
    reading, which the speech set uses); skipped where pocketsphinx or the recordings are missing."""
    pytest.importorskip("pocketsphinx")
    from main.evaluation.phones import PhoneSource
    from scripts.speech_set.sources import decode, list_prompts

    try:
        p = list_prompts()["ps_male"][0]
    except (OSError, IndexError) as e:
        pytest.skip(f"no recorded speech here (apt-get install pocketsphinx-testdata): {e}")
    audio = decode(p.path)
    wav = str(tmp_path / "x.wav")
    phones, src = PhoneSource("auto").phones(wav, audio, {"transcript": p.text})
    assert phones is not None and src == "transcript (meta.json), forced alignment", src
    assert phones[-1][2] == pytest.approx(len(audio) / SR, abs=0.02)
    n_aligned = len([x for x in phones if x[0] != "SIL"])
    assert n_aligned >= 5
    rec, src = PhoneSource("recognise").phones(wav, audio, {"transcript": p.text})  # ignores the text
    assert src == "phone recognition" and len([x for x in rec if x[0] != "SIL"]) >= n_aligned / 2
    # recognised phones overlap the aligned ones in time: speech where the alignment has speech
    speech = [(a, b) for x, a, b in phones if x != "SIL"]
    covered = [any(a < (c + d) / 2 < b for a, b in speech) for x, c, d in rec if x != "SIL"]
    assert np.mean(covered) > 0.8
