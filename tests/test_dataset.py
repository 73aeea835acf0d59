"""dataset/: FLAME parameter formats, resampling, audio, JSON indices, FaceDataset, collate, check CLI.

Every fixture is written here independently of the loader (np.savez with the documented key names
and shapes), in tmp_path, with a tiny config.
"""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from dataset.audio import load_audio, normalize_audio
from dataset.data_item import load_item
from dataset.dataset import FaceDataset, collate
from dataset.flame_params import load_flame_params, load_motion, load_shape, resample_motion
from dataset.index import read_index, style_classes
from utils.errors import DataError
from utils.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


# ----------------------------------------------------------------------------- fixture writers

def vhap_params(t, seed=0, batch_axis=True):
    """VHAP tracking output: expr (T,100), jaw_pose (T,3), shape (300,), ... with a batch axis."""
    r = np.random.default_rng(seed)
    p = {"expr": r.normal(size=(t, 100)), "jaw_pose": r.normal(size=(t, 3)) * 0.1,
         "rotation": r.normal(size=(t, 3)), "neck_pose": r.normal(size=(t, 3)),
         "eyes_pose": r.normal(size=(t, 6)), "translation": r.normal(size=(t, 3))}
    p = {k: (v[None] if batch_axis else v).astype(np.float32) for k, v in p.items()}
    p["shape"] = r.normal(size=(300,)).astype(np.float32)
    return p


def emoca_params(t, seed=0):
    """EMOCA export with a leading batch axis: expcode (1,T,50), posecode (1,T,6), shapecode ..."""
    r = np.random.default_rng(seed)
    return {"expcode": r.normal(size=(1, t, 50)).astype(np.float32),
            "posecode": r.normal(size=(1, t, 6)).astype(np.float32),
            "shapecode": r.normal(size=(1, t, 100)).astype(np.float32),
            "cam": r.normal(size=(1, t, 3)).astype(np.float32),
            "detailcode": r.normal(size=(1, t, 128)).astype(np.float32)}


def expected_vhap(p):
    e, j = np.asarray(p["expr"]), np.asarray(p["jaw_pose"])
    e, j = e.reshape(-1, e.shape[-1]), j.reshape(-1, j.shape[-1])
    return np.concatenate([e[:, :50], j[:, 0:1]], axis=1)


def write_wav(path, seconds, sr=SR, channels=1, seed=0):
    r = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    x = (0.1 * r.normal(size=(n, channels))).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, sr)
    return x


def write_sample(root, name, t, fps=25, fmt="vhap", seed=0, audio_seconds=None, sr=SR):
    """Writes <root>/<name>.wav and <root>/<name>.npz; returns (audio relpath, flame relpath, params)."""
    p = vhap_params(t, seed) if fmt == "vhap" else emoca_params(t, seed)
    fl = os.path.join(root, f"{name}.npz")
    os.makedirs(os.path.dirname(fl), exist_ok=True)
    np.savez(fl, **p)
    au = os.path.join(root, f"{name}.wav")
    write_wav(au, t / fps if audio_seconds is None else audio_seconds, sr=sr, seed=seed)
    return f"{name}.wav", f"{name}.npz", p


def make_cfg(root, datasets, **data):
    y = {"DATA": {"data_root": str(root), "datasets": datasets, **data}}
    p = os.path.join(str(root), "cfg.yaml")
    with open(p, "w") as f:
        yaml.safe_dump(y, f)
    return load_config(p)


def write_json(path, obj):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


# ----------------------------------------------------------------------------- resampling

def test_resample_20_to_25_fps_matches_analytic_sine():
    f, fps, t = 0.5, 20, 100  # a slow 0.5 Hz sine sampled 5 s at 20 fps
    x = np.sin(2 * np.pi * f * np.arange(t) / fps)[:, None]
    y = resample_motion(x, fps, 25)
    assert y.shape == (125, 1)  # round(100 * 25 / 20), same 5 s duration
    tk = np.arange(125) / 25
    inside = tk <= (t - 1) / fps
    err = np.abs(y[inside, 0] - np.sin(2 * np.pi * f * tk[inside]))
    # linear interpolation error <= max|x''| h^2 / 8 with h = 1/20 s
    bound = (2 * np.pi * f) ** 2 * (1 / fps) ** 2 / 8
    assert err.max() <= bound + 1e-9
    assert err.max() > bound / 10  # it really interpolated between frames
    np.testing.assert_allclose(y[~inside, 0], x[-1, 0])  # past the last input frame: hold it
    assert y[0, 0] == x[0, 0] and y[5, 0] == pytest.approx(x[4, 0])  # 0.2 s coincides in both grids


def test_resample_lengths_and_identity():
    x = np.arange(60, dtype=np.float32).reshape(30, 2)
    np.testing.assert_array_equal(resample_motion(x, 25, 25), x)
    assert resample_motion(x, 30, 25).shape == (25, 2)
    assert resample_motion(x[:2], 20, 25).shape == (3, 2)  # round(2.5) -> 3: halves go up
    y = resample_motion(x, 50, 25)  # downsampling by 2 picks every other frame
    np.testing.assert_allclose(y, x[::2])


# ----------------------------------------------------------------------------- FLAME formats

def test_vhap_npz_with_batch_axis_to_motion51(tmp_path):
    p = vhap_params(40, seed=1)
    path = str(tmp_path / "tracked_flame_params_30.npz")
    np.savez(path, **p)
    params = load_flame_params(path)
    assert params["expr"].shape == (40, 100) and params["jaw_pose"].shape == (40, 3)
    assert params["shape"].shape == (300,)
    m = load_motion(path, "vhap", 25)
    assert m.shape == (40, 51) and m.dtype == np.float32
    np.testing.assert_allclose(m[:, :50], p["expr"][0, :, :50])
    np.testing.assert_allclose(m[:, 50], p["jaw_pose"][0, :, 0])
    np.testing.assert_allclose(load_shape(path, "vhap"), p["shape"])


def test_emoca_npz_to_motion51_uses_posecode_column_3(tmp_path):
    p = emoca_params(30, seed=2)
    path = str(tmp_path / "emoca.npz")
    np.savez(path, **p)
    m = load_motion(path, "emoca", 25)
    assert m.shape == (30, 51)
    np.testing.assert_allclose(m[:, :50], p["expcode"][0])
    np.testing.assert_allclose(m[:, 50], p["posecode"][0, :, 3])  # jaw opening, not global rotation
    np.testing.assert_allclose(load_shape(path, "emoca"), p["shapecode"][0].mean(0), rtol=1e-5)


def test_vhap_20fps_resampled_and_valid_frames_cut_before(tmp_path):
    p = vhap_params(40, seed=3, batch_axis=False)
    path = str(tmp_path / "mm.npz")
    np.savez(path, **p)
    m = load_motion(path, "vhap", 20)
    assert m.shape == (50, 51)
    np.testing.assert_allclose(m, resample_motion(expected_vhap(p), 20, 25), rtol=1e-5, atol=1e-6)
    m = load_motion(path, "vhap", 20, valid_frames_num=20)
    assert m.shape == (25, 51)
    np.testing.assert_allclose(m, resample_motion(expected_vhap(p)[:20], 20, 25), rtol=1e-5, atol=1e-6)


def test_npy_holding_a_dict(tmp_path):
    p = vhap_params(12, seed=4)
    path = str(tmp_path / "params.npy")
    np.save(path, p, allow_pickle=True)
    m = load_motion(path, "vhap", 25)
    np.testing.assert_allclose(m, expected_vhap(p))
    np.testing.assert_allclose(load_shape(path, "vhap"), p["shape"])


def test_npy_with_foreign_object_is_refused(tmp_path):
    import datetime
    path = str(tmp_path / "evil.npy")
    np.save(path, {"expr": np.zeros((3, 100)), "when": datetime.date(2020, 1, 1)}, allow_pickle=True)
    with pytest.raises(DataError, match="refusing to unpickle 'datetime"):
        load_flame_params(path)


def test_folder_of_per_frame_files_in_numeric_order(tmp_path):
    p = vhap_params(12, seed=5, batch_axis=False)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):  # frame_10 sorts before frame_2 as text: order must be numeric
        frame = {"expr": p["expr"][i][None], "jaw_pose": p["jaw_pose"][i][None], "shape": p["shape"]}
        if i % 2:
            np.save(str(folder / f"frame_{i}.npy"), frame, allow_pickle=True)
        else:
            np.savez(str(folder / f"frame_{i}.npz"), **frame)
    (folder / "notes.txt").write_text("ignored")
    params = load_flame_params(str(folder))
    assert params["expr"].shape == (12, 100)
    np.testing.assert_allclose(load_motion(str(folder), "vhap", 25), expected_vhap(p))
    np.testing.assert_allclose(load_shape(str(folder), "vhap"), p["shape"], rtol=1e-6)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pkl_parameter_file_restricted(tmp_path):
    p = vhap_params(10, seed=6)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = str(tmp_path / f"params{protocol}.pkl")
        with open(path, "wb") as f:
            pickle.dump(p, f, protocol=protocol)
        np.testing.assert_allclose(load_motion(path, "vhap", 25), expected_vhap(p))
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"expr": p["expr"], "x": _RunsCode()}, f)
    with pytest.raises(DataError) as e:
        load_flame_params(path)
    assert path in str(e.value) and "system" in str(e.value)


def test_template_shape_overrides_sequence_shape(tmp_path):
    audio, flame, p = write_sample(str(tmp_path), "s", 20)
    tpl = np.linspace(-1, 1, 300).astype(np.float32)
    np.save(str(tmp_path / "tpl.npy"), tpl)
    write_json(tmp_path / "idx.json", {
        "a": {"audio_path": audio, "flame_coeff_save_path": flame, "speaker_id": "x"},
        "b": {"audio_path": audio, "flame_coeff_save_path": flame, "speaker_id": "x",
              "template_save_path": "tpl.npy"}})
    cfg = make_cfg(tmp_path, {"A": {"format": "vhap", "train": "idx.json"}})
    a, b = read_index("idx.json", "A", cfg.DATA.datasets.A, cfg)
    np.testing.assert_allclose(load_item(a)["shape"], p["shape"])
    np.testing.assert_allclose(load_item(b)["shape"], tpl)


# ----------------------------------------------------------------------------- audio

def test_load_audio_stereo_44k_to_mono_16k(tmp_path):
    sr_in, secs, f0 = 44100, 1.0, 220.0
    t = np.arange(int(sr_in * secs)) / sr_in
    left = 0.5 * np.sin(2 * np.pi * f0 * t)
    x = np.stack([left, 0.5 * left], axis=1).astype(np.float32)  # mono mix = 0.75 * sine
    path = str(tmp_path / "st.wav")
    sf.write(path, x, sr_in, subtype="FLOAT")
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1 and abs(y.shape[0] - 16000) <= 1
    ref = 0.75 * 0.5 * np.sin(2 * np.pi * f0 * np.arange(y.shape[0]) / 16000)
    mid = slice(200, -200)  # away from the resampler's edge transients
    assert np.abs(y[mid] - ref[mid]).max() < 1e-2


def test_normalize_audio():
    z = normalize_audio(np.zeros(1000, np.float32))
    assert np.isfinite(z).all() and np.abs(z).max() == 0
    x = 3 + 0.2 * np.random.default_rng(0).normal(size=5000).astype(np.float32)
    y = normalize_audio(x)
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-3


def test_load_item_audio_exactly_t_times_640(tmp_path):
    for k, extra in enumerate([0.013, -0.013, 0.2, -0.3]):  # audio slightly longer / shorter
        audio, flame, p = write_sample(str(tmp_path), f"s{k}", 50, audio_seconds=2.0 + extra, sr=22050)
        write_json(tmp_path / f"i{k}.json", {f"id{k}": {"audio": audio, "flame_path": flame, "speaker_id": "a"}})
        cfg = make_cfg(tmp_path, {"A": {"train": f"i{k}.json"}})
        (ref,) = read_index(f"i{k}.json", "A", cfg.DATA.datasets.A, cfg)
        item = load_item(ref)
        t = item["n_frames"]
        assert t == min(50, int(np.floor((2.0 + extra) * 25 + 0.5)))
        assert item["audio"].shape == (t * 640,) and item["motion"].shape == (t, 51)
        np.testing.assert_allclose(item["motion"], expected_vhap(p)[:t], rtol=1e-6)
        assert item["notes"] == []  # all within DATA.max_av_diff


# ----------------------------------------------------------------------------- JSON index

def test_read_index_speaker_forms_style_ids_aliases(tmp_path):
    write_json(tmp_path / "j" / "idx.json", {
        "s1": {"audio_path": "a/1.wav", "flame_coeff_save_path": "f/1.npz", "speaker_id": ["M003", "angry"]},
        "s2": {"audio": "a/2.wav", "flame_path": "f/2.npz", "speaker_id": "W009", "emotion": "happy"},
        "s3": {"audio_path": "a/3.wav", "flame_coeff_path": "f/3.npz", "speaker_id": "spk"},
        "s4": {"audio_path": "/abs/4.wav", "motion_feature_path": "f/4.npz", "speaker_id": "spk",
               "style_id": "custom_style", "valid_frames_num": 80, "fps": 30, "dataset": "other",
               "some_unknown_key": [1, 2], "template_save_path": "t/spk.npy"},
    })
    cfg = make_cfg(tmp_path, {"MEAD": {"format": "vhap", "fps": 25, "test": "j/idx.json"}})
    refs = {r.sample_id: r for r in read_index("j/idx.json", "MEAD", cfg.DATA.datasets.MEAD, cfg)}
    r1, r2, r3, r4 = refs["s1"], refs["s2"], refs["s3"], refs["s4"]
    assert (r1.speaker, r1.emotion, r1.style_id) == ("M003", "angry", '["M003", "angry"]_passionate')
    assert r1.style_id == json.dumps(["M003", "angry"]) + "_passionate"
    assert (r2.speaker, r2.emotion, r2.style_id) == ("W009", "happy", '["W009", "happy"]_passionate')
    assert (r3.emotion, r3.style_id) == (None, '["spk"]_passionate')
    assert r1.audio_path == os.path.join(str(tmp_path), "a/1.wav")
    assert r1.flame_path == os.path.join(str(tmp_path), "f/1.npz")
    assert r1.json_path == os.path.join(str(tmp_path), "j/idx.json")
    assert (r1.dataset, r1.fmt, r1.fps, r1.valid_frames_num, r1.template_path) == ("MEAD", "vhap", 25, None, None)
    assert r4.audio_path == "/abs/4.wav" and r4.style_id == "custom_style"
    assert (r4.valid_frames_num, r4.fps, r4.dataset) == (80, 30, "MEAD")
    assert r4.template_path == os.path.join(str(tmp_path), "t/spk.npy")


def test_relative_data_root_and_already_resolved_json_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "rel" / "j" / "i.json", {"a": {"audio": "1.wav", "flame_path": "1.npz", "speaker_id": "s"}})
    cfg = load_config(None, ["DATA.data_root=rel", "DATA.datasets.A.train=j/i.json"])
    for given in ("j/i.json", os.path.join("rel", "j", "i.json")):  # raw, or joined by the caller
        (ref,) = read_index(given, "A", cfg.DATA.datasets.A, cfg)
        assert ref.json_path == os.path.join("rel", "j", "i.json")
        assert ref.audio_path == os.path.join("rel", "1.wav")


def test_style_classes_sorted_training_speakers(tmp_path):
    write_json(tmp_path / "a.json", {"x": {"audio": "1.wav", "flame_path": "1.npz", "speaker_id": ["W2", "sad"]},
                                     "y": {"audio": "1.wav", "flame_path": "1.npz", "speaker_id": "M1"}})
    write_json(tmp_path / "b.json", {"z": {"audio": "1.wav", "flame_path": "1.npz", "speaker_id": ["B0", "neutral"]},
                                     "w": {"audio": "1.wav", "flame_path": "1.npz", "speaker_id": ["W2", "happy"]}})
    write_json(tmp_path / "t.json", {"q": {"audio": "1.wav", "flame_path": "1.npz", "speaker_id": "TEST_ONLY"}})
    cfg = make_cfg(tmp_path, {"A": {"train": "a.json", "test": "t.json"}, "B": {"train": "b.json"}})
    assert style_classes(cfg) == ["B0", "M1", "W2"]
    cfg = make_cfg(tmp_path, {"A": {"train": "a.json"}}, train_subjects=["M1", "Z9"])
    assert style_classes(cfg) == ["M1", "Z9"]


# ----------------------------------------------------------------------------- FaceDataset, collate

def two_dataset_root(tmp_path):
    """Dataset A (vhap 25 fps): 3 train clips of speakers a1, a2; dataset B (vhap 20 fps): 2 train
    clips of b1 and one test clip of the untrained speaker b9."""
    root = str(tmp_path)
    ia, ib, ib_test, params = {}, {}, {}, {}
    for k, (t, spk) in enumerate([(40, "a1"), (60, "a2"), (35, "a1")]):
        au, fl, params[f"A{k}"] = write_sample(root, f"A/{k}", t, fps=25, seed=k)
        ia[f"A{k}"] = {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": [spk, "neutral"]}
    for k, t in enumerate([40, 48]):
        au, fl, params[f"B{k}"] = write_sample(root, f"B/{k}", t, fps=20, seed=10 + k)
        ib[f"B{k}"] = {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": "b1"}
    au, fl, params["Bt"] = write_sample(root, "B/t", 30, fps=20, seed=20)
    ib_test["Bt"] = {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": "b9"}
    write_json(os.path.join(root, "json/A_train.json"), ia)
    write_json(os.path.join(root, "json/B_train.json"), ib)
    write_json(os.path.join(root, "json/B_test.json"), ib_test)
    datasets = {"A": {"format": "vhap", "fps": 25, "train": "json/A_train.json"},
                "B": {"format": "vhap", "fps": 20, "train": "json/B_train.json", "test": "json/B_test.json"}}
    return datasets, params


def test_face_dataset_concatenates_and_items(tmp_path):
    datasets, params = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, max_frames=0)
    styles = style_classes(cfg)
    assert styles == ["a1", "a2", "b1"]
    ds = FaceDataset(cfg, "train", styles, progress=False)
    assert len(ds) == 5 and [r.dataset for r in ds.refs] == ["A"] * 3 + ["B"] * 2
    rep = ds.report["datasets"]
    assert rep["A"]["samples"] == 3 and rep["B"]["native_fps"] == [20]
    assert rep["A"]["hours"] == pytest.approx((40 + 60 + 35) / 25 / 3600)
    it = ds[3]
    assert it["sample_id"] == "B0" and it["native_fps"] == 20 and it["n_frames"] == 50
    assert it["audio"].shape == (50 * 640,) and it["audio"].dtype == torch.float32
    np.testing.assert_allclose(it["motion"].numpy(), resample_motion(expected_vhap(params["B0"]), 20, 25),
                               rtol=1e-5, atol=1e-6)
    assert it["style"].dtype == torch.long and int(it["style"]) == 2
    np.testing.assert_allclose(it["shape"].numpy(), params["B0"]["shape"][:100])  # FLAME.n_shape = 100
    assert int(ds[1]["style"]) == 1 and ds[1]["style_id"] == '["a2", "neutral"]_passionate'
    test = FaceDataset(cfg, "test", styles, progress=False)
    assert len(test) == 1 and int(test[0]["style"]) == -1 and test[0]["speaker"] == "b9"
    assert FaceDataset(cfg, "val", styles, progress=False).refs == []  # no dataset has a val JSON


def test_training_crop_cuts_audio_to_same_window(tmp_path):
    datasets, _ = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, max_frames=16)
    full = FaceDataset(cfg, "train", ["a1"], train=False, progress=False)
    crop = FaceDataset(cfg, "train", ["a1"], progress=False)
    assert crop.train and not full.train
    f = full[1]  # 60 frames
    assert f["n_frames"] == 60
    torch.manual_seed(0)
    starts = set()
    for _ in range(8):
        c = crop[1]
        assert c["n_frames"] == 16 and c["motion"].shape == (16, 51) and c["audio"].shape == (16 * 640,)
        diffs = [(f["motion"][s:s + 16] - c["motion"]).abs().max().item() for s in range(60 - 16 + 1)]
        s = int(np.argmin(diffs))
        assert diffs[s] == 0
        assert torch.equal(c["audio"], f["audio"][s * 640:(s + 16) * 640])
        starts.add(s)
    assert len(starts) > 1  # random windows
    assert crop[3]["n_frames"] == 16  # B0 is 50 frames at 25 fps


def test_collate_pads_with_masks():
    def item(t, v):
        return {"audio": torch.full((t * 640,), float(v)), "motion": torch.full((t, 51), float(v)),
                "shape": torch.full((100,), float(v)), "style": torch.tensor(v), "n_frames": t,
                "sample_id": f"s{v}", "dataset": "D", "style_id": f"st{v}", "speaker": "p", "native_fps": 20}
    b = collate([item(5, 1), item(3, 2)])
    assert b["audio"].shape == (2, 5 * 640) and b["motion"].shape == (2, 5, 51)
    assert b["motion_mask"].dtype == torch.bool and b["audio_mask"].dtype == torch.bool
    assert b["motion_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert b["audio_mask"][1, :3 * 640].all() and not b["audio_mask"][1, 3 * 640:].any()
    assert b["audio_mask"][0].all()
    assert (b["motion"][1, 3:] == 0).all() and (b["audio"][1, 3 * 640:] == 0).all()
    assert (b["motion"][1, :3] == 2).all() and (b["motion"][0] == 1).all()
    assert b["n_frames"].tolist() == [5, 3] and b["style"].tolist() == [1, 2]
    assert b["shape"].shape == (2, 100) and b["sample_id"] == ["s1", "s2"] and b["native_fps"] == [20, 20]


def test_dataloader_with_collate(tmp_path):
    datasets, _ = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, max_frames=0)
    ds = FaceDataset(cfg, "train", style_classes(cfg), progress=False)
    dl = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate)
    b = next(iter(dl))
    assert b["n_frames"].tolist() == [40, 60, 35, 50, 60]
    assert b["motion_mask"].sum(1).tolist() == [40, 60, 35, 50, 60]
    assert b["audio_mask"].sum(1).tolist() == [n * 640 for n in [40, 60, 35, 50, 60]]


# ----------------------------------------------------------------------------- check CLI

def run_check(args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "main.check_data", "--quiet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write_check_cfg(tmp_path, datasets, **data):
    """A config for main.check_data with the stand-in FLAME files (check loads every FLAME file named)."""
    from scripts.flame_standin import write_standin_files

    write_standin_files(str(tmp_path / "FLAME"))
    cfg_path = str(tmp_path / "check.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump({"DATA": {"data_root": str(tmp_path), "datasets": datasets, **data},
                        "FLAME": {"model_path": "FLAME/standin_generic_model.pkl",
                                  "masks_path": "FLAME/standin_FLAME_masks.pkl"}}, f)
    return cfg_path


def test_check_cli_ok_then_fails_on_bad_sample(tmp_path):
    datasets, _ = two_dataset_root(tmp_path)
    cfg_path = write_check_cfg(tmp_path, datasets)
    r = run_check(["--config", cfg_path])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== A " in r.stdout and "== B " in r.stdout and "OK: no problems" in r.stdout
    os.remove(str(tmp_path / "B" / "1.wav"))
    r = run_check(["--config", cfg_path, "DATA.max_frames=10"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "B1" in r.stdout and "B_train.json" in r.stdout and "1.wav" in r.stdout


def test_demo_data_passes_check(tmp_path):
    script = os.path.join(REPO, "scripts", "make_demo_data.py")
    out = str(tmp_path / "demo")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, script, "--out", out], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_check(["--config", "config/demo.yaml", f"DATA.data_root={out}"])
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("digital_human", "MEAD_VHAP", "MultiModal200"):
        assert f"== {name} " in r.stdout
    mm = r.stdout.split("== MultiModal200 ")[1]
    rows = [line.split() for line in mm.splitlines() if line.strip().startswith(("train", "val", "test"))]
    assert len(rows) == 3
    for row in rows:
        assert int(row[1]) > 0 and row[3] == "0" and row[6] == "20"  # samples > 0, none left out, native fps 20


# ----------------------------------------------------------------------------- subjects (original config keys)

def test_subjects_restrict_splits_and_left_out_samples_are_counted(tmp_path, caplog):
    from dataset.index import split_refs
    from dataset.split_check import check_split

    datasets, _ = two_dataset_root(tmp_path)  # train: A a1 a2 a1, B b1 b1; test: B b9
    cfg = make_cfg(tmp_path, datasets, train_subjects="a1 b1", test_subjects=["b8"])
    assert style_classes(cfg) == ["a1", "b1"]
    with caplog.at_level("INFO"):
        train = FaceDataset(cfg, "train", style_classes(cfg), progress=False)
    assert sorted(r.sample_id for r in train.refs) == ["A0", "A2", "B0", "B1"]  # a2's A1 left out
    assert train.report["left_out"] == 1 and train.report["datasets"]["A"]["left_out"] == 1
    assert "1 sample(s) of speakers not in DATA.train_subjects left out (A 1)" in caplog.text
    assert all(int(train[i]["style"]) >= 0 for i in range(len(train)))
    # the test split (inference and evaluation read it through the same reader) keeps only b8: none
    assert split_refs(cfg, "test") == [] and check_split(cfg, "test", progress=False)["left_out"] == 1
    cfg = make_cfg(tmp_path, datasets, test_subjects="b9")
    assert [r.sample_id for r in split_refs(cfg, "test")] == ["Bt"]


def test_train_subject_without_samples_is_a_warning(tmp_path):
    from dataset.split_check import check_split

    datasets, _ = two_dataset_root(tmp_path)
    cfg = make_cfg(tmp_path, datasets, train_subjects=["a1", "ghost"])
    rep = check_split(cfg, "train", progress=False)
    assert any("'ghost'" in w and "never trained" in w for w in rep["warnings"])


# ----------------------------------------------------------------------------- 287-dim detail block

def test_detail_code_is_the_files_detailcode_mean_else_zeros(tmp_path):
    root = str(tmp_path)
    _, _, pe = write_sample(root, "E/0", 30, fmt="emoca", seed=3)           # detailcode (1,T,128)
    _, _, pv = write_sample(root, "V/0", 30, fmt="vhap", seed=4)            # no detail code
    write_json(tmp_path / "e.json", {"e": {"audio": "E/0.wav", "flame_path": "E/0.npz", "speaker_id": "p"}})
    write_json(tmp_path / "v.json", {"v": {"audio": "V/0.wav", "flame_path": "V/0.npz", "speaker_id": "q"}})
    cfg = make_cfg(tmp_path, {"E": {"format": "emoca", "train": "e.json"}, "V": {"train": "v.json"}},
                   max_frames=0)
    ds = FaceDataset(cfg, "train", ["p", "q"], progress=False)
    e, v = ds[0], ds[1]
    np.testing.assert_allclose(e["detail"].numpy(), pe["detailcode"][0].mean(0), rtol=1e-5, atol=1e-6)
    assert v["detail"].shape == (128,) and not v["detail"].any()

    from models.flame import motion_to_coeffs287
    c = motion_to_coeffs287(e["motion"].numpy(), e["shape"].numpy(), e["detail"].numpy())
    np.testing.assert_allclose(c[:, 159:], np.broadcast_to(e["detail"].numpy(), (c.shape[0], 128)))
    # one code per sequence (not per frame) is also accepted; a wrong size names the key
    np.savez(tmp_path / "E/1.npz", **dict(pe, detailcode=np.ones(128, np.float32)))
    np.savez(tmp_path / "E/2.npz", **dict(pe, detailcode=np.ones((30, 64), np.float32)))
    from dataset.flame_params import detail_from_params, load_flame_params
    assert (detail_from_params(load_flame_params(str(tmp_path / "E/1.npz"))) == 1).all()
    with pytest.raises(DataError, match="detailcode"):
        detail_from_params(load_flame_params(str(tmp_path / "E/2.npz")), "E/2.npz")


# ----------------------------------------------------------------------------- split hygiene

def leaky_root(tmp_path):
    """Dataset B leaks across splits: val repeats the train sample id B0; test sample Bt uses train
    sample B1's audio file and the FLAME file of val samples B0 and V1."""
    datasets, _ = two_dataset_root(tmp_path)
    au, fl, _ = write_sample(str(tmp_path), "B/v", 30, fps=20, seed=30)
    write_json(tmp_path / "json/B_val.json", {
        "B0": {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": "b1"},
        "V1": {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": "b1"}})
    write_json(tmp_path / "json/B_test.json", {
        "Bt": {"audio_path": "B/1.wav", "flame_coeff_save_path": fl, "speaker_id": "b9"}})
    datasets["B"]["val"] = "json/B_val.json"
    return datasets


def test_samples_shared_between_splits_are_reported(tmp_path):
    from dataset.split_check import check_split

    cfg = make_cfg(tmp_path, leaky_root(tmp_path))
    train = check_split(cfg, "train", raise_errors=False, progress=False)
    msgs = train["datasets"]["B"]["problems"]
    assert len(msgs) == 2 and train["datasets"]["A"]["problems"] == []
    b0 = next(m for m in msgs if "sample 'B0'" in m)
    assert "also in the val split" in b0 and "sample id B0" in b0 and "B_val.json" in b0
    b1 = next(m for m in msgs if "sample 'B1'" in m)
    assert "also in the test split" in b1 and "audio file" in b1 and "1.wav" in b1 and "'Bt'" in b1
    assert {s for _, s in train["bad"]} == {"B0", "B1"}   # left out of train; the evaluation splits keep them
    assert [r.sample_id for r in train["refs"]] == ["A0", "A1", "A2"]
    val = check_split(cfg, "val", raise_errors=False, progress=False)
    assert len(val["problems"]) == 2 and all("FLAME file" in m and "test split" in m for m in val["problems"])
    assert check_split(cfg, "test", raise_errors=False, progress=False)["problems"] == []  # reported once
    with pytest.raises(DataError, match="also in the val split"):
        FaceDataset(cfg, "train", ["a1", "a2", "b1"], progress=False)   # DATA.bad_samples: error


def test_valid_frames_num_beyond_the_file_is_reported(tmp_path):
    from dataset.split_check import check_split

    datasets, _ = two_dataset_root(tmp_path)   # A/0.npz has 40 frames
    write_json(tmp_path / "json/A_train.json", {
        "ok": {"audio": "A/0.wav", "flame_path": "A/0.npz", "speaker_id": "a1", "valid_frames_num": 40},
        "over": {"audio": "A/0.wav", "flame_path": "A/0.npz", "speaker_id": "a1", "valid_frames_num": 41}})
    cfg = make_cfg(tmp_path, datasets)
    rep = check_split(cfg, "train", raise_errors=False, progress=False)
    (msg,) = rep["problems"]
    assert "sample 'over'" in msg and "valid_frames_num is 41" in msg and "only 40 frames" in msg
    assert "ok" in [r.sample_id for r in rep["refs"]]


def test_truncated_wav_is_reported(tmp_path):
    from dataset.audio import load_audio, wav_header_frames

    path = str(tmp_path / "a.wav")
    write_wav(path, 1.0)
    assert wav_header_frames(path) == SR and load_audio(path).shape == (SR,)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])  # a copy cut short: the header still says 1 s
    assert sf.read(path)[0].shape[0] < SR  # soundfile alone returns the shorter data silently
    with pytest.raises(DataError, match=r"truncated: its header says 16000 frames \(1.000 s"):
        load_audio(path)
    # a header whose data size is left open (streamed writers) is not a truncation
    with open(path, "wb") as f:
        f.write(data[:40] + (0xFFFFFFFF).to_bytes(4, "little") + data[44:])
    assert wav_header_frames(path) is None and load_audio(path).shape == (SR,)


def test_check_cli_reports_leaks_truncation_flame_files_and_left_out(tmp_path):
    cfg_path = write_check_cfg(tmp_path, leaky_root(tmp_path))
    r = run_check(["--config", cfg_path])
    assert r.returncode == 1 and "also in the val split" in r.stdout and "FLAME file" in r.stdout
    assert "FAILED: 4 problem(s)" in r.stdout, r.stdout
    datasets, _ = two_dataset_root(tmp_path)
    datasets["A"]["flame_model"] = "FLAME/flame2023.pkl"     # named but not there
    datasets["B"]["flame_model"] = "FLAME/evil.pkl"          # there but refused
    with open(tmp_path / "FLAME" / "evil.pkl", "wb") as f:
        pickle.dump(os.system, f)
    au = tmp_path / "A" / "2.wav"
    au.write_bytes(au.read_bytes()[:-1000])
    cfg_path = write_check_cfg(tmp_path, datasets)
    r = run_check(["--config", cfg_path, "DATA.train_subjects=a1,b1"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "DATA.datasets.A.flame_model" in r.stdout and "flame2023.pkl" in r.stdout and "not found" in r.stdout
    assert "DATA.datasets.B.flame_model" in r.stdout and "refusing" in r.stdout and "evil.pkl" in r.stdout
    assert "truncated" in r.stdout and "2.wav" in r.stdout
    a_train = r.stdout.split("== A ")[1].splitlines()[2].split()
    assert a_train[:4] == ["train", "1", "2", "1"]  # 1 good (A2 truncated), 2 of a1, a2's A1 left out
    assert "DATA.train_subjects keeps 2 speaker(s); 1 sample(s) of other speakers left out" in r.stdout
    assert "FAILED: 3 problem(s)" in r.stdout
