"""``inference.py --identity FILE`` (dataset/identity.py): the shape of any file the dataset layer reads
animates the result, in single-audio and stream mode; meta.json names the file; the FLAME model follows
the tracker; a bad file or a shape of the wrong size is one line naming it, before anything is written.
Data, checkpoint and helpers: tests/test_inference.py."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from dataset.identity import identity_flame_path, read_identity
from main import inference as I
from models.flame import load_flame
from tests.test_inference import DEMO_CFG, SR, checkpoint, data_root, run_single, speechy  # noqa: F401
from utils.config import load_config
from utils.errors import DataError


def _frames(folder):
    n = len(os.listdir(folder))
    return np.stack([np.load(os.path.join(folder, f"{i}.npy")) for i in range(n)])


def _expected(data_root, out, shape):
    """The vertices FLAME(shape, motion) of the result in ``out`` (its motion.npy)."""
    flame = load_flame(os.path.join(data_root, "FLAME", "standin_generic_model.pkl"))
    return flame.motion_to_vertices(np.load(os.path.join(out, "motion.npy")), shape)


@pytest.fixture(scope="module")
def wav(data_root):
    path = os.path.join(data_root, "identity_speech.wav")
    sf.write(path, speechy(1.0, seed=3), SR)
    return path


def test_vhap_identity_single_audio(data_root, checkpoint, wav, tmp_path):
    r = np.random.default_rng(7)
    shape = r.normal(size=300).astype(np.float32)
    np.savez(tmp_path / "tracked_flame_params_30.npz", shape=shape[None], expr=np.zeros((1, 5, 100), np.float32),
             jaw_pose=np.zeros((1, 5, 3), np.float32))
    out = tmp_path / "o"
    run_single(data_root, checkpoint, wav, out, "--identity", str(tmp_path / "tracked_flame_params_30.npz"))
    meta = json.load(open(out / "meta.json"))
    assert meta["identity"] == str(tmp_path / "tracked_flame_params_30.npz")
    assert meta["flame_model"] == os.path.join(data_root, "FLAME", "standin_generic_model.pkl")
    np.testing.assert_array_equal(np.asarray(meta["shape"], np.float32), shape)
    verts = _frames(out / "vertices")
    np.testing.assert_allclose(verts, _expected(data_root, out, shape), atol=1e-6)
    # a different face from the mean one: the identity is not ignored
    assert np.abs(verts - _expected(data_root, out, None)).max() > 1e-3
    np.testing.assert_allclose(np.load(out / "coeffs287.npy")[:, :100], np.tile(shape[:100], (len(verts), 1)))


def test_plain_npy_identity_in_stream_mode_and_emoca_folder(data_root, checkpoint, wav, tmp_path):
    shape = np.linspace(-1, 1, 50).astype(np.float32)       # fewer than the model's 300: zero-padded
    np.save(tmp_path / "shape.npy", shape)
    out = tmp_path / "s"
    run_single(data_root, checkpoint, wav, out, "--stream", "--identity", str(tmp_path / "shape.npy"))
    padded = np.concatenate([shape, np.zeros(250, np.float32)])
    np.testing.assert_allclose(_frames(out / "vertices"), _expected(data_root, out, padded), atol=1e-6)
    assert json.load(open(out / "meta.json"))["identity"] == str(tmp_path / "shape.npy")

    # EMOCA's save_codes: one folder per frame; the per-frame shapes are averaged
    codes = tmp_path / "codes"
    for k in range(3):
        os.makedirs(codes / f"{k:04d}")
        np.save(codes / f"{k:04d}" / "shape.npy", np.full(100, k, np.float32))
        np.save(codes / f"{k:04d}" / "exp.npy", np.zeros(50, np.float32))
        np.save(codes / f"{k:04d}" / "pose.npy", np.zeros(6, np.float32))
    ident = read_identity(str(codes))
    assert ident.fmt == "emoca" and np.allclose(ident.shape, 1.0)


def test_the_model_follows_the_tracker(data_root):
    cfg = load_config(DEMO_CFG, [f"DATA.data_root={data_root}",
                                 "DATA.datasets.MEAD_VHAP.flame_model=FLAME/flame2023.pkl"])
    vhap = os.path.join(data_root, "clips", "M003_angry_001.npz")
    emoca = os.path.join(data_root, "clips", "dh01_a.npz")
    assert identity_flame_path(cfg, read_identity(vhap)) == os.path.join(data_root, "FLAME", "flame2023.pkl")
    assert identity_flame_path(cfg, read_identity(emoca)) == os.path.join(data_root, "FLAME",
                                                                          "standin_generic_model.pkl")


@pytest.mark.parametrize("case", ["missing", "no_shape", "too_long", "nan", "matrix"])
def test_bad_identity_is_one_line_and_writes_nothing(data_root, checkpoint, wav, tmp_path, case, capsys):
    path = tmp_path / ("id.npz" if case == "no_shape" else "id.npy")
    if case == "no_shape":
        np.savez(path, expr=np.zeros((4, 100), np.float32))
    elif case != "missing":
        np.save(path, {"too_long": np.ones(400), "nan": np.array([0.0, np.nan]),
                       "matrix": np.ones((3, 4))}[case].astype(np.float32))
    expected = {"missing": "identity file not found", "no_shape": "holds no identity shape",
                "too_long": "its shape has 400 coefficients; expected at most 300", "nan": "finite numbers",
                "matrix": "expected a shape vector"}[case]
    with pytest.raises(DataError, match=expected) as e:
        run_single(data_root, checkpoint, wav, tmp_path / "o", "--identity", str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "o" / "vertices") and not os.path.exists(tmp_path / "o" / "meta.json")
    with pytest.raises(SystemExit) as exit_:   # the command line: exit status 1
        I.main(["--config", DEMO_CFG, "--audio", wav, "--out", str(tmp_path / "o2"), "--identity", str(path),
                f"DATA.data_root={data_root}", f"INFER.checkpoint={checkpoint}", "INFER.device=cpu"])
    assert exit_.value.code == 1
