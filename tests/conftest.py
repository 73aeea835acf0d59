"""Shared fixtures: one copy of the synthetic demo data per test session."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """``scripts/make_demo_data.py --out <tmp> --seed 0``, written once and shared (read-only use)."""
    out = tmp_path_factory.mktemp("demo_data")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--out", str(out),
                    "--seed", "0"], check=True, cwd=ROOT, capture_output=True)
    return str(out)


def tiny_model(model_cfg=None, n_styles=3, seed=0, weight_std=0.3, bias_std=0.1, norm=None):
    """A randomly initialised FaceFormer of the demo config (its tiny wav2vec2; ``norm``: another
    ``feat_extract_norm``) whose output map is non-zero: the zero-initialised map would predict the
    neutral face everywhere and make every comparison trivial. ``bias_std`` None: the bias stays zero."""
    import torch

    from models.faceformer import FaceFormer
    from utils.config import load_config

    if model_cfg is None:
        model_cfg = load_config(os.path.join(ROOT, "config", "demo.yaml")).MODEL
    if norm is not None:
        model_cfg.audio_encoder_config = dict(model_cfg.audio_encoder_config, feat_extract_norm=norm)
    torch.manual_seed(seed)
    model = FaceFormer(model_cfg, n_styles=n_styles)
    with torch.no_grad():
        torch.nn.init.normal_(model.output_map.weight, std=weight_std)
        if bias_std is not None:
            torch.nn.init.normal_(model.output_map.bias, std=bias_std)
    return model


def speech(frames: int, seed: int = 0):
    """Speech-like raw audio at 16 kHz, exactly frames * 640 samples (float32, not normalised): harmonics
    of 140 Hz under a (3 + seed) Hz loudness envelope, plus a little noise."""
    import numpy as np

    r = np.random.default_rng(seed)
    t = np.arange(frames * 640) / 16000
    env = 0.5 * (1 - np.cos(2 * np.pi * (3 + seed) * t))
    x = env * (np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t)) + 0.05 * r.normal(size=t.shape)
    return (0.3 * x).astype(np.float32)


def write_tiny_checkpoint(cfg, styles, path, seed=0, edit=None):
    """``tiny_model`` saved in the training loop's checkpoint format at ``path``. ``edit(model)`` may
    change it before saving. Returns the path."""
    import torch

    model = tiny_model(cfg.MODEL, len(styles), seed)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1, "styles": list(styles),
                "config": cfg.to_dict()}, path)
    return path


def standin_setup(tmp_path_factory, name: str, styles=("A", "B", "C")):
    """A data root holding the stand-in FLAME files, and a tiny checkpoint of the demo config with the
    style classes ``styles`` in it -> (root, checkpoint path, the demo config on that root)."""
    from scripts.flame_standin import write_standin_files
    from utils.config import load_config

    root = str(tmp_path_factory.mktemp(name))
    write_standin_files(os.path.join(root, "FLAME"))
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"), [f"DATA.data_root={root}"])
    return root, write_tiny_checkpoint(cfg, list(styles), os.path.join(root, "ckpt", "best_model.pth")), cfg
