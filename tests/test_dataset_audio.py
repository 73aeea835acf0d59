"""dataset/audio.py and dataset/data_item.py: audio files -> mono 16 kHz, normalisation, truncated
files, and a sample's audio cut to exactly its motion's frames."""
import numpy as np
import pytest
import soundfile as sf

from dataset.audio import load_audio, normalize_audio
from dataset.data_item import load_item
from dataset.index import read_index
from tests.conftest import SR, expected_vhap, make_cfg, write_json, write_sample, write_wav
from utils.errors import DataError


def test_load_audio_stereo_44k_to_mono_16k(tmp_path):
    sr_in, secs, f0 = 44100, 1.0, 220.0
    t = np.arange(int(sr_in * secs)) / sr_in
    left = 0.5 * np.sin(2 * np.pi * f0 * t)
    x = np.stack([left, 0.5 * left], axis=1).astype(np.float32)  # mono mix = 0.75 * sine
    path = str(tmp_path / "st.wav")
    sf.write(path, x, sr_in, subtype="FLOAT")
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1 and abs(y.shape[0] - 16000) <= 1
    ref = 0.75 * 0.5 * np.sin(2 * np.pi * f0 * np.arange(y.shape[0]) / 16000)
    mid = slice(200, -200)  # away from the resampler's edge transients
    assert np.abs(y[mid] - ref[mid]).max() < 1e-2


def test_normalize_audio():
    z = normalize_audio(np.zeros(1000, np.float32))
    assert np.isfinite(z).all() and np.abs(z).max() == 0
    x = 3 + 0.2 * np.random.default_rng(0).normal(size=5000).astype(np.float32)
    y = normalize_audio(x)
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-3


def test_load_item_audio_exactly_t_times_640(tmp_path):
    for k, extra in enumerate([0.013, -0.013, 0.2, -0.3]):  # audio slightly longer / shorter
        audio, flame, p = write_sample(str(tmp_path), f"s{k}", 50, audio_seconds=2.0 + extra, sr=22050)
        write_json(tmp_path / f"i{k}.json", {f"id{k}": {"audio": audio, "flame_path": flame, "speaker_id": "a"}})
        cfg = make_cfg(tmp_path, {"A": {"train": f"i{k}.json"}})
        (ref,) = read_index(f"i{k}.json", "A", cfg.DATA.datasets.A, cfg)
        item = load_item(ref)
        t = item["n_frames"]
        assert t == min(50, int(np.floor((2.0 + extra) * 25 + 0.5)))
        assert item["audio"].shape == (t * 640,) and item["motion"].shape == (t, 51)
        np.testing.assert_allclose(item["motion"], expected_vhap(p)[:t], rtol=1e-6)
        assert item["notes"] == []  # all within DATA.max_av_diff


def test_truncated_wav_is_reported(tmp_path):
    from dataset.audio import load_audio, wav_header_frames

    path = str(tmp_path / "a.wav")
    write_wav(path, 1.0)
    assert wav_header_frames(path) == SR and load_audio(path).shape == (SR,)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])  # a copy cut short: the header still says 1 s
    assert sf.read(path)[0].shape[0] < SR  # soundfile alone returns the shorter data silently
    with pytest.raises(DataError, match=r"truncated: its header says 16000 frames \(1.000 s"):
        load_audio(path)
    # a header whose data size is left open (streamed writers) is not a truncation
    with open(path, "wb") as f:
        f.write(data[:40] + (0xFFFFFFFF).to_bytes(4, "little") + data[44:])
    assert wav_header_frames(path) is None and load_audio(path).shape == (SR,)
