"""The log-mel front end (models/log_mel.py, MODEL.audio_frontend=logmel): the spectrum it computes, and
that it keeps every exactness rule of the CNN path: padded batches, chunked long audio, streaming, the
transformers-free runtime of a checkpoint, and the config checks."""
import librosa
import numpy as np
import pytest
import torch

from models.log_mel import LOG_FLOOR, LogMel, mel_filterbank
from models.wav2vec import build_audio_encoder
from tests.conftest import ROOT, speech, tiny_model
from tests.test_stream import offline, stream
from utils.config import load_config
from utils.errors import ConfigError

SPF = 640


def logmel_cfg(**extra):
    cfg = load_config(f"{ROOT}/config/demo.yaml", ["MODEL.audio_frontend=logmel"]).MODEL
    cfg.audio_encoder_config = dict(cfg.audio_encoder_config, hidden_dropout=0.0, attention_dropout=0.0,
                                    activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, **extra)
    return cfg


def test_filterbank_is_librosas():
    ours = mel_filterbank(16000, 512, 80, 60.0, 8000.0)
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=60.0, fmax=8000.0)
    assert ours.shape == ref.shape == (80, 257)
    assert np.abs(ours - ref).max() < 1e-6 * ref.max()


def test_logmel_frames_are_the_windows_power_spectrum():
    x = speech(10, seed=2)
    mel = LogMel(n_mels=40, win=400, hop=320)
    out = mel(torch.from_numpy(x)[None])[0].numpy()                 # (40, F)
    assert out.shape == (40, (len(x) - 400) // 320 + 1)
    j = 7
    frame = x[320 * j:320 * j + 400] * np.hanning(401)[:400]          # periodic Hann window
    power = np.abs(np.fft.rfft(frame, n=512)) ** 2
    ref = np.log(mel.filters.numpy() @ power + LOG_FLOOR)
    assert np.abs(out[:, j] - ref).max() < 1e-3


def test_logmel_encoder_padded_batch_equals_clips_alone():
    torch.manual_seed(0)
    enc = build_audio_encoder(logmel_cfg())
    assert enc.receptive_field == 400 and enc.stride == 320 and not enc.group_norm and enc.cnn_frozen
    lengths = [25, 60, 100]
    audio = torch.zeros(3, 100 * SPF)
    mask = torch.zeros(3, 100 * SPF, dtype=torch.bool)
    for b, n in enumerate(lengths):
        audio[b, :n * SPF] = torch.from_numpy(speech(n, seed=b)) * (1 + b)
        mask[b, :n * SPF] = True
    for train in (True, False):
        enc.train(train)
        batch = enc(audio, 100, mask)
        for b, n in enumerate(lengths):
            alone = enc(audio[b:b + 1, :n * SPF], n)[0]
            assert (batch[b, :n] - alone).abs().max() < 1e-4, (train, b)
            assert not batch[b, n:].any()


def test_logmel_long_audio_chunks_equal_the_whole_clip():
    torch.manual_seed(0)
    enc = build_audio_encoder(logmel_cfg()).eval()
    audio = torch.from_numpy(speech(120, seed=3))
    with torch.no_grad():
        whole = enc.model.feature_extractor(audio[None])[0]
        chunked = enc.cnn_features(audio, chunk_features=7)
        assert chunked.shape == whole.shape and (chunked - whole).abs().max() < 1e-4
        assert torch.equal(enc.encode_long(audio, 120, window_frames=120, overlap_frames=4), enc(audio[None], 120))


def test_logmel_stream_with_whole_file_lookahead_equals_offline():
    cfg = load_config(f"{ROOT}/config/demo.yaml", ["MODEL.audio_frontend=logmel"]).MODEL
    m = tiny_model(cfg, weight_std=0.2).eval()
    x = speech(60)
    pushed, rest, _ = stream(m, x, lookahead_ms=10 ** 6, left_context_ms=None, attention_window=None)
    ref = offline(m, x)
    assert sum(p.shape[0] for p in pushed) == 0 and rest.shape == ref.shape == (60, 51)
    assert np.abs(rest - ref).max() < 1e-5 and np.abs(ref).mean() > 0.05


def test_logmel_runtime_from_a_checkpoint_equals_transformers():
    from models.checkpoint import plain_values
    from models.wav2vec import AudioEncoder
    from models.wav2vec2_runtime import Wav2Vec2Runtime, unsupported

    torch.manual_seed(0)
    hf = build_audio_encoder(logmel_cfg()).eval()
    config = plain_values(hf.model.config.to_dict())
    assert config["audio_frontend"] == "logmel" and unsupported(config) is None
    rt_model = Wav2Vec2Runtime.empty(config).eval()
    rt_model.load_state_dict(hf.model.state_dict(), strict=True)
    rt = AudioEncoder(rt_model)
    audio = torch.from_numpy(speech(40, seed=4))[None]
    with torch.no_grad():
        assert (hf(audio, 40) - rt(audio, 40)).abs().max() < 1e-5


@pytest.mark.parametrize("overrides,match", [
    (["MODEL.audio_frontend=spectrogram"], "MODEL.audio_frontend"),
    (["MODEL.audio_frontend=logmel", "MODEL.audio_encoder_pretrained=true"], "audio_encoder_pretrained=false"),
])
def test_config_refuses_a_bad_frontend(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(f"{ROOT}/config/demo.yaml", overrides)


def test_logmel_checkpoint_loads_without_transformers(tmp_path):
    """A checkpoint of a log-mel model records its front end in the encoder config, so inference builds
    the transformers-free encoder with the same front end and the same outputs."""
    import logging

    from main.train_eval_loop import Trainer
    from models.checkpoint import save_checkpoint
    from models.loading import load_model
    from models.wav2vec2_runtime import Wav2Vec2Runtime
    from scripts.flame_standin import write_standin_files

    write_standin_files(str(tmp_path / "FLAME"))
    cfg = load_config(f"{ROOT}/config/demo.yaml", [f"DATA.data_root={tmp_path}", f"TRAIN.save_path={tmp_path}/run"])
    model = tiny_model(cfg.MODEL, 2, bias_std=None).eval()
    log = logging.getLogger("test")
    save_checkpoint(Trainer(cfg, model, [], None, {}, ["S0", "S1"], torch.device("cpu"), log).state(),
                    str(tmp_path / "ckpt.pth"))
    loaded, _ = load_model(str(tmp_path / "ckpt.pth"), cfg, torch.device("cpu"))
    assert isinstance(loaded.audio_encoder.model, Wav2Vec2Runtime)
    audio = torch.from_numpy(speech(25, seed=5))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(audio, 25), model.encode(audio, 25), atol=1e-5, rtol=1e-5)


def test_logmel_generation_in_a_padded_batch_equals_clips_alone():
    """Generated motion of clips in a padded batch equals each clip generated alone, to float32 rounding
    of the batched products (amplified a little by the autoregressive decoder)."""
    cfg = load_config(f"{ROOT}/config/demo.yaml").MODEL
    m = tiny_model(cfg, weight_std=0.2).eval()
    lengths = [60, 40, 25]
    audio = torch.zeros(3, 60 * SPF)
    mask = torch.zeros(3, 60 * SPF, dtype=torch.bool)
    for b, n in enumerate(lengths):
        audio[b, :n * SPF] = torch.from_numpy(speech(n, seed=b + 1))
        mask[b, :n * SPF] = True
    with torch.no_grad():
        batch = m.generate(audio, torch.tensor([0, 1, 2]), 60, audio_mask=mask)
        for b, n in enumerate(lengths):
            alone = m.generate(audio[b:b + 1, :n * SPF], torch.tensor([b]), n)[0]
            scale = alone.abs().max().item()
            assert scale > 0.1 and (batch[b, :n] - alone).abs().max() < 1e-5 * scale, b
