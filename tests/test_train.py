"""Training: the demo config end to end, exact resume, and a 2-process DDP run through torchrun."""
import os
import signal
import socket
import subprocess
import sys
import time

import torch

from main.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# small and quick: 2 optimizer steps per epoch on 50-frame crops
FAST = ["TRAIN.batch_size=2", "TRAIN.max_steps_per_epoch=2", "DATA.max_frames=50", "TRAIN.device=cpu"]


def _args(demo_root, run_dir, *extra):
    return ["--config", os.path.join(ROOT, "config", "demo.yaml"), f"DATA.data_root={demo_root}",
            f"TRAIN.save_path={run_dir}", *FAST, *extra]


def test_demo_config_one_epoch_writes_run_folder(demo_root, tmp_path):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "train.py", *_args(demo_root, run, "TRAIN.epochs=1")], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("best_model.pth", "last.pth", "train.log", "config.yaml"):
        assert (run / name).is_file(), name
    events = [f for f in os.listdir(run / "tensorboard") if f.startswith("events.")]
    assert events and os.path.getsize(run / "tensorboard" / events[0]) > 0
    ckpt = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "epoch", "styles", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 1
    log = (run / "train.log").read_text()
    assert "epoch 1/1 train loss" in log and "generated" in log
    # the resolved config holds the overrides
    assert f"data_root: {demo_root}" in (run / "config.yaml").read_text()
    # starting afresh over an existing run is refused
    again = subprocess.run([sys.executable, "train.py", *_args(demo_root, run, "TRAIN.epochs=1")], cwd=ROOT,
                           capture_output=True, text=True)
    assert again.returncode != 0 and "TRAIN.resume=true" in (again.stdout + again.stderr)
    # ... and TRAIN.overwrite=true starts over: no log lines or events left from the first run
    # (this run also trains on the model's own rollout, the original recipe)
    train_main(_args(demo_root, run, "TRAIN.epochs=1", "TRAIN.overwrite=true", "TRAIN.teacher_forcing=false"))
    assert (run / "train.log").read_text().count("epoch 1/1 train loss") == 1
    assert len(os.listdir(run / "tensorboard")) == 1


def test_resume_matches_uninterrupted_run(demo_root, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    train_main(_args(demo_root, full, "TRAIN.epochs=3"))
    train_main(_args(demo_root, parts, "TRAIN.epochs=1"))
    train_main(_args(demo_root, parts, "TRAIN.epochs=3", "TRAIN.resume=true"))
    a = torch.load(full / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(parts / "last.pth", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # and training did change the weights: the output map starts at zero
    assert a["model"]["output_map.weight"].abs().sum() > 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _torchrun_cmd(demo_root, run, *extra, launcher=()):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), *launcher, "train.py", *_args(demo_root, run, *extra)]


def _torchrun(demo_root, run, *extra):
    res = subprocess.run(_torchrun_cmd(demo_root, run, *extra), cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=TORCHRUN_ENV)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_torchrun_two_processes_gloo_resume_is_exact(demo_root, tmp_path):
    # 3 epochs in one go == 2 epochs + resume for 1, bitwise, on 2 gloo processes. Each rank draws its
    # own crops and dropout masks; before per-epoch reseeding, rank 1's RNG was not restored on resume.
    full, parts = tmp_path / "full", tmp_path / "parts"
    _torchrun(demo_root, full, "TRAIN.epochs=3")
    log = (full / "train.log").read_text()
    assert "parameter checksums on 2 ranks" in log and "identical" in log
    _torchrun(demo_root, parts, "TRAIN.epochs=2")
    _torchrun(demo_root, parts, "TRAIN.epochs=3", "TRAIN.resume=true")
    a = torch.load(full / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(parts / "last.pth", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["model"]["output_map.weight"].abs().sum() > 0


def _pid_of_rank(rank: int, marker: str):
    """pid of the torchrun worker with RANK=rank whose command line holds marker, else None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"RANK={rank}".encode() in f.read().split(b"\0"):
                    return int(pid)
        except OSError:
            continue
    return None


def test_torchrun_rank_death_ends_in_a_resume_hint_not_a_gloo_traceback(demo_root, tmp_path):
    run = tmp_path / "run"
    # the launcher looks at its workers every 20 s only, so the survivor meets the closed connection
    # before torchrun would stop it with SIGTERM (whose own line also says how to resume)
    cmd = _torchrun_cmd(demo_root, run, "TRAIN.epochs=1000", launcher=("--monitor-interval", "20"))
    proc = subprocess.Popen(cmd, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=TORCHRUN_ENV)
    try:
        deadline = time.time() + 300
        while not ((run / "last.pth").exists() and "epoch 2/" in _read(run / "train.log")):
            assert proc.poll() is None and time.time() < deadline, "training did not get to epoch 2"
            time.sleep(0.2)
        victim = _pid_of_rank(1, str(run))
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    survivor = [line for line in out.splitlines() if line.startswith("[rank0]")]
    assert not any("Traceback" in line for line in survivor), out[-3000:]
    assert "rank 0 of 2: another process of this job stopped, or cannot be reached" in out, out[-3000:]
    assert "TRAIN.resume=true" in _read(run / "train.log")
    assert torch.load(run / "last.pth", map_location="cpu", weights_only=True)["epoch"] >= 1


def _read(path) -> str:
    return path.read_text() if path.exists() else ""
