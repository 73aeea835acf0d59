"""dataset/flame_files.py and dataset/flame_params.py: FLAME parameter formats -> motion, shape and
detail code, and the motion resampler.

Every fixture is written here independently of the loader (np.savez with the documented key names
and shapes), in tmp_path, with a tiny config (tests/conftest.py).
"""
import os
import pickle

import numpy as np
import pytest

from dataset.data_item import load_item
from dataset.dataset import FaceDataset
from dataset.flame_files import load_flame_params
from dataset.flame_params import detail_from_params, load_motion, load_shape, resample_motion
from dataset.index import read_index
from main.results.formats import motion_to_coeffs287
from tests.conftest import emoca_params, expected_vhap, make_cfg, vhap_params, write_json, write_sample
from utils.errors import DataError

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

    c = motion_to_coeffs287(e["motion"].numpy(), e["shape"].numpy(), e["detail"].numpy())
    np.testing.assert_allclose(c[:, 159:], np.broadcast_to(e["detail"].numpy(), (c.shape[0], 128)))
    # one code per sequence (not per frame) is also accepted; a wrong size names the key
    np.savez(tmp_path / "E/1.npz", **dict(pe, detailcode=np.ones(128, np.float32)))
    np.savez(tmp_path / "E/2.npz", **dict(pe, detailcode=np.ones((30, 64), np.float32)))
    assert (detail_from_params(load_flame_params(str(tmp_path / "E/1.npz"))) == 1).all()
    with pytest.raises(DataError, match="detailcode"):
        detail_from_params(load_flame_params(str(tmp_path / "E/2.npz")), "E/2.npz")


def test_a_per_frame_vhap_shape_is_averaged_with_a_warning(caplog):
    import logging

    from dataset.flame_params import shape_from_params

    shape = np.arange(7 * 300, dtype=np.float32).reshape(7, 300)
    with caplog.at_level(logging.WARNING):
        got = shape_from_params({"shape": shape}, "vhap", "seq/tracked_flame_params_30.npz")
    assert np.allclose(got, shape.mean(axis=0))
    assert ("seq/tracked_flame_params_30.npz: key 'shape' has shape (7, 300); VHAP writes one (S,) shape per "
            "sequence: its 7 rows are averaged") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # EMOCA's per-frame shape codes are averaged as documented
        shape_from_params({"shapecode": shape[:, :100]}, "emoca", "clip.npz")
    assert caplog.text == ""
