"""models/wav2vec2_runtime.py: the transformers-free wav2vec2 equals HF's Wav2Vec2Model with the same
weights, and inference from a checkpoint that records the encoder config runs without transformers.

Three architectures: the demo's tiny one (group norm, post-LN), a layer-norm pre-LN one
(do_stable_layer_norm, conv_bias, even positional kernel) and the full wav2vec2-base default
(Wav2Vec2Config(), random init, short audio).
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from models.checkpoint import load_checkpoint, plain_values, save_checkpoint
from models.loading import load_model
from models.wav2vec import AudioEncoder
from models.wav2vec2_runtime import Wav2Vec2Runtime, unsupported
from scripts.flame_standin import write_standin_files
from tests.conftest import tiny_model
from utils.config import load_config
from utils.errors import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(REPO, "config", "demo.yaml")
LOG = logging.getLogger("test")
TINY_CNN = dict(conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])
CONFIGS = {
    "demo": load_config(DEMO_CFG).MODEL.audio_encoder_config,
    "layer_stable": dict(TINY_CNN, conv_dim=[32] * 7, feat_extract_norm="layer", do_stable_layer_norm=True,
                         conv_bias=True, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         hidden_act="gelu_new", mask_time_prob=0.0),
    "base": {},
}
WN_OLD = ("weight_g", "weight_v")
WN_NEW = ("parametrizations.weight.original0", "parametrizations.weight.original1")


def pair(name):
    """(HF AudioEncoder, runtime AudioEncoder) with the same random weights, eval mode."""
    torch.manual_seed(0)
    hf = Wav2Vec2Model(Wav2Vec2Config(**CONFIGS[name])).eval()
    rt = Wav2Vec2Runtime.empty(plain_values(hf.config.to_dict())).eval()
    rt.load_state_dict(hf.state_dict())
    return AudioEncoder(hf), AudioEncoder(rt)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_runtime_equals_transformers(name):
    hf, rt = pair(name)
    assert set(hf.model.state_dict()) == set(rt.model.state_dict())
    assert (getattr(hf.model, "masked_spec_embed", None) is None) == (getattr(rt.model, "masked_spec_embed", None) is None)
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 12800, generator=g)
    mask = torch.ones(2, 12800, dtype=torch.bool)
    mask[1, 7000:] = False  # second clip padded: masked attention, CNN clip by clip with group norm
    with torch.no_grad():
        for args in ((audio, 20), (audio, 20, mask)):
            a, b = hf(*args), rt(*args)
            assert a.abs().max() > 0.1
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rt.cnn_features(audio[0], chunk_features=16),
                                   hf.cnn_features(audio[0], chunk_features=16), atol=1e-5, rtol=1e-5)
        long_a = hf.encode_long(audio[0], 20, window_frames=8, overlap_frames=2, chunk_features=16)
        long_b = rt.encode_long(audio[0], 20, window_frames=8, overlap_frames=2, chunk_features=16)
    torch.testing.assert_close(long_b, long_a, atol=1e-5, rtol=1e-5)


def test_other_weight_norm_naming_loads():
    """Checkpoints from torch < 2.1 name the positional conv's weight norm weight_g/v (and newer ones
    parametrizations.weight.original0/1); either loads strictly, with the same result."""
    hf, rt = pair("demo")
    state = hf.model.state_dict()
    ours = WN_NEW if any(k.endswith(WN_NEW[0]) for k in rt.model.state_dict()) else WN_OLD
    theirs = WN_OLD if ours == WN_NEW else WN_NEW
    renamed = {}
    for k, v in state.items():
        for a, b in zip(ours, theirs):
            k = k.replace("pos_conv_embed.conv." + a, "pos_conv_embed.conv." + b)
        renamed[k] = v
    assert any(k.endswith(theirs[0]) for k in renamed) and not any(k.endswith(ours[0]) for k in renamed)
    other = Wav2Vec2Runtime.empty(plain_values(hf.model.config.to_dict())).eval()
    other.load_state_dict(renamed)  # strict
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(AudioEncoder(other)(audio, 12), hf(audio, 12), atol=1e-6, rtol=1e-6)


def test_unsupported_options_are_named():
    base = plain_values(Wav2Vec2Config().to_dict())
    assert unsupported(base) is None
    for change, word in ((dict(add_adapter=True), "add_adapter"), (dict(adapter_attn_dim=16), "adapter_attn_dim"),
                         (dict(hidden_act="quick_gelu"), "hidden_act"), (dict(feat_extract_norm="batch"), "feat_extract_norm"),
                         (dict(position_embeddings_type="rotary"), "position_embeddings_type"),
                         (dict(conv_kernel=[10, 3]), "conv_kernel"), (dict(hidden_size=None), "hidden_size")):
        why = unsupported(dict(base, **change))
        assert why and word in why, (change, why)
        with pytest.raises(ValueError, match=word):
            Wav2Vec2Runtime(dict(base, **change))


# ----------------------------------------------------------------------------------------------
# Checkpoints: saved config, runtime vs transformers path, no transformers import
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Stand-in FLAME, a 1 s wav, and two checkpoints of one tiny demo model written by the training
    loop's state(): new.pth (with audio_encoder_config) and old.pth (without, as before it was saved)."""
    from main.train_eval_loop import Trainer

    root = str(tmp_path_factory.mktemp("w2v_runtime"))
    write_standin_files(os.path.join(root, "FLAME"))
    # the CNN front end: checkpoints without audio_encoder_config predate the log-mel one
    cfg = load_config(DEMO_CFG, [f"DATA.data_root={root}", f"TRAIN.save_path={root}/run", "MODEL.audio_frontend=cnn"])
    model = tiny_model(cfg.MODEL, 2, bias_std=None)
    state = Trainer(cfg, model, [], None, {}, ["S0", "S1"], torch.device("cpu"), LOG).state()
    save_checkpoint(state, os.path.join(root, "new.pth"))
    state.pop("audio_encoder_config")
    save_checkpoint(state, os.path.join(root, "old.pth"))
    t = np.arange(16000) / 16000
    sf.write(os.path.join(root, "clip.wav"), (0.3 * np.sin(2 * np.pi * 150 * t) * np.sin(2 * np.pi * 3 * t)
                                              ).astype(np.float32), 16000)
    return root, cfg


def test_checkpoint_records_the_encoder_config(files):
    root, cfg = files
    ckpt = load_checkpoint(os.path.join(root, "new.pth"))  # weights_only, layout checked
    saved = ckpt["audio_encoder_config"]
    assert saved["conv_dim"] == [64] * 7 and saved["feat_extract_norm"] == "group" and saved["hidden_size"] == 64
    new, _ = load_model(os.path.join(root, "new.pth"), cfg, torch.device("cpu"))
    old, _ = load_model(os.path.join(root, "old.pth"), cfg, torch.device("cpu"))
    assert isinstance(new.audio_encoder.model, Wav2Vec2Runtime)
    assert isinstance(old.audio_encoder.model, Wav2Vec2Model)  # no saved config: through transformers
    audio = torch.randn(1, 16000)
    with torch.no_grad():
        torch.testing.assert_close(new.encode(audio, 25), old.encode(audio, 25), atol=1e-5, rtol=1e-5)


def test_convert_records_the_encoder_config_of_an_old_checkpoint(files, tmp_path, capsys):
    """python main/checkpoint.py convert OLD NEW: the old checkpoint gains audio_encoder_config (built once
    through transformers), then loads without transformers, with the same encoder outputs; converting
    again changes nothing."""
    from main.checkpoint import main as checkpoint_cli

    root, cfg = files
    dst = str(tmp_path / "converted.pth")
    checkpoint_cli(["convert", os.path.join(root, "old.pth"), dst])
    assert "with the wav2vec2 config" in capsys.readouterr().out
    assert load_checkpoint(dst)["audio_encoder_config"] == load_checkpoint(os.path.join(root, "new.pth"))[
        "audio_encoder_config"]
    converted, _ = load_model(dst, cfg, torch.device("cpu"))
    new, _ = load_model(os.path.join(root, "new.pth"), cfg, torch.device("cpu"))
    assert isinstance(converted.audio_encoder.model, Wav2Vec2Runtime)
    audio = torch.randn(1, 16000)
    with torch.no_grad():
        torch.testing.assert_close(converted.encode(audio, 25), new.encode(audio, 25), atol=0, rtol=0)
    checkpoint_cli(["convert", dst])
    assert "with the wav2vec2 config" not in capsys.readouterr().out


def test_malformed_saved_config_is_refused(files, tmp_path):
    root, _ = files
    ckpt = load_checkpoint(os.path.join(root, "new.pth"))
    ckpt["audio_encoder_config"] = ["hidden_size", 64]
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="audio_encoder_config"):
        load_checkpoint(str(tmp_path / "bad.pth"))


def test_unsupported_saved_config_falls_back_to_transformers(files, tmp_path):
    root, cfg = files
    ckpt = load_checkpoint(os.path.join(root, "new.pth"))
    ckpt["audio_encoder_config"]["hidden_act"] = "quick_gelu"
    torch.save(ckpt, tmp_path / "odd.pth")
    model, _ = load_model(str(tmp_path / "odd.pth"), cfg, torch.device("cpu"))
    assert isinstance(model.audio_encoder.model, Wav2Vec2Model)


def test_old_weight_norm_names_in_a_checkpoint_load(files, tmp_path):
    root, cfg = files
    ckpt = load_checkpoint(os.path.join(root, "new.pth"))
    for a, b in zip(WN_NEW, WN_OLD):
        ckpt["model"][f"audio_encoder.model.encoder.pos_conv_embed.conv.{b}"] = \
            ckpt["model"].pop(f"audio_encoder.model.encoder.pos_conv_embed.conv.{a}")
    torch.save(ckpt, tmp_path / "wg.pth")
    renamed, _ = load_model(str(tmp_path / "wg.pth"), cfg, torch.device("cpu"))
    new, _ = load_model(os.path.join(root, "new.pth"), cfg, torch.device("cpu"))
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        assert torch.equal(renamed.encode(audio, 12), new.encode(audio, 12))


RUN = """
import json, sys
import soundfile as sf
from main import inference as I
from models.streaming import Streamer
ckpt, args = sys.argv[1], sys.argv[2:]
I.cli(args)                                      # single audio
I.cli(args[:-3] + [args[-3] + "_stream", "--stream"] + args[-2:])   # the same fed chunk by chunk
s = Streamer(ckpt, style="S1")
frames = s.push(sf.read(args[3], dtype="float32")[0]).shape[0] + s.flush().shape[0]
print(json.dumps([frames, sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "librosa"))]))
"""


def test_inference_from_a_checkpoint_without_transformers(files):
    """python inference.py --audio (and --stream, and Streamer(checkpoint)) on a new checkpoint never
    imports transformers, and single audio writes the vertices the transformers path (old checkpoint,
    same weights) writes."""
    root, _ = files
    outs = {}
    for name in ("new", "old"):
        ckpt, out = os.path.join(root, f"{name}.pth"), os.path.join(root, f"out_{name}")
        args = ["--config", DEMO_CFG, "--audio", os.path.join(root, "clip.wav"), "--style", "S1", "--checkpoint",
                ckpt, "--out", out, f"DATA.data_root={root}", "INFER.device=cpu"]
        res = subprocess.run([sys.executable, "-c", RUN, ckpt, *args], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        assert res.returncode == 0, res.stderr[-2000:]
        frames, modules = json.loads(res.stdout.strip().splitlines()[-1])
        assert frames == 25
        outs[name] = (modules, out)
    assert outs["new"][0] == []
    assert "transformers" in outs["old"][0]  # the check can fail: the old path does import it
    verts = {k: np.stack([np.load(os.path.join(o, "vertices", f"{i}.npy")) for i in range(25)])
             for k, (_, o) in outs.items()}
    assert verts["new"].shape == (25, 5023, 3) and np.abs(verts["new"] - verts["new"][0]).max() > 0
    np.testing.assert_allclose(verts["new"], verts["old"], atol=1e-5)
    np.testing.assert_allclose(np.load(os.path.join(root, "out_new_stream", "motion.npy")),
                               np.load(os.path.join(root, "out_old_stream", "motion.npy")), atol=1e-5)


def test_checkpoint_convert_of_a_foreign_dict_without_config_says_so(tmp_path, capsys):
    import torch

    from main.checkpoint import main as checkpoint_main

    src, dst = tmp_path / "unfit.pth", tmp_path / "out.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "styles": ["a"]}, src)
    with pytest.raises(SystemExit) as e:
        checkpoint_main(["convert", str(src), str(dst)])  # the default config: wav2vec2-base, not on disk
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"checkpoint: checkpoint {src} is not a FaceFormer checkpoint: its weights lack the "
                          f"modules audio_encoder, audio_feature_map")
    assert not dst.exists()
