"""The prepared-data store against what a user does to the source files and to the store: content rewritten
with size and mtime kept, a file replaced by a copy, a moved or copied data root, a read-only store, an
update of one sample, stores of old settings."""
import builtins
import errno
import json
import os
import shutil

import numpy as np
import pytest

import dataset.store_records as store_records
from dataset.dataset import FaceDataset
from dataset.split_check import check_split
from dataset.store import store_dir, store_root
from main.prepare_data import main as prepare_main
from tests.conftest import make_cfg, two_dataset_root, write_sample
from tests.test_store import STYLES, age, assert_same_items, counting_decodes, setup
from utils.errors import DataError


def rewrite_keeping_size_and_mtime(path, change):
    """``change(bytes) -> bytes`` of the same length written over ``path`` in place, its mtime put back
    (as ``touch -r`` or ``rsync -t`` would leave it)."""
    st = os.stat(path)
    data = open(path, "rb").read()
    new = change(data)
    assert len(new) == len(data) and new != data
    with open(path, "r+b") as f:
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def reversed_audio(data):
    """A 16-bit wav played backwards (header kept): the same size, other audio."""
    return data[:44] + np.frombuffer(data[44:], np.int16)[::-1].tobytes()


def test_content_rewritten_with_size_and_mtime_kept_is_prepared_again(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0, bad_samples="skip")
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    decoded = counting_decodes(monkeypatch)
    rewrite_keeping_size_and_mtime(tmp_path / "data/A/1.wav", reversed_audio)
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert decoded == ["A1"]
    assert_same_items(FaceDataset(cfg, "train", STYLES, progress=False), ds)
    # a file made unreadable the same way: training and check_data report the same problem
    rewrite_keeping_size_and_mtime(tmp_path / "data/A/2.npz", lambda d: b"\0" * len(d))
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    checked = check_split(cfg, "train", progress=False)
    assert ds.report["problems"] == checked["problems"] and "A/2.npz" in ds.report["problems"][0]
    assert [r.sample_id for r in ds.refs] == [r.sample_id for r in checked["refs"]] == ["A0", "A1", "B0", "B1"]


def test_a_file_replaced_by_a_copy(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    decoded = counting_decodes(monkeypatch)
    data = tmp_path / "data"
    # another take of the same length, copied over with its times (cp -p / copy2), dated like the old file
    write_sample(str(tmp_path / "other"), "A/1", 60, seed=42)
    st = os.stat(data / "A/1.npz")
    os.utime(tmp_path / "other/A/1.npz", ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copy2(tmp_path / "other/A/1.npz", data / "A/1.npz")
    assert os.stat(data / "A/1.npz").st_size == st.st_size  # same size, same mtime, other content
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert decoded == ["A1"]
    assert_same_items(FaceDataset(cfg, "train", STYLES, progress=False), ds)
    # a copy holding the same bytes (a new inode and ctime) is compared, not decoded
    shutil.copy2(data / "A/0.wav", tmp_path / "copy.wav")
    os.replace(tmp_path / "copy.wav", data / "A/0.wav")
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert decoded == ["A1"]
    # a file too large to hash is decoded again whenever its signature changes
    monkeypatch.setattr(store_records, "RACY_SECONDS", 0.0)  # as if time had passed: signatures trusted
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    monkeypatch.setattr(store_records, "DIGEST_MAX_BYTES", 1000)
    shutil.copy2(data / "A/2.npz", tmp_path / "copy.npz")
    os.replace(tmp_path / "copy.npz", data / "A/2.npz")
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert decoded == ["A1", "A2"]


def test_a_moved_or_copied_data_root_keeps_its_store(tmp_path, monkeypatch):
    datasets, _ = two_dataset_root(tmp_path / "data")
    cfg = make_cfg(tmp_path / "data", datasets)  # the store in the data root's .prepared
    age(tmp_path / "data")
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    decoded = counting_decodes(monkeypatch)
    os.rename(tmp_path / "data", tmp_path / "moved")
    moved = make_cfg(tmp_path / "moved", datasets)
    assert_same_items(FaceDataset(moved, "train", STYLES, progress=False),
                      FaceDataset(moved, "train", STYLES, progress=False, prepared=True))
    shutil.copytree(tmp_path / "moved", tmp_path / "copied")  # new inodes and times, the same bytes
    copied = make_cfg(tmp_path / "copied", datasets)
    assert_same_items(FaceDataset(copied, "train", STYLES, progress=False),
                      FaceDataset(copied, "train", STYLES, progress=False, prepared=True))
    assert decoded == []


def read_only(monkeypatch, root):
    """Writing anything under ``root`` fails as on a read-only filesystem."""
    root = str(root)
    real_open, real_os_open, real_access = builtins.open, os.open, os.access

    def refuse(path):
        return os.path.abspath(str(path)).startswith(root)

    def fake_open(path, mode="r", *a, **k):
        if refuse(path) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if refuse(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if refuse(p) else real_access(p, m, **k))


def test_a_read_only_store_is_read(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    raw = FaceDataset(cfg, "train", STYLES, progress=False)
    with monkeypatch.context() as m:
        read_only(m, tmp_path / "store")
        assert_same_items(raw, FaceDataset(cfg, "train", STYLES, progress=False, prepared=True))
        write_sample(str(tmp_path / "data"), "A/2", 20, seed=3)  # now it is out of date
        with pytest.raises(DataError, match=r"cannot write the prepared-data store .*: it is not up to date and "
                                            r"Read-only file system; set DATA.store_root"):
            FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    # by default the store prepared ahead in the data root is used, though it cannot be written; what is out
    # of date there is prepared beside the run instead
    datasets, _ = two_dataset_root(tmp_path / "ro")
    cfg = make_cfg(tmp_path / "ro", datasets)
    cfg.TRAIN.save_path = str(tmp_path / "run")
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    write_sample(str(tmp_path / "ro"), "A/2", 20, seed=3)
    with monkeypatch.context() as m:
        read_only(m, tmp_path / "ro")
        assert store_root(cfg) == str(tmp_path / "ro/.prepared")
        ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert [os.path.relpath(s.folder, tmp_path).split(os.sep)[:3] for s in ds.stores] == \
        [["run", "prepared", "A"]] * 3 + [["ro", ".prepared", "B"]] * 2
    assert_same_items(FaceDataset(cfg, "train", STYLES, progress=False), ds)


def test_updating_one_sample_writes_that_sample_alone(tmp_path, monkeypatch):
    cfg = setup(tmp_path, max_frames=0)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    samples = os.path.join(store_dir(cfg, str(tmp_path / "store"), "A", "train"), "samples")
    before = {f: os.stat(os.path.join(samples, f)).st_ino for f in os.listdir(samples)}
    write_sample(str(tmp_path / "data"), "A/1", 45, seed=99)
    written = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: (
        written.append(str(p)) if "w" in mode else None) or real_open(p, mode, *a, **k))
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    monkeypatch.undo()
    after = {f: os.stat(os.path.join(samples, f)).st_ino for f in os.listdir(samples)}
    assert len(before) == len(after) == 3
    assert len(set(before.items()) & set(after.items())) == 2  # A0's and A2's files untouched
    assert [os.path.basename(p) for p in written if "samples" in p] == [".tmp-" + (set(after) - set(before)).pop()]


def test_stores_of_old_settings_are_removed(tmp_path):
    cfg = setup(tmp_path, max_frames=0)
    folders = []
    for diff in (0.5, 0.6, 0.7):
        cfg.DATA.max_av_diff = diff
        FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
        folders.append(store_dir(cfg, str(tmp_path / "store"), "A", "train"))
        os.utime(os.path.join(folders[-1], "lock"), (1000 + diff * 10, 1000 + diff * 10))  # in order of use
    # the one in use and the most recently used other one stay
    assert sorted(os.listdir(tmp_path / "store/A")) == sorted(os.path.basename(f) for f in folders[1:])
    index = json.loads(open(os.path.join(folders[2], "index.json")).read())
    assert len(index["records"]) == 3


def test_prepare_data_takes_overrides_after_splits(tmp_path, capsys):
    datasets, _ = two_dataset_root(tmp_path / "data")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps({"DATA": {"data_root": str(tmp_path / "data"), "datasets": datasets}}))
    prepare_main(["--config", str(cfg_path), "--quiet", "--splits", "test", f"DATA.store_root={tmp_path / 'elsewhere'}"])
    assert "test/B: 1 sample(s)" in capsys.readouterr().out
    assert os.path.isdir(tmp_path / "elsewhere/B") and not os.path.exists(tmp_path / "data/.prepared")
    with pytest.raises(SystemExit):
        prepare_main(["--config", str(cfg_path), "--splits", "tset"])
    assert "argument --splits: 'tset' is not a split (choose from train, val, test)" in capsys.readouterr().err
