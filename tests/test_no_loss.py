"""Nothing lost, no traceback, no hang: interrupts, full disks, hostile values and names in every mode.

- single-audio mode: SIGINT / SIGTERM / a full disk while frames are decoded and written end with the
  one-line message and exit 130 / 143 / 1 (not SIGABRT from a thread left inside torch);
- streaming: tests/test_no_loss_stream.py;
- values: every streaming flag is range-checked with the key named (config values and YAML bombs:
  tests/test_config.py; property-based: tests/test_hostile_values.py);
- names: style ids that cannot be folder names are refused by the data check;
- resume: a corrupt meta.json or a torn frame is incomplete, not an obstacle; a second run on a
  locked output root fails at once naming the first;
- side doors: checkpoint convert on the wrong file, a full disk in training.

Data: the stand-in FLAME model, a tiny random model and generated audio (no demo data needed).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from main.results.lock import LOCK_FILE, output_lock
from main.results.reader import load_frames
from models.loading import FACEFORMER_MODULES
from tests.conftest import speech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(ROOT, "config", "demo.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data root with the stand-in FLAME files, tiny checkpoint, 2 s wav, 200 s wav)."""
    from tests.conftest import standin_setup

    root, ckpt, _ = standin_setup(tmp_path_factory, "noloss")
    short, long_ = os.path.join(root, "short.wav"), os.path.join(root, "long.wav")
    sf.write(short, speech(50), 16000)
    sf.write(long_, speech(5000, seed=1), 16000)
    return root, ckpt, short, long_


def cli_args(setup, *args):
    root, ckpt = setup[:2]
    return ["--config", DEMO_CFG, "--checkpoint", ckpt, *args, f"DATA.data_root={root}", "INFER.device=cpu"]


def popen(args, **kw):
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **kw}
    return subprocess.Popen([sys.executable, "inference.py", *args], cwd=ROOT, env=ENV, **kw)


def wait_for_files(folder_glob_parent, prefix, n, proc, timeout=120):
    """Poll until a folder under ``folder_glob_parent`` whose name starts with ``prefix`` holds n files."""
    t0 = time.time()
    while True:
        assert proc.poll() is None, proc.communicate()
        if os.path.isdir(folder_glob_parent):
            for d in os.listdir(folder_glob_parent):
                p = os.path.join(folder_glob_parent, d)
                if d.startswith(prefix) and os.path.isdir(p) and len(os.listdir(p)) >= n:
                    return p
        assert time.time() - t0 < timeout, "no frames appeared"
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------------
# Single-audio mode: interrupts and write failures while frames are decoded and written
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_single_audio_interrupt_exits_cleanly_not_sigabrt(setup, tmp_path, sig, code):
    out = tmp_path / "o"
    proc = popen(cli_args(setup, "--audio", setup[3], "--out", str(out)))
    wait_for_files(str(out), ".tmp-vertices-", 20, proc)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == code, err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err
    assert f"interrupted ({signal.Signals(sig).name}) before {out} was complete" in err and "--resume" in err
    assert sorted(os.listdir(out)) == ["inference.log"]  # nothing partial left behind


def test_single_audio_full_disk_in_a_process_exits_1_not_sigabrt(setup, tmp_path):
    out = tmp_path / "o"
    # the disk fills after 30 frame files, while the decoder is still running
    code = ("import errno, os, sys, numpy as np\n"
            "real, n = np.save, [0]\n"
            "def save(f, a, *x, **k):\n"
            "    n[0] += 1\n"
            "    if n[0] > 30: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "    return real(f, a, *x, **k)\n"
            "np.save = save\n"
            "sys.argv = ['inference.py'] + sys.argv[1:]\n"
            "from main.inference import main\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code, *cli_args(setup, "--audio", setup[3], "--out", str(out))],
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    err = proc.stdout.decode(errors="replace")
    assert proc.returncode == 1, err[-2000:]
    assert "No space left on device" in err and "terminate called" not in err and "Traceback" not in err
    assert sorted(os.listdir(out)) == ["inference.log"]


@pytest.mark.parametrize("fail_in", ["decoding", "writing"])
def test_write_frames_joins_its_worker_on_every_way_out(tmp_path, fail_in):
    """An interrupt while a block is decoded, or a write that fails in the worker, ends write_frames
    with the worker thread joined (a thread left inside torch at exit would abort the process) and the
    uncommitted result removed."""
    import threading

    from main.infer.decode import write_frames
    from main.results.writer import FrameWriter
    from models.flame import FLAME
    from scripts.flame_standin import make_standin_flame

    flame = FLAME(make_standin_flame())

    def blocks():
        for k in range(100):
            if fail_in == "decoding" and k == 3:
                raise KeyboardInterrupt
            if fail_in == "writing" and k == 3:
                os.rename(writer.tmp, str(tmp_path / "gone"))  # the next frame file cannot be created
            yield np.zeros((5, 51), np.float32)
    with pytest.raises(KeyboardInterrupt if fail_in == "decoding" else Exception) as err:
        with FrameWriter(str(tmp_path / "v"), str(tmp_path)) as writer:
            write_frames(writer, flame, blocks())
    assert fail_in == "decoding" or "cannot write" in str(err.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("write")]
    assert not os.path.exists(writer.tmp) and not os.path.exists(tmp_path / "v")


def test_full_disk_while_coefficients_are_written_leaves_no_folder_of_a_new_sample(tmp_path, monkeypatch):
    import errno

    from main.results.writer import FrameWriter
    from utils.errors import ResultsError

    real_save = np.save

    def save(file, arr, *a, **k):  # frames are saved by path, coefficient files through a file object
        if not isinstance(file, str):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, arr, *a, **k)
    monkeypatch.setattr(np, "save", save)
    with pytest.raises(ResultsError, match="No space left on device"):
        with FrameWriter(str(tmp_path / "v" / "A"), str(tmp_path / "c" / "A")) as writer:
            writer.add(np.zeros((4, 3)))
            writer.commit({"motion": np.zeros((1, 51))}, {"n_frames": 1})
    assert os.listdir(tmp_path / "v") == [] and os.listdir(tmp_path / "c") == []


# ----------------------------------------------------------------------------------------------
# Values no one checked
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, message", [
    ("--chunk_ms", "inf", r"--chunk_ms \(INFER.stream_chunk_ms\) is inf; expected a number in \[10, 60000\]"),
    ("--chunk_ms", "1e12", r"--chunk_ms \(INFER.stream_chunk_ms\) is 1000000000000.0"),
    ("--left_context_ms", "nan", r"--left_context_ms \(INFER.stream_left_context_ms\) is nan"),
    ("--lookahead_ms", "-1", r"--lookahead_ms \(INFER.stream_lookahead_ms\) is -1"),
    ("--warmup_ms=-inf", None, r"--warmup_ms \(INFER.stream_warmup_ms\) is -inf"),
])
def test_stream_flags_are_range_checked_before_anything_is_written(setup, tmp_path, flag, value, message):
    from main import inference as I
    from utils.errors import UserError

    out = tmp_path / "o"
    with pytest.raises(UserError, match=message):
        I.cli(cli_args(setup, "--audio", setup[2], "--stream", flag, *[value] * (value is not None), "--out", str(out)))
    assert not (out / "vertices").exists()


def test_stdin_is_read_in_bounded_pieces():
    from main.infer.speech import _read_upto

    class Pipe:
        def __init__(self):
            self.asked, self.left = [], 300_000

        def read(self, n):
            self.asked.append(n)
            k = min(n, self.left)
            self.left -= k
            return b"\0" * k
    pipe = Pipe()
    assert len(_read_upto(pipe, 10**12)) == 300_000  # a huge chunk asks for what arrives, piece by piece
    assert max(pipe.asked) <= 1 << 16


# ----------------------------------------------------------------------------------------------
# Names that pass the data check and fail mid-run
# ----------------------------------------------------------------------------------------------

BAD_STYLE_IDS = {"nul": ("a\0b", "NUL byte"), "slash": ("a/b", "'/'"), "long": ("x" * 300, "300 bytes long"),
                 "surrogate": ("a\ud800", "not valid Unicode"), "newline": ("a\nb", "control character"),
                 "tmp": (".tmp-x", "temporary folders")}


@pytest.fixture
def bad_name_root(setup, tmp_path):
    """A test split of one good sample and one per unusable style_id (stand-in FLAME files)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(os.path.join(setup[0], "FLAME"), root / "FLAME")
    rng, index = np.random.default_rng(0), {}
    for sid in ["good", *BAD_STYLE_IDS]:
        sf.write(root / f"{sid}.wav", speech(15, seed=len(index)), 16000)
        np.savez(root / f"{sid}.npz", expr=(0.3 * rng.normal(size=(1, 15, 100))).astype(np.float32),
                 jaw_pose=(0.05 * rng.normal(size=(1, 15, 3))).astype(np.float32))
        index[sid] = {"audio_path": f"{sid}.wav", "flame_coeff_save_path": f"{sid}.npz", "speaker_id": "S",
                      "style_id": BAD_STYLE_IDS.get(sid, ("good_style",))[0]}
    (root / "test.json").write_text(json.dumps(index))  # ensure_ascii: NUL and the surrogate as \u escapes
    return str(root)


def name_overrides(root):
    return [f"DATA.data_root={root}", "DATA.datasets.MEAD_VHAP.test=test.json", "DATA.datasets.MEAD_VHAP.train=",
            "DATA.datasets.MEAD_VHAP.val=", "DATA.datasets.MultiModal200.test=", "DATA.datasets.MultiModal200.train=",
            "DATA.datasets.MultiModal200.val=", "DATA.datasets.digital_human.train=",
            "FLAME.model_path=FLAME/standin_generic_model.pkl", "FLAME.masks_path=FLAME/standin_FLAME_masks.pkl"]


def test_style_ids_that_cannot_be_folder_names_fail_the_data_check(bad_name_root):
    r = subprocess.run([sys.executable, "-m", "main.check_data", "--quiet", "--config", DEMO_CFG,
                        *name_overrides(bad_name_root)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in text, text
    json_path = os.path.join(bad_name_root, "test.json")
    for sid, (_, why) in BAD_STYLE_IDS.items():
        line = next((ln for ln in text.splitlines() if f"sample '{sid}'" in ln), "")
        assert json_path in line and "style_id is" in line and why in line, (sid, text)
    assert "sample 'good'" not in text


def test_inference_refuses_unusable_style_ids_before_writing(setup, bad_name_root, tmp_path):
    from main import inference as I
    from utils.errors import DataError

    out = tmp_path / "out"
    args = ["--config", DEMO_CFG, "--checkpoint", setup[1], *name_overrides(bad_name_root), "INFER.device=cpu",
            f"INFER.output_root={out}/metrics", f"INFER.coeff_root={out}/coeffs", "INFER.exp_name=e"]
    with pytest.raises(DataError, match="style_id is .*NUL byte"):
        I.cli(args)
    assert not os.path.exists(out / "metrics") and not os.path.exists(out / "coeffs")
    rows = I.cli(args + ["DATA.bad_samples=skip"])  # the good sample alone
    assert rows[0]["samples"] == 1 and os.listdir(out / "metrics" / "e" / "MEAD_VHAP") == ["good_style"]


# ----------------------------------------------------------------------------------------------
# Resume: what counts as complete, and one writer per output folder
# ----------------------------------------------------------------------------------------------

def test_corrupt_meta_json_neither_blocks_overwrite_nor_passes_for_complete(setup, tmp_path):
    from main import inference as I
    from main.results import layout as RT

    out = tmp_path / "o"
    args = cli_args(setup, "--audio", setup[2], "--out", str(out))
    I.cli(args)
    good = (out / "meta.json").read_text()
    (out / "meta.json").write_text('{"n_frames": 5')  # torn: a copy cut short, a disk error
    assert not RT.is_complete(str(out / "vertices"), str(out))
    assert I.cli(args + ["--resume"])["n_frames"] == 50  # redone, not an error
    assert (out / "meta.json").read_text() == good
    (out / "meta.json").write_text("[]")
    assert I.cli(args + ["--overwrite"])["n_frames"] == 50
    assert (out / "meta.json").read_text() == good


@pytest.mark.parametrize("damage", ["empty", "torn", "header"])
def test_torn_or_empty_frame_is_not_complete(setup, tmp_path, damage):
    from main import inference as I
    from main.results import layout as RT

    out = tmp_path / "o"
    args = cli_args(setup, "--audio", setup[2], "--out", str(out))
    I.cli(args)
    ref = load_frames(str(out / "vertices"))
    frame = out / "vertices" / ("0.npy" if damage == "header" else "17.npy")
    data = frame.read_bytes()
    frame.write_bytes({"empty": b"", "torn": data[:len(data) // 2], "header": data[:40]}[damage])
    assert not RT.is_complete(str(out / "vertices"), str(out))  # the frame count is still right
    I.cli(args + ["--resume"])
    np.testing.assert_array_equal(load_frames(str(out / "vertices")), ref)
    assert RT.is_complete(str(out / "vertices"), str(out))


def test_a_second_run_on_a_locked_output_fails_at_once_naming_the_first(setup, tmp_path):
    from main import inference as I
    from main.results import layout as RT
    from utils.errors import ResultsError

    out = tmp_path / "o"
    args = cli_args(setup, "--audio", setup[2], "--out", str(out))
    with output_lock([str(out)]):  # as a running inference holds it
        with pytest.raises(ResultsError, match=rf"another inference run \(pid {os.getpid()}\) is writing {out}"):
            I.cli(args)
    assert sorted(os.listdir(out)) == ["inference.log"]  # the lock file went with its holder
    I.cli(args)  # free again

    # across processes: a run holding the lock (here a stand-in that holds it and waits) blocks the next
    # at once, named by its pid; killed with SIGKILL, it leaves a lock file that blocks nothing
    held = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom main.results.lock import output_lock\n"
                               "with output_lock([sys.argv[1]]):\n    print('locked', flush=True)\n"
                               "    time.sleep(300)\n", str(held)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    t0 = time.time()
    second = subprocess.run([sys.executable, "inference.py", *cli_args(setup, "--audio", setup[2], "--out", str(held))],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and time.time() - t0 < 60
    assert f"another inference run (pid {holder.pid}) is writing {held}" in second.stdout + second.stderr
    holder.kill()
    holder.wait()
    assert LOCK_FILE in os.listdir(held)
    I.cli(cli_args(setup, "--audio", setup[2], "--out", str(held)))
    assert RT.is_complete(str(held / "vertices"), str(held)) and LOCK_FILE not in os.listdir(held)


def test_evaluation_mode_locks_its_trees_and_a_killed_runs_lock_file_is_cleaned(setup, bad_name_root, tmp_path):
    from main import inference as I
    from utils.errors import ResultsError

    out = tmp_path / "out"
    args = ["--config", DEMO_CFG, "--checkpoint", setup[1], *name_overrides(bad_name_root), "INFER.device=cpu",
            f"INFER.output_root={out}/metrics", f"INFER.coeff_root={out}/coeffs", "INFER.exp_name=e",
            "DATA.bad_samples=skip"]
    with output_lock([str(out / "coeffs" / "e")]):
        with pytest.raises(ResultsError, match=rf"another inference run \(pid {os.getpid()}\) is writing "
                                               rf"{out}/coeffs/e .*INFER.exp_name"):
            I.cli(args)
    assert sorted(os.listdir(out)) == ["inference.log"]  # the folders made for the locks went again
    (out / "metrics" / "e").mkdir(parents=True)
    (out / "metrics" / "e" / LOCK_FILE).touch()  # left by a run killed with SIGKILL: not locked
    I.cli(args)
    assert LOCK_FILE not in os.listdir(out / "metrics" / "e") and LOCK_FILE not in os.listdir(out / "coeffs" / "e")


# ----------------------------------------------------------------------------------------------
# Side doors: checkpoint conversion, training on a full disk
# ----------------------------------------------------------------------------------------------

def test_checkpoint_convert_refuses_what_is_not_a_checkpoint_without_writing(tmp_path):
    import torch

    (tmp_path / "text.pth").write_text("hello, this is not a checkpoint\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    whole = (tmp_path / "tensor.pth").read_bytes()
    (tmp_path / "torn.pth").write_bytes(whole[:len(whole) // 2])
    torch.save({"weights": torch.zeros(2), "rng": 1}, tmp_path / "foreign.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "styles": ["a"]}, tmp_path / "alien.pth")  # not a FaceFormer
    torch.save({"model": {f"{m}.weight": torch.zeros(2) for m in FACEFORMER_MODULES}, "styles": ["a"]},
               tmp_path / "unfit.pth")  # a FaceFormer's modules, other shapes
    expect = {"text": "not a torch file: it starts with b'hello, t'", "empty": "the file is empty",
              "tensor": "it holds a Tensor, expected a dict", "torn": "truncated or corrupt",
              "foreign": "not a checkpoint of this project: expected keys 'model' and 'styles'",
              "alien": "is not a FaceFormer checkpoint: its weights lack the modules audio_encoder",
              "unfit": "weights do not fit the model", "missing": "checkpoint not found"}
    for name, needle in expect.items():
        src, dst = tmp_path / f"{name}.pth", tmp_path / f"out_{name}.pth"
        r = subprocess.run([sys.executable, "main/checkpoint.py", "convert", str(src), str(dst), "--config", DEMO_CFG],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        text = r.stdout + r.stderr
        assert r.returncode == 1 and "Traceback" not in text and needle in text, (name, text)
        assert len(text.strip().splitlines()) == 1 and str(src) in text, text
        assert not dst.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")], name


def test_full_disk_during_training_is_one_clean_message(demo_root, tmp_path):
    code = ("import errno, os, sys, torch\n"
            "import tensorboardX.record_writer as rw\n"
            "def full(*a, **k): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "rw.RecordWriter.write = rw.RecordWriter.flush = full\n"
            "torch.save = full\n"
            "sys.argv = ['train.py'] + sys.argv[1:]\n"
            "from main.train import cli\n"
            "cli()\n")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", code, "--config", DEMO_CFG, f"DATA.data_root={demo_root}",
                        f"TRAIN.save_path={run}", "TRAIN.batch_size=2", "TRAIN.max_steps_per_epoch=1",
                        "DATA.max_frames=20", "TRAIN.device=cpu", "TRAIN.epochs=1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    text = r.stdout + r.stderr
    assert r.returncode == 1, text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text and "Exception in thread" not in text, text
    assert f"cannot write checkpoint {run}" in text and "No space left on device" in text
    assert text.count("tensorboard events in") == 1  # one warning, then training went on

