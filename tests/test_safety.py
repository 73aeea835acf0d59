"""Nothing executed, nothing torn, nothing lost.

- a checkpoint whose pickle would create a file is refused on all four ways in (--checkpoint,
  INFER.checkpoint, TRAIN.save_path/best_model.pth, TRAIN.resume) and the file is never created;
  truncated, mis-shaped and old-format checkpoints get one message naming the file;
- inference killed with SIGKILL mid-way, then rerun with --resume, equals an uninterrupted run; without
  --resume nothing torn passes for complete; SIGTERM exits 143 with the how-to-continue line;
- a full disk (injected ENOSPC) is one named error and leaves no partial folder;
- training: tests/test_train_safety.py.

Data: the demo data (conftest's ``demo_root``) and a tiny random model saved in the training format.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from main import inference as I
from main.results import layout as RT
from main.results.reader import load_frames
from models.checkpoint import convert_old_checkpoint, load_checkpoint, save_checkpoint
from models.loading import load_model
from utils.atomic import TMP_PREFIX
from utils.config import load_config
from utils.errors import CheckpointError, InferenceError, ResultsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(ROOT, "config", "demo.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class CreatesFile:
    """Unpickling this calls open(path, 'w'): what a crafted checkpoint would do with os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def ckpt(demo_root, tmp_path_factory):
    """A tiny demo model (non-zero output map) saved by save_checkpoint in the training format."""
    from dataset.styles import style_classes
    from tests.conftest import tiny_model

    cfg = load_config(DEMO_CFG, [f"DATA.data_root={demo_root}"])
    styles = style_classes(cfg)
    model = tiny_model(cfg.MODEL, len(styles), bias_std=None)
    path = str(tmp_path_factory.mktemp("ckpt") / "best_model.pth")
    save_checkpoint({"model": model.state_dict(), "optimizer": {}, "epoch": 1, "step": 2, "best_val": 0.5,
                     "styles": styles, "config": cfg.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def short_root(tmp_path_factory):
    """Four 0.6-second MEAD_VHAP test samples (stand-in FLAME, vhap npz, speech-like wav): quick inference."""
    from scripts.flame_standin import write_standin_files

    root = tmp_path_factory.mktemp("short")
    write_standin_files(str(root / "FLAME"))
    (root / "clips").mkdir()
    index, rng = {}, np.random.default_rng(0)
    for k in range(4):
        t = np.arange(9600) / 16000
        sf.write(root / "clips" / f"{k}.wav", (0.2 * np.sin(2 * np.pi * (120 + 10 * k) * t)
                                               * (1 - np.cos(2 * np.pi * 4 * t))).astype(np.float32), 16000)
        np.savez(root / "clips" / f"{k}.npz", expr=(0.3 * rng.normal(size=(1, 15, 100))).astype(np.float32),
                 jaw_pose=(0.05 * rng.normal(size=(1, 15, 3))).astype(np.float32),
                 shape=rng.normal(size=300).astype(np.float32))
        index[f"s{k}"] = {"audio_path": f"clips/{k}.wav", "flame_coeff_save_path": f"clips/{k}.npz",
                          "speaker_id": [f"W0{k}", "neutral"]}
    with open(root / "test.json", "w") as f:
        json.dump(index, f)
    return str(root)


def infer_args(data_root, out, *extra):
    only_short = [] if not os.path.exists(os.path.join(data_root, "test.json")) else [
        "DATA.datasets.MEAD_VHAP.test=test.json", "DATA.datasets.MultiModal200.test="]
    return ["--config", DEMO_CFG, f"DATA.data_root={data_root}", "INFER.device=cpu", "INFER.batch_size=1",
            f"INFER.output_root={out}/metrics", f"INFER.coeff_root={out}/coeffs", "INFER.exp_name=e",
            *only_short, *extra]


def crafted(path, marker):
    torch.save({"model": {"w": torch.zeros(1)}, "styles": ["a"], "epoch": 0, "step": 0, "best_val": 1.0,
                "optimizer": {}, "payload": CreatesFile(str(marker))}, str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def test_crafted_checkpoint_is_refused_on_every_path(demo_root, ckpt, tmp_path, capsys):
    from main.train import cli as train_cli

    marker = tmp_path / "created_by_pickle"
    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    evil = crafted(tmp_path / "evil.pth", marker)
    crafted(run_dir / "best_model.pth", marker)
    crafted(run_dir / "last.pth", marker)
    single = ["--audio", str(wav), "--out", str(tmp_path / "o"), f"DATA.data_root={demo_root}", "INFER.device=cpu",
              "--config", DEMO_CFG]
    ways = {
        "--checkpoint": lambda: I.main(["--checkpoint", evil, *single]),
        "INFER.checkpoint": lambda: I.main([f"INFER.checkpoint={evil}", *single]),
        "best_model.pth": lambda: I.main(["INFER.checkpoint=null", f"TRAIN.save_path={run_dir}", *single]),
        "TRAIN.resume": lambda: train_cli(["--config", DEMO_CFG, f"DATA.data_root={demo_root}", "TRAIN.device=cpu",
                                           f"TRAIN.save_path={run_dir}", "TRAIN.resume=true"]),
    }
    for way, run in ways.items():
        with pytest.raises(SystemExit) as e:
            run()
        out = capsys.readouterr()
        text = out.out + out.err
        assert e.value.code == 1, way
        assert "outside the allow-list" in text and "nothing in it was run" in text, (way, text)
        assert (evil if way.endswith("checkpoint") else str(run_dir)) in text, (way, text)
        assert "Traceback" not in text
        assert not marker.exists(), way
    # the file really is dangerous: an unrestricted load would have created the marker
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_truncated_misshapen_and_old_checkpoints(ckpt, tmp_path):
    data = open(ckpt, "rb").read()
    for name, content in (("torn.pth", data[: len(data) // 2]), ("empty.pth", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{tmp_path / name} is truncated or corrupt"):
            load_checkpoint(str(tmp_path / name))

    # weights that do not fit the MODEL section: named parameter and shapes
    good = load_checkpoint(ckpt)
    bad = dict(good, model=dict(good["model"]))
    bad["model"]["output_map.weight"] = torch.zeros(3, 3)
    del bad["model"]["output_map.bias"]
    save_checkpoint(bad, str(tmp_path / "bad.pth"))
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "bad.pth"), load_config(DEMO_CFG), torch.device("cpu"))
    msg = str(e.value)
    assert "missing (1): output_map.bias" in msg and "output_map.weight: checkpoint (3, 3), model (51, 64)" in msg

    # not a checkpoint of ours
    torch.save({"weights": torch.zeros(2)}, str(tmp_path / "other.pth"))
    with pytest.raises(CheckpointError, match="other.pth is not a checkpoint of this project.*'model' and 'styles'"):
        load_checkpoint(str(tmp_path / "other.pth"))

    # the old format (numpy RNG state) -> how to convert; the conversion loads with weights_only=True
    old = dict(good, rng={"python": (3, tuple(range(625)), None), "numpy": np.random.get_state(),
                          "torch": torch.get_rng_state()})
    torch.save(old, str(tmp_path / "old.pth"))
    with pytest.raises(CheckpointError, match=r"old format .* python main/checkpoint.py convert .*old.pth"):
        load_checkpoint(str(tmp_path / "old.pth"))
    convert_old_checkpoint(str(tmp_path / "old.pth"), str(tmp_path / "new.pth"))
    new = load_checkpoint(str(tmp_path / "new.pth"))
    assert "rng" not in new and torch.equal(new["model"]["output_map.weight"], good["model"]["output_map.weight"])
    with pytest.raises(CheckpointError, match="old format"):  # the conversion's allow-list did not outlive it
        load_checkpoint(str(tmp_path / "old.pth"))


def test_checkpoint_write_uses_umask_and_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    old_mask = os.umask(0o022)
    try:
        save_checkpoint({"model": {"w": torch.ones(2)}, "styles": ["a"]}, path)
    finally:
        os.umask(old_mask)
    assert os.stat(path).st_mode & 0o777 == 0o644  # mkstemp alone gives 0600

    def full_disk(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {path}: No space left on device"):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "styles": ["a"]}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))  # the previous one is intact
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left


# ----------------------------------------------------------------------------------------------
# Atomic result folders, --resume, interrupts
# ----------------------------------------------------------------------------------------------

def tree_contents(out) -> dict:
    """{relative path: bytes} of every file under out/metrics and out/coeffs, meta.json without the
    fields that may differ between runs (none today, but the checkpoint path is the same file)."""
    files = {}
    for sub in ("metrics", "coeffs"):
        for folder, _dirs, names in os.walk(os.path.join(out, sub)):
            for n in names:
                p = os.path.join(folder, n)
                files[os.path.relpath(p, out)] = open(p, "rb").read()
    return files


def samples_of(short_root, out):
    cfg = load_config(DEMO_CFG, infer_args(short_root, out)[2:])
    from dataset.index import split_refs
    return [RT.sample_dirs(cfg, r.dataset, r.style_id) for r in split_refs(cfg, "test", problems=[])]


def start_inference(short_root, ckpt, out, *flags):
    return subprocess.Popen([sys.executable, "inference.py", *infer_args(short_root, out), "--checkpoint", ckpt,
                             *flags], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_complete(proc, samples, n, timeout=300):
    """Poll until ``n`` samples are complete; the process must still be running then."""
    t0 = time.time()
    while sum(RT.is_complete(v, c) for v, c in samples) < n:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout
        time.sleep(0.01)


def test_kill_then_resume_equals_an_uninterrupted_run(short_root, ckpt, tmp_path):
    # every run in a subprocess of its own, as a user would run them (same threads, same numbers)
    ref = str(tmp_path / "ref")
    p = start_inference(short_root, ckpt, ref)
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    expected = tree_contents(ref)
    samples = samples_of(short_root, str(tmp_path / "run"))
    assert len(samples) == 4 and len([k for k in expected if k.endswith("meta.json")]) == 4

    run = str(tmp_path / "run")
    proc = start_inference(short_root, ckpt, run)
    wait_for_complete(proc, samples, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = [RT.is_complete(v, c) for v, c in samples]
    assert 1 <= sum(complete) < len(samples)
    got = tree_contents(run)
    for (v, c), done in zip(samples, complete):
        rel = os.path.relpath(c, run)
        if done:  # a complete sample is byte-identical to the uninterrupted run's
            assert all(got[k] == expected[k] for k in expected if k.startswith(rel + os.sep))
        else:     # an unfinished one has no meta.json: nothing passes for complete
            assert os.path.join(rel, "meta.json") not in got

    # without --resume / --overwrite: an error naming the existing results, nothing written
    with pytest.raises(ResultsError, match="already hold results.*--resume"):
        I.cli([*infer_args(short_root, run), "--checkpoint", ckpt])
    assert tree_contents(run) == got

    resumed = start_inference(short_root, ckpt, run, "--resume")
    text, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, text
    assert "--resume: " in text and "complete sample(s) kept" in text
    assert tree_contents(run) == expected  # identical, nothing more (no stale temporary folder)
    for sub in ("metrics", "coeffs"):
        for folder, dirs, _ in os.walk(os.path.join(run, sub)):
            assert not [d for d in dirs if d.startswith(TMP_PREFIX)], folder


def test_sigterm_during_inference_says_how_to_continue(short_root, ckpt, tmp_path):
    out = str(tmp_path / "o")
    samples = samples_of(short_root, out)
    proc = start_inference(short_root, ckpt, out)
    wait_for_complete(proc, samples, 1)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, text
    assert "interrupted (SIGTERM) after" in text and "continue with --resume" in text and "Traceback" not in text
    leftovers = [d for sub in ("metrics", "coeffs") for f, ds, _ in os.walk(os.path.join(out, sub))
                 for d in ds if d.startswith(TMP_PREFIX)]
    assert leftovers == []
    # a crashed run's temporary folder is removed and reported by the next run
    stale = os.path.join(os.path.dirname(samples[-1][0]), f"{TMP_PREFIX}x-999999999")
    os.makedirs(stale)
    np.save(os.path.join(stale, "0.npy"), np.zeros((3, 3), np.float32))
    removed = RT.clean_stale_temps([samples[-1][0]])
    assert removed == [stale] and not os.path.exists(stale)


def test_full_disk_is_a_named_error_and_leaves_no_partial_folder(short_root, ckpt, tmp_path, monkeypatch, capsys):
    real_save = np.save
    calls, room = [], [5]

    def save_until_full(file, arr, *a, **k):
        calls.append(file)
        if len(calls) > room[0]:  # the disk is full after room[0] files
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, arr, *a, **k)
    monkeypatch.setattr(np, "save", save_until_full)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    out = tmp_path / "single"
    with pytest.raises(SystemExit) as e:
        I.main(["--config", DEMO_CFG, "--audio", str(wav), "--out", str(out), "--checkpoint", ckpt,
                f"DATA.data_root={short_root}", "INFER.device=cpu"])
    text = capsys.readouterr()
    text = text.out + text.err
    assert e.value.code == 1 and "Traceback" not in text
    assert f"cannot write {calls[-1]}: No space left on device" in text and "5.npy" in calls[-1]
    assert sorted(os.listdir(out)) == ["inference.log"]  # no vertices/, no .tmp-*, no meta.json

    # evaluation mode: the sample being written disappears, the ones before it stay complete
    calls.clear()
    room[0] = 20
    run = str(tmp_path / "run")
    with pytest.raises(ResultsError, match="No space left on device; the incomplete result was removed"):
        I.cli([*infer_args(short_root, run), "--checkpoint", ckpt])
    samples = samples_of(short_root, run)
    for v, c in samples:
        assert RT.is_complete(v, c) or not (os.path.exists(v) or os.path.exists(c))
    parents = {os.path.dirname(d) for pair in samples for d in pair if os.path.isdir(os.path.dirname(d))}
    assert not [d for p in parents for d in os.listdir(p) if d.startswith(TMP_PREFIX)]


def test_single_audio_resume_and_incomplete_folder(short_root, ckpt, tmp_path):
    """Single-audio mode: a folder without meta.json (killed run) is never taken as complete: an error
    without flags, regenerated by --resume; a complete one is kept by --resume as it is."""
    out = tmp_path / "o"
    args = ["--config", DEMO_CFG, "--audio", os.path.join(short_root, "clips", "0.wav"), "--out", str(out),
            "--checkpoint", ckpt, f"DATA.data_root={short_root}", "INFER.device=cpu"]
    I.cli(args)
    frames = load_frames(str(out / "vertices"))
    meta = json.loads((out / "meta.json").read_text())
    assert frames.shape == (15, 5023, 3) and meta["n_frames"] == 15

    (out / "meta.json").unlink()  # as if killed before the marker was written
    with pytest.raises(InferenceError, match="already holds results.*--resume"):
        I.cli(args)
    I.cli(args + ["--resume"])
    np.testing.assert_array_equal(load_frames(str(out / "vertices")), frames)
    assert json.loads((out / "meta.json").read_text()) == meta

    before = os.stat(out / "vertices" / "0.npy").st_mtime_ns
    assert I.cli(args + ["--resume"])["n_frames"] == 15  # complete: nothing regenerated
    assert os.stat(out / "vertices" / "0.npy").st_mtime_ns == before
    assert sorted(os.listdir(out)) == ["coeffs287.npy", "inference.log", "meta.json", "motion.npy", "vertices"]


def test_up_front_free_space_check(short_root, ckpt, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**5, 10**5))  # 0.1 MB free
    with pytest.raises(ResultsError, match=r"not enough free space for inference results: about [\d.]+ MB needed"):
        I.cli([*infer_args(short_root, str(tmp_path / "o")), "--checkpoint", ckpt])
    assert sorted(os.listdir(tmp_path / "o")) == ["inference.log"]  # checked before anything was generated
