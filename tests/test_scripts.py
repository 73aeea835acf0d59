"""scripts/mean_baseline.py and scripts/compare_metrics.py: what they write and print, and their exit codes."""
import json
import os
import subprocess
import sys

import numpy as np

from dataset.dataset import FaceDataset
from dataset.index import split_refs
from dataset.styles import style_classes
from models.flame import load_flame
from scripts.compare_metrics import main as compare_main
from utils.config import flame_path_for, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mean_baseline_writes_the_training_mean_in_the_inference_layout(demo_root, tmp_path):
    overrides = [f"DATA.data_root={demo_root}", f"INFER.output_root={tmp_path}/metrics",
                 f"INFER.coeff_root={tmp_path}/coeffs"]
    r = subprocess.run([sys.executable, "scripts/mean_baseline.py", "--config", "config/demo.yaml", *overrides],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"), overrides + ["INFER.exp_name=mean_baseline"])
    styles = style_classes(cfg)
    train = FaceDataset(cfg, "train", styles, train=False, check=False, progress=False)
    motions = [train[i]["motion"].numpy().astype(np.float64) for i in range(len(train))]
    mean = np.concatenate(motions).mean(0)            # frame-weighted over whole training clips
    test_refs = split_refs(cfg, "test")
    assert test_refs
    test = FaceDataset(cfg, "test", styles, train=False, check=False, progress=False)
    for i, ref in enumerate(test_refs):
        vdir = os.path.join(tmp_path, "metrics", "mean_baseline", ref.dataset, ref.style_id)
        cdir = os.path.join(tmp_path, "coeffs", "mean_baseline", ref.dataset, ref.style_id)
        motion = np.load(os.path.join(cdir, "motion.npy"))
        with open(os.path.join(cdir, "meta.json")) as f:
            meta = json.load(f)
        n = meta["n_frames"]
        # native fps: as many frames as the dataset's own ground truth at its fps
        assert meta["fps"] == ref.fps and n == motion.shape[0]
        assert abs(n - test[i]["n_frames"] * ref.fps / cfg.DATA.target_fps) <= 1
        assert sorted(os.listdir(vdir)) == sorted(f"{k}.npy" for k in range(n))
        np.testing.assert_allclose(motion, np.repeat(mean[None], n, 0), atol=1e-6)
        flame = load_flame(flame_path_for(cfg, ref.dataset))
        expected = flame.motion_to_vertices(motion[:1], test[i]["shape"].numpy())[0]
        for k in (0, n - 1):
            frame = np.load(os.path.join(vdir, f"{k}.npy"))
            assert frame.shape == (5023, 3) and frame.dtype == np.float32
            np.testing.assert_allclose(frame, expected, atol=1e-6)
        coeffs = np.load(os.path.join(cdir, "coeffs287.npy"))
        assert coeffs.shape == (n, 287)
        np.testing.assert_allclose(coeffs[:, 100:150], motion[:, :50], atol=1e-6)
        np.testing.assert_allclose(coeffs[:, 153], motion[:, 50], atol=1e-6)


def _report(lve, mve, fdd):
    row = {"LVE": lve, "MVE": mve, "FDD": fdd}
    return {"datasets": {"A": dict(row)}, "overall": dict(row), "units": "m"}


def test_compare_metrics_table_and_require_better(tmp_path, capsys):
    model, base = tmp_path / "model.json", tmp_path / "base.json"
    model.write_text(json.dumps(_report(1e-5, 2e-4, 1e-6)))
    base.write_text(json.dumps(_report(4e-5, 5e-4, 3e-6)))
    assert compare_main([str(model), str(base), "--require_better", "LVE"]) == 0
    out = capsys.readouterr().out
    lve_rows = [line.split() for line in out.splitlines() if line.split()[1:2] == ["LVE"]]
    assert [r[0] for r in lve_rows] == ["A", "overall"]
    assert float(lve_rows[1][2]) == 1e-5 and float(lve_rows[1][3]) == 4e-5 and float(lve_rows[1][4]) == 0.25
    assert "4.00x lower" in out
    # the baseline is not beaten: exit 1 with a FAILED line
    assert compare_main([str(base), str(model), "--require_better", "LVE"]) == 1
    assert "FAILED" in capsys.readouterr().out
    # --max_ratio: 0.25x the baseline passes a 0.3x bound and fails a 0.2x one
    assert compare_main([str(model), str(base), "--require_better", "LVE", "--max_ratio", "0.3"]) == 0
    assert compare_main([str(model), str(base), "--require_better", "LVE", "--max_ratio", "0.2"]) == 1
    assert "required <= 0.2x" in capsys.readouterr().out
