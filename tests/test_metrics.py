"""LVE / FDD / MVE on hand-made arrays against hand-computed values, and evaluate() on a results tree."""
import math

import numpy as np
import pytest

from main.evaluate import lip_opening_proxy
from main.evaluation.metrics import aggregate, fdd, lve, mve, upper_face_dynamics

LIPS = [0, 1]
UPPER = [2, 3]


def _pair():
    """2 frames x 4 vertices; gt is all zeros, pred's per-vertex errors are written out below."""
    gt = np.zeros((2, 4, 3))
    pred = np.zeros((2, 4, 3))
    # frame 0: v0 (1,0,0) -> |e|^2 = 1, v1 (0,2,0) -> 4, v2 (0,0,3) -> 9, v3 0
    pred[0, 0] = [1, 0, 0]
    pred[0, 1] = [0, 2, 0]
    pred[0, 2] = [0, 0, 3]
    # frame 1: v0 (1,1,0) -> 2, v1 (0,0,1) -> 1, v2 0, v3 (2,0,0) -> 4
    pred[1, 0] = [1, 1, 0]
    pred[1, 1] = [0, 0, 1]
    pred[1, 3] = [2, 0, 0]
    return pred, gt


def test_lve_hand_computed():
    pred, gt = _pair()
    # per frame max over lips {v0, v1} of squared error: frame 0 max(1, 4) = 4, frame 1 max(2, 1) = 2
    # mean over frames: (4 + 2) / 2 = 3. (v2's 9 is not a lip vertex and must not count.)
    assert lve(pred, gt, LIPS) == pytest.approx(3.0)
    # symmetric in its arguments
    assert lve(gt, pred, LIPS) == pytest.approx(3.0)


def test_mve_hand_computed():
    pred, gt = _pair()
    # L2 norms: frame 0 [1, 2, 3, 0], frame 1 [sqrt(2), 1, 0, 2]; mean over 8 = (9 + sqrt 2) / 8
    assert mve(pred, gt) == pytest.approx((9 + math.sqrt(2)) / 8)


def test_fdd_hand_computed_zero_template():
    pred, gt = _pair()
    template = np.zeros((4, 3))
    # gt does not move: every ||v - template||^2 is 0 over time, std 0, dynamics 0.
    # pred upper v2: ||.||^2 over time [9, 0] -> population std 4.5; v3: [0, 4] -> std 2
    # dynamics(pred) = mean(4.5, 2) = 3.25; FDD = dynamics(gt) - dynamics(pred) = -3.25
    assert upper_face_dynamics(pred, template, UPPER) == pytest.approx(3.25)
    assert fdd(pred, gt, template, UPPER) == pytest.approx(-3.25)


def test_fdd_subtracts_the_template():
    template = np.ones((4, 3))
    gt = np.tile(template, (2, 1, 1))
    gt[1, 2] += [0, 2, 0]          # v2 displacement^2 over time [0, 4] -> std 2
    gt[:, 3] += [1, 0, 0]          # v3 displacement^2 [1, 1] -> std 0
    pred = np.tile(template, (2, 1, 1))  # still face: dynamics 0
    # dynamics(gt) = mean(2, 0) = 1; FDD = 1 - 0 = 1. Without subtracting the template v2 would be
    # ||(1,1,1)||^2 = 3 then ||(1,3,1)||^2 = 11 -> std 4 and the answer would differ.
    assert fdd(pred, gt, template, UPPER) == pytest.approx(1.0)
    # identical sequences have no dynamics deviation
    assert fdd(gt, gt, template, UPPER) == pytest.approx(0.0)


def test_metrics_zero_for_identical_sequences_and_positive_otherwise():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(7, 10, 3))
    assert lve(gt, gt, [1, 2, 3]) == 0.0
    assert mve(gt, gt) == 0.0
    pred = gt + rng.normal(scale=0.01, size=gt.shape)
    assert lve(pred, gt, [1, 2, 3]) > 0
    assert mve(pred, gt) > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        mve(np.zeros((3, 4, 3)), np.zeros((2, 4, 3)))


def test_aggregate_frame_weighted_lve_mve_sequence_mean_fdd():
    a = {"LVE": 1.0, "MVE": 2.0, "FDD": 3.0, "n_frames": 1}
    b = {"LVE": 4.0, "MVE": 5.0, "FDD": -1.0, "n_frames": 3}
    r = aggregate([a, b])
    # LVE (1*1 + 4*3) / 4 = 3.25; MVE (2*1 + 5*3) / 4 = 4.25; FDD (3 + -1) / 2 = 1
    assert r["LVE"] == pytest.approx(3.25)
    assert r["MVE"] == pytest.approx(4.25)
    assert r["FDD"] == pytest.approx(1.0)
    assert r["n_sequences"] == 2 and r["n_frames"] == 4


def test_aggregate_equals_codetalker_pooling_over_all_frames():
    # CodeTalker concatenates all frames of all sequences before averaging LVE: the frame-weighted
    # mean of per-sequence values must give the same number.
    rng = np.random.default_rng(1)
    seqs = [(rng.normal(size=(t, 6, 3)), rng.normal(size=(t, 6, 3))) for t in (3, 8)]
    per = [{"LVE": lve(p, g, LIPS), "MVE": mve(p, g), "FDD": 0.0, "n_frames": len(p)} for p, g in seqs]
    pooled_p = np.concatenate([p for p, _ in seqs])
    pooled_g = np.concatenate([g for _, g in seqs])
    r = aggregate(per)
    assert r["LVE"] == pytest.approx(lve(pooled_p, pooled_g, LIPS))
    assert r["MVE"] == pytest.approx(mve(pooled_p, pooled_g))


def test_aggregate_empty():
    r = aggregate([])
    assert r["LVE"] is None and r["n_sequences"] == 0


def test_lip_opening_proxy():
    v = np.zeros((2, 3, 3))
    v[0, :, 1] = [0.0, 0.5, 2.0]   # extent over lips {0, 1}: 0.5 (vertex 2 is not a lip)
    v[1, :, 1] = [-1.0, 1.0, 0.0]  # extent 2.0
    assert lip_opening_proxy(v, [0, 1]) == pytest.approx([0.5, 2.0])


# ------------------------------------------------------------------------------------------------
# evaluate() on a results tree built from ground truth (integration with dataset/ and models/flame)
# ------------------------------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STYLES = {"MEAD_VHAP": [("M003", "angry"), ("W009", "happy")], "MultiModal200": [("spk7", "neutral")]}
FPS = {"MEAD_VHAP": 25, "MultiModal200": 20}
N_NATIVE = 50  # frames per sequence at the dataset's fps


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A tiny copy of the demo layout: stand-in FLAME + masks, vhap npz test samples of MEAD_VHAP
    (25 fps) and MultiModal200 (20 fps), their test JSONs; a config pointing at it."""
    import soundfile as sf

    from scripts.flame_standin import write_standin_files
    from utils.config import load_config

    root = tmp_path_factory.mktemp("data")
    write_standin_files(str(root / "FLAME"))
    rng = np.random.default_rng(0)
    for ds, styles in STYLES.items():
        index = {}
        for k, (spk, emo) in enumerate(styles):
            t = np.arange(N_NATIVE) / FPS[ds]
            expr = np.zeros((N_NATIVE, 100), np.float32)
            expr[:, :10] = np.sin(2 * np.pi * (1 + rng.random(10)) * t[:, None] + rng.random(10) * 6)
            jaw = np.zeros((N_NATIVE, 3), np.float32)
            jaw[:, 0] = 0.15 * (1 + np.sin(2 * np.pi * 3 * t))
            rel = f"{ds}/{spk}/{emo}/{k:03d}"
            os.makedirs(root / rel)
            np.savez(root / rel / "tracked_flame_params_30.npz", expr=expr, jaw_pose=jaw,
                     shape=rng.normal(size=300).astype(np.float32), rotation=np.zeros((N_NATIVE, 3), np.float32))
            sf.write(root / rel / "audio.wav", np.zeros(int(N_NATIVE / FPS[ds] * 16000), np.float32), 16000)
            index[f"{spk}_{emo}_{k:03d}"] = {"audio_path": f"{rel}/audio.wav",
                                             "flame_coeff_save_path": f"{rel}/tracked_flame_params_30.npz",
                                             "speaker_id": [spk, emo]}
        os.makedirs(root / "dataset_jsons" / "splits", exist_ok=True)
        with open(root / "dataset_jsons" / "splits" / f"{ds}_test.json", "w") as f:
            json.dump(index, f)

    def config(results_root, *extra):
        return load_config(os.path.join(REPO, "config/demo.yaml"), [
            f"DATA.data_root={root}", f"INFER.output_root={results_root}/metrics/test",
            f"INFER.coeff_root={results_root}/coeffs/test", *extra])
    return root, config


def _write_tree(cfg, exp, fps=None, jaw_scale=1.0, expr_offset=0.0, coeffs=False):
    """Prediction tree {output_root}/{exp}/{DATASET}/{STYLE_ID}/{i}.npy for every test sample of the
    config, from the ground-truth motion (optionally perturbed), at ``fps`` (None = each sample's native
    fps), as inference would write it.
    Returns {(dataset, style_id): (T,V,3) ground truth written unperturbed}."""
    from dataset.flame_params import load_motion, load_shape
    from dataset.index import read_index
    from models.flame import load_flame
    from utils.config import flame_path_for

    gts = {}
    for ds, ds_cfg in cfg.DATA.datasets.items():
        if not ds_cfg.test:
            continue
        flame = load_flame(flame_path_for(cfg, ds))
        for ref in read_index(ds_cfg.test, ds, ds_cfg, cfg):
            motion = load_motion(ref.flame_path, ref.fmt, ref.fps, target_fps=fps or ref.fps)
            shape = load_shape(ref.flame_path, ref.fmt)[: cfg.FLAME.n_shape]
            gts[(ds, ref.style_id)] = flame.motion_to_vertices(motion, shape)
            pred_motion = motion.copy()
            pred_motion[:, 50] *= jaw_scale
            pred_motion[:, :50] += expr_offset
            verts = flame.motion_to_vertices(pred_motion, shape)
            leaf = os.path.join(cfg.INFER.output_root, exp, ds, ref.style_id)
            os.makedirs(leaf)
            for i, v in enumerate(verts):
                np.save(os.path.join(leaf, f"{i}.npy"), v.astype(np.float32))
            if coeffs:
                cdir = os.path.join(cfg.INFER.coeff_root, exp, ds, ref.style_id)
                os.makedirs(cdir)
                np.save(os.path.join(cdir, "motion.npy"), pred_motion)
                with open(os.path.join(cdir, "meta.json"), "w") as f:
                    json.dump({"sample_id": ref.sample_id, "dataset": ds, "style_id": ref.style_id,
                               "audio_path": ref.audio_path, "fps": fps or ref.fps, "n_frames": len(verts)}, f)
    return gts


def test_evaluate_ground_truth_tree_is_zero_and_perturbed_is_not(demo_like, tmp_path):
    from main.evaluate import evaluate
    from models.flame import load_flame
    from models.flame_regions import region_indices
    from utils.config import flame_path_for, flame_region_paths

    _, config = demo_like
    cfg = config(tmp_path, "INFER.exp_name=exact")
    gts = _write_tree(cfg, "exact", coeffs=True)
    style = json.dumps(["M003", "angry"]) + "_passionate"
    assert ("MEAD_VHAP", style) in gts  # folder names with quotes, brackets and a space

    rep = evaluate(cfg)
    assert rep["overall"]["n_sequences"] == 3 and rep["overall"]["n_missing"] == 0
    assert rep["overall"]["n_frames"] == 3 * N_NATIVE  # native fps: same frame count as the gt files
    for ds in STYLES:
        for s in rep["datasets"][ds]["samples"]:
            assert s["LVE"] < 1e-12 and s["MVE"] < 1e-6 and abs(s["FDD"]) < 1e-12, s
    assert rep["length_mismatches"] == []
    # JSON next to the exp folder, jaw plots from motion.npy; vertex folders hold only frames
    out = os.path.join(cfg.INFER.output_root, "metrics_exact.json")
    with open(out) as f:
        assert json.load(f)["overall"]["n_sequences"] == 3
    for ds in STYLES:
        assert os.path.isfile(rep["plots"][ds]["path"])
        assert rep["plots"][ds]["signal"] == ["jaw rotation (rad, motion.npy)"]
    for (ds, st) in gts:
        files = os.listdir(os.path.join(cfg.INFER.output_root, "exact", ds, st))
        assert sorted(files) == sorted(f"{i}.npy" for i in range(N_NATIVE))

    # a mouth that opens half as far: LVE > 0 and equal to lve() on the independently built ground truth
    cfg_p = config(tmp_path, "INFER.exp_name=halfjaw")
    _write_tree(cfg_p, "halfjaw", jaw_scale=0.5)
    rep_p = evaluate(cfg_p, out=str(tmp_path / "halfjaw.json"))
    lips, _ = region_indices(**flame_region_paths(cfg_p))
    s = next(x for x in rep_p["datasets"]["MEAD_VHAP"]["samples"] if x["style_id"] == style)
    pred = np.stack([np.load(os.path.join(cfg_p.INFER.output_root, "halfjaw", "MEAD_VHAP", style, f"{i}.npy"))
                     for i in range(N_NATIVE)])
    assert s["LVE"] > 1e-7
    assert s["LVE"] == pytest.approx(lve(pred, gts[("MEAD_VHAP", style)], lips), rel=1e-5)
    assert s["MVE"] == pytest.approx(mve(pred, gts[("MEAD_VHAP", style)]), rel=1e-5)
    # without motion.npy the jaw plot falls back to the lip-extent proxy
    assert rep_p["plots"]["MEAD_VHAP"]["signal"] == ["lip vertical extent (m, vertex proxy)"]
    # a closed mouth is worse than a half-open one
    cfg_c = config(tmp_path, "INFER.exp_name=closed")
    _write_tree(cfg_c, "closed", jaw_scale=0.0)
    rep_c = evaluate(cfg_c, plot=False)
    assert rep_c["overall"]["LVE"] > rep_p["overall"]["LVE"] > 0
    assert load_flame(flame_path_for(cfg_c, "MEAD_VHAP")) is load_flame(flame_path_for(cfg_p, "MEAD_VHAP"))  # one model, cached


def test_evaluate_resampled_output_fps_and_missing(demo_like, tmp_path):
    from main.evaluate import EvalError, evaluate

    _, config = demo_like
    cfg25 = config(tmp_path, "INFER.exp_name=fps25", "INFER.output_fps=25")
    _write_tree(cfg25, "fps25", fps=25)
    rep = evaluate(cfg25, plot=False)
    # MultiModal200's gt is resampled 20 -> 25 fps before FLAME: same frames as the predictions
    mm = rep["datasets"]["MultiModal200"]
    assert mm["n_frames"] == 63 and mm["LVE"] < 1e-12  # 50 frames * 25 / 20 = 62.5, rounded half up
    assert rep["length_mismatches"] == []

    # the same tree read as native fps: MultiModal200 lengths differ (63 vs 50) -> reported, trimmed
    cfg_native = config(tmp_path, "INFER.exp_name=fps25")
    rep = evaluate(cfg_native, out=str(tmp_path / "as_native.json"), plot=False)
    assert [m["dataset"] for m in rep["length_mismatches"]] == ["MultiModal200"]
    assert rep["datasets"]["MultiModal200"]["n_frames"] == N_NATIVE
    assert rep["datasets"]["MultiModal200"]["LVE"] > 0  # time-stretched motion does not match

    # a missing style folder is reported and counted, the rest is evaluated
    import shutil
    style = json.dumps(["W009", "happy"]) + "_passionate"
    shutil.rmtree(os.path.join(cfg25.INFER.output_root, "fps25", "MEAD_VHAP", style))
    rep = evaluate(cfg25, plot=False, allow_missing=True)
    assert rep["datasets"]["MEAD_VHAP"]["n_missing"] == 1 and rep["datasets"]["MEAD_VHAP"]["n_sequences"] == 1
    assert rep["overall"]["n_missing"] == 1 and rep["overall"]["n_sequences"] == 2
    assert rep["missing"][0]["sample_id"] == "W009_happy_001"

    # nothing at all to evaluate is an error
    empty = tmp_path / "metrics" / "test" / "empty"
    empty.mkdir(parents=True)
    with pytest.raises(EvalError, match="no predictions found"):
        evaluate(config(tmp_path, "INFER.exp_name=empty"), plot=False)


def test_evaluate_on_the_demo_data(demo_root, tmp_path):
    """The demo's own test samples (scripts/make_demo_data.py): gt tree -> 0, perturbed -> > 0."""
    from main.evaluate import evaluate
    from utils.config import load_config

    def config(exp):
        return load_config(os.path.join(REPO, "config/demo.yaml"), [
            f"DATA.data_root={demo_root}", f"INFER.output_root={tmp_path}/metrics/test",
            f"INFER.coeff_root={tmp_path}/coeffs/test", f"INFER.exp_name={exp}"])
    gts = _write_tree(config("gt"), "gt")
    rep = evaluate(config("gt"), plot=False)
    assert rep["overall"]["n_sequences"] == len(gts) > 0 and rep["overall"]["n_missing"] == 0
    assert rep["overall"]["LVE"] < 1e-12 and rep["overall"]["MVE"] < 1e-6
    _write_tree(config("noisy"), "noisy", expr_offset=0.3)
    rep = evaluate(config("noisy"), plot=False)
    assert rep["overall"]["n_sequences"] == len(gts)
    assert rep["overall"]["LVE"] > 1e-8 and rep["overall"]["MVE"] > 1e-5


def test_eval_script_writes_metrics_and_videos(demo_like, tmp_path):
    """bash scripts/eval_motion_guided.sh CONFIG overrides: metrics JSON + one mp4 per sequence."""
    root, config = demo_like
    cfg = config(tmp_path, "INFER.exp_name=script")
    _write_tree(cfg, "script", coeffs=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RENDER_ARGS"] = f"--size 64 --out {tmp_path / 'videos'}"
    probe = subprocess.run([sys.executable, "-c", "import os; os.environ.setdefault('PYOPENGL_PLATFORM', 'egl'); "
                            "import pyrender; pyrender.OffscreenRenderer(8, 8).delete()"], capture_output=True)
    can_render = probe.returncode == 0  # tests/test_render.py fails or skips on GL problems
    if not can_render:
        assert os.environ.get("FACEFORMER_REQUIRE_GL") != "1", "CI must render: " + probe.stderr.decode()[-500:]
        env["SKIP_RENDER"] = "1"
    p = subprocess.run(["bash", "scripts/eval_motion_guided.sh", "config/demo.yaml", f"DATA.data_root={root}",
                        f"INFER.output_root={cfg.INFER.output_root}", f"INFER.coeff_root={cfg.INFER.coeff_root}",
                        "INFER.exp_name=script"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "overall" in p.stdout and "LVE" in p.stdout
    with open(os.path.join(cfg.INFER.output_root, "metrics_script.json")) as f:
        assert json.load(f)["overall"]["LVE"] < 1e-12
    if not can_render:
        pytest.skip("metrics checked; no GL context on this machine for the video half")
    import imageio_ffmpeg
    video = tmp_path / "videos" / "script" / "MultiModal200" / (json.dumps(["spk7", "neutral"]) + "_passionate.mp4")
    n, secs = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert n == N_NATIVE and secs == pytest.approx(N_NATIVE / 20, abs=1e-3)
    assert len(list((tmp_path / "videos" / "script").rglob("*.mp4"))) == 3


def test_evaluate_fails_naming_missing_and_short_sequences(demo_like, tmp_path, capsys):
    """One missing and one truncated sequence: exit 1 naming both (JSON still written, listing them);
    --allow_missing scores the rest. A torn frame file is named by path."""
    import shutil

    from main.evaluate import main as eval_main
    from utils.errors import run_reporting_user_errors

    root, config = demo_like
    cfg = config(tmp_path, "INFER.exp_name=holes")
    _write_tree(cfg, "holes")
    tree = os.path.join(cfg.INFER.output_root, "holes")
    gone = os.path.join(tree, "MEAD_VHAP", json.dumps(["W009", "happy"]) + "_passionate")
    short = os.path.join(tree, "MultiModal200", json.dumps(["spk7", "neutral"]) + "_passionate")
    shutil.rmtree(gone)
    for i in range(30, N_NATIVE):  # 30 of 50 frames left
        os.remove(os.path.join(short, f"{i}.npy"))
    argv = ["--config", os.path.join(REPO, "config/demo.yaml"), "--no_plots", f"DATA.data_root={root}",
            f"INFER.output_root={cfg.INFER.output_root}", f"INFER.coeff_root={cfg.INFER.coeff_root}",
            "INFER.exp_name=holes"]
    with pytest.raises(SystemExit) as e:
        run_reporting_user_errors("evaluate", eval_main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert "1 expected sequence(s) missing and 1 shorter than their ground truth" in err
    assert f"MEAD_VHAP/W009_happy_001: missing (no predicted frames): {gone}" in err
    assert f"short, 30 of {N_NATIVE} frames: {short}" in err and "--allow_missing" in err
    with open(os.path.join(cfg.INFER.output_root, "metrics_holes.json")) as f:
        rep = json.load(f)
    assert [m["sample_id"] for m in rep["missing"]] == ["W009_happy_001"]
    assert [(m["pred_frames"], m["gt_frames"]) for m in rep["short"]] == [(30, N_NATIVE)]

    run_reporting_user_errors("evaluate", eval_main, argv + ["--allow_missing"])  # exit 0, scores the rest
    # a torn (0-byte) frame file is reported by path, as missing
    torn = os.path.join(short, "3.npy")
    open(torn, "wb").close()
    with pytest.raises(SystemExit):
        run_reporting_user_errors("evaluate", eval_main, argv)
    assert f"{torn}: unreadable frame file (0 bytes" in capsys.readouterr().err
