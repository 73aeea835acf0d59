"""Inference and evaluation on real-data details: the 287-dim coefficients carry the sample's EMOCA
detail code (mean over frames) or zeros, and DATA.test_subjects restricts what inference generates
and what evaluation expects (both read the split through dataset.dataset_refs)."""
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from utils.config import load_config
from utils.framing import framing_from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 30
SID = '["{}"]_passionate'


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Dataset E (emoca, speaker p, with a per-frame detailcode) and V (vhap, speaker q, none), one
    test clip each; the stand-in FLAME files; a checkpoint of a tiny random model."""
    from models.faceformer import FaceFormer
    from scripts.flame_standin import write_standin_files

    tmp = tmp_path_factory.mktemp("infer_data")
    write_standin_files(str(tmp / "FLAME"))
    r = np.random.default_rng(0)
    np.savez(tmp / "e.npz", expcode=r.normal(size=(1, T, 50)).astype(np.float32),
             posecode=0.1 * r.normal(size=(1, T, 6)).astype(np.float32),
             detailcode=r.normal(size=(1, T, 128)).astype(np.float32))
    np.savez(tmp / "v.npz", expr=r.normal(size=(T, 100)).astype(np.float32),
             jaw_pose=0.1 * r.normal(size=(T, 3)).astype(np.float32))
    sf.write(str(tmp / "a.wav"), (0.1 * r.normal(size=T * 640)).astype(np.float32), 16000)
    for name, fl, spk in (("E", "e.npz", "p"), ("V", "v.npz", "q")):
        (tmp / f"{name}.json").write_text(json.dumps({name: {"audio_path": "a.wav", "flame_path": fl,
                                                             "speaker_id": spk}}))
    cfg = config(tmp, "x")
    torch.manual_seed(0)
    model = FaceFormer(cfg.MODEL, n_styles=2, framing=framing_from_config(cfg))
    torch.save({"model": model.state_dict(), "styles": ["p", "q"], "config": cfg.to_dict(), "epoch": 1},
               str(tmp / "ckpt.pth"))
    return tmp


def config(root, out, *extra):
    cfg = load_config(os.path.join(REPO, "config", "demo.yaml"), [
        f"DATA.data_root={root}", "DATA.datasets.E.format=emoca", "DATA.datasets.E.test=E.json",
        "DATA.datasets.V.test=V.json", "FLAME.model_path=FLAME/standin_generic_model.pkl",
        "FLAME.masks_path=FLAME/standin_FLAME_masks.pkl", f"INFER.output_root={root}/{out}/v",
        f"INFER.coeff_root={root}/{out}/c", "INFER.device=cpu", f"INFER.checkpoint={root}/ckpt.pth", *extra])
    for name in ("digital_human", "MEAD_VHAP", "MultiModal200"):  # the demo's own datasets: not here
        cfg.DATA.datasets.pop(name)
    return cfg


def test_inference_coeffs287_detail_block(root):
    from main.infer.pipeline import run_test_splits

    cfg = config(root, "detail")
    run_test_splits(cfg)
    c = os.path.join(cfg.INFER.coeff_root, cfg.INFER.exp_name)
    ce = np.load(os.path.join(c, "E", SID.format("p"), "coeffs287.npy"))
    cv = np.load(os.path.join(c, "V", SID.format("q"), "coeffs287.npy"))
    assert ce.shape == (T, 287) and cv.shape == (T, 287)
    detail = np.load(root / "e.npz")["detailcode"][0].mean(0)
    np.testing.assert_allclose(ce[:, 159:], np.broadcast_to(detail, (T, 128)), rtol=1e-5, atol=1e-6)
    assert not cv[:, 159:].any()


def test_inference_and_evaluation_honour_test_subjects(root):
    from main.evaluate import evaluate
    from main.infer.pipeline import run_test_splits

    cfg = config(root, "subjects", "DATA.test_subjects=p")
    rows = run_test_splits(cfg)
    assert [(r["dataset"], r["samples"]) for r in rows] == [("E", 1)]
    out = os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name)
    assert os.listdir(out) == ["E"]
    report = evaluate(cfg, plot=False)   # V's speaker q is left out: not a missing prediction
    assert report["missing"] == [] and report["datasets"]["E"]["n_sequences"] == 1
    assert report["datasets"]["V"]["n_sequences"] == 0 and report["datasets"]["V"]["n_missing"] == 0


def test_test_split_inference_decodes_each_sample_once_and_parses_each_json_once(root, monkeypatch):
    """Validation loads every sample; generation uses those items instead of decoding them again."""
    import dataset.dataset as dataset_mod
    import dataset.index as index_mod
    import dataset.split_check as split_check
    from main.infer.pipeline import run_test_splits

    loaded, parsed = [], []
    real_load, real_parse = split_check.load_item, index_mod._parse_index
    for module in (split_check, dataset_mod):  # every place that decodes a sample
        monkeypatch.setattr(module, "load_item", lambda ref, *a: loaded.append(ref.sample_id) or real_load(ref, *a))
    monkeypatch.setattr(index_mod, "_parse_index", lambda path, *a: parsed.append(path) or real_parse(path, *a))
    monkeypatch.setattr(index_mod, "_PARSED", {})
    for name in ("E.json", "V.json"):  # a JSON changed in the last seconds is parsed again by design
        os.utime(root / name, (os.stat(root / name).st_atime, os.stat(root / name).st_mtime - 60))
    rows = run_test_splits(config(root, "once"))
    assert [r["samples"] for r in rows] == [1, 1]
    assert sorted(loaded) == ["E", "V"]
    assert sorted(os.path.basename(p) for p in parsed) == ["E.json", "V.json"]
