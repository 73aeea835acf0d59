"""utils/framing.py: the 16 kHz audio rate and DATA.target_fps reach the config check, the dataset, the audio
encoder and inference from one place; values the model cannot honour are config errors."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from utils.config import load_config
from utils.errors import ConfigError
from utils.framing import DEFAULT_FRAMING, Framing, framing_from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "config", "demo.yaml")


def test_default_framing_and_frame_counts():
    f = framing_from_config(load_config(None))
    assert f == DEFAULT_FRAMING == Framing(16000, 25, 51, 50)
    assert f.samples_per_frame == 640
    # round(seconds * fps), halves up
    assert [f.frames_in(n) for n in (0, 319, 320, 639, 640, 959, 960)] == [0, 0, 1, 1, 1, 1, 2]
    g = framing_from_config(load_config(None, ["DATA.target_fps=20"]))
    assert g.fps == 20 and g.samples_per_frame == 800 and 3 * g.samples_per_frame == 2400


@pytest.mark.parametrize("override, key", [
    ("DATA.target_fps=30", "DATA.target_fps"),        # 533.3 samples per frame
    ("DATA.target_fps=0", "DATA.target_fps"),
])
def test_values_the_model_cannot_honour_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(DEMO, [override])


@pytest.mark.parametrize("key, value, why", [
    ("DATA.sample_rate", 16000, "16000 Hz"),     # even its only working value: the key does nothing
    ("DATA.sample_rate", 22050, "resampled"),
    ("MODEL.motion_dim", 51, "51 numbers"),
])
def test_retired_single_value_keys_are_named_with_the_fixed_value(tmp_path, key, value, why):
    """Keys that only ever accepted one value are gone; a config or an override that still sets one is
    told what the value now always is, not shown the list of valid keys."""
    section, name = key.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    for make in (lambda: load_config(str(path)), lambda: load_config(DEMO, [f"{key}={value}"])):
        with pytest.raises(ConfigError, match=rf"{key} is no longer a setting: .*{why}.*remove it") as e:
            make()
        assert "valid keys" not in str(e.value)


def test_old_checkpoint_config_with_retired_keys_still_gives_its_framing():
    saved = load_config(None, ["DATA.target_fps=20"]).to_dict()
    saved["DATA"]["sample_rate"], saved["MODEL"]["motion_dim"] = 16000, 51   # as older runs saved them
    assert framing_from_config(saved, "checkpoint old.pth") == Framing(16000, 20)


def test_checkpoint_dict_framing():
    """A checkpoint's saved config (a plain dict) gives its framing."""
    saved = load_config(None, ["DATA.target_fps=40"]).to_dict()
    assert framing_from_config(saved) == Framing(16000, 40)
    saved["DATA"]["target_fps"] = 30
    with pytest.raises(ConfigError, match="target_fps"):
        framing_from_config(saved, "checkpoint x.pth")


def _tiny_model(cfg, framing=None):
    from models.faceformer import FaceFormer

    torch.manual_seed(0)
    return FaceFormer(cfg.MODEL, n_styles=2, framing=framing).eval()


def test_framing_reaches_the_audio_encoder():
    cfg = load_config(DEMO, ["DATA.target_fps=20"])
    model = _tiny_model(cfg, framing_from_config(cfg))
    assert model.framing.fps == 20 and model.audio_encoder.samples_per_frame == 800
    assert _tiny_model(cfg).audio_encoder.samples_per_frame == 640  # callers without one: the default
    feats = model.encode(torch.randn(1, 16000), n_frames=20)
    assert feats.shape == (1, 20, cfg.MODEL.feature_dim)


def test_framing_reaches_the_dataset(tmp_path):
    """At DATA.target_fps=20 a 2 s clip is 40 motion frames of 800 samples, crops included."""
    from dataset.dataset import FaceDataset

    t25 = 50
    r = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", expr=r.normal(size=(t25, 100)).astype(np.float32),
             jaw_pose=r.normal(size=(t25, 3)).astype(np.float32))
    sf.write(str(tmp_path / "a.wav"), (0.1 * r.normal(size=32000)).astype(np.float32), 16000)
    (tmp_path / "i.json").write_text('{"s": {"audio_path": "a.wav", "flame_path": "a.npz", "speaker_id": "p"}}')
    over = [f"DATA.data_root={tmp_path}", "DATA.datasets.D.train=i.json", "DATA.target_fps=20",
            "DATA.max_frames=8"]
    cfg = load_config(None, over)
    full = FaceDataset(cfg, "train", ["p"], train=False, progress=False)[0]
    assert full["n_frames"] == 40 and full["motion"].shape == (40, 51) and full["audio"].shape == (40 * 800,)
    crop = FaceDataset(cfg, "train", ["p"], progress=False)[0]
    assert crop["n_frames"] == 8 and crop["audio"].shape == (8 * 800,)
    s = int(np.argmin([(full["motion"][k:k + 8] - crop["motion"]).abs().max() for k in range(33)]))
    assert torch.equal(crop["audio"], full["audio"][s * 800:(s + 8) * 800])


def test_inference_uses_checkpoint_framing_and_refuses_another(tmp_path):
    from models.loading import load_model
    from utils.errors import InferenceError

    cfg = load_config(DEMO, ["DATA.target_fps=20"])
    model = _tiny_model(cfg, framing_from_config(cfg))
    path = str(tmp_path / "ckpt.pth")
    torch.save({"model": model.state_dict(), "styles": ["a", "b"], "config": cfg.to_dict(), "epoch": 1}, path)
    loaded, styles = load_model(path, cfg, torch.device("cpu"))
    assert loaded.framing.fps == 20 and loaded.audio_encoder.samples_per_frame == 800
    with pytest.raises(InferenceError, match="target_fps"):
        load_model(path, load_config(DEMO), torch.device("cpu"))  # run config at 25 fps
