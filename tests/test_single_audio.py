"""main/inference.py, single-audio mode: any rate and channel count, the pipeline's result equals batch
generation, unknown styles, bad and silent audio, the exit code and message, --render and the shell
entry. Data, checkpoint and helpers: tests/test_inference.py."""
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from main import inference as I
from main.infer.decode import generate_motion
from main.infer.speech import read_speech
from models.flame import FLAME
from models.loading import load_model
from tests.test_inference import DEMO_CFG, REPO, SR, assert_single_outputs, checkpoint, data_root, run_single, speechy  # noqa: F401
from utils.config import load_config
from utils.errors import AudioError, InferenceError


def test_single_audio_stereo_44k_and_8k(data_root, checkpoint, tmp_path):
    x = speechy(1.3, sr=44100, seed=1)
    sf.write(tmp_path / "stereo.wav", np.stack([x, x], 1), 44100)
    sf.write(tmp_path / "mono44.wav", x, 44100)
    sf.write(tmp_path / "low.wav", speechy(0.9, sr=8000, seed=2), 8000)

    meta = run_single(data_root, checkpoint, tmp_path / "stereo.wav", tmp_path / "s")
    m_stereo, meta = assert_single_outputs(tmp_path / "s", 33)  # round(1.3 s * 25)
    assert meta["condition_style"] == "M003" and meta["audio_path"] == str(tmp_path / "stereo.wav")
    assert "no --style given: conditioning on 'M003'" in open(tmp_path / "s" / "inference.log").read()
    # stereo is mixed down: identical channels give the mono result
    run_single(data_root, checkpoint, tmp_path / "mono44.wav", tmp_path / "m")
    m_mono, _ = assert_single_outputs(tmp_path / "m", 33)
    np.testing.assert_allclose(m_stereo, m_mono, atol=1e-5)

    run_single(data_root, checkpoint, tmp_path / "low.wav", tmp_path / "low", "--style", "mm01")
    m_low, meta = assert_single_outputs(tmp_path / "low", 23)  # round(0.9 s * 25) = 22.5 -> 23
    assert meta["style_id"] == "mm01"
    # a number as output fps resamples the 25 fps motion
    run_single(data_root, checkpoint, tmp_path / "low.wav", tmp_path / "low20", "--style", "mm01",
               extra=["INFER.output_fps=20"])
    m20, _ = assert_single_outputs(tmp_path / "low20", 18, fps=20)  # round(23 * 20/25) = 18.4 -> 18
    np.testing.assert_allclose(m20[0], m_low[0], atol=1e-6)  # frame 0 sits at t = 0 in both

    # refuses to overwrite, then overwrites when asked
    with pytest.raises(InferenceError, match="already holds results"):
        run_single(data_root, checkpoint, tmp_path / "low.wav", tmp_path / "low")
    run_single(data_root, checkpoint, tmp_path / "stereo.wav", tmp_path / "low", "--overwrite")
    assert_single_outputs(tmp_path / "low", 33)


def test_single_audio_pipeline_equals_batch_generation(data_root, checkpoint, tmp_path):
    """Single-audio mode decodes block by block while earlier frames are written: its motion
    and vertex files equal generate_motion's (the batch path) on the same audio."""
    from models.flame import load_flame
    from utils.config import flame_path_for

    sf.write(tmp_path / "a.wav", speechy(1.2), SR)                       # 30 frames exactly
    run_single(data_root, checkpoint, tmp_path / "a.wav", tmp_path / "o")
    motion, _ = assert_single_outputs(tmp_path / "o", 30)
    cfg = load_config(DEMO_CFG, [f"DATA.data_root={data_root}", "INFER.device=cpu"])
    model, _ = load_model(str(checkpoint), cfg, torch.device("cpu"))
    audio = torch.from_numpy(read_speech(str(tmp_path / "a.wav")))
    ref = generate_motion(model, [audio], [0], [30], cfg, torch.device("cpu"))[0]
    np.testing.assert_allclose(motion, ref, atol=1e-6)
    verts = load_flame(flame_path_for(cfg)).motion_to_vertices(ref)
    for i in (0, 17, 29):
        np.testing.assert_allclose(np.load(tmp_path / "o" / "vertices" / f"{i}.npy"), verts[i], atol=1e-6)


def test_single_audio_unknown_style(data_root, checkpoint, tmp_path):
    sf.write(tmp_path / "a.wav", speechy(0.5), SR)
    with pytest.raises(InferenceError, match="--style 'Z999' is not a trained style; trained styles: "
                                               "M003, M005, dh01, mm01"):
        run_single(data_root, checkpoint, tmp_path / "a.wav", tmp_path / "o", "--style", "Z999")
    assert not os.path.exists(tmp_path / "o" / "vertices")


@pytest.mark.parametrize("case", ["corrupt", "empty_bytes", "zero_samples", "short", "missing"])
def test_bad_audio_is_an_error_naming_the_file(data_root, checkpoint, tmp_path, case):
    path = tmp_path / f"{case}.wav"
    expect = {"corrupt": "corrupt or not audio", "empty_bytes": "is empty", "zero_samples": "empty",
              "short": "is 30.0 ms long", "missing": "not found"}[case]
    if case == "corrupt":
        path.write_bytes(b"RIFF\x00\x01garbage" + os.urandom(2000))
    elif case == "empty_bytes":
        path.write_bytes(b"")
    elif case == "zero_samples":
        sf.write(path, np.zeros(0, np.float32), SR)
    elif case == "short":
        sf.write(path, speechy(0.03), SR)  # 480 samples: less than one 40 ms frame
    with pytest.raises(AudioError) as e:
        run_single(data_root, checkpoint, path, tmp_path / "o")
    assert str(path) in str(e.value) and expect in str(e.value)
    assert not os.path.exists(tmp_path / "o" / "vertices")


def test_silent_audio_works_with_a_warning(data_root, checkpoint, tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(16000, np.float32), SR)
    run_single(data_root, checkpoint, tmp_path / "silence.wav", tmp_path / "o")
    assert_single_outputs(tmp_path / "o", 25)
    log = open(tmp_path / "o" / "inference.log").read()
    assert "silence.wav is silent" in log and "WARNING" in log


def test_cli_exit_code_and_message(data_root, checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(SystemExit) as e:
        I.main(["--config", DEMO_CFG, "--audio", str(bad), "--out", str(tmp_path / "o"),
                f"DATA.data_root={data_root}", f"INFER.checkpoint={checkpoint}", "INFER.device=cpu"])
    assert e.value.code == 1
    out = capsys.readouterr()
    assert str(bad) in out.out + out.err and "Traceback" not in out.out + out.err


def test_render_flag_calls_render_sequence(data_root, checkpoint, tmp_path, monkeypatch):
    import main.rendering.video as R
    calls = []
    monkeypatch.setattr(R, "render_sequence", lambda frames, faces, out_mp4, fps, audio=None, **kw:
                        calls.append((frames.shape, faces.shape, out_mp4, fps, audio)))
    sf.write(tmp_path / "a.wav", speechy(0.6), SR)
    run_single(data_root, checkpoint, tmp_path / "a.wav", tmp_path / "o", "--render")
    faces = FLAME.from_file(os.path.join(data_root, "FLAME", "standin_generic_model.pkl")).faces
    assert calls == [((15, 5023, 3), faces.shape, str(tmp_path / "o" / "video.mp4"), 25, str(tmp_path / "a.wav"))]


def test_shell_entry_passes_arguments_through(data_root, checkpoint, tmp_path):
    sf.write(tmp_path / "a.wav", speechy(0.5), SR)
    env = dict(os.environ, CONFIG=DEMO_CFG, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    p = subprocess.run(["bash", os.path.join(REPO, "inference_faceformer.sh"), "--audio", "a.wav", "--out", "o",
                        f"DATA.data_root={data_root}", f"INFER.checkpoint={checkpoint}", "INFER.device=cpu"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert_single_outputs(tmp_path / "o", 13)  # round(0.5 * 25) = 12.5 -> 13
