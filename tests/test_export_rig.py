"""``main/export.py --rig``: bounded least-squares weights of any blendshape rig on FLAME's topology, the
Live Link Face CSV and the JSON beside it, and the one-line errors of bad rigs and result folders."""
import csv
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import lsq_linear

from main.export import main as export_main
from main.exporting.arkit import ARKIT_NAMES, ROTATION_COLUMNS, arkit_columns, timecode
from main.exporting.result import load_result
from main.exporting.rig import bounded_weights, export_rig, fit_rig
from main.results.formats import sample_arrays
from main.results.layout import build_meta
from main.results.writer import write_sample
from scripts.make_rig import make_rig, write_rig_glb, write_rig_npz
from utils.config import load_config
from utils.errors import run_reporting_user_errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the expression-only rig of the end-to-end tests: shape k = FLAME's offsets of motion EXPR_RIG[k]
EXPR_NAMES = ["JawOpen", "mouthClose", "MOUTHPUCKER", "MouthSmileLeft", "BrowInnerUp", "CustomShape"]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The stand-in FLAME: (model path, FLAME)."""
    from models.flame import FLAME
    from scripts.flame_standin import write_standin_files
    path, _ = write_standin_files(str(tmp_path_factory.mktemp("flame")))
    return path, FLAME.from_file(path)


def expression_rig(flame):
    """A rig whose shapes are FLAME expression offsets, so a FLAME result is exactly a weighted sum of
    them: names, neutral (template), deltas (6,V,3), and the (6,51) motions of the shapes."""
    rng = np.random.default_rng(3)
    motions = np.zeros((len(EXPR_NAMES), 51), np.float32)
    for k in range(len(EXPR_NAMES)):
        motions[k, rng.choice(50, 3, replace=False)] = rng.uniform(0.5, 1.5, 3)
    rest = flame.motion_to_vertices(np.zeros((1, 51), np.float32))[0]
    return rest, flame.motion_to_vertices(motions) - rest, motions


def single_result(folder, flame, motion, shape, fps=25.0):
    """A single-audio result (DIR/vertices/, motion.npy, coeffs287.npy, meta.json) made by FLAME."""
    meta = build_meta("clip", None, "A", None, None, fps, len(motion), "test", "A")
    write_sample(os.path.join(folder, "vertices"), str(folder), flame.motion_to_vertices(motion, shape),
                 sample_arrays(motion, shape), meta)
    return str(folder)


def config_for(model_path, tmp_path):
    return load_config(os.path.join(REPO, "config", "demo.yaml"),
                       [f"FLAME.model_path={model_path}", f"INFER.output_root={tmp_path}/metrics",
                        f"INFER.coeff_root={tmp_path}/coeffs"])


def test_fit_recovers_the_weights_of_frames_made_from_the_rig(standin):
    """52 ARKit-named shapes (scripts/make_rig.py), weights in [0,1] with a third of them on a bound."""
    names, _, deltas = make_rig(standin[1])
    rng = np.random.default_rng(0)
    truth = np.clip(rng.uniform(-0.5, 1.5, (200, 52)), 0, 1).astype(np.float32)
    weights, err, unexplained = fit_rig(deltas, np.einsum("tk,kvc->tvc", truth, deltas))
    assert len(names) == 52 and weights.shape == (200, 52)
    assert np.abs(weights - truth).max() < 1e-3
    assert err.max() < 1e-6 and unexplained < 1e-4


def test_bounded_solver_matches_scipys_bvls():
    """On an ill-posed random problem (the optimum has many shapes on both bounds) the batched solver
    reaches scipy's bounded-variable least squares objective frame by frame."""
    rng = np.random.default_rng(1)
    d = rng.normal(size=(12, 40)) + 2 * rng.normal(size=(1, 40))  # correlated shapes
    x = rng.normal(size=(30, 40)) * 3
    w = bounded_weights(d @ d.T, x @ d.T)
    ref = np.stack([lsq_linear(d.T, xt, bounds=(0, 1), method="bvls").x for xt in x])
    cost = lambda v: ((x - v @ d) ** 2).sum(1)
    assert w.min() >= 0 and w.max() <= 1
    assert np.allclose(cost(w), cost(ref), rtol=1e-9, atol=1e-9)
    assert ((ref == 0) | (ref == 1)).mean() > 0.3


def test_timecode_is_live_link_faces():
    """HH:MM:SS:FF.mmm, FF counting frames within the second at the take's rate, .mmm the sub-frame."""
    assert timecode(0, 25) == "00:00:00:00.000"
    assert timecode(24, 25) == "00:00:00:24.000"
    assert timecode(37, 25) == "00:00:01:12.000"
    assert timecode((3600 + 61) * 25 + 3, 25) == "01:01:01:03.000"
    assert timecode(1, 29.97) == "00:00:00:01.000"
    assert timecode(30, 29.97) == "00:00:01:00.030"  # 30 frames at 29.97 fps end 0.03 frames into second 1


def test_names_match_case_insensitively_and_missing_shapes_are_zero():
    w = np.array([[0.1, 0.2, 0.3]], np.float32)
    out = arkit_columns(["jawopen", "MOUTHCLOSE", "NotArkit"], w)
    assert out.shape == (1, 52)
    assert out[0, ARKIT_NAMES.index("JawOpen")] == pytest.approx(0.1)
    assert out[0, ARKIT_NAMES.index("MouthClose")] == pytest.approx(0.2)
    assert np.count_nonzero(out) == 2


def test_cli_writes_live_link_csv_and_json_for_npz_and_glb_rigs(standin, tmp_path):
    """The result has another identity than the rig's neutral: its motion (vertices minus its own face at
    rest) is what is fitted, so the weights it was made with come back. npz and glb rigs agree."""
    model_path, flame = standin
    rest, deltas, motions = expression_rig(flame)
    rng = np.random.default_rng(2)
    truth = np.clip(rng.uniform(-0.3, 1.3, (12, len(EXPR_NAMES))), 0, 1).astype(np.float32)
    shape = rng.normal(0, 1, 100).astype(np.float32)
    folder = single_result(tmp_path / "clip", flame, truth @ motions, shape)
    write_rig_npz(str(tmp_path / "rig.npz"), EXPR_NAMES, rest, deltas)
    write_rig_glb(str(tmp_path / "rig.glb"), EXPR_NAMES, rest, deltas, flame.faces)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "main/export.py", "--config", "config/demo.yaml", "--results", folder,
                        "--rig", str(tmp_path / "rig.glb"), f"FLAME.model_path={model_path}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "fit error mean" in p.stdout + p.stderr
    with open(os.path.join(folder, "blendshapes.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Timecode", "BlendShapeCount", *ARKIT_NAMES, *ROTATION_COLUMNS]
    assert len(rows[0]) == 63 and len(rows) == 13
    assert [r[0] for r in rows[1:4]] == ["00:00:00:00.000", "00:00:00:01.000", "00:00:00:02.000"]
    assert all(r[1] == "61" for r in rows[1:])
    table = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    for k, name in enumerate(EXPR_NAMES[:-1]):
        col = [n.lower() for n in ARKIT_NAMES].index(name.lower())
        assert np.abs(table[:, col] - truth[:, k]).max() < 1e-3
    assert np.count_nonzero(table[:, 52:]) == 0  # head and eye rotations
    assert np.count_nonzero(table[:, :52]) <= table.shape[0] * 5  # the 47 shapes the rig lacks are 0

    with open(os.path.join(folder, "blendshapes.json")) as f:
        out = json.load(f)
    assert out["names"] == EXPR_NAMES and out["fps"] == 25.0
    assert np.abs(np.array(out["weights"]) - truth).max() < 1e-3
    assert len(out["fit_error"]) == 12 and max(out["fit_error"]) < 1e-5

    cfg = config_for(model_path, tmp_path)
    via_npz = export_rig(load_result(folder, cfg), str(tmp_path / "rig.npz"))
    assert via_npz["fit_error_max"] == pytest.approx(out["fit_error_max"], abs=1e-7)


def test_warns_when_the_rig_cannot_explain_the_motion(standin, tmp_path, caplog):
    """A rig whose one shape does not move the way the result does: the warning gives the threshold."""
    model_path, flame = standin
    rest, deltas, motions = expression_rig(flame)
    motion = np.zeros((5, 51), np.float32)
    motion[:, 50] = np.linspace(0, 0.3, 5)  # the jaw: none of the rig's shapes
    folder = single_result(tmp_path / "clip", flame, motion, None)
    write_rig_npz(str(tmp_path / "rig.npz"), EXPR_NAMES[4:5], rest, deltas[4:5])
    with caplog.at_level(logging.WARNING, logger="export"):
        summary = export_rig(load_result(folder, config_for(model_path, tmp_path)), str(tmp_path / "rig.npz"))
    assert summary["unexplained_fraction"] > 0.5
    assert "cannot explain the motion" in caplog.text and "above 50%" in caplog.text


def _glb_without_targets(path, flame):
    import pygltflib as g
    v = flame.motion_to_vertices(np.zeros((1, 51), np.float32))[0]
    blob = v.astype(np.float32).tobytes()
    gltf = g.GLTF2(meshes=[g.Mesh(primitives=[g.Primitive(attributes=g.Attributes(POSITION=0))])],
                   accessors=[g.Accessor(bufferView=0, componentType=g.FLOAT, count=len(v), type=g.VEC3)],
                   bufferViews=[g.BufferView(buffer=0, byteLength=len(blob))], buffers=[g.Buffer(byteLength=len(blob))])
    gltf.set_binary_blob(blob)
    gltf.save_binary(path)


@pytest.mark.parametrize("case, expected", [
    ("topology", "expected (5023, 3) and (52, 5023, 3)"),
    ("nan", "NaN or infinite values"),
    ("empty", "K = 0"),
    ("no_targets", "no mesh with morph targets"),
    ("no_meta", "meta.json: not found; expected a result folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(standin, tmp_path, capsys, case, expected):
    model_path, flame = standin
    names, neutral, deltas = make_rig(flame)
    folder = single_result(tmp_path / "clip", flame, np.zeros((3, 51), np.float32), None)
    rig = str(tmp_path / "rig.npz")
    if case == "topology":
        write_rig_npz(rig, names, neutral[:4000], deltas[:, :4000])
    elif case == "nan":
        deltas[7, 100, 1] = np.nan
        write_rig_npz(rig, names, neutral, deltas)
    elif case == "empty":
        write_rig_npz(rig, np.array([], dtype=str), neutral, deltas[:0])
    elif case == "no_targets":
        rig = str(tmp_path / "rig.glb")
        _glb_without_targets(rig, flame)
    else:
        write_rig_npz(rig, names, neutral, deltas)
        os.remove(os.path.join(folder, "meta.json"))
    before = sorted(os.listdir(folder))
    with pytest.raises(SystemExit) as e:
        run_reporting_user_errors("export", export_main, ["--config", os.path.join(REPO, "config", "demo.yaml"),
                                                          "--results", folder, "--rig", rig, "--html",
                                                          f"FLAME.model_path={model_path}"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1
    assert len(err.splitlines()) == 1 and expected in err
    assert (rig if case != "no_meta" else os.path.join(folder, "meta.json")) in err
    assert sorted(os.listdir(folder)) == before
