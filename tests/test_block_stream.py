"""An encoder trained for streaming (MODEL.encoder_block_frames, models/block_encoder.py): offline, in a
padded batch, block by block and streamed live, it computes the same numbers."""
import json
import os
from unittest import mock

import numpy as np
import pytest
import torch

from dataset.audio import normalize_audio
from models.block_encoder import block_mask
from models.streaming import Streamer
from tests.conftest import speech, tiny_model
from utils.config import load_config
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOP = 640


def block_cfg(block=2, lookahead=3, left=7, **model):
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"),
                      [f"MODEL.encoder_block_frames={block}", f"MODEL.encoder_lookahead_frames={lookahead}",
                       f"MODEL.encoder_left_frames={left}"])
    for k, v in model.items():
        cfg.MODEL[k] = v
    return cfg


def cnn_cfg(norm):
    """wav2vec2's CNN front end (the pretrained encoders' path) with a ``norm`` first layer; blocks without
    a lookahead."""
    cfg = block_cfg(6, 0, 25, audio_frontend="cnn")
    cfg.MODEL.audio_encoder_config = dict(cfg.MODEL.audio_encoder_config, feat_extract_norm=norm)
    return cfg


FRONT_ENDS = {"logmel": block_cfg, "cnn-group": lambda: cnn_cfg("group"), "cnn-layer": lambda: cnn_cfg("layer")}


@pytest.fixture(scope="module", params=list(FRONT_ENDS))
def model(request):
    return tiny_model(FRONT_ENDS[request.param]().MODEL, weight_std=0.2).eval()


def offline(model, x, style=1):
    with torch.no_grad():
        audio = torch.from_numpy(normalize_audio(x))[None]
        return model.generate(audio, torch.tensor([style]), len(x) // HOP, attention_window=None)[0].numpy()


def streamed(model, x, piece, **kw):
    s = Streamer(model, style=1, attention_window=None, **kw)
    out = np.concatenate([s.push(x[i:i + piece]) for i in range(0, len(x), piece)] + [s.flush()])
    return out, s


def test_block_mask_sees_its_block_the_left_context_and_the_lookahead_only():
    m = block_mask(10, block=3, left=2)
    assert m[4].tolist() == [False, True, True, True, True, True, False, False, False, False]  # block [3, 6)
    assert m[0].tolist() == [True] * 3 + [False] * 7
    assert m[9].tolist() == [False] * 7 + [True] * 3                   # the last, partial block
    assert block_mask(10, block=3, left=2, lookahead=2)[4].tolist() == [False] + [True] * 7 + [False] * 2


def test_one_pass_equals_block_by_block_and_a_padded_batch_equals_clips_alone(model):
    enc = model.audio_encoder
    a = torch.from_numpy(normalize_audio(speech(50)))
    b = torch.from_numpy(normalize_audio(speech(35, seed=1)))
    with torch.no_grad():
        whole = enc(a[None], 50)
        assert (whole - enc.encode_blocks(a, 50)).abs().max() < 1e-5
        with mock.patch("models.block_encoder.GROUP_FRAMES", 12):  # a long clip goes in passes of many blocks
            assert (whole - enc.encode_blocks(a, 50)).abs().max() < 1e-5
        assert (whole - enc.encode_long(a, 50, 20, 5, chunk_features=33)).abs().max() < 1e-5  # long audio
        batch, mask = torch.zeros(2, 50 * HOP), torch.zeros(2, 50 * HOP, dtype=torch.bool)
        batch[0], batch[1, :35 * HOP], mask[0], mask[1, :35 * HOP] = a, b, True, True
        padded = enc(batch, 50, mask)
        assert (padded[0] - whole[0]).abs().max() < 1e-5
        assert (padded[1, :35] - enc(b[None], 35)[0]).abs().max() < 1e-5
        assert padded[1, 35:].abs().max() == 0
    # block-causal: a change after a block's audio, its lookahead and the CNN's 80-sample overhang leaves it alone
    edge = (30 + enc.lookahead) * HOP + 80
    c = a.clone()
    c[edge:] += 0.5 * torch.randn(50 * HOP - edge, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        changed = enc(c[None], 50)
    assert (changed[0, :30] - whole[0, :30]).abs().max() < 1e-5 and (changed[0, 30:] - whole[0, 30:]).abs().max() > 1e-2


@pytest.mark.parametrize("piece", [1, 777])
def test_streamed_cold_at_the_defaults_equals_offline(model, piece):
    """Cold (no priming, the first sample is the first the model hears), at the default settings, any
    push size: the streamed motion is the model's offline motion; latency <= 0.25 s."""
    x = speech(40 if piece > 1 else 20, seed=3)
    x[:12 * HOP] *= 1e-3                               # starts near-silent: speech after silence
    ref = offline(model, x)
    got, s = streamed(model, x, piece)
    assert got.shape == ref.shape
    enc = model.audio_encoder
    # to float32 rounding: offline reads the utterance-normalised samples, whose offset dwarfs the near-silent
    # start, live the raw ones; the causal statistics of the first few samples magnify that difference
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max() and np.abs(ref).std() > 0.1
    assert s.latency_s <= 0.25 and s.chunk == enc.block * HOP and s.lookahead == 80 + enc.lookahead * HOP


def test_streamed_output_does_not_depend_on_the_input_gain(model):
    x = speech(25, seed=4)
    a, _ = streamed(model, x, 1000)
    b, _ = streamed(model, 0.01 * x, 1000)
    assert np.abs(a - b).max() < 1e-4


def test_frames_are_final_at_each_block_and_a_longer_chunk_takes_whole_blocks(model):
    x = speech(60, seed=5)
    enc = model.audio_encoder
    s = Streamer(model, style=1, attention_window=None)
    edge = (2 * enc.block + enc.lookahead) * HOP + 80     # two blocks, the lookahead, the CNN's 5 ms overhang
    assert s.push(x[:edge - 1]).shape[0] == enc.block
    assert s.push(x[edge - 1:edge]).shape[0] == enc.block
    long = Streamer(model, style=1, chunk_ms=enc.block * 40 + 1)  # rounded up to two blocks
    assert long.chunk == 2 * enc.block * HOP and long.latency_s == pytest.approx((2 * enc.block + enc.lookahead) * 0.04 + 0.005)


def test_priming_is_refused(model):
    s = Streamer(model, style=1)
    with pytest.raises(ValueError, match="trained for streaming"):
        s.prime(speech(10))


def test_a_training_step_runs_and_reaches_the_encoder(model):
    m = tiny_model(block_cfg().MODEL, weight_std=0.2).train()
    x = torch.from_numpy(normalize_audio(speech(20)))[None]
    target = torch.randn(1, 20, 51) * 0.1
    out = m(x, target, torch.tensor([0]), mode="parallel_rollout", rollout_steps=2)
    torch.nn.functional.mse_loss(out, target).backward()
    grads = [p.grad for p in m.audio_encoder.model.encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_a_checkpoint_streams_equal_to_its_offline_run_through_the_cli(tmp_path):
    """Saved as training saves it, loaded without transformers: the CLI's --stream gives the files of
    its single-audio run, at the latency of its block and lookahead."""
    import soundfile as sf

    from main import inference as I
    from models.checkpoint import plain_values
    from scripts.flame_standin import write_standin_files

    root = str(tmp_path)
    write_standin_files(os.path.join(root, "FLAME"))
    cfg = block_cfg()
    m = tiny_model(cfg.MODEL, weight_std=0.2)
    ckpt = os.path.join(root, "best_model.pth")
    torch.save({"model": m.state_dict(), "optimizer": {}, "epoch": 1, "styles": ["A", "B", "C"],
                "config": cfg.to_dict(), "audio_encoder_config": plain_values(m.audio_encoder.model.config.to_dict())},
               ckpt)
    wav = os.path.join(root, "speech.wav")
    sf.write(wav, np.round(speech(45, seed=6) * 32767).astype(np.int16), 16000, subtype="PCM_16")
    args = ["--config", os.path.join(ROOT, "config", "demo.yaml"), "--checkpoint", ckpt, "--style", "B",
            "--audio", wav, f"DATA.data_root={root}", "INFER.device=cpu"]
    I.cli([*args, "--out", str(tmp_path / "single")])
    I.cli([*args, "--stream", "--out", str(tmp_path / "live")])
    ref = np.load(tmp_path / "single" / "motion.npy")
    assert np.abs(np.load(tmp_path / "live" / "motion.npy") - ref).max() < 1e-4
    stats = json.loads((tmp_path / "live" / "stream_stats.json").read_text())
    with pytest.raises(UserError, match=r"priming \(--prime_audio, Streamer.prime\): this model was trained for "
                                        r"streaming \(MODEL.encoder_block_frames=2\)"):
        I.cli([*args, "--stream", "--prime_audio", wav, "--out", str(tmp_path / "primed")])
    assert set(os.listdir(tmp_path / "primed")) <= {"inference.log"}  # no result: only the run's log
    assert stats["algorithmic_latency_s"] == pytest.approx(0.205)  # 2 frames + 3 of lookahead + 5 ms
    assert stats["chunk_ms"] == pytest.approx(80) and stats["lookahead_ms"] == pytest.approx(125)
    assert sum(c["frames"] for c in stats["chunks"]) == 45


def test_stream_memory_is_bounded_whatever_the_left_context_flag(model):
    """The block cache keeps what its queries attend; the projected frames it was given are dropped, also
    with --left_context_ms -1 (which a block-causal encoder ignores)."""
    s = Streamer(model, style=1, left_context_ms=None)
    x = speech(60, seed=7)
    for i in range(0, len(x), 3000):
        s.push(x[i:i + 3000])
    assert s.audio.proj.shape[0] <= 2 * model.audio_encoder.block + model.audio_encoder.lookahead
    assert all(k.shape[2] <= model.audio_encoder.left + model.audio_encoder.lookahead + model.audio_encoder.block
               for k, _ in s.audio.blocks.kv)


def test_the_command_line_streams_in_one_thread_and_gives_the_threads_back():
    from main.infer.pipeline import one_cpu_thread

    before = torch.get_num_threads()
    with one_cpu_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
