"""One pipeline: the same audio through the three kinds of request (a test split, one audio file, a
stream) gives results of the same layout, frame rate, frame count and meta.json keys."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from main import inference as I
from tests.conftest import speech, standin_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(ROOT, "config", "demo.yaml")
FRAMES = 40  # 1.6 s at 25 fps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Stand-in FLAME, a tiny checkpoint (styles A, B, C), one 16-bit wav and a test split holding it."""
    root, ckpt, _ = standin_setup(tmp_path_factory, "pipeline")
    os.makedirs(os.path.join(root, "clips"))
    wav = os.path.join(root, "clips", "utt.wav")
    sf.write(wav, np.round(speech(FRAMES) * 32767).astype(np.int16), 16000, subtype="PCM_16")
    r = np.random.default_rng(0)
    np.savez(os.path.join(root, "clips", "utt.npz"), expr=r.normal(size=(FRAMES, 100)).astype(np.float32),
             jaw_pose=np.zeros((FRAMES, 3), np.float32), shape=np.zeros(300, np.float32))
    index = {"utt": {"audio_path": "clips/utt.wav", "flame_coeff_save_path": "clips/utt.npz",
                     "speaker_id": "B", "style_id": "utt"}}
    os.makedirs(os.path.join(root, "json"))
    with open(os.path.join(root, "json", "test.json"), "w") as f:
        json.dump(index, f)
    return root, ckpt, wav


def result_of(vert_dir, meta_dir):
    """(frame files, files beside the vertices, motion, meta) of one result."""
    frames = sorted(os.listdir(vert_dir), key=lambda n: int(n.split(".")[0]))
    meta = json.loads(open(os.path.join(meta_dir, "meta.json")).read())
    return frames, set(os.listdir(meta_dir)), np.load(os.path.join(meta_dir, "motion.npy")), meta


def test_the_three_requests_give_the_same_result_layout(setup, tmp_path):
    root, ckpt, wav = setup
    common = ["--config", DEMO_CFG, "--checkpoint", ckpt, f"DATA.data_root={root}", "INFER.device=cpu"]
    I.cli([*common, "DATA.datasets.MEAD_VHAP.test=json/test.json", "DATA.datasets.MultiModal200.test=",
           f"INFER.output_root={tmp_path}/metrics", f"INFER.coeff_root={tmp_path}/coeffs", "INFER.exp_name=e"])
    I.cli([*common, "--audio", wav, "--style", "B", "--out", str(tmp_path / "single")])
    I.cli([*common, "--audio", wav, "--style", "B", "--stream", "--out", str(tmp_path / "stream")])

    results = {"test": result_of(tmp_path / "metrics" / "e" / "MEAD_VHAP" / "utt",
                                 tmp_path / "coeffs" / "e" / "MEAD_VHAP" / "utt"),
               "single": result_of(tmp_path / "single" / "vertices", tmp_path / "single"),
               "stream": result_of(tmp_path / "stream" / "vertices", tmp_path / "stream")}
    beside = {"test": set(), "single": {"vertices", "inference.log"}, "stream": {"vertices", "inference.log",
                                                                                 "stream_stats.json"}}
    keys = set(results["test"][3])
    for mode, (frames, files, motion, meta) in results.items():
        assert frames == [f"{i}.npy" for i in range(FRAMES)], mode
        assert files == {"motion.npy", "coeffs287.npy", "meta.json"} | beside[mode], mode
        assert motion.shape == (FRAMES, 51), mode
        assert set(meta) == keys and meta["fps"] == 25.0 and meta["n_frames"] == FRAMES, mode
        assert meta["condition_style"] == "B" and meta["checkpoint"] == os.path.abspath(ckpt), mode
    # the offline requests generate the same motion; the stream its causal approximation
    np.testing.assert_allclose(results["single"][2], results["test"][2], atol=1e-5)
    assert np.abs(results["stream"][2] - results["test"][2]).max() < 1.0


def test_python_callers_stream_a_file_with_a_request(setup, tmp_path):
    """The pipeline takes a typed request, not the CLI's arguments: a Python caller streams a file and gets
    what the command line gives; a request that mixes modes is refused before anything runs."""
    from main.infer.pipeline import run
    from main.infer.request import Request
    from utils.config import load_config

    root, ckpt, wav = setup
    cfg = load_config(DEMO_CFG, [f"DATA.data_root={root}", "INFER.device=cpu"])
    meta = run(cfg, Request("stream", wav, style="B", out=str(tmp_path / "api"), checkpoint=ckpt, chunk_ms=100))
    I.cli(["--config", DEMO_CFG, "--checkpoint", ckpt, f"DATA.data_root={root}", "INFER.device=cpu",
           "--audio", wav, "--style", "B", "--stream", "--chunk_ms", "100", "--out", str(tmp_path / "cli")])
    api, cli = result_of(tmp_path / "api" / "vertices", tmp_path / "api"), result_of(tmp_path / "cli" / "vertices",
                                                                                   tmp_path / "cli")
    assert meta["n_frames"] == FRAMES and api[0] == cli[0]
    np.testing.assert_array_equal(api[2], cli[2])
    for bad in (dict(mode="test", audio=wav), dict(mode="file"), dict(mode="file", audio=wav, chunk_ms=100),
                dict(mode="stream", audio=wav, render=True), dict(mode="live", audio=wav)):
        with pytest.raises(ValueError):
            Request(**bad)
