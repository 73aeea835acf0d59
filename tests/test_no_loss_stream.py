"""Streaming has the other modes' write guarantees: a full disk names the path and leaves no torn frame;
--overwrite keeps the old complete result until the new run is complete; Ctrl-C keeps a complete,
resumable result of the frames emitted; a closed --stdout_vertices pipe ends quietly; stdin that is
silence, noise or clipped is warned about. Data and helpers: tests/test_no_loss.py."""
import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import speech
from tests.test_no_loss import ENV, ROOT, cli_args, popen, setup, wait_for_files  # noqa: F401


def stream_args(setup, out, *extra):
    return cli_args(setup, "--audio", setup[2], "--stream", "--out", str(out), *extra)


def snapshot(folder):
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names if n != "inference.log"}


def test_stream_overwrite_keeps_the_old_result_until_the_new_one_is_complete(setup, tmp_path, monkeypatch):
    from main import inference as I
    from main.results import layout as RT
    from utils.errors import UserError

    out = tmp_path / "o"
    I.cli(stream_args(setup, out))
    old = snapshot(out)
    assert RT.is_complete(str(out / "vertices"), str(out)) and "stream_stats.json" in old
    # the new run's own checks fail: nothing of the old result is lost
    for extra, message in [(["--prime_audio", str(tmp_path / "missing.wav")], "audio file not found"),
                           (["--chunk_ms", "nan"], "--chunk_ms"), (["--style", "nobody"], "not a trained style")]:
        with pytest.raises(UserError, match=message):
            I.cli(stream_args(setup, out, "--overwrite", *extra))
        assert snapshot(out) == old, extra
    # the disk fills while streaming: the path is named, no torn frame, the old result is whole
    real_save, calls = np.save, []

    def save_until_full(file, arr, *a, **k):
        calls.append(getattr(file, "name", file))
        if len(calls) > 12:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, arr, *a, **k)
    monkeypatch.setattr(np, "save", save_until_full)
    with pytest.raises(UserError, match=r"cannot write .*\.tmp-vertices-\d+/12\.npy: No space left on device"):
        I.cli(stream_args(setup, out, "--overwrite"))
    monkeypatch.undo()
    assert snapshot(out) == old
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    # a symlinked vertices/ is replaced by the new folder; what it pointed to is left alone
    target = tmp_path / "elsewhere"
    os.rename(out / "vertices", target)
    os.symlink(target, out / "vertices")
    I.cli(stream_args(setup, out, "--overwrite", "--lookahead_ms", "100"))
    assert not os.path.islink(out / "vertices") and RT.is_complete(str(out / "vertices"), str(out))
    assert sorted(os.listdir(target)) == sorted(os.listdir(out / "vertices"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopped_stream_keeps_a_complete_result_of_the_frames_emitted(setup, tmp_path, sig, code):
    from main.results import layout as RT

    out = tmp_path / "o"
    proc = popen(cli_args(setup, "--audio", setup[3], "--stream", "--out", str(out)))
    wait_for_files(str(out), ".tmp-vertices-", 31, proc)  # the last file seen may be one still being written
    proc.send_signal(sig)
    text = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == code, text[-3000:]
    assert "Traceback" not in text and f"stream stopped by {signal.Signals(sig).name} after" in text
    assert "holds them as a complete result" in text and "--overwrite" in text
    meta = json.loads((out / "meta.json").read_text())
    stats = json.loads((out / "stream_stats.json").read_text())
    n = meta["n_frames"]
    assert 30 <= n < 5000 and RT.is_complete(str(out / "vertices"), str(out))
    assert np.load(out / "motion.npy").shape == (n, 51) and np.load(out / "coeffs287.npy").shape == (n, 287)
    assert stats["frames"] == n and stats["stopped_by"] == signal.Signals(sig).name
    assert not [x for x in os.listdir(out) if x.startswith(".tmp")]


def test_closed_stdout_vertices_pipe_ends_the_stream_quietly(setup, tmp_path):
    import threading

    from main.results import layout as RT

    out = tmp_path / "o"
    pcm = (sf.read(setup[3], dtype="float32")[0][:16000 * 60] * 32767).astype("<i2").tobytes()
    proc = subprocess.Popen([sys.executable, "inference.py", *cli_args(setup, "--audio", "-", "--stdout_vertices",
                                                                       "--out", str(out))],
                            cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def feed():
        try:
            proc.stdin.write(pcm)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    threading.Thread(target=feed, daemon=True).start()
    frame_bytes = 5023 * 3 * 4
    got = proc.stdout.read(10 * frame_bytes)  # the reader takes ten frames, then goes away
    proc.stdout.close()
    err = proc.stderr.read().decode(errors="replace")
    proc.wait(timeout=120)
    assert len(got) == 10 * frame_bytes
    assert proc.returncode in (0, 141), err[-3000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err and "closed the pipe" in err
    assert RT.is_complete(str(out / "vertices"), str(out)) and json.loads((out / "meta.json").read_text())["n_frames"] >= 10


@pytest.mark.parametrize("kind, warning", [("silence", "stdin audio is silent"),
                                           ("noise", "stdin audio sounds like noise"),
                                           ("clipped", "stdin audio is heavily clipped")])
def test_stdin_that_is_silence_noise_or_clipped_is_warned_about(setup, tmp_path, monkeypatch, kind, warning):
    import io

    from main import inference as I

    rng = np.random.default_rng(0)
    x = {"silence": np.zeros(32000), "noise": rng.normal(0, 0.2, 32000),
         "clipped": np.clip(20 * speech(50), -1, 1)}[kind]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())))
    out = tmp_path / "o"
    I.cli(cli_args(setup, "--audio", "-", "--out", str(out)))
    log = (out / "inference.log").read_text()
    assert warning in log and "WARNING" in log
    others = {"silence", "noise", "clipped"} - {kind}
    assert not any(w in log for k, w in [("silence", "is silent"), ("noise", "like noise"),
                                         ("clipped", "heavily clipped")] if k in others)
