"""``main/export.py --html``: the self-contained viewer page, checked in a real headless browser (Debian's
chromium), and the packing of its frames and audio."""
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from dataset.data_item import load_item
from dataset.flame_params import fit_shape
from dataset.index import dataset_refs
from main.exporting.result import load_result
from main.exporting.viewer import viewer_sequences
from main.exporting.viewer_data import pack_sequences, wav_data_uri
from main.results.formats import sample_arrays
from main.results.layout import build_meta, sample_dirs
from main.results.writer import write_sample
from models.flame import load_flame
from utils.config import flame_path_for, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tree(demo_root, tmp_path_factory):
    """A results tree for the first MEAD_VHAP test sample of the demo data: a "model" (ground truth plus
    noise) and the mean baseline, as inference and scripts/mean_baseline.py write them -> (cfg, the
    model's coefficient folder, ground-truth vertices)."""
    out = tmp_path_factory.mktemp("results")
    cfg = load_config(os.path.join(REPO, "config", "demo.yaml"),
                      [f"DATA.data_root={demo_root}", f"INFER.output_root={out}/metrics",
                       f"INFER.coeff_root={out}/coeffs", "INFER.exp_name=model"])
    ref = dataset_refs(cfg, "MEAD_VHAP", "test")[0]
    item = load_item(ref)
    flame = load_flame(flame_path_for(cfg, "MEAD_VHAP"))
    shape = fit_shape(item["shape"], cfg.FLAME.n_shape)
    rng = np.random.default_rng(0)
    gt = item["motion"][:40]
    runs = {"model": gt + rng.normal(0, 0.05, gt.shape).astype(np.float32),
            "mean_baseline": np.repeat(gt.mean(0, keepdims=True), len(gt), 0)}
    for exp, motion in runs.items():
        cfg.INFER.exp_name = exp
        vert_dir, coeff_dir = sample_dirs(cfg, ref.dataset, ref.style_id)
        meta = build_meta(ref.sample_id, ref.dataset, ref.style_id, ref.speaker, ref.audio_path, 25, len(motion),
                          exp, None)
        write_sample(vert_dir, coeff_dir, flame.motion_to_vertices(motion, shape), sample_arrays(motion, shape), meta)
    cfg.INFER.exp_name = "model"
    return cfg, sample_dirs(cfg, ref.dataset, ref.style_id)[1], flame.motion_to_vertices(item["motion"], shape)


def test_viewer_plays_every_frame_in_headless_chromium(tree, tmp_path):
    """`python main/export.py --html` from the repo root; the page has no external reference, and in
    chromium (software WebGL 2, virtual time) its #selftest steps through every frame of the three faces
    without a console message or error. The ground truth is the full test clip (longer than the
    prediction): the page holds it at its own length."""
    browser = _browser()
    if browser is None:
        if os.environ.get("FACEFORMER_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (FACEFORMER_REQUIRE_BROWSER=1; apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    cfg, folder, gt = tree
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "main/export.py", "--config", "config/demo.yaml", "--results", folder,
                        "--html", f"DATA.data_root={cfg.DATA.data_root}", f"INFER.output_root={cfg.INFER.output_root}",
                        f"INFER.coeff_root={cfg.INFER.coeff_root}"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    page = os.path.join(folder, "viewer.html")
    text = open(page, encoding="utf-8").read()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text) and "import(" not in text
    assert "data:audio/wav;base64," in text

    run = subprocess.run([browser, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=120000", "--dump-dom",
                          f"file://{page}#selftest"], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path), env=dict(env, HOME=str(tmp_path)))
    title = re.search(r"<title>(.*?)</title>", run.stdout)
    n = len(gt)
    assert title and title.group(1) == (f"viewer: done: frame 40/40, ground truth {min(n, 40)}/{n}, prediction "
                                        f"40/40, mean baseline 40/40"), run.stdout[-2000:] + run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []


def test_packing_reproduces_the_frames_and_the_audio(tree):
    """Decoded as the page decodes them, the frames come back to 1e-5 m, as the reported error says;
    the audio is a 16-bit mono wav of the clip's length."""
    cfg, folder, gt = tree
    result = load_result(folder, cfg)
    seqs = viewer_sequences(result, cfg)
    assert [s[0] for s in seqs] == ["ground truth", "prediction", "mean baseline"]
    data = json.loads(json.dumps(pack_sequences(seqs, result.faces)))

    def arr(key_or_b64, dtype):
        return np.frombuffer(base64.b64decode(key_or_b64), dtype)
    mean, basis = arr(data["mean"], "<f4"), arr(data["basis"], "<f4").reshape(data["n_basis"], -1)
    assert np.array_equal(arr(data["faces"], "<u4").reshape(-1, 3), result.faces)
    worst = 0.0
    for (label, verts, fps), s in zip(seqs, data["sequences"]):
        back = (mean + arr(s["coeffs"], "<f4").reshape(s["n_frames"], -1) @ basis).reshape(verts.shape)
        worst = max(worst, float(np.linalg.norm(back - verts, axis=-1).max()))
        assert s["label"] == label and s["fps"] == fps
    assert worst < 1e-5 and worst == pytest.approx(data["max_error"], rel=1e-3, abs=1e-7)

    uri = wav_data_uri(result.meta["audio_path"])
    audio, sr = sf.read(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    info = sf.info(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert sr == 16000 and audio.ndim == 1 and info.subtype == "PCM_16"
    assert len(audio) / sr == pytest.approx(len(gt) / 25, abs=0.1)


def test_a_single_audio_result_shows_only_the_prediction(tree, tmp_path, caplog):
    """Outside the results tree and the datasets there is nothing to compare with; the log says why."""
    cfg, folder, _ = tree
    result = load_result(folder, cfg)
    result.meta = dict(result.meta, dataset=None)
    result.vert_dir = str(tmp_path / "elsewhere")
    with caplog.at_level("INFO", logger="export"):
        assert [s[0] for s in viewer_sequences(result, cfg)] == ["prediction"]
    assert "no ground truth (not a sample of a configured dataset)" in caplog.text
    assert "no mean baseline (the result is not in the results tree" in caplog.text
