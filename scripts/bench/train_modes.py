"""Section train_modes: every TRAIN.mode trained on the demo data, same seed and epochs (issue 10)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from loss.loss import motion_vertex_loss
from models.faceformer import FaceFormer
from models.flame import FLAME
from scripts.bench.common import FPS, ROOT, speech_like, sync
from utils.config import load_config

# ---- train_modes: training modes on the demo data (issue 10) ---------------------------------------
# name -> TRAIN overrides; every run uses config/demo.yaml, the same seed and the same epochs
TRAIN_MODE_DEFAULT = ["teacher_forcing", "parallel_sampling", "scheduled_rollout", "rollout"]
TRAIN_MODE_RUNS = {
    "teacher_forcing": ["TRAIN.mode=teacher_forcing"],
    "teacher_forcing+noise": ["TRAIN.mode=teacher_forcing", "TRAIN.input_noise=0.05"],
    "parallel_sampling": ["TRAIN.mode=parallel_sampling"],
    "parallel_sampling_2pass": ["TRAIN.mode=parallel_sampling", "TRAIN.sampling_passes=2"],
    "parallel_rollout": ["TRAIN.mode=parallel_rollout"],
    "scheduled_rollout": ["TRAIN.mode=scheduled_rollout"],
    "rollout": ["TRAIN.mode=rollout"],
}
DEMO_CONFIG = os.path.join(ROOT, "config", "demo.yaml")


def _run(*args):
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}")
    return res.stdout


def _best_val(log_path: str) -> dict:
    """Teacher-forced and generated validation loss of the epoch that wrote best_model.pth, and of the
    last validated epoch (final_*), from train.log."""
    best = last = None
    with open(log_path) as f:
        for line in f:
            if "generated" in line:
                words = line.split()
                last = {"epoch": int(words[words.index("epoch") + 1].split("/")[0]),
                        "val_tf": float(words[words.index("teacher_forced") + 1]),
                        "val_gen": float(words[words.index("generated") + 1])}
                best = dict(last) if "(best)" in line else best
    if best is None:
        raise RuntimeError(f"{log_path}: no validated best epoch")
    return {**best, "final_val_tf": last["val_tf"], "final_val_gen": last["val_gen"]}


def train_mode_speed(modes, data_root: str, steps: int, device: str = "cpu"):
    """Training frames/s of each mode on the demo configuration (model, batch size, crop length), on
    fixed demo-like batches; modes are timed in turns, so a busy machine slows them alike. The mixing
    probability is the schedule's end value (sampling_max), the most expensive case."""
    cfg = load_config(DEMO_CONFIG, [f"DATA.data_root={data_root}"])
    B, T = cfg.TRAIN.batch_size, cfg.DATA.max_frames
    flame = FLAME.from_file(os.path.join(data_root, cfg.FLAME.model_path))
    torch.manual_seed(0)
    dev = torch.device(device)
    model = FaceFormer(cfg.MODEL, n_styles=4).to(dev).train()
    flame = flame.to(dev)
    torch.nn.init.normal_(model.output_map.weight, std=0.05)
    audio = torch.from_numpy(np.stack([speech_like(T / FPS, i) for i in range(B)])).to(dev)
    motion = (0.1 * torch.randn(B, T, 51, generator=torch.Generator().manual_seed(0))).to(dev)
    mask, style = torch.ones(B, T, dtype=torch.bool, device=dev), torch.arange(B, device=dev) % 4
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = {m: [] for m in modes}
    for rep in range(steps + 1):
        for name in modes:
            run_cfg = load_config(DEMO_CONFIG, [f"DATA.data_root={data_root}", *TRAIN_MODE_RUNS[name]]).TRAIN
            sync(dev)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            pred = model(audio, motion, style, mask, mode=run_cfg.mode, sampling_prob=run_cfg.sampling_max,
                         passes=run_cfg.sampling_passes, input_noise=run_cfg.input_noise,
                         rollout_steps=run_cfg.rollout_steps)
            motion_vertex_loss(pred, motion, mask, flame)[0].backward()
            opt.step()
            sync(dev)
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {m: B * T / float(np.median(t)) for m, t in times.items()}


def bench_train_modes(modes, epochs: int, tmp: str, device: str = "cpu", speed_steps: int = 10):
    """Each mode trained on fresh demo data (config/demo.yaml, same seed, same epochs), then inference on
    the demo test split and LVE against the mean-motion baseline, as scripts/demo.sh does."""
    from scripts.make_demo_data import make_demo_data
    data, results = os.path.join(tmp, "demo_data"), os.path.join(tmp, "results")
    make_demo_data(data, seed=0, verbose=False)
    common = [f"DATA.data_root={data}", f"TRAIN.epochs={epochs}", f"INFER.output_root={results}",
              f"TRAIN.device={device}", f"INFER.device={device}",
              f"INFER.coeff_root={os.path.join(tmp, 'coeffs')}"]
    _run("scripts/mean_baseline.py", "--config", DEMO_CONFIG, "--overwrite", *common)
    _run("main/evaluate.py", "--config", DEMO_CONFIG, *common, "INFER.exp_name=mean_baseline")
    with open(os.path.join(results, "metrics_mean_baseline.json")) as f:
        base_lve = json.load(f)["overall"]["LVE"]
    speed = train_mode_speed(modes, data, speed_steps, device)
    # the trainings run side by side, one thread each (on a shared CPU they would compete anyway)
    runs = {name: os.path.join(tmp, "runs", name) for name in modes}
    procs = {name: subprocess.Popen(
        [sys.executable, "train.py", "--config", DEMO_CONFIG, *common, *TRAIN_MODE_RUNS[name],
         f"TRAIN.save_path={run}", "TRAIN.overwrite=true"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        for name, run in runs.items()}
    for name, proc in procs.items():
        err = proc.communicate()[1]
        if proc.returncode != 0:
            raise RuntimeError(f"training {name} failed:\n{err[-3000:]}")
    rows = []
    for name, run in runs.items():
        infer = [*common, f"INFER.checkpoint={os.path.join(run, 'best_model.pth')}", f"INFER.exp_name={name}"]
        _run("inference.py", "--config", DEMO_CONFIG, "--overwrite", *infer)
        _run("main/evaluate.py", "--config", DEMO_CONFIG, *infer)
        with open(os.path.join(results, f"metrics_{name}.json")) as f:
            lve = json.load(f)["overall"]["LVE"]
        best = _best_val(os.path.join(run, "train.log"))
        rows.append({"mode": name, **best, "gen/tf": best["val_gen"] / best["val_tf"], "LVE": lve,
                     "LVE/baseline": lve / base_lve, "train_frames_per_s": speed[name],
                     "speed_vs_tf": speed[name] / speed[modes[0]]})
        print(f"  {name}: {rows[-1]}", flush=True)
    return {"epochs": epochs, "baseline_LVE": base_lve, "rows": rows}


# ---- streaming and bounded attention (section "stream") -----------------------------------------
