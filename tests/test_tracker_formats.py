"""FLAME parameter files as the trackers write them, and reading only the keys the motion, shape and
detail need.

Every fixture writes what the tool writes (same keys, shapes, leading axes, dtypes, file layout),
independently of the loader:
- VHAP ``tracked_flame_params_<epoch>.npz`` (np.savez of every tracked quantity, ``tex_extra``
  (3, 2048, 2048) float32 included);
- EMOCA ``save_codes``: one folder per detected frame, ``<frame>/{shape,exp,tex,pose,detail}.npy``
  beside the images the demo writes there;
- the inferno pipeline's ``shape_pose_cam.pkl``: HDF5 in hickle 5's layout for a dict of arrays
  (group ``data``, one dataset per key named with quotes, each (1, T, D) float32), written with h5py;
- DECA's code dict (``shape, exp, pose, cam, tex, light, detail``, no ``code`` suffix).
"""
import json
import os
import zipfile

import numpy as np
import pytest
import soundfile as sf
import yaml

from dataset.data_item import load_item
from dataset.dataset import FaceDataset
from dataset.flame_files import load_flame_params
from dataset.flame_params import load_motion, load_shape
from dataset.index import read_index
from utils.config import load_config
from utils.errors import DataError

SR = 16000


# ----------------------------------------------------------------------------- fixture writers

def vhap_export(t, seed=0, tex_res=2048, n_verts=5143):
    """The dict VHAP's FlameTracker.save_result passes to np.savez (uncalibrated, photometric,
    static and dynamic offsets on, PCA texture)."""
    r = np.random.default_rng(seed)
    f32 = lambda *s: r.normal(size=s).astype(np.float32)
    return {"rotation": f32(t, 3), "translation": f32(t, 3), "neck_pose": f32(t, 3),
            "jaw_pose": 0.1 * f32(t, 3), "eyes_pose": f32(t, 6), "shape": f32(300), "expr": f32(t, 100),
            "timestep_id": np.array([f"{i:05d}" for i in range(t)]), "n_processed_frames": np.array(t),
            "focal_length": np.array([1.5], np.float32), "tex": f32(100),
            "tex_extra": np.zeros((3, tex_res, tex_res), np.float32), "lights": f32(9, 3),
            "static_offset": f32(1, n_verts, 3), "dynamic_offset": np.zeros((t, n_verts, 3), np.float32),
            "image_size": np.array([512, 512])}


def npy_bytes_claiming(shape, dtype="<f4", data=b""):
    """The bytes of a .npy whose header announces ``shape`` but whose data are cut short."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def write_emoca_save_codes(folder, t, seed=0, batch_axis=False):
    """What EMOCA's demos write with --save_codes: per detected face ``<frame:06d>_000/`` holding
    shape (100,), exp (50,), tex (50,), pose (6,) = [global 3, jaw 3], detail (128,) float32 (with
    ``i=None`` save_codes keeps the batch axis: (1, D)), next to the images of save_images."""
    r = np.random.default_rng(seed)
    codes = {"shape": r.normal(size=(t, 100)), "exp": r.normal(size=(t, 50)), "tex": r.normal(size=(t, 50)),
             "pose": 0.1 * r.normal(size=(t, 6)), "detail": r.normal(size=(t, 128))}
    codes = {k: v.astype(np.float32) for k, v in codes.items()}
    for i in range(t):
        d = os.path.join(folder, f"{i + 1:06d}_000")
        os.makedirs(d)
        for k, v in codes.items():
            np.save(os.path.join(d, f"{k}.npy"), v[i][None] if batch_axis else v[i])
        for img in ("geometry_coarse.png", "geometry_detail.png", "out_im_coarse.png", "out_im_detail.png"):
            with open(os.path.join(d, img), "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n")
    return codes


def write_hickle_dict(path, arrays):
    """``hickle.dump(dict_of_arrays, path)`` as hickle 5 lays it out, written with h5py: root attributes
    HICKLE_VERSION / HICKLE_PYTHON_VERSION; group ``data`` for the dict; one dataset per key named
    ``"<key>"`` with attributes key_base_type, key_idx, np_dtype and ``type``, a reference into the
    ``hickle_types_table`` group, whose entries are pickles of the Python types (``dict``,
    ``numpy.ndarray``) stored as bytes: hickle unpickles them on load, the loader never does."""
    import pickle

    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["HICKLE_PYTHON_VERSION"] = "3.11.7"
        f.attrs["HICKLE_VERSION"] = "5.0.3"
        table = f.create_group("hickle_types_table")

        def type_entry(name, py_type, base):
            entry = table.create_dataset(name, data=np.frombuffer(pickle.dumps(py_type, protocol=4), "S1")[None])
            entry.attrs["base_type"] = table.create_dataset(base, shape=None, dtype="S1").ref
            return entry.ref

        dict_type = type_entry("0", dict, "dict")
        array_type = type_entry("2", np.ndarray, "ndarray")
        data = f.create_group("data")
        data.attrs["type"] = dict_type
        for i, (k, v) in enumerate(arrays.items()):
            ds = data.create_dataset(f'"{k}"', data=v)
            ds.attrs["key_base_type"] = "str"
            ds.attrs["key_idx"] = np.int64(i)
            ds.attrs["np_dtype"] = v.dtype.str
            ds.attrs["type"] = array_type


def inferno_shape_pose_cam(t, seed=0):
    """The dict the inferno pipeline keeps for shape_pose_cam: each (1, T, D) float32 (EMICA: shape 300,
    exp 100)."""
    r = np.random.default_rng(seed)
    dims = {"shape": 300, "exp": 100, "jaw": 3, "global_pose": 3, "cam": 3}
    return {k: r.normal(size=(1, t, d)).astype(np.float32) for k, d in dims.items()}


def index_root(tmp_path, flame_rel, t, fmt, fps=25):
    """A data root with one sample (the given FLAME file or folder, a wav of the same length) and its
    JSON index; returns the config and the SampleRef."""
    root = str(tmp_path)
    x = 0.1 * np.random.default_rng(1).normal(size=int(round(t / fps * SR))).astype(np.float32)
    sf.write(os.path.join(root, "a.wav"), x, SR)
    with open(os.path.join(root, "idx.json"), "w") as f:
        json.dump({"s": {"audio_path": "a.wav", "flame_coeff_save_path": flame_rel, "speaker_id": "p"}}, f)
    with open(os.path.join(root, "cfg.yaml"), "w") as f:
        yaml.safe_dump({"DATA": {"data_root": root, "max_frames": 0,
                                 "datasets": {"D": {"format": fmt, "fps": fps, "train": "idx.json"}}}}, f)
    cfg = load_config(os.path.join(root, "cfg.yaml"))
    (ref,) = read_index("idx.json", "D", cfg.DATA.datasets.D, cfg)
    return cfg, ref


# ----------------------------------------------------------------------------- read only what is needed

def test_vhap_file_with_texture_decodes_only_motion_and_shape(tmp_path, monkeypatch):
    t = 50
    p = vhap_export(t, seed=1)
    path = tmp_path / "tracked_flame_params_30.npz"
    np.savez(path, **p)
    assert path.stat().st_size > 48 * 2 ** 20  # the texture alone is 48 MiB
    decoded = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__

    def spy(self, key):
        decoded.append(key)
        return real_getitem(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", spy)
    cfg, ref = index_root(tmp_path, path.name, t, "vhap")
    ds = FaceDataset(cfg, "train", ["p"], progress=False)  # start-up validation, then one item
    it = ds[0]
    np.testing.assert_allclose(it["motion"].numpy(), np.concatenate([p["expr"][:, :50], p["jaw_pose"][:, :1]], 1))
    np.testing.assert_allclose(it["shape"].numpy(), p["shape"][:100])
    assert set(decoded) == {"expr", "jaw_pose", "shape"}, decoded
    params = load_flame_params(str(path))
    assert "tex_extra" in params and "timestep_id" in params and params.decoded == []
    with pytest.raises(DataError, match=r"key 'timestep_id' holds <U5 values; expected a numeric array"):
        params["timestep_id"]


def test_unreadable_texture_and_offsets_are_never_read(tmp_path):
    """tex_extra and dynamic_offset members whose headers announce 48 MB / 3 MB but whose data are
    missing: any code that decodes them (dict(npz), a loop over the keys) fails; loading must not."""
    t = 30
    p = vhap_export(t, seed=2, tex_res=4)
    big = {"tex_extra": (3, 2048, 2048), "dynamic_offset": (t, 5143, 3)}
    path = str(tmp_path / "tracked_flame_params_30.npz")
    np.savez(path, **{k: v for k, v in p.items() if k not in big})
    with zipfile.ZipFile(path, "a") as z:
        for k, shape in big.items():
            z.writestr(f"{k}.npy", npy_bytes_claiming(shape, data=b"\0" * 4096))
    with np.load(path) as z, pytest.raises(ValueError):
        dict(z)  # the members really are unreadable
    cfg, ref = index_root(tmp_path, os.path.basename(path), t, "vhap")
    item = load_item(ref)
    np.testing.assert_allclose(item["motion"][:, :50], p["expr"][:, :50])
    np.testing.assert_allclose(item["shape"], p["shape"])
    assert len(FaceDataset(cfg, "train", ["p"], progress=False)) == 1  # start-up validation passes
    with load_flame_params(path) as params:
        assert sorted(big) == sorted(k for k in params if k in big)
        with pytest.raises(DataError) as e:
            params["tex_extra"]
    assert path in str(e.value) and "key 'tex_extra'" in str(e.value)


# ----------------------------------------------------------------------------- what the trackers write

@pytest.mark.parametrize("batch_axis", [False, True])
def test_emoca_save_codes_per_frame_folders(tmp_path, batch_axis):
    t = 14
    seq = tmp_path / "video" / "results" / "EMOCA"
    codes = write_emoca_save_codes(str(seq), t, seed=3, batch_axis=batch_axis)
    cfg, ref = index_root(tmp_path, "video/results/EMOCA", t, "emoca")
    item = FaceDataset(cfg, "train", ["p"], progress=False)[0]
    np.testing.assert_allclose(item["motion"][:, :50].numpy(), codes["exp"])
    np.testing.assert_allclose(item["motion"][:, 50].numpy(), codes["pose"][:, 3])  # jaw opening, not global
    np.testing.assert_allclose(item["shape"].numpy(), codes["shape"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item["detail"].numpy(), codes["detail"].mean(0), rtol=1e-5, atol=1e-6)
    params = load_flame_params(str(seq))
    assert sorted(params) == ["detail", "exp", "pose", "shape", "tex"]
    load_motion(str(seq), "emoca", 25)
    assert params["pose"].shape == (t, 6)
    assert params.decoded == ["pose"]


def test_emoca_save_codes_bad_frame_names_the_file(tmp_path):
    seq = tmp_path / "EMOCA"
    write_emoca_save_codes(str(seq), 6, seed=4)
    os.remove(seq / "000004_000" / "pose.npy")
    with pytest.raises(DataError) as e:
        load_motion(str(seq), "emoca", 25)
    assert str(seq / "000004_000" / "pose.npy") in str(e.value) and "pose.npy" in str(e.value)
    np.save(seq / "000004_000" / "pose.npy", np.zeros(3, np.float32))  # jaw only: wrong size
    with pytest.raises(DataError, match=r"key 'pose' has different shapes across frames"):
        load_motion(str(seq), "emoca", 25)


def test_inferno_shape_pose_cam_pkl_is_hdf5_read_with_h5py(tmp_path):
    t = 40
    arrays = inferno_shape_pose_cam(t, seed=5)
    os.makedirs(tmp_path / "rec")
    path = str(tmp_path / "rec" / "shape_pose_cam.pkl")
    write_hickle_dict(path, arrays)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"  # HDF5 despite the name
    with load_flame_params(path) as params:
        assert sorted(params) == ["cam", "exp", "global_pose", "jaw", "shape"]
        assert params["exp"].shape == (t, 100) and params["exp"].dtype == np.float32
    cfg, ref = index_root(tmp_path, "rec/shape_pose_cam.pkl", t, "emoca")
    item = load_item(ref)
    np.testing.assert_allclose(item["motion"][:, :50], arrays["exp"][0, :, :50])
    np.testing.assert_allclose(item["motion"][:, 50], arrays["jaw"][0, :, 0])
    np.testing.assert_allclose(item["shape"], arrays["shape"][0].mean(0), rtol=1e-5, atol=1e-6)
    assert item["detail"] is None  # the detail code is in appearance.pkl, not read

    # a plain h5py file (datasets at the root, .hdf5) is read the same way
    import h5py
    with h5py.File(tmp_path / "plain.hdf5", "w") as f:
        for k, v in arrays.items():
            f[k] = v
    np.testing.assert_allclose(load_motion(str(tmp_path / "plain.hdf5"), "emoca", 25), item["motion"])


def test_hdf5_bad_content_names_file_key_and_expectation(tmp_path):
    arrays = inferno_shape_pose_cam(20, seed=6)
    arrays["jaw"] = np.zeros((1, 20, 6), np.float32)
    path = str(tmp_path / "shape_pose_cam.pkl")
    write_hickle_dict(path, arrays)
    with pytest.raises(DataError) as e:
        load_motion(path, "emoca", 25)
    assert path in str(e.value) and "key 'jaw' has shape (20, 6); expected (T, 3) (jaw axis-angle)" in str(e.value)
    with open(path, "r+b") as f:  # the signature, then damage: never handed to the unpickler
        f.seek(100)
        f.write(b"\0" * 400)
    with pytest.raises(DataError) as e:
        load_motion(path, "emoca", 25)
    assert path in str(e.value) and "cannot read" in str(e.value) and "pickle" not in str(e.value)
    write_hickle_dict(path, {"exp": arrays["exp"]})
    with pytest.raises(DataError, match=r"jaw key 'posecode' or 'pose' or 'jaw' is missing"):
        load_motion(path, "emoca", 25)


def test_deca_code_dict_without_code_suffix(tmp_path):
    t = 16
    r = np.random.default_rng(7)
    dims = {"shape": (100,), "exp": (50,), "pose": (6,), "cam": (3,), "tex": (50,), "light": (9, 3),
            "detail": (128,)}
    codes = {k: r.normal(size=(t, *d)).astype(np.float32) for k, d in dims.items()}
    np.save(tmp_path / "codes.npy", codes, allow_pickle=True)  # a batch of T frames
    frames = tmp_path / "frames"  # one code dict per frame, batch axis 1, as DECA encodes one image
    frames.mkdir()
    for i in range(t):
        with open(frames / f"{i}.pkl", "wb") as f:
            import pickle
            pickle.dump({k: v[i][None] for k, v in codes.items()}, f)
    want = np.concatenate([codes["exp"], codes["pose"][:, 3:4]], 1)
    for path in (str(tmp_path / "codes.npy"), str(frames)):
        np.testing.assert_allclose(load_motion(path, "emoca", 25), want)
        np.testing.assert_allclose(load_shape(path, "emoca"), codes["shape"].mean(0), rtol=1e-5, atol=1e-6)
    from dataset.flame_params import detail_from_params
    np.testing.assert_allclose(detail_from_params(load_flame_params(str(frames))), codes["detail"].mean(0),
                               rtol=1e-5, atol=1e-6)


def test_jaw_and_global_pose_instead_of_posecode(tmp_path):
    t = 12
    r = np.random.default_rng(8)
    p = {"expcode": r.normal(size=(1, t, 50)).astype(np.float32), "jaw": r.normal(size=(1, t, 3)).astype(np.float32),
         "global_pose": r.normal(size=(1, t, 3)).astype(np.float32)}
    np.savez(tmp_path / "p.npz", **p)
    m = load_motion(str(tmp_path / "p.npz"), "emoca", 25)
    np.testing.assert_allclose(m, np.concatenate([p["expcode"][0], p["jaw"][0, :, :1]], 1))
    np.savez(tmp_path / "q.npz", exp=p["expcode"], jaw=p["jaw"])  # the names without suffix too
    np.testing.assert_allclose(load_motion(str(tmp_path / "q.npz"), "emoca", 25), m)
    with pytest.raises(DataError, match=r"has key 'exp' \(emoca format\) but the dataset's format is 'vhap'"):
        load_motion(str(tmp_path / "q.npz"), "vhap", 25)
