"""dataset/split_check.py and ``python -m main.check_data``: bad samples, samples shared between
splits, valid_frames_num beyond the file, and every FLAME file a config names."""
import os
import pickle
import subprocess
import sys

import pytest
import yaml

from dataset.dataset import FaceDataset
from tests.conftest import make_cfg, two_dataset_root, write_json, write_sample
from utils.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
