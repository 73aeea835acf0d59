"""dataset/index.py: JSON indices -> SampleRefs, style classes, and the DATA.*_subjects keys of the
original config restricting the splits."""
import json
import os

from dataset.dataset import FaceDataset
from dataset.index import read_index
from dataset.styles import style_classes
from tests.conftest import make_cfg, two_dataset_root, write_json
from utils.config import load_config

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
