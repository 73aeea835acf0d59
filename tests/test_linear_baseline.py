"""scripts/linear_baseline.py (the linear listener) and the baselines' ratios that main/evaluate.py prints."""
import json
import os
import subprocess
import sys

import numpy as np

from scripts.linear_baseline import RIDGE_GRID, LinearListener
from tests.conftest import speech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_linear_listener_recovers_a_linear_map_of_its_features_and_the_style():
    """Motion that is a linear function of the listener's own features plus a per-style offset is
    predicted almost exactly on a clip it was not fitted on; the offset follows the style asked for."""
    rng = np.random.default_rng(0)
    listener = LinearListener(n_styles=2, sample_rate=16000, samples_per_frame=640, context_ms=40)
    clips = [(speech(100, seed=s) * (1 + s % 3), s % 2) for s in range(7)]
    dims = listener.features(clips[0][0], 100).shape[1]
    weights = rng.normal(size=(dims, 51)) * 1e-3
    offsets = rng.normal(size=(2, 51))

    def truth(audio, style):
        return listener.features(audio, 100) @ weights + offsets[style]

    fitted = [(a, truth(a, s), s) for a, s in clips[:6]]
    # the ridge weight is picked on validation clips: the smallest one here, where nothing is noise
    listener.fit(fitted[:5], fitted[5:], lambda clip, pred: float(np.mean(np.square(pred - clip[1]))))
    assert listener.ridge == min(RIDGE_GRID)
    held_out, style = clips[6]
    want = truth(held_out, style)
    got = listener.predict(held_out, 100, style)
    assert got.shape == (100, 51) and got.dtype == np.float32
    r2 = 1 - np.square(got - want).sum() / np.square(want - want.mean(0)).sum()
    assert r2 > 0.99, r2
    other = listener.predict(held_out, 100, 1 - style)
    np.testing.assert_allclose((other - got).mean(0), offsets[1 - style] - offsets[style], atol=0.05)


def test_linear_baseline_beats_the_mean_on_the_demo_and_evaluate_shows_both_ratios(demo_root, tmp_path):
    over = [f"DATA.data_root={demo_root}", f"INFER.output_root={tmp_path}/metrics",
            f"INFER.coeff_root={tmp_path}/coeffs"]

    def run(*args):
        r = subprocess.run([sys.executable, *args, "--config", "config/demo.yaml", *over], cwd=ROOT,
                           capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    out = run("scripts/linear_baseline.py")
    assert "ridge" in out
    meta_dir = os.path.join(tmp_path, "coeffs", "linear_baseline", "MEAD_VHAP")
    metas = [json.load(open(os.path.join(meta_dir, d, "meta.json"))) for d in os.listdir(meta_dir)]
    assert metas and all(m["checkpoint"] == "linear_baseline" for m in metas)
    run("scripts/mean_baseline.py")
    run("main/evaluate.py", "--no_plots", "INFER.exp_name=mean_baseline")
    printed = run("main/evaluate.py", "--no_plots", "INFER.exp_name=linear_baseline")
    report = json.load(open(os.path.join(tmp_path, "metrics", "metrics_linear_baseline.json")))
    mean = json.load(open(os.path.join(tmp_path, "metrics", "metrics_mean_baseline.json")))
    ratio = report["overall"]["LVE"] / mean["overall"]["LVE"]
    assert ratio < 0.8, ratio                    # the demo's audio drives its motion: a linear map hears it
    assert report["baselines"] == {"mean_baseline": {"LVE": mean["overall"]["LVE"], "LVE_ratio": ratio}}
    assert f"mean_baseline {ratio:.3f}x" in printed
