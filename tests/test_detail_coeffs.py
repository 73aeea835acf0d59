"""The 287-dim coefficients inference writes carry the sample's EMOCA detail code (mean over frames),
or zeros when its FLAME file has none."""
import json
import os

import numpy as np
import soundfile as sf
import torch

from utils.config import load_config
from utils.framing import framing_from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inference_coeffs287_detail_block(tmp_path):
    from main.inference import run_test_splits
    from models.faceformer import FaceFormer
    from models.flame_standin import write_standin_files

    write_standin_files(str(tmp_path / "FLAME"))
    r = np.random.default_rng(0)
    t = 30
    detail = r.normal(size=(1, t, 128)).astype(np.float32)
    np.savez(tmp_path / "e.npz", expcode=r.normal(size=(1, t, 50)).astype(np.float32),
             posecode=0.1 * r.normal(size=(1, t, 6)).astype(np.float32), detailcode=detail)
    np.savez(tmp_path / "v.npz", expr=r.normal(size=(t, 100)).astype(np.float32),
             jaw_pose=0.1 * r.normal(size=(t, 3)).astype(np.float32))
    sf.write(str(tmp_path / "a.wav"), (0.1 * r.normal(size=t * 640)).astype(np.float32), 16000)
    for name, fl in (("E", "e.npz"), ("V", "v.npz")):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {name: {"audio_path": "a.wav", "flame_path": fl, "speaker_id": "p"}}))
    cfg = load_config(os.path.join(REPO, "config", "demo.yaml"), [
        f"DATA.data_root={tmp_path}", "DATA.datasets.E.format=emoca",
        "DATA.datasets.E.test=E.json", "DATA.datasets.V.test=V.json",
        "FLAME.model_path=FLAME/standin_generic_model.pkl", "FLAME.masks_path=FLAME/standin_FLAME_masks.pkl",
        f"INFER.output_root={tmp_path}/out/v", f"INFER.coeff_root={tmp_path}/out/c", "INFER.device=cpu",
        f"INFER.checkpoint={tmp_path}/ckpt.pth"])
    for name in ("digital_human", "MEAD_VHAP", "MultiModal200"):  # the demo's own datasets: not here
        cfg.DATA.datasets.pop(name)
    torch.manual_seed(0)
    model = FaceFormer(cfg.MODEL, n_styles=1, framing=framing_from_config(cfg))
    torch.save({"model": model.state_dict(), "styles": ["p"], "config": cfg.to_dict(), "epoch": 1},
               str(tmp_path / "ckpt.pth"))
    run_test_splits(cfg)
    exp = cfg.INFER.exp_name
    sid = '["p"]_passionate'
    ce = np.load(tmp_path / "out" / "c" / exp / "E" / sid / "coeffs287.npy")
    cv = np.load(tmp_path / "out" / "c" / exp / "V" / sid / "coeffs287.npy")
    assert ce.shape == (t, 287) and cv.shape == (t, 287)
    np.testing.assert_allclose(ce[:, 159:], np.broadcast_to(detail[0].mean(0), (t, 128)), rtol=1e-5, atol=1e-6)
    assert not cv[:, 159:].any()
