"""The prepared-data store: items equal to the source files' bit for bit, samples decoded once and again
only when their files change, a deleted or damaged store prepared again, one preparer at a time, and
training from the store equal to training from the source files."""
import fcntl
import json
import logging
import os
import pickle
import re
import threading
import time

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, SequentialSampler

import dataset.index as index_mod
import dataset.store as store_mod
import dataset.store_records as store_records
from dataset.dataset import CropSeeds, FaceDataset, collate, crop_seed
from dataset.store import store_dir
from dataset.styles import style_classes
from main.prepare_data import main as prepare_main
from main.train import main as train_main
from tests.conftest import make_cfg, two_dataset_root, write_json, write_sample
from utils.config import load_config
from utils.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STYLES = ["a1", "a2", "b1"]


def age(root, seconds=100, only=None):
    """Date every file under ``root`` (or those of ``only``, relative to it) ``seconds`` back: the store
    distrusts files changed just now."""
    t = time.time() - seconds
    paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    for p in paths if only is None else [os.path.join(root, f) for f in only]:
        os.utime(p, (t, t))


def counting_decodes(monkeypatch):
    """A list that gets the sample id of every sample the store decodes."""
    seen = []
    real = store_mod.load_item

    def load_item(ref, *a, **k):
        seen.append(ref.sample_id)
        return real(ref, *a, **k)

    monkeypatch.setattr(store_mod, "load_item", load_item)
    return seen


def counting_digests(monkeypatch):
    """A list that gets the path of every source file the store reads to compare its content."""
    seen = []
    real = store_records.content_digest
    for module in (store_mod, store_records):  # comparing, and preparing
        monkeypatch.setattr(module, "content_digest", lambda path: seen.append(path) or real(path))
    return seen


def setup(tmp_path, **data):
    datasets, _ = two_dataset_root(tmp_path / "data")
    cfg = make_cfg(tmp_path / "data", datasets, store_root=str(tmp_path / "store"), **data)
    age(tmp_path / "data")
    return cfg


def assert_same_items(a, b, seeds=(None,)):
    assert [r.sample_id for r in a.refs] == [r.sample_id for r in b.refs]
    for i in range(len(a)):
        for s in seeds:
            x, y = a[i if s is None else (i, s)], b[i if s is None else (i, s)]
            for k in ("audio", "motion", "shape", "detail", "style"):
                assert torch.equal(x[k], y[k]), (i, k)
            assert x["n_frames"] == y["n_frames"]


def test_store_items_equal_raw_and_are_decoded_once(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=16)
    decoded = counting_decodes(monkeypatch)
    first = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert sorted(decoded) == ["A0", "A1", "A2", "B0", "B1"]
    again = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert len(decoded) == 5  # the second start-up validates from the store's records
    raw = FaceDataset(cfg, "train", STYLES, progress=False)
    assert raw.stores is None and again.stores is not None
    assert again.report["datasets"] == raw.report["datasets"]
    seeds = [crop_seed(3, e, 0) for e in range(3)]
    assert_same_items(raw, again, seeds)
    assert_same_items(raw, first, seeds)
    whole = FaceDataset(cfg, "train", STYLES, train=False, progress=False, prepared=True)
    assert_same_items(FaceDataset(cfg, "train", STYLES, train=False, progress=False), whole)
    report = json.loads(open(os.path.join(store_dir(cfg, str(tmp_path / "store"), "B", "train"),
                                          "report.json")).read())
    assert report["samples"] == 2 and report["speakers"] == ["b1"]


def test_loader_processes_read_the_store(tmp_path):
    # forked workers share the store's open files; a spawned process (pickled dataset) opens its own
    cfg = setup(tmp_path, max_frames=16)
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    raw = FaceDataset(cfg, "train", STYLES, progress=False)
    assert_same_items(raw, pickle.loads(pickle.dumps(ds)), [crop_seed(0, 0, 1)])

    def batches(data):
        loader = DataLoader(data, batch_size=2, sampler=CropSeeds(SequentialSampler(data), seed=1),
                            collate_fn=collate, num_workers=2, generator=torch.Generator().manual_seed(0))
        return [(b["sample_id"], b["audio"], b["motion"]) for b in loader]

    for (ids, audio, motion), (ids2, audio2, motion2) in zip(batches(raw), batches(ds), strict=True):
        assert ids == ids2 and torch.equal(audio, audio2) and torch.equal(motion, motion2)


def test_prepare_data_command(tmp_path, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    datasets, _ = two_dataset_root(tmp_path / "data")
    age(tmp_path / "data")
    cfg_path.write_text(yaml.safe_dump({"DATA": {"data_root": str(tmp_path / "data"), "datasets": datasets}}))
    prepare_main(["--config", str(cfg_path), "--quiet", "--splits", "train", "test"])
    out = capsys.readouterr().out
    assert "train/A: 3 sample(s)" in out and "test/B: 1 sample(s)" in out
    cfg = load_config(str(cfg_path))
    folder = store_dir(cfg, str(tmp_path / "data" / ".prepared"), "B", "test")  # the default place
    assert json.loads(open(os.path.join(folder, "report.json")).read())["speakers"] == ["b9"]
    with pytest.raises(ConfigError, match="DATA.store_root is off"):
        prepare_main(["--config", str(cfg_path), "DATA.store_root=off"])


def test_each_json_is_parsed_once_per_process(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0)
    parsed = []
    real = index_mod._parse_index
    monkeypatch.setattr(index_mod, "_parse_index", lambda path, *a: parsed.append(path) or real(path, *a))
    monkeypatch.setattr(index_mod, "_PARSED", {})
    styles = style_classes(cfg)
    for split in ("train", "test", "train"):  # validation of train reads the test JSON too (split overlaps)
        FaceDataset(cfg, split, styles, progress=False, prepared=True)
    assert sorted(os.path.basename(p) for p in parsed) == ["A_train.json", "B_test.json", "B_train.json"]
    write_json(str(tmp_path / "data/json/B_test.json"), {})  # changed: parsed again
    age(tmp_path / "data", 50, ["json/B_test.json"])
    assert len(FaceDataset(cfg, "test", styles, progress=False, prepared=True)) == 0
    assert len(parsed) == 4


def test_changed_and_added_files_are_prepared_again(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    decoded = counting_decodes(monkeypatch)
    data = tmp_path / "data"
    write_sample(str(data), "A/1", 45, seed=99)  # new content, size and mtime for A1
    index = json.loads((data / "json/A_train.json").read_text())
    write_sample(str(data), "A/new", 30, seed=7)
    index["A_new"] = {"audio_path": "A/new.wav", "flame_coeff_save_path": "A/new.npz", "speaker_id": "a2"}
    write_json(str(data / "json/A_train.json"), index)
    age(data, 50, ["A/1.wav", "A/1.npz", "A/new.wav", "A/new.npz", "json/A_train.json"])
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert sorted(decoded) == ["A1", "A_new"]
    assert ds[1]["n_frames"] == 45
    assert_same_items(FaceDataset(cfg, "train", STYLES, progress=False), ds)


def test_a_file_changed_just_now_is_compared_by_content(tmp_path, monkeypatch):
    # a rewrite within the filesystem's timestamp granularity keeps the stat signature: a file whose times
    # were that recent is compared by content at the next start-up (not decoded), then trusted
    cfg = setup(tmp_path, max_frames=0)  # every file's ctime is now
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    decoded, digests = counting_decodes(monkeypatch), counting_digests(monkeypatch)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert decoded == [] and len(digests) == 10  # 5 samples' wav and npz
    monkeypatch.setattr(store_records, "RACY_SECONDS", 0.0)  # as if time had passed
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    digests.clear()
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert decoded == [] and digests == []


def test_bad_samples_are_recorded_not_decoded_again(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0, bad_samples="skip")
    with open(tmp_path / "data/B/1.wav", "r+b") as f:  # truncate the audio: the header promises more
        f.truncate(200)
    age(tmp_path / "data")
    first = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    decoded = counting_decodes(monkeypatch)
    again = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert decoded == [] and len(again) == 4 and again.report["problems"] == first.report["problems"]
    assert "B1" in again.report["problems"][0] and "truncated" in again.report["problems"][0]
    cfg.DATA.bad_samples = "error"
    with pytest.raises(DataError, match="truncated"):
        FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)


def test_deleted_or_damaged_store_is_prepared_again(tmp_path, monkeypatch, caplog):
    cfg = setup(tmp_path, max_frames=0)
    raw = FaceDataset(cfg, "train", STYLES, progress=False)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    folder = store_dir(cfg, str(tmp_path / "store"), "A", "train")
    decoded = counting_decodes(monkeypatch)

    import shutil
    shutil.rmtree(tmp_path / "store")
    assert_same_items(raw, FaceDataset(cfg, "train", STYLES, progress=False, prepared=True))
    assert len(decoded) == 5

    def sample_file(i):
        index = json.loads(open(os.path.join(folder, "index.json")).read())
        return os.path.join(folder, "samples", index["records"][i]["file"])

    def damage_sample():
        with open(sample_file(1), "r+b") as f:
            f.truncate(1000)

    def damage_index():
        with open(os.path.join(folder, "index.json"), "w") as f:
            f.write('{"version": 2, "records": ')

    def damage_record():
        index = json.loads(open(os.path.join(folder, "index.json")).read())
        del index["records"][1]["frames"]
        write_json(os.path.join(folder, "index.json"), index)

    def record_without_a_field():  # a record lacking a field, with the index's checksum made to agree
        index = json.loads(open(os.path.join(folder, "index.json")).read())
        del index["records"][1]["frames"]
        index["digest"] = store_records.records_digest(index["records"])
        write_json(os.path.join(folder, "index.json"), index)

    for damage, why, redone in ((damage_sample, "holds 1000 bytes", ["A1"]),
                                (damage_index, "Expecting value", ["A0", "A1", "A2"]),
                                (damage_record, "do not match their checksum", ["A0", "A1", "A2"]),
                                (record_without_a_field, "record 1: 'audio' and 'frames' are not positive counts",
                                 ["A1"])):
        damage()
        decoded.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
        assert sorted(decoded) == redone  # dataset A's store alone, what is damaged in it
        assert f"prepared-data store {folder} is damaged" in caplog.text and why in caplog.text
        assert_same_items(raw, ds)


def test_a_full_disk_names_the_bytes_and_keeps_the_store_usable(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    folder = store_dir(cfg, str(tmp_path / "store"), "A", "train")
    before = sorted(os.listdir(folder))
    write_sample(str(tmp_path / "data"), "A/2", 20, seed=3)
    age(tmp_path / "data", 50, ["A/2.wav", "A/2.npz"])
    real_open = open

    def full_disk(path, mode="r", *a, **k):
        if "wb" in mode and ".tmp-" in str(path):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(DataError, match=f"not enough free space for the prepared-data store {folder}: this sample "
                                        f"needs {4 * (20 * 640 + 20 * 51 + 100 + 128)} bytes"):
        FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == before
    assert not [f for f in os.listdir(os.path.join(folder, "samples")) if f.startswith(".tmp-")]
    decoded = counting_decodes(monkeypatch)
    assert FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)[2]["n_frames"] == 20
    assert decoded == ["A2"]  # the samples prepared before the disk filled were kept


def test_one_preparer_at_a_time(tmp_path, caplog):
    cfg = setup(tmp_path, max_frames=0)
    folder = store_dir(cfg, str(tmp_path / "store"), "A", "train")
    os.makedirs(folder)
    fd = os.open(os.path.join(folder, "lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run preparing
    out = {}
    with caplog.at_level(logging.INFO):
        t = threading.Thread(target=lambda: out.setdefault(
            "ds", FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)))
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and "waiting for another process preparing" in caplog.text
        os.close(fd)
        t.join(30)
    assert len(out["ds"]) == 5


def test_store_root_key(tmp_path):
    with pytest.raises(ConfigError, match="DATA.store_root is 3"):
        load_config(None, ["DATA.store_root=3"])
    cfg = load_config(None, [f"DATA.data_root={tmp_path}", "DATA.store_root=off"])
    assert store_mod.store_root(cfg) is None
    cfg = load_config(None, [f"DATA.data_root={tmp_path}"])
    assert store_mod.store_root(cfg) == os.path.join(str(tmp_path), ".prepared")


def test_training_from_the_store_equals_training_from_the_files(demo_root, tmp_path):
    def run(name, *extra):
        train_main(["--config", os.path.join(ROOT, "config", "demo.yaml"), f"DATA.data_root={demo_root}",
                    f"TRAIN.save_path={tmp_path / name}", "TRAIN.batch_size=2", "TRAIN.max_steps_per_epoch=3",
                    "TRAIN.epochs=2", "TRAIN.val_every=2", "TRAIN.mode=teacher_forcing", "TRAIN.device=cpu",
                    *extra])
        log = (tmp_path / name / "train.log").read_text()
        losses = re.findall(r"(?:train loss|teacher_forced|generated) ([-+.e\d]+)", log)
        return torch.load(tmp_path / name / "last.pth", map_location="cpu", weights_only=True), losses

    store = tmp_path / "store"
    raw, raw_losses = run("raw", "DATA.store_root=off")
    prepared, prepared_losses = run("prepared", f"DATA.store_root={store}")
    assert os.path.isdir(store / "MEAD_VHAP")
    assert len(raw_losses) == 4 and raw_losses == prepared_losses  # 2 training, teacher-forced and generated val
    for k, v in raw["model"].items():
        assert torch.equal(v, prepared["model"][k]), k
