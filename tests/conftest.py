"""Shared fixtures and helpers: one copy of the synthetic demo data per test session, the tiny model, a
speech-like signal, the demo MODEL config of the model tests, and the writers of dataset fixtures."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml

from utils.config import load_config

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
    ``feat_extract_norm`` of its CNN) whose output map is non-zero: the zero-initialised map would predict the
    neutral face everywhere and make every comparison trivial. ``bias_std`` None: the bias stays zero."""
    import torch

    from models.faceformer import FaceFormer

    if model_cfg is None:
        model_cfg = load_config(os.path.join(ROOT, "config", "demo.yaml")).MODEL
    if norm is not None:  # a CNN normalisation asks for the CNN front end
        model_cfg.audio_frontend = "cnn"
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

    root = str(tmp_path_factory.mktemp(name))
    write_standin_files(os.path.join(root, "FLAME"))
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"), [f"DATA.data_root={root}"])
    return root, write_tiny_checkpoint(cfg, list(styles), os.path.join(root, "ckpt", "best_model.pth")), cfg


# ----------------------------------------------------------------------------- dataset fixture writers

SR = 16000


def vhap_params(t, seed=0, batch_axis=True):
    """VHAP tracking output: expr (T,100), jaw_pose (T,3), shape (300,), ... with a batch axis."""
    r = np.random.default_rng(seed)
    p = {"expr": r.normal(size=(t, 100)), "jaw_pose": r.normal(size=(t, 3)) * 0.1,
         "rotation": r.normal(size=(t, 3)), "neck_pose": r.normal(size=(t, 3)),
         "eyes_pose": r.normal(size=(t, 6)), "translation": r.normal(size=(t, 3))}
    p = {k: (v[None] if batch_axis else v).astype(np.float32) for k, v in p.items()}
    p["shape"] = r.normal(size=(300,)).astype(np.float32)
    return p


def emoca_params(t, seed=0):
    """EMOCA export with a leading batch axis: expcode (1,T,50), posecode (1,T,6), shapecode ..."""
    r = np.random.default_rng(seed)
    return {"expcode": r.normal(size=(1, t, 50)).astype(np.float32),
            "posecode": r.normal(size=(1, t, 6)).astype(np.float32),
            "shapecode": r.normal(size=(1, t, 100)).astype(np.float32),
            "cam": r.normal(size=(1, t, 3)).astype(np.float32),
            "detailcode": r.normal(size=(1, t, 128)).astype(np.float32)}


def expected_vhap(p):
    e, j = np.asarray(p["expr"]), np.asarray(p["jaw_pose"])
    e, j = e.reshape(-1, e.shape[-1]), j.reshape(-1, j.shape[-1])
    return np.concatenate([e[:, :50], j[:, 0:1]], axis=1)


def write_wav(path, seconds, sr=SR, channels=1, seed=0):
    r = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    x = (0.1 * r.normal(size=(n, channels))).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, sr)
    return x


def write_sample(root, name, t, fps=25, fmt="vhap", seed=0, audio_seconds=None, sr=SR):
    """Writes <root>/<name>.wav and <root>/<name>.npz; returns (audio relpath, flame relpath, params)."""
    p = vhap_params(t, seed) if fmt == "vhap" else emoca_params(t, seed)
    fl = os.path.join(root, f"{name}.npz")
    os.makedirs(os.path.dirname(fl), exist_ok=True)
    np.savez(fl, **p)
    au = os.path.join(root, f"{name}.wav")
    write_wav(au, t / fps if audio_seconds is None else audio_seconds, sr=sr, seed=seed)
    return f"{name}.wav", f"{name}.npz", p


def make_cfg(root, datasets, **data):
    y = {"DATA": {"data_root": str(root), "datasets": datasets, **data}}
    p = os.path.join(str(root), "cfg.yaml")
    with open(p, "w") as f:
        yaml.safe_dump(y, f)
    return load_config(p)


def write_json(path, obj):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def two_dataset_root(tmp_path):
    """Dataset A (vhap 25 fps): 3 train clips of speakers a1, a2; dataset B (vhap 20 fps): 2 train
    clips of b1 and one test clip of the untrained speaker b9."""
    root = str(tmp_path)
    ia, ib, ib_test, params = {}, {}, {}, {}
    for k, (t, spk) in enumerate([(40, "a1"), (60, "a2"), (35, "a1")]):
        au, fl, params[f"A{k}"] = write_sample(root, f"A/{k}", t, fps=25, seed=k)
        ia[f"A{k}"] = {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": [spk, "neutral"]}
    for k, t in enumerate([40, 48]):
        au, fl, params[f"B{k}"] = write_sample(root, f"B/{k}", t, fps=20, seed=10 + k)
        ib[f"B{k}"] = {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": "b1"}
    au, fl, params["Bt"] = write_sample(root, "B/t", 30, fps=20, seed=20)
    ib_test["Bt"] = {"audio_path": au, "flame_coeff_save_path": fl, "speaker_id": "b9"}
    write_json(os.path.join(root, "json/A_train.json"), ia)
    write_json(os.path.join(root, "json/B_train.json"), ib)
    write_json(os.path.join(root, "json/B_test.json"), ib_test)
    datasets = {"A": {"format": "vhap", "fps": 25, "train": "json/A_train.json"},
                "B": {"format": "vhap", "fps": 20, "train": "json/B_train.json", "test": "json/B_test.json"}}
    return datasets, params


# ----------------------------------------------------------------------------- model tests

@pytest.fixture(scope="module")
def model_cfg():
    """The demo config's MODEL (tests/test_model.py, tests/test_model_attention.py)."""
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml")).MODEL
    # the wav2vec2 CNN (the front end of pretrained encoders; the demo's is log-mel, tests/test_frontend.py)
    # in its layer-norm variant, whose CNN features of a window are those of the whole clip
    # (test_encode_long); otherwise the demo's tiny architecture
    cfg.audio_frontend = "cnn"
    cfg.audio_encoder_config = dict(cfg.audio_encoder_config, feat_extract_norm="layer")
    return cfg
