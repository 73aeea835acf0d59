"""A prepared-data store damaged at random (hypothesis): its index edited, cut or scrambled, its sample
files overwritten, cut, grown or deleted. Whatever the damage, a run warns and prepares again, or stops
with one clear line naming the store (and the run after it works); it never ends in a traceback and
never trains on data other than the source files'."""
import json
import logging
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.utils.data import DataLoader

from dataset.dataset import FaceDataset, collate
from dataset.store import store_dir
from dataset.store_records import records_digest
from tests.test_store import STYLES, setup
from utils.errors import DataError

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=True),
                   st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=3))
INDEX_KINDS = ("set", "set_keeping_checksum", "delete", "scramble", "cut")
SAMPLE_KINDS = ("overwrite", "nan", "cut", "grow", "delete")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damage")
    cfg = setup(tmp, max_frames=0)
    FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    raw = FaceDataset(cfg, "train", STYLES, progress=False)
    return tmp, cfg, [raw[i] for i in range(len(raw))]


def edit_index(data, path):
    """Damage index.json as one of INDEX_KINDS; True when what it says changed and its checksum shows it
    (an edit that also fixed the checksum is a store of its own: it must only never give wrong data)."""
    text = open(path, encoding="utf-8").read()
    index = json.loads(text)
    kind = data.draw(st.sampled_from(INDEX_KINDS), "index damage")
    if kind in ("set", "set_keeping_checksum", "delete"):
        rec = index["records"][data.draw(st.integers(0, len(index["records"]) - 1), "record")]
        target, key = data.draw(st.sampled_from([(index, k) for k in index] + [(rec, k) for k in rec]), "field")
        if kind == "delete":
            del target[key]
        else:
            target[key] = data.draw(VALUES, "value")
        if kind == "set_keeping_checksum" and isinstance(index.get("records"), list):
            index["digest"] = records_digest(index["records"])  # a hand edit that also fixed the checksum
        new = json.dumps(index)
    elif kind == "scramble":
        at = data.draw(st.integers(0, len(text) - 1), "offset")
        new = text[:at] + data.draw(st.sampled_from("x9{]\"0,"), "char") + text[at + 1:]
    else:
        new = text[:data.draw(st.integers(0, len(text) - 1), "length")]
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    try:
        return json.loads(new) != json.loads(text) and kind != "set_keeping_checksum"
    except ValueError:
        return True


def damage_sample(data, path):
    """Damage one sample file as one of SAMPLE_KINDS; True when its bytes changed."""
    before = open(path, "rb").read()
    kind = data.draw(st.sampled_from(SAMPLE_KINDS), "sample damage")
    if kind == "delete":
        os.remove(path)
        return True
    at = data.draw(st.integers(0, len(before) // 4 - 1), "float") * 4
    after = {"overwrite": lambda: before[:at] + data.draw(st.binary(min_size=4, max_size=4), "bytes") + before[at + 4:],
             "nan": lambda: before[:at] + b"\x00\x00\xc0\x7f" + before[at + 4:],
             "cut": lambda: before[:at],
             "grow": lambda: before + b"\0" * 4}[kind]()
    with open(path, "wb") as f:
        f.write(after)
    return after != before


def read_all(cfg):
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    return ds, [ds[i] for i in range(len(ds))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_is_a_warning_and_a_rebuild_or_one_line(pristine, data, caplog):
    tmp, cfg, raw = pristine
    work = tmp / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(tmp / "store", work)
    cfg.DATA.store_root = str(work)
    folder = store_dir(cfg, str(work), "A", "train")
    if data.draw(st.booleans(), "damage the index"):
        changed = edit_index(data, os.path.join(folder, "index.json"))
    else:
        samples = sorted(os.listdir(os.path.join(folder, "samples")))
        changed = damage_sample(data, os.path.join(folder, "samples", data.draw(st.sampled_from(samples), "file")))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        try:
            ds, items = read_all(cfg)
            stopped = None
        except DataError as e:
            stopped = str(e)
            ds, items = read_all(cfg)  # the run after it heals
    if stopped is not None:
        assert "\n" not in stopped and f"prepared-data store {folder}" in stopped
    if changed:
        assert stopped is not None or f"prepared-data store {folder}" in caplog.text
    assert [x["sample_id"] for x in items] == [x["sample_id"] for x in raw]
    for x, y in zip(items, raw):
        for k in ("audio", "motion", "shape", "detail"):
            assert torch.equal(x[k], y[k]), (x["sample_id"], k)


def test_damage_found_in_a_loader_process_is_one_line(tmp_path):
    cfg = setup(tmp_path, max_frames=0)
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    folder = store_dir(cfg, str(tmp_path / "store"), "A", "train")
    index = json.loads(open(os.path.join(folder, "index.json")).read())
    path = os.path.join(folder, "samples", index["records"][0]["file"])
    with open(path, "r+b") as f:  # a NaN in the stored motion of A0
        f.seek(4 * (index["records"][0]["audio"] + 3))
        f.write(b"\x00\x00\xc0\x7f")
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value) == (f"prepared-data store {folder}: sample file {os.path.basename(path)} of "
                            f"{ds.refs[0].where} is damaged (it no longer holds what was prepared); it was removed: "
                            f"run again to prepare it afresh")
    assert not os.path.exists(path)
    ds = FaceDataset(cfg, "train", STYLES, progress=False, prepared=True)
    assert torch.equal(ds[0]["motion"], FaceDataset(cfg, "train", STYLES, progress=False)[0]["motion"])
