"""``main/export.py`` and ``inference.py --export glb``: the glb of a result, played by an independent
glTF player (tests/gltf_player.py), by Blender where it is installed, and checked by the Khronos
validator where node and tools/node_modules are installed, reproduces the result's vertex files to
1e-5 m; bad input is one line and nothing half-written."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from main import export as E
from main.exporting.flame_gltf import flame_to_gltf
from main.exporting.glb_binary import encode_glb
from main.results.formats import sample_arrays
from main.results.layout import build_meta
from main.results.writer import write_sample
from models.flame import FLAME, load_flame, load_flame_pickle
from scripts.flame_standin import write_standin_files
from tests.gltf_player import Player, read_glb
from tests.test_inference import checkpoint, coeff_root, data_root, run_eval, run_single, speechy, vert_root  # noqa: F401
from utils.errors import ResultsError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALIDATOR = os.path.join(REPO, "tools", "node_modules", "gltf-validator")
TOL = 1e-5
T = 30


def _frames(folder):
    return np.stack([np.load(os.path.join(folder, f"{i}.npy")) for i in range(len(os.listdir(folder)))])


def _max_error(glb, frames):
    player = Player(glb)
    assert player.n_keys == len(frames)
    return max(np.abs(player.frame(k) - frames[k]).max() for k in range(len(frames)))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A single-audio-like result of the stand-in FLAME: an identity, a moving jaw, expressions of either
    sign beyond [-1, 1], its audio; exported once by the command line."""
    root = tmp_path_factory.mktemp("glb")
    write_standin_files(str(root / "FLAME"))
    model = str(root / "FLAME" / "standin_generic_model.pkl")
    flame = load_flame(model)
    r = np.random.default_rng(0)
    motion = (1.2 * r.normal(size=(T, 51))).astype(np.float32)
    motion[:, 50] = 0.25 * np.abs(np.sin(np.arange(T) / 3))
    shape = r.normal(size=100).astype(np.float32)
    sf.write(root / "speech.wav", speechy(T / 25), 16000)
    folder = root / "res"
    write_sample(str(folder / "vertices"), str(folder), flame.motion_to_vertices(motion, shape),
                 sample_arrays(motion, shape), build_meta("speech", None, "A", None, str(root / "speech.wav"), 25, T,
                                                         "ckpt", "A", model, shape, None))
    E.main(["--results", str(folder)])
    return folder, model


def test_glb_plays_back_the_vertex_files(result):
    folder, model = result
    glb = folder / "animation.glb"
    assert _max_error(glb, _frames(folder / "vertices")) < TOL
    gltf, _ = read_glb(glb)
    player = Player(glb)
    np.testing.assert_allclose(player.times(), np.arange(T) / 25, atol=1e-6)
    weights = player.channels[0][3]
    assert weights.min() >= 0 and weights.max() <= 1          # every importer's range
    assert gltf["asset"]["extras"]["audio"] == "animation.wav" and gltf["asset"]["extras"]["fps"] == 25
    # 50 expression + the jaw's 9 pose correctives, each as a + and a - target
    names = gltf["meshes"][0]["extras"]["targetNames"]
    assert len(names) == 2 * (50 + 9) and names[:2] == ["expr_00+", "expr_00-"] and "pose_jaw_0+" in names
    # the coefficients come back from the weights and the targets' scales
    scales = np.asarray(gltf["meshes"][0]["extras"]["targetScales"])
    coeffs = (weights.reshape(T, -1) * scales).reshape(T, -1, 2).sum(-1)
    np.testing.assert_allclose(coeffs[:, :50], np.load(folder / "motion.npy")[:, :50], atol=1e-5)
    audio, sr = sf.read(folder / "animation.wav")
    assert sr == 16000 and len(audio) == T * 640
    assert sorted(os.listdir(folder)) == ["animation.glb", "animation.wav", "coeffs287.npy", "meta.json",
                                          "motion.npy", "vertices"]


def test_every_joint_and_all_expressions(result, tmp_path):
    """Neck, eyes and jaw rotating at once, 100 expression components: the skin and all pose correctives;
    vertices with five weights (a second JOINTS/WEIGHTS set)."""
    _, model = result
    params = load_flame_pickle(model)
    params["weights"][:200] = 0.2
    flame = FLAME(params)
    r = np.random.default_rng(1)
    shape, expr = r.normal(size=300), r.normal(size=(8, 100))
    pose = 0.3 * r.normal(size=(8, 5, 3))
    import torch
    ref = flame(torch.tensor(shape[None].repeat(8, 0)), torch.tensor(expr), torch.tensor(pose.reshape(8, 15))).numpy()
    anim = flame_to_gltf(flame, shape, expr, pose)
    assert len(anim.target_names) == 2 * (100 + 36)
    (tmp_path / "all.glb").write_bytes(encode_glb(anim, 30.0, {}))
    assert _max_error(tmp_path / "all.glb", ref) < TOL
    assert "JOINTS_1" in read_glb(tmp_path / "all.glb")[0]["meshes"][0]["primitives"][0]["attributes"]


@pytest.mark.skipif(shutil.which("node") is None or not os.path.isdir(VALIDATOR),
                    reason="node and tools/node_modules/gltf-validator (scripts/install_tools.sh) are not installed")
def test_khronos_validator_reports_no_errors(result):
    folder, _ = result
    run = subprocess.run(["node", os.path.join(REPO, "tools", "validate_gltf.js"), str(folder / "animation.glb")],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(run.stdout)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]
    assert run.returncode == 0 and report["info"]["hasMorphTargets"] and report["info"]["hasSkins"]


@pytest.mark.skipif(shutil.which("blender") is None, reason="Blender is not installed (apt-get install blender)")
def test_blender_plays_it_back_equal(result):
    from scripts.check_glb_blender import check

    folder, _ = result
    report = check(str(folder / "animation.glb"), str(folder / "vertices"))
    assert report["frames"] == T and report["max_abs_error_m"] < TOL, report


def test_inference_export_flag_and_a_test_split_sample(data_root, checkpoint, tmp_path):
    sf.write(tmp_path / "a.wav", speechy(0.8), 16000)
    run_single(data_root, checkpoint, tmp_path / "a.wav", tmp_path / "o", "--export", "glb")
    assert _max_error(tmp_path / "o" / "animation.glb", _frames(tmp_path / "o" / "vertices")) < TOL
    # a test-split sample: its folder in the coefficient tree holds meta.json; its identity is the sample's
    run_eval(data_root, checkpoint, tmp_path / "ev")
    sample = os.path.join("MEAD_VHAP", '["M003", "angry"]_passionate')
    meta = json.load(open(os.path.join(coeff_root(tmp_path / "ev"), sample, "meta.json")))
    assert meta["identity"].endswith("M003_angry_001.npz") and len(meta["shape"]) == 100
    E.main(["--results", os.path.join(coeff_root(tmp_path / "ev"), sample), "--out", str(tmp_path / "m.glb")])
    assert _max_error(tmp_path / "m.glb", _frames(os.path.join(vert_root(tmp_path / "ev"), sample))) < TOL
    assert os.path.isfile(tmp_path / "m.wav")


def test_bad_input_is_one_line_and_nothing_half_written(result, tmp_path, monkeypatch, capsys):
    folder, _ = result
    # no meta.json
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SystemExit) as e:
        E.main(["--results", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.count("\n") == 0 and str(tmp_path / "empty" / "meta.json") in err
    # an existing glb is kept unless --overwrite
    before = (folder / "animation.glb").read_bytes()
    with pytest.raises(ResultsError, match="already exists; rerun with --overwrite"):
        E.cli(["--results", str(folder)])
    assert (folder / "animation.glb").read_bytes() == before
    # a write that fails half-way leaves the old file whole and no temporary behind
    import main.exporting.glb as G

    def torn(path, data):
        open(path, "wb").write(data[:100])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(G, "_write_bytes", torn)
    with pytest.raises(ResultsError, match="No space left on device"):
        E.cli(["--results", str(folder), "--overwrite"])
    assert (folder / "animation.glb").read_bytes() == before
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    # a motion of the wrong size
    shutil.copytree(folder, tmp_path / "short", ignore=shutil.ignore_patterns("animation.*"))
    np.save(tmp_path / "short" / "motion.npy", np.zeros((T - 1, 51), np.float32))
    with pytest.raises(ResultsError, match=r"expected \(30,51\)"):
        E.cli(["--results", str(tmp_path / "short")])
    assert not os.path.exists(tmp_path / "short" / "animation.glb")


def test_a_result_whose_meta_json_predates_the_identity_keys(result, tmp_path):
    """No flame_model: one line asking for --flame; no shape: the shape block of coeffs287.npy."""
    folder, model = result
    old = tmp_path / "old"
    shutil.copytree(folder, old, ignore=shutil.ignore_patterns("animation.*"))
    meta = json.load(open(old / "meta.json"))
    json.dump({k: v for k, v in meta.items() if k not in ("flame_model", "shape", "identity")}, open(old / "meta.json", "w"))
    with pytest.raises(ResultsError, match=r"names no flame_model; pass .* \(--flame FILE\)"):
        E.cli(["--results", str(old)])
    E.cli(["--results", str(old), "--flame", model])
    assert _max_error(old / "animation.glb", _frames(old / "vertices")) < TOL
