"""Training loses nothing: SIGTERM keeps last.pth and says how to resume; the checkpoints' disk space and
the log file are checked before the first epoch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from models.checkpoint import load_checkpoint
from utils.errors import ResultsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(ROOT, "config", "demo.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_sigterm_during_training_keeps_last_pth_and_says_how_to_resume(demo_root, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", "--config", DEMO_CFG, f"DATA.data_root={demo_root}",
                             f"TRAIN.save_path={run}", "TRAIN.device=cpu", "TRAIN.epochs=1000", "TRAIN.batch_size=2",
                             "TRAIN.max_steps_per_epoch=1", "TRAIN.val_every=1000", "DATA.max_frames=20"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (run / "last.pth").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, text
    line = [x for x in text.splitlines() if "interrupted (SIGTERM) at epoch" in x]
    assert line and f"saved in {run / 'last.pth'}; continue with TRAIN.resume=true" in line[0], text
    ckpt = load_checkpoint(str(run / "last.pth"))
    assert ckpt["epoch"] >= 1 and f"last complete epoch ({ckpt['epoch']})" in line[0]
    assert not [f for f in os.listdir(run) if f.startswith(".tmp")]
    assert "Traceback" not in text
    json.dumps(ckpt["config"])  # plain data


def test_training_checks_checkpoint_space_and_log_file(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from main.train import check_checkpoint_space
    from utils.runtime import setup_logger

    model = torch.nn.Linear(1000, 100)  # 400400 bytes of weights; 3 x (weights + 2 Adam moments) = 3.44 MiB
    check_checkpoint_space(model, str(tmp_path / "run"))  # plenty of room here
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(ResultsError, match=r"not enough free space for training checkpoints: about 3\.4 MB needed"):
        check_checkpoint_space(model, str(tmp_path / "run"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ResultsError, match=f"cannot write the log file {tmp_path / 'file' / 'train.log'}"):
        setup_logger("t", str(tmp_path / "file" / "train.log"))
