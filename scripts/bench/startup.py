"""Section startup: command-line start-up cost. Fresh interpreters, run in turn
``repeat`` times so load from other jobs hits every command alike; medians of wall seconds:

- a bare ``import torch`` (the floor every run pays);
- ``import torch`` + wav2vec2 from transformers, the top-level lazy module and the submodules;
- importing the inference entry (main/inference.py; transformers is imported later, by the model);
- a 2 s clip end to end: ``python inference.py --audio X.wav`` with the demo config and a tiny
  checkpoint (wav read -> model built and loaded -> frames generated -> all files written), twice:
  the checkpoint as train.py writes it now (with ``audio_encoder_config``: the transformers-free
  wav2vec2 of models/wav2vec2_runtime.py, transformers never imported) and the same checkpoint
  without that key, as written before it existed (wav2vec2 built by transformers).

``x_import_torch``: each command's time over the same round's ``import torch``, median over rounds.
``--encoder base`` (scripts/benchmark.py) gives the clip's model the full wav2vec2-base encoder
instead of the demo's tiny one (the checkpoint is then ~380 MB: loading it is part of the clip).

``--startup_pythonpath DIR`` repeats the transformers and end-to-end rows with DIR first on
PYTHONPATH (e.g. ``pip install --target DIR 'transformers<5' --no-deps`` to price 4.x vs 5.x).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import soundfile as sf
import torch

from scripts.bench.common import ROOT, SR, speech_like

TOP_LEVEL = "import torch; from transformers import Wav2Vec2Config, Wav2Vec2Model"
SUBMODULES = ("import torch; from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Model; "
              "from transformers.models.wav2vec2.configuration_wav2vec2 import Wav2Vec2Config")


def demo_run_files(tmp: str, encoder: str = "tiny") -> tuple[str, dict, list[str]]:
    """A 2 s wav, demo-config checkpoints of one model (random weights; the demo's tiny wav2vec2, or
    with ``encoder="base"`` the full wav2vec2-base architecture) with and without the saved encoder
    config ({"runtime": path, "transformers": path}) and the run's overrides."""
    from models.checkpoint import plain_values
    from models.faceformer import FaceFormer
    from scripts.flame_standin import write_standin_files
    from utils.config import load_config

    root = os.path.join(tmp, "startup")
    write_standin_files(os.path.join(root, "FLAME"))
    overrides = [f"DATA.data_root={root}"]
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"), overrides)
    if encoder == "base":
        cfg.MODEL.audio_encoder_config = None  # Wav2Vec2Config() = the wav2vec2-base architecture
    torch.manual_seed(0)
    model = FaceFormer(cfg.MODEL, n_styles=2)
    state = {"model": model.state_dict(), "optimizer": {}, "epoch": 0, "styles": ["S0", "S1"],
             "config": cfg.to_dict()}
    ckpts = {"transformers": os.path.join(root, "demo_old.pth"), "runtime": os.path.join(root, "demo.pth")}
    torch.save(state, ckpts["transformers"])
    state["audio_encoder_config"] = plain_values(model.audio_encoder.model.config.to_dict())
    torch.save(state, ckpts["runtime"])
    wav = os.path.join(root, "clip_2s.wav")
    sf.write(wav, speech_like(2.0), SR)
    return wav, ckpts, overrides


def _wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{res.stderr[-3000:]}")
    return wall


def imports_transformers(cmd: list[str], env: dict) -> bool:
    """Whether the python command ``cmd`` (``[python, flags..., script, args...]``) imports transformers."""
    i = next(i for i, a in enumerate(cmd) if a.endswith(".py"))
    probe = ("import runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, '.')\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "finally:\n    print('transformers' in sys.modules)")
    res = subprocess.run([*cmd[:i], "-c", probe, *cmd[i:]], cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1] == "True"


def bench_startup(tmp: str, repeat: int = 3, pythonpath: str | None = None, encoder: str = "tiny") -> dict:
    wav, ckpts, overrides = demo_run_files(tmp, encoder)
    envs = {"venv": {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    if pythonpath:
        envs["alt"] = {**envs["venv"], "PYTHONPATH": os.pathsep.join(
            p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)}
    py = [sys.executable, "-W", "ignore"]
    clip = {k: [*py, "inference.py", "--config", "config/demo.yaml", "--audio", wav, "--style", "S0", "--checkpoint",
                ckpt, "--out", os.path.join(tmp, "startup", f"out_{k}"), "--overwrite", *overrides]
            for k, ckpt in ckpts.items()}
    runs = [("import torch", [*py, "-c", "import torch"], "venv"),
            ("import torch + transformers (top level)", [*py, "-c", TOP_LEVEL], "venv"),
            ("import torch + transformers (submodules)", [*py, "-c", SUBMODULES], "venv"),
            ("import main.inference", [*py, "-c", "import main.inference"], "venv"),
            ("2 s clip end to end, checkpoint with audio_encoder_config (runtime wav2vec2)", clip["runtime"], "venv"),
            ("2 s clip end to end, checkpoint without it (transformers wav2vec2)", clip["transformers"], "venv")]
    if pythonpath:
        runs += [(name, cmd, "alt") for name, cmd, _ in runs[1:3] + runs[5:]]
    version = {k: subprocess.run([*py, "-c", "import transformers; print(transformers.__version__)"], env=e,
                                 capture_output=True, text=True).stdout.strip() for k, e in envs.items()}
    # which runs import transformers at all ("-" in the table for those that do not)
    uses = ["transformers" in cmd[cmd.index("-c") + 1] if "-c" in cmd else imports_transformers(cmd, envs[k])
            for _, cmd, k in runs]
    times = [[] for _ in runs]
    for _ in range(repeat):
        for t, (_, cmd, k) in zip(times, runs):
            t.append(_wall(cmd, envs[k]))
    # the ratio is taken within each round (the commands of a round ran back to back, under the same
    # load), then the median over rounds
    rows = [{"command": name, "transformers": version[k] if used else "-", "median_s": statistics.median(t),
             "min_s": min(t), "x_import_torch": statistics.median(x / t0 for x, t0 in zip(t, times[0])),
             "all_s": [round(x, 3) for x in t]}
            for (name, _, k), t, used in zip(runs, times, uses)]
    return {"repeat": repeat, "encoder": encoder, "rows": rows, "target_clip_over_torch": 2.0}
