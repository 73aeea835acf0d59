"""Every bad input a user can feed the data loader gives an error naming the JSON file and sample id
(and the data file), through load_item and through start-up validation."""
import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import yaml

from dataset.data_item import load_item
from dataset.dataset import FaceDataset
from dataset.index import read_index
from dataset.split_check import check_split
from utils.config import load_config
from utils.errors import ConfigError, DataError

SR = 16000


def good_params(t=30, seed=0):
    r = np.random.default_rng(seed)
    return {"expr": r.normal(size=(1, t, 100)).astype(np.float32),
            "jaw_pose": r.normal(size=(1, t, 3)).astype(np.float32),
            "shape": r.normal(size=(300,)).astype(np.float32)}


class Root:
    """A data root in tmp_path with one JSON index of dataset 'DS' (vhap, 25 fps)."""

    def __init__(self, tmp_path):
        self.root = str(tmp_path)
        self.json_rel = "jsons/DS_train.json"
        self.json_path = os.path.join(self.root, self.json_rel)
        self.entries = {}

    def add(self, sid, params=None, audio_seconds=None, t=30, entry=None, fmt_params=True):
        """Writes <sid>.npz and <sid>.wav (unless None is given) and an index entry."""
        params = good_params(t) if params is None else params
        if params is not False:
            np.savez(os.path.join(self.root, f"{sid}.npz"), **params)
        secs = t / 25 if audio_seconds is None else audio_seconds
        if secs is not False:
            x = 0.1 * np.random.default_rng(1).normal(size=int(round(secs * SR))).astype(np.float32)
            sf.write(os.path.join(self.root, f"{sid}.wav"), x, SR)
        self.entries[sid] = {"audio_path": f"{sid}.wav", "flame_coeff_save_path": f"{sid}.npz",
                             "speaker_id": ["spk", "neutral"]} if entry is None else entry
        return self

    def cfg(self, **data):
        os.makedirs(os.path.dirname(self.json_path), exist_ok=True)
        with open(self.json_path, "w") as f:
            json.dump(self.entries, f)
        p = os.path.join(self.root, "cfg.yaml")
        with open(p, "w") as f:
            yaml.safe_dump({"DATA": {"data_root": self.root, "datasets": {
                "DS": {"format": "vhap", "fps": 25, "train": self.json_rel}}, **data}}, f)
        return load_config(p)

    def load(self, sid, **data):
        cfg = self.cfg(**data)
        refs = {r.sample_id: r for r in read_index(self.json_rel, "DS", cfg.DATA.datasets.DS, cfg)}
        return load_item(refs[sid], max_av_diff=cfg.DATA.max_av_diff)

    def error(self, sid, *needles):
        """The DataError of loading ``sid``; asserts it names the JSON, the sample id and needles."""
        with pytest.raises(DataError) as e:
            self.load(sid)
        msg = str(e.value)
        assert self.json_path in msg and f"'{sid}'" in msg, msg
        for n in needles:
            assert n in msg, f"{n!r} not in: {msg}"
        return msg


def test_missing_audio_file(tmp_path):
    r = Root(tmp_path).add("s1", audio_seconds=False)
    r.error("s1", "audio file not found", os.path.join(r.root, "s1.wav"))


def test_missing_flame_file(tmp_path):
    r = Root(tmp_path).add("s1", params=False)
    r.error("s1", "not found", os.path.join(r.root, "s1.npz"))


def test_corrupt_wav(tmp_path):
    r = Root(tmp_path).add("s1", audio_seconds=False)
    with open(os.path.join(r.root, "s1.wav"), "wb") as f:
        f.write(b"RIFF\x24\x00\x00\x00WAVEfmt not really a wav file" * 4)
    r.error("s1", "cannot read audio file", os.path.join(r.root, "s1.wav"))


def test_empty_wav(tmp_path):
    r = Root(tmp_path).add("s1", audio_seconds=0)
    assert sf.info(os.path.join(r.root, "s1.wav")).frames == 0  # a valid header, no samples
    r.error("s1", "empty (0 samples)", os.path.join(r.root, "s1.wav"))


def test_corrupt_npz(tmp_path):
    r = Root(tmp_path).add("s1")
    with open(os.path.join(r.root, "s1.npz"), "wb") as f:
        f.write(b"PK\x03\x04 truncated zip")
    r.error("s1", "cannot read FLAME parameter file", os.path.join(r.root, "s1.npz"))


@pytest.mark.parametrize("content", [[{"audio_path": "a.wav"}], "just a string", 3])
def test_json_not_an_object(tmp_path, content):
    r = Root(tmp_path)
    cfg = r.cfg()
    with open(r.json_path, "w") as f:
        json.dump(content, f)
    with pytest.raises(DataError) as e:
        read_index(r.json_rel, "DS", cfg.DATA.datasets.DS, cfg)
    assert r.json_path in str(e.value) and "expected an object keyed by sample id" in str(e.value)


def test_json_invalid_and_missing(tmp_path):
    r = Root(tmp_path)
    cfg = r.cfg()
    with open(r.json_path, "w") as f:
        f.write('{"a": {"audio_path": ')
    with pytest.raises(DataError, match="not valid JSON") as e:
        read_index(r.json_rel, "DS", cfg.DATA.datasets.DS, cfg)
    assert r.json_path in str(e.value)
    with pytest.raises(DataError, match="JSON index not found") as e:
        read_index("jsons/nope.json", "DS", cfg.DATA.datasets.DS, cfg)
    assert os.path.join(r.root, "jsons/nope.json") in str(e.value)


@pytest.mark.parametrize("entry, needle", [
    ({"flame_coeff_save_path": "x.npz", "speaker_id": "a"}, "no audio path"),
    ({"audio_path": "x.wav", "speaker_id": "a"}, "no FLAME parameter path"),
    ({"audio_path": "x.wav", "flame_path": "x.npz"}, "speaker_id is None"),
    ({"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": ["a", "b", "c"]}, "[speaker, emotion]"),
    ({"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": ["a"]}, "[speaker, emotion]"),
    ({"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": ["a", 3]}, "[speaker, emotion]"),
    ({"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": {"a": 1}}, "speaker_id"),
    ({"audio_path": 5, "flame_path": "x.npz", "speaker_id": "a"}, "expected a path string"),
    ({"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": "a", "valid_frames_num": 0}, "valid_frames_num"),
    ({"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": "a", "style_id": "a/b"}, "style_id"),
    ({"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": "a", "fps": "fast"}, "fps"),
    (["x.wav", "x.npz"], "expected an object"),
])
def test_bad_entries_name_file_and_sample(tmp_path, entry, needle):
    r = Root(tmp_path)
    r.entries = {"ok": {"audio_path": "x.wav", "flame_path": "x.npz", "speaker_id": "a"}, "bad_one": entry}
    cfg = r.cfg()
    with pytest.raises(DataError) as e:
        read_index(r.json_rel, "DS", cfg.DATA.datasets.DS, cfg)
    msg = str(e.value)
    assert r.json_path in msg and "'bad_one'" in msg and needle in msg, msg
    problems = []  # the collecting mode keeps the good entry and lists the bad one
    refs = read_index(r.json_rel, "DS", cfg.DATA.datasets.DS, cfg, problems)
    assert [x.sample_id for x in refs] == ["ok"] and len(problems) == 1 and "'bad_one'" in problems[0]


def test_duplicate_sample_id_in_json(tmp_path):
    r = Root(tmp_path)
    cfg = r.cfg()
    with open(r.json_path, "w") as f:
        f.write('{"a": {"audio_path": "1.wav", "flame_path": "1.npz", "speaker_id": "s"},'
                ' "a": {"audio_path": "2.wav", "flame_path": "2.npz", "speaker_id": "s"}}')
    with pytest.raises(DataError, match="more than once") as e:
        read_index(r.json_rel, "DS", cfg.DATA.datasets.DS, cfg)
    assert r.json_path in str(e.value) and "'a'" in str(e.value)


def test_flame_file_without_expr_or_expcode(tmp_path):
    p = good_params()
    p["expression"] = p.pop("expr")
    r = Root(tmp_path).add("s1", params=p)
    r.error("s1", "expected key expr (vhap) or expcode (emoca)", os.path.join(r.root, "s1.npz"))


def test_flame_file_in_the_other_format(tmp_path):
    r = Root(tmp_path).add("s1", params={"expcode": np.zeros((1, 30, 50)), "posecode": np.zeros((1, 30, 6))})
    r.error("s1", "emoca", "'vhap'", "DATA.datasets")


def test_jaw_missing(tmp_path):
    p = good_params()
    del p["jaw_pose"]
    r = Root(tmp_path).add("s1", params=p)
    r.error("s1", "jaw key 'jaw_pose' is missing")


@pytest.mark.parametrize("key, shape", [("expr", (30,)), ("expr", (2, 30, 100)), ("expr", (30, 20)),
                                        ("jaw_pose", (30,)), ("jaw_pose", (30, 3, 2))])
def test_wrong_array_rank(tmp_path, key, shape):
    p = good_params()
    p[key] = np.zeros(shape, np.float32)
    r = Root(tmp_path).add("s1", params=p)
    r.error("s1", f"key '{key}' has shape {shape}", "expected (T,")


@pytest.mark.parametrize("key, value", [("expr", np.nan), ("jaw_pose", np.inf)])
def test_nan_or_inf_in_coefficients(tmp_path, key, value):
    p = good_params()
    p[key][0, 17, 0] = value
    p[key][0, 23, 0] = value
    r = Root(tmp_path).add("s1", params=p)
    r.error("s1", f"key '{key}' has NaN/inf", "first at frame 17", os.path.join(r.root, "s1.npz"))


def test_nan_in_unused_coefficients_is_fine(tmp_path):
    p = good_params()
    p["expr"][0, 5, 80] = np.nan  # beyond the 50 expression dims the motion uses
    p["jaw_pose"][0, 5, 2] = np.nan  # jaw axes other than the opening
    item = Root(tmp_path).add("s1", params=p).load("s1")
    assert np.isfinite(item["motion"]).all()


@pytest.mark.parametrize("t", [1, 0])
def test_fewer_than_two_frames(tmp_path, t):
    r = Root(tmp_path).add("s1", params=good_params(t), audio_seconds=1.0)
    r.error("s1", f"has {t} frame(s)", "at least 2 frames")


def test_audio_too_short_for_two_frames(tmp_path):
    r = Root(tmp_path).add("s1", audio_seconds=0.03)  # rounds to 1 frame at 25 fps
    r.error("s1", "at least 2 frames")


def test_av_length_mismatch_reported_then_trimmed(tmp_path, caplog):
    r = Root(tmp_path).add("long_audio", t=50, audio_seconds=2.8).add("long_motion", t=50, audio_seconds=1.2)
    r.add("close", t=50, audio_seconds=2.3)  # 0.3 s apart: within DATA.max_av_diff, trimmed silently
    cfg = r.cfg()
    refs = {x.sample_id: x for x in read_index(r.json_rel, "DS", cfg.DATA.datasets.DS, cfg)}
    log = logging.getLogger("test_av")
    with caplog.at_level(logging.WARNING, logger="test_av"):
        a = load_item(refs["long_audio"], log=log)
        b = load_item(refs["long_motion"], log=log)
        c = load_item(refs["close"], log=log)
    assert a["n_frames"] == 50 and a["audio"].shape == (50 * 640,)
    assert b["n_frames"] == 30 and b["audio"].shape == (30 * 640,) and b["motion"].shape == (30, 51)
    assert c["n_frames"] == 50 and c["notes"] == []
    for item, sid, secs in ((a, "long_audio", "2.80 s"), (b, "long_motion", "1.20 s")):
        (note,) = item["notes"]
        assert r.json_path in note and f"'{sid}'" in note and secs in note and "2.00 s" in note
        assert "trimmed" in note
    warnings = [rec.getMessage() for rec in caplog.records]
    assert len(warnings) == 2 and "'long_audio'" in warnings[0] and "'long_motion'" in warnings[1]
    # validation reports the mismatches as warnings, not as bad samples
    rep = check_split(cfg, "train", progress=False)
    assert rep["problems"] == [] and len(rep["warnings"]) == 2 and len(rep["refs"]) == 3
    # a tighter DATA.max_av_diff reports the 0.3 s one too
    assert len(check_split(r.cfg(max_av_diff=0.2), "train", progress=False)["warnings"]) == 3


def test_unknown_format_in_config(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"DATA": {"datasets": {"DS": {"format": "spectre", "train": "a.json"}}}}))
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert str(p) in str(e.value) and "DATA.datasets.DS.format" in str(e.value) and "spectre" in str(e.value)


def bad_root(tmp_path):
    r = Root(tmp_path).add("good1").add("good2")
    r.add("no_audio", audio_seconds=False).add("nan_motion", params={**good_params(), "expr": np.full((30, 100), np.nan)})
    return r


def test_validate_error_mode_lists_all_problems(tmp_path):
    r = bad_root(tmp_path)
    cfg = r.cfg(bad_samples="error")
    with pytest.raises(DataError) as e:
        check_split(cfg, "train", progress=False)
    msg = str(e.value)
    assert "2 problem(s)" in msg and "'no_audio'" in msg and "'nan_motion'" in msg and r.json_path in msg
    assert "'good1'" not in msg
    with pytest.raises(DataError, match="'no_audio'"):
        FaceDataset(cfg, "train", ["spk"], progress=False)


def test_skip_mode_drops_bad_samples_with_logged_report(tmp_path, caplog):
    r = bad_root(tmp_path)
    cfg = r.cfg(bad_samples="skip")
    log = logging.getLogger("test_skip")
    with caplog.at_level(logging.WARNING, logger="test_skip"):
        ds = FaceDataset(cfg, "train", ["spk"], progress=False, log=log)
    assert [x.sample_id for x in ds.refs] == ["good1", "good2"]
    assert ds.report["datasets"]["DS"]["samples"] == 2 and ds.report["datasets"]["DS"]["entries"] == 4
    assert ds.report["bad"] == {(r.json_path, "no_audio"), (r.json_path, "nan_motion")}
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "'no_audio'" in logged and "'nan_motion'" in logged and "leaving out 2 bad sample(s)" in logged
    assert ds[1]["sample_id"] == "good2"


def test_test_split_style_folder_collision(tmp_path):
    r = Root(tmp_path).add("c1").add("c2")  # same speaker and emotion, no style_id: same output folder
    cfg = r.cfg(bad_samples="skip")
    cfg.DATA.datasets.DS.test = r.json_rel
    rep = check_split(cfg, "test", progress=False)
    (problem,) = rep["problems"]
    assert "'c2'" in problem and "'c1'" in problem and "same output folder" in problem
    assert [x.sample_id for x in rep["refs"]] == ["c1"]
    train = check_split(cfg, "train", progress=False)["problems"]  # training may share styles ...
    assert train and all("also in the test split" in p for p in train)  # ... not samples with test
