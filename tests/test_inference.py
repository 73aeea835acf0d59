"""main/inference.py: evaluation layout, parallel coefficient tree, native fps, refusals, single audio, bad audio.

A tiny FaceFormer (the demo's tiny wav2vec2 config, random init, non-zero output map) is saved as a
checkpoint in the training loop's format; the data are hand-made FLAME files and wavs in the three
datasets' real formats under the demo config's relative paths, with the stand-in FLAME model.
"""
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from main import inference as I
from main.infer.jobs import default_log_file
from models.flame import FLAME
from scripts.flame_standin import write_standin_files
from tests.conftest import tiny_model
from utils.config import load_config
from utils.errors import InferenceError, ResultsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(REPO, "config", "demo.yaml")
SR = 16000
STYLES = ["M003", "M005", "dh01", "mm01"]  # sorted training speakers of the fixture

# (dataset, sample id, speaker, emotion, native frames, fps); audio lasts frames / fps seconds.
TEST_SAMPLES = [
    ("MEAD_VHAP", "M003_angry_001", "M003", "angry", 40, 25),
    ("MEAD_VHAP", "M005_neutral_002", "M005", "neutral", 52, 25),
    ("MEAD_VHAP", "W009_happy_003", "W009", "happy", 31, 25),       # untrained speaker
    ("MultiModal200", "mm01_s1", "mm01", "calm", 37, 20),           # 37 * 25/20 = 46.25 -> 46 frames at 25 fps
    ("MultiModal200", "mm02_s7", "mm02", "calm", 23, 20),           # untrained, 28.75 -> 29 -> back to 23
]


def speechy(seconds, sr=SR, seed=0):
    """Syllable-like audio: voiced harmonics under a 4 Hz loudness envelope, plus a little noise."""
    r = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 120 + 20 * seed
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    env = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    return (0.2 * env * x + 0.01 * r.normal(size=t.shape)).astype(np.float32)


def vhap_file(path, t, seed):
    r = np.random.default_rng(seed)
    np.savez(path, expr=(0.3 * r.normal(size=(1, t, 100))).astype(np.float32),
             jaw_pose=(0.05 * r.normal(size=(1, t, 3))).astype(np.float32),
             shape=r.normal(size=(300,)).astype(np.float32),
             rotation=np.zeros((1, t, 3), np.float32), translation=np.zeros((1, t, 3), np.float32))


def emoca_file(path, t, seed):
    r = np.random.default_rng(seed)
    np.savez(path, expcode=(0.3 * r.normal(size=(t, 50))).astype(np.float32),
             posecode=(0.05 * r.normal(size=(t, 6))).astype(np.float32),
             shapecode=r.normal(size=(t, 100)).astype(np.float32))


def write_json(root, rel, entries):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(entries, f)


def style_folder(speaker, emotion):
    return json.dumps([speaker, emotion]) + "_passionate"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Data in the demo config's layout: JSONs under dataset_jsons/, FLAME stand-in under FLAME/."""
    root = str(tmp_path_factory.mktemp("data"))
    write_standin_files(os.path.join(root, "FLAME"))
    os.makedirs(os.path.join(root, "clips"))
    splits = {}
    train = [("digital_human", "dh01_a", "dh01", "neutral", 30, 25, "emoca"),
             ("MEAD_VHAP", "M003_train", "M003", "angry", 30, 25, "vhap"),
             ("MEAD_VHAP", "M005_train", "M005", "sad", 30, 25, "vhap"),
             ("MultiModal200", "mm01_train", "mm01", "calm", 24, 20, "vhap")]
    for i, (ds, sid, spk, emo, t, fps, fmt) in enumerate(
            [(ds, sid, spk, emo, t, fps, "vhap") for ds, sid, spk, emo, t, fps in TEST_SAMPLES] + train):
        split = "train" if sid in {x[1] for x in train} else "test"
        sf.write(os.path.join(root, "clips", f"{sid}.wav"), speechy(t / fps, seed=i % 4), SR)
        (emoca_file if fmt == "emoca" else vhap_file)(os.path.join(root, "clips", f"{sid}.npz"), t, seed=i)
        splits.setdefault((ds, split), {})[sid] = {
            "audio_path": f"clips/{sid}.wav", "flame_coeff_save_path": f"clips/{sid}.npz",
            "speaker_id": [spk, emo]}
    write_json(root, "dataset_jsons/digital_human.json", splits[("digital_human", "train")])
    for ds in ("MEAD_VHAP", "MultiModal200"):
        for split in ("train", "test"):
            write_json(root, f"dataset_jsons/splits/{ds}_{split}.json", splits[(ds, split)])
        write_json(root, f"dataset_jsons/splits/{ds}_val.json", {})
    return root


@pytest.fixture(scope="module")
def checkpoint(data_root):
    """A tiny model in the training loop's checkpoint format, with a non-zero output map; the wav2vec2
    CNN front end, whose batch invariance the tolerances below were set for (the log-mel one's:
    tests/test_frontend.py)."""
    cfg = load_config(DEMO_CFG, [f"DATA.data_root={data_root}", "MODEL.audio_frontend=cnn"])
    model = tiny_model(cfg.MODEL, len(STYLES))
    path = os.path.join(data_root, "ckpt", "best_model.pth")
    os.makedirs(os.path.dirname(path))
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 3, "styles": list(STYLES),
                "config": cfg.to_dict()}, path)
    return path


def overrides(data_root, checkpoint, out, *extra):
    return [f"DATA.data_root={data_root}", f"INFER.checkpoint={checkpoint}", "INFER.device=cpu",
            f"INFER.output_root={out}/results/metrics/run/test", f"INFER.coeff_root={out}/results/coeffs/run/test",
            "INFER.exp_name=exp", "INFER.batch_size=2", *extra]


def run_eval(data_root, checkpoint, out, *extra, flags=()):
    return I.cli(["--config", DEMO_CFG, *flags, *overrides(data_root, checkpoint, out, *extra)])


def vert_root(out):
    return os.path.join(str(out), "results", "metrics", "run", "test", "exp")


def coeff_root(out):
    return os.path.join(str(out), "results", "coeffs", "run", "test", "exp")


def read_frames(folder):
    names = os.listdir(folder)
    frames = [np.load(os.path.join(folder, f"{i}.npy")) for i in range(len(names))]
    return names, frames


def assert_frame_folder(folder, n):
    """Exactly 0.npy .. (n-1).npy, each (5023,3) float32; returns the (n,5023,3) stack."""
    names, frames = read_frames(folder)
    assert sorted(names) == sorted(f"{i}.npy" for i in range(n)), folder
    for f in frames:
        assert f.shape == (5023, 3) and f.dtype == np.float32
    return np.stack(frames)


def gt_frames(data_root, sid):
    with np.load(os.path.join(data_root, "clips", f"{sid}.npz")) as z:
        return z["expr"].reshape(-1, 100).shape[0]


# ----------------------------------------------------------------------------------------------
# Evaluation mode
# ----------------------------------------------------------------------------------------------

def test_eval_layout_native_fps_and_parallel_tree(data_root, checkpoint, tmp_path):
    rows = run_eval(data_root, checkpoint, tmp_path)
    flame = FLAME.from_file(os.path.join(data_root, "FLAME", "standin_generic_model.pkl"))

    # the vertex tree holds exactly the test datasets and their style folders
    assert sorted(os.listdir(vert_root(tmp_path))) == ["MEAD_VHAP", "MultiModal200"]
    for ds in ("MEAD_VHAP", "MultiModal200"):
        expected = sorted(style_folder(s, e) for d, _, s, e, _, _ in TEST_SAMPLES if d == ds)
        assert sorted(os.listdir(os.path.join(vert_root(tmp_path), ds))) == expected
        assert sorted(os.listdir(os.path.join(coeff_root(tmp_path), ds))) == expected

    for ds, sid, spk, emo, t, fps in TEST_SAMPLES:
        folder = os.path.join(vert_root(tmp_path), ds, style_folder(spk, emo))
        n = gt_frames(data_root, sid)
        assert n == t
        verts = assert_frame_folder(folder, n)  # native fps: MultiModal200 at 20 fps has its gt count

        cdir = os.path.join(coeff_root(tmp_path), ds, style_folder(spk, emo))
        assert sorted(os.listdir(cdir)) == ["coeffs287.npy", "meta.json", "motion.npy"]
        motion, coeffs = np.load(os.path.join(cdir, "motion.npy")), np.load(os.path.join(cdir, "coeffs287.npy"))
        assert motion.shape == (n, 51) and motion.dtype == np.float32 and np.isfinite(motion).all()
        assert motion.std(0).max() > 1e-3  # the model's output varies over time
        with np.load(os.path.join(data_root, "clips", f"{sid}.npz")) as z:
            shape = z["shape"]
        np.testing.assert_allclose(coeffs[:, :100], np.broadcast_to(shape[:100], (n, 100)), rtol=1e-6)
        np.testing.assert_array_equal(coeffs[:, 100:150], motion[:, :50])
        np.testing.assert_array_equal(coeffs[:, 153], motion[:, 50])
        assert coeffs.shape == (n, 287) and not coeffs[:, [150, 151, 152, 154, 155]].any()
        # vertices are FLAME of the written motion with the sample's shape (first FLAME.n_shape=100 dims)
        expect = flame.motion_to_vertices(motion, shape[:100])
        np.testing.assert_allclose(verts, expect, atol=1e-5)

        meta = json.load(open(os.path.join(cdir, "meta.json")))
        assert meta["sample_id"] == sid and meta["dataset"] == ds and meta["speaker"] == spk
        assert meta["style_id"] == style_folder(spk, emo)
        assert meta["fps"] == fps and meta["n_frames"] == n
        assert meta["audio_path"] == os.path.join(data_root, "clips", f"{sid}.wav")
        assert os.path.isabs(meta["audio_path"]) and meta["checkpoint"] == os.path.abspath(checkpoint)
        assert meta["condition_style"] == (spk if spk in STYLES else STYLES[0])

    by_ds = {r["dataset"]: r for r in rows}
    assert by_ds["MEAD_VHAP"]["samples"] == 3 and by_ds["MultiModal200"]["frames"] == 37 + 23
    assert by_ds["MultiModal200"]["audio_s"] == pytest.approx((46 + 29) / 25)
    log = open(os.path.join(tmp_path, "results", "inference.log")).read()
    assert "speaker 'W009' (1 test sample(s)) is not a training style: conditioned on 'M003'" in log
    assert "MultiModal200" in log and "RTF" in log


def test_output_fps_number_and_batch_invariance(data_root, checkpoint, tmp_path):
    """INFER.output_fps=25 writes the 25 fps motion; batch size and the long-audio windowing path
    change neither frame counts nor (batching) the values."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_eval(data_root, checkpoint, a, "INFER.output_fps=25", "INFER.batch_size=1")
    run_eval(data_root, checkpoint, b, "INFER.output_fps=25", "INFER.batch_size=5")
    # windows of 0.6 s overlapping by 0.12 s: every clip here is longer, so all are windowed
    run_eval(data_root, checkpoint, c, "INFER.output_fps=25", "INFER.window_seconds=0.6",
             "INFER.overlap_seconds=0.12")
    for ds, sid, spk, emo, t, fps in TEST_SAMPLES:
        n25 = int(np.floor(t * 25 / fps + 0.5))
        rel = os.path.join(ds, style_folder(spk, emo))
        assert_frame_folder(os.path.join(vert_root(a), rel), n25)
        ma, mb, mc = (np.load(os.path.join(coeff_root(x), rel, "motion.npy")) for x in (a, b, c))
        assert ma.shape == mb.shape == mc.shape == (n25, 51)
        # the tiny encoder uses layer norm + attention masks: padding in a batch changes nothing
        np.testing.assert_allclose(ma, mb, atol=1e-5)
        assert np.isfinite(mc).all()
        assert json.load(open(os.path.join(coeff_root(a), rel, "meta.json")))["fps"] == 25


def test_demo_data_frame_counts_match_ground_truth(demo_root, tmp_path):
    """On the demo generator's data (scripts/make_demo_data.py), every test sample's folder holds as
    many frames as its FLAME file at the dataset's native fps (MultiModal200: 20 fps)."""
    from dataset.flame_files import load_flame_params
    from dataset.index import split_refs
    from dataset.styles import style_classes

    cfg = load_config(DEMO_CFG, [f"DATA.data_root={demo_root}"])
    styles = style_classes(cfg)
    model = tiny_model(cfg.MODEL, len(styles), seed=1, bias_std=None)
    torch.save({"model": model.state_dict(), "styles": styles, "epoch": 0, "config": cfg.to_dict()},
               tmp_path / "demo.pth")
    rows = I.cli(["--config", DEMO_CFG, f"DATA.data_root={demo_root}", f"INFER.checkpoint={tmp_path / 'demo.pth'}",
                  "INFER.device=cpu", f"INFER.output_root={tmp_path}/results/metrics/demo/test",
                  f"INFER.coeff_root={tmp_path}/results/coeffs/demo/test"])
    refs = split_refs(cfg, "test")
    assert {r.dataset for r in refs} == {"MEAD_VHAP", "MultiModal200"} and len(refs) == sum(r["samples"] for r in rows)
    for ref in refs:
        gt = load_flame_params(ref.flame_path)["expr"].shape[0]
        if ref.valid_frames_num:
            gt = min(gt, ref.valid_frames_num)
        folder = os.path.join(tmp_path, "results", "metrics", "demo", "test", "faceformer_demo", ref.dataset,
                              ref.style_id)
        assert_frame_folder(folder, gt)
        assert ref.fps == {"MEAD_VHAP": 25, "MultiModal200": 20}[ref.dataset]


def test_duplicate_output_folder_is_an_error_before_writing(data_root, checkpoint, tmp_path):
    write_json(data_root, "dataset_jsons/dup_test.json", {
        "first": {"audio_path": "clips/M003_angry_001.wav", "flame_coeff_save_path": "clips/M003_angry_001.npz",
                  "speaker_id": ["M003", "angry"], "style_id": "same"},
        "second": {"audio_path": "clips/M005_neutral_002.wav",
                   "flame_coeff_save_path": "clips/M005_neutral_002.npz", "speaker_id": "M005", "style_id": "same"}})
    with pytest.raises(ResultsError) as e:
        run_eval(data_root, checkpoint, tmp_path, "DATA.datasets.MEAD_VHAP.test=dataset_jsons/dup_test.json")
    msg = str(e.value)
    assert "'first'" in msg and "'second'" in msg and os.path.join(vert_root(tmp_path), "MEAD_VHAP", "same") in msg
    assert not os.path.exists(os.path.join(tmp_path, "results", "metrics"))
    assert not os.path.exists(os.path.join(tmp_path, "results", "coeffs"))


def test_refuses_existing_results_unless_overwrite(data_root, checkpoint, tmp_path):
    only_mm = ["DATA.datasets.MEAD_VHAP.test="]  # MultiModal200 only: quicker
    run_eval(data_root, checkpoint, tmp_path, *only_mm)
    folder = os.path.join(vert_root(tmp_path), "MultiModal200", style_folder("mm01", "calm"))
    np.save(os.path.join(folder, "999.npy"), np.zeros((5023, 3), np.float32))  # a stale frame
    before = os.stat(os.path.join(folder, "0.npy")).st_mtime_ns

    with pytest.raises(ResultsError) as e:
        run_eval(data_root, checkpoint, tmp_path, *only_mm)
    assert folder in str(e.value) and "--overwrite" in str(e.value)
    assert os.stat(os.path.join(folder, "0.npy")).st_mtime_ns == before
    assert os.path.exists(os.path.join(folder, "999.npy"))

    run_eval(data_root, checkpoint, tmp_path, *only_mm, flags=["--overwrite"])
    assert_frame_folder(folder, 37)  # the stale frame is gone: nothing else in the folder
    run_eval(data_root, checkpoint, tmp_path, *only_mm, "INFER.overwrite=true")
    assert_frame_folder(folder, 37)


def test_eval_user_errors(data_root, checkpoint, tmp_path):
    with pytest.raises(InferenceError, match="INFER.condition_style is 'nobody'.*M003, M005, dh01, mm01"):
        run_eval(data_root, checkpoint, tmp_path, "INFER.condition_style=nobody")
    with pytest.raises(InferenceError, match="INFER.overlap_seconds .* less than half of INFER.window_seconds"):
        run_eval(data_root, checkpoint, tmp_path, "INFER.window_seconds=1.0", "INFER.overlap_seconds=0.6")
    missing = os.path.join(tmp_path, "nope.pth")
    with pytest.raises(InferenceError, match="checkpoint not found: .*nope.pth"):
        run_eval(data_root, missing, tmp_path)
    assert not os.path.exists(os.path.join(tmp_path, "results", "metrics"))


def test_checkpoint_runs_without_the_pretrained_files(data_root, checkpoint, tmp_path):
    """A checkpoint trained from pretrained wav2vec2 holds all weights: when the pretrained files are
    unavailable, the architecture is built from MODEL.audio_encoder_config (None = wav2vec2-base)."""
    from models.wav2vec import AudioEncoderLoadError
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["MODEL"].update(audio_encoder_pretrained=True, audio_encoder_repo="/nonexistent/wav2vec2")
    torch.save(ckpt, tmp_path / "pre.pth")
    sf.write(tmp_path / "a.wav", speechy(0.5), SR)
    run_single(data_root, tmp_path / "pre.pth", tmp_path / "a.wav", tmp_path / "o")
    m, _ = assert_single_outputs(tmp_path / "o", 13)
    run_single(data_root, checkpoint, tmp_path / "a.wav", tmp_path / "ref")
    np.testing.assert_array_equal(m, np.load(tmp_path / "ref" / "motion.npy"))
    assert "/nonexistent/wav2vec2: no such folder" in open(tmp_path / "o" / "inference.log").read()
    # without an architecture that fits the weights, the original error (with how to get the files) stands
    ckpt["config"]["MODEL"]["audio_encoder_config"] = None
    torch.save(ckpt, tmp_path / "pre2.pth")
    with pytest.raises(AudioEncoderLoadError, match="no such folder"):
        run_single(data_root, tmp_path / "pre2.pth", tmp_path / "a.wav", tmp_path / "o2")


def test_log_file_location():
    assert default_log_file("results/metrics/faceformer_run/test") == os.path.join("results", "inference.log")
    assert default_log_file("out/test") == os.path.join("out", "inference.log")
    assert default_log_file("/x/results/metrics/run/test") == "/x/results/inference.log"
    assert default_log_file("/x/y/test") == "/x/y/inference.log"


# ----------------------------------------------------------------------------------------------
# Single-audio mode and bad audio
# ----------------------------------------------------------------------------------------------

def run_single(data_root, checkpoint, audio, out, *flags, extra=()):
    return I.cli(["--config", DEMO_CFG, "--audio", str(audio), "--out", str(out), *flags,
                  f"DATA.data_root={data_root}", f"INFER.checkpoint={checkpoint}", "INFER.device=cpu", *extra])


def assert_single_outputs(out, n, fps=25):
    verts = assert_frame_folder(os.path.join(out, "vertices"), n)
    assert sorted(os.listdir(out)) == ["coeffs287.npy", "inference.log", "meta.json", "motion.npy", "vertices"]
    motion = np.load(os.path.join(out, "motion.npy"))
    assert motion.shape == (n, 51) and np.isfinite(motion).all() and np.isfinite(verts).all()
    assert np.load(os.path.join(out, "coeffs287.npy")).shape == (n, 287)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["n_frames"] == n and meta["fps"] == fps
    return motion, meta
