"""Section train_modes: training recipes (TRAIN.mode, the audio front end, the lip term) trained on the
same data (the demo's or the held-out real-speech set) with the demo config, same epochs, one or more
seeds; scored against the mean-motion and linear-listener baselines, with the listening and lip-sync checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from loss.loss import motion_vertex_loss
from main.train_eval_loop import lip_vertices
from models.faceformer import FaceFormer
from models.flame import FLAME
from scripts.bench.common import FPS, ROOT, speech_like, sync
from utils.config import load_config

# ---- train_modes: training modes side by side ---------------------------------------------------
# name -> TRAIN overrides; every run uses config/demo.yaml, the same seed and the same epochs
TRAIN_MODE_DEFAULT = ["teacher_forcing", "parallel_sampling", "parallel_rollout", "scheduled_rollout", "rollout"]
TRAIN_MODE_RUNS = {
    "teacher_forcing": ["TRAIN.mode=teacher_forcing"],
    "teacher_forcing+noise": ["TRAIN.mode=teacher_forcing", "TRAIN.input_noise=0.05"],
    "parallel_sampling": ["TRAIN.mode=parallel_sampling"],
    "parallel_sampling_2pass": ["TRAIN.mode=parallel_sampling", "TRAIN.sampling_passes=2"],
    "parallel_rollout": ["TRAIN.mode=parallel_rollout"],
    "parallel_rollout_6": ["TRAIN.mode=parallel_rollout", "TRAIN.rollout_steps=6"],
    "scheduled_rollout": ["TRAIN.mode=scheduled_rollout"],
    "rollout": ["TRAIN.mode=rollout"],
    # the audio front end and the lip term, on the default parallel rollout
    "cnn": ["MODEL.audio_frontend=cnn", "TRAIN.lip_weight=0"],
    "logmel": ["MODEL.audio_frontend=logmel", "TRAIN.lip_weight=0"],
    "logmel+lip0.1": ["MODEL.audio_frontend=logmel", "TRAIN.lip_weight=0.1"],
    "logmel+lip0.3": ["MODEL.audio_frontend=logmel", "TRAIN.lip_weight=0.3"],
    # trained for streaming (models/block_encoder.py), 1 s of left context: blocks of 6 frames; blocks of 2 or
    # 4 frames with 4 or 2 frames of lookahead (each 0.245 s of latency)
    "logmel+lip0.3+block6": ["MODEL.audio_frontend=logmel", "TRAIN.lip_weight=0.3", "MODEL.encoder_block_frames=6",
                             "MODEL.encoder_lookahead_frames=0", "MODEL.encoder_left_frames=25"],
    "logmel+lip0.3+block2la4": ["MODEL.audio_frontend=logmel", "TRAIN.lip_weight=0.3", "MODEL.encoder_block_frames=2",
                                "MODEL.encoder_lookahead_frames=4", "MODEL.encoder_left_frames=25"],
    "logmel+lip0.3+block4la2": ["MODEL.audio_frontend=logmel", "TRAIN.lip_weight=0.3", "MODEL.encoder_block_frames=4",
                                "MODEL.encoder_lookahead_frames=2", "MODEL.encoder_left_frames=25"],
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
    """Training frames/s of each recipe on the demo configuration (model, batch size, crop length), on
    fixed demo-like batches, the loss with its lip term where the recipe has one; recipes are timed in
    turns, so a busy machine slows them alike. The mixing probability is the schedule's end value
    (sampling_max), the most expensive case."""
    cfg = load_config(DEMO_CONFIG, [f"DATA.data_root={data_root}"])
    B, T = cfg.TRAIN.batch_size, cfg.DATA.max_frames
    dev = torch.device(device)
    flame = FLAME.from_file(os.path.join(data_root, cfg.FLAME.model_path), device=dev)
    lips = lip_vertices(cfg, [flame], dev)[id(flame)]
    audio = torch.from_numpy(np.stack([speech_like(T / FPS, i) for i in range(B)])).to(dev)
    motion = (0.1 * torch.randn(B, T, 51, generator=torch.Generator().manual_seed(0))).to(dev)
    mask, style = torch.ones(B, T, dtype=torch.bool, device=dev), torch.arange(B, device=dev) % 4
    runs = {}
    for name in modes:
        run_cfg = load_config(DEMO_CONFIG, [f"DATA.data_root={data_root}", *TRAIN_MODE_RUNS[name]])
        torch.manual_seed(0)
        model = FaceFormer(run_cfg.MODEL, n_styles=4).to(dev).train()
        torch.nn.init.normal_(model.output_map.weight, std=0.05)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        runs[name] = (run_cfg.TRAIN, model, opt)
    times = {m: [] for m in modes}
    for rep in range(steps + 1):
        for name in modes:
            run_cfg, model, opt = runs[name]
            sync(dev)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            pred = model(audio, motion, style, mask, mode=run_cfg.mode, sampling_prob=run_cfg.sampling_max,
                         passes=run_cfg.sampling_passes, input_noise=run_cfg.input_noise,
                         rollout_steps=run_cfg.rollout_steps)
            motion_vertex_loss(pred, motion, mask, flame, lip_weight=run_cfg.lip_weight, lips=lips)[0].backward()
            opt.step()
            sync(dev)
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {m: B * T / float(np.median(t)) for m, t in times.items()}


def sequential_decoder_calls(mode_cfg, frames: int) -> int:
    """Decoder calls that must run one after the other in a training step: what a step costs on a GPU,
    where each call is one kernel launch sequence whatever its width. T-step rollouts need ``frames``."""
    mode = mode_cfg.mode
    if mode in ("rollout", "scheduled_rollout"):
        return frames
    if mode == "parallel_sampling":
        return mode_cfg.sampling_passes + 1
    if mode == "parallel_rollout":
        return mode_cfg.rollout_steps + 1
    return 1


def _epoch_seconds(log_path: str) -> float:
    """Median seconds of the training part of an epoch (validation excluded), from train.log."""
    secs = []
    with open(log_path) as f:
        for line in f:
            if "s training)" in line:
                secs.append(float(line.rsplit("(", 1)[1].split("s training")[0]))
    return float(np.median(secs)) if secs else float("nan")


def build_mode_data(data: str, tmp: str) -> str:
    """The data the modes are trained on: 'demo' (scripts/make_demo_data.py), 'speech' (the held-out
    real-speech set, scripts/make_speech_set.py) or the folder of one already built."""
    if data == "demo":
        from scripts.make_demo_data import make_demo_data
        make_demo_data(os.path.join(tmp, "demo_data"), seed=0, verbose=False)
        return os.path.join(tmp, "demo_data")
    if data == "speech":
        _run("scripts/make_speech_set.py", "--out", os.path.join(tmp, "speech_data"))
        return os.path.join(tmp, "speech_data")
    if not os.path.isdir(os.path.join(data, "dataset_jsons")):
        raise RuntimeError(f"--mode_data {data}: expected 'demo', 'speech' or a built data folder")
    return os.path.abspath(data)


def bench_train_modes(modes, epochs: int, tmp: str, device: str = "cpu", speed_steps: int = 10,
                      data: str = "demo", seeds=(0,), jobs: int = 4):
    """Each mode trained with config/demo.yaml on the same data, for each seed, then inference on the
    test split, LVE against the mean-motion baseline (as scripts/demo.sh does) and the listening check
    (LVE with another clip's audio / LVE with its own)."""
    data_root = build_mode_data(data, tmp)
    results = os.path.join(tmp, "results")
    common = [f"DATA.data_root={data_root}", f"TRAIN.epochs={epochs}", f"INFER.output_root={results}",
              f"TRAIN.device={device}", f"INFER.device={device}",
              f"INFER.coeff_root={os.path.join(tmp, 'coeffs')}"]
    base_lve = {}
    for name in ("mean_baseline", "linear_baseline"):
        _run(f"scripts/{name}.py", "--config", DEMO_CONFIG, "--overwrite", *common)
        _run("main/evaluate.py", "--config", DEMO_CONFIG, "--no_plots", *common, f"INFER.exp_name={name}")
        with open(os.path.join(results, f"metrics_{name}.json")) as f:
            base_lve[name] = json.load(f)["overall"]["LVE"]
    speed = train_mode_speed(modes, data_root, speed_steps, device)
    # the trainings run side by side, one thread each, at most ``jobs`` at a time: each mode's time per
    # epoch is measured under the same load as the others'
    runs = {(name, seed): os.path.join(tmp, "runs", f"{name}_seed{seed}") for name in modes for seed in seeds}
    pending, active = list(runs.items()), {}
    while pending or active:
        while pending and len(active) < jobs:
            (name, seed), run = pending.pop(0)
            os.makedirs(run, exist_ok=True)
            # the progress bars go to a file: a pipe nobody reads would fill and stall the training
            with open(run + ".stderr", "w") as err:
                active[(name, seed)] = subprocess.Popen(
                    [sys.executable, "train.py", "--config", DEMO_CONFIG, *common, *TRAIN_MODE_RUNS[name],
                     f"TRAIN.seed={seed}", f"TRAIN.save_path={run}", "TRAIN.overwrite=true"], cwd=ROOT,
                    stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                "OMP_NUM_THREADS": "1"})
        done = [key for key, proc in active.items() if proc.poll() is not None]
        if not done:
            time.sleep(1)
        for key in done:
            proc = active.pop(key)
            if proc.returncode != 0:
                with open(runs[key] + ".stderr") as f:
                    raise RuntimeError(f"training {key} failed:\n{f.read()[-3000:]}")
    rows = []
    for (name, seed), run in runs.items():
        tag = f"{name}_seed{seed}"
        infer = [*common, f"INFER.checkpoint={os.path.join(run, 'best_model.pth')}", f"INFER.exp_name={tag}"]
        _run("inference.py", "--config", DEMO_CONFIG, "--overwrite", *infer)
        _run("main/evaluate.py", "--config", DEMO_CONFIG, "--listening", "--no_plots", *infer)
        with open(os.path.join(results, f"metrics_{tag}.json")) as f:
            report = json.load(f)
        lips = lipsync_numbers(os.path.join(results, tag), os.path.join(tmp, "coeffs", tag), infer)
        best = _best_val(os.path.join(run, "train.log"))
        mode_cfg = load_config(DEMO_CONFIG, [f"DATA.data_root={data_root}", *TRAIN_MODE_RUNS[name]])
        rows.append({"mode": name, "seed": seed, **best, "gen/tf": best["val_gen"] / best["val_tf"],
                     "LVE": report["overall"]["LVE"],
                     "LVE/baseline": report["overall"]["LVE"] / base_lve["mean_baseline"],
                     "LVE/linear": report["overall"]["LVE"] / base_lve["linear_baseline"],
                     "listening": report["listening"]["listening_ratio"], **lips,
                     "epoch_s": _epoch_seconds(os.path.join(run, "train.log")),
                     "sequential_decoder_calls": sequential_decoder_calls(mode_cfg.TRAIN, mode_cfg.DATA.max_frames),
                     "train_frames_per_s": speed[name], "speed_vs_tf": speed[name] / speed[modes[0]]})
        print(f"  {tag}: {rows[-1]}", flush=True)
    ref = [r["epoch_s"] for r in rows if r["mode"] == modes[0]]
    for r in rows:
        r["epoch_s_vs_first"] = r["epoch_s"] / float(np.mean(ref))
    truth = lipsync_numbers(*write_ground_truth(DEMO_CONFIG, common, tmp), common)
    return {"data": data, "epochs": epochs, "seeds": list(seeds), "baseline_LVE": base_lve["mean_baseline"],
            "linear_LVE": base_lve["linear_baseline"], "ground_truth_lipsync": truth, "rows": rows,
            "summary": summarise_modes(rows)}


LIPSYNC_KEYS = ("closure", "closure_chance", "corr", "rest_move")


def lipsync_numbers(results: str, coeffs: str, overrides) -> dict:
    """main/lipsync.py's pooled closure (and its chance level), loudness correlation and silence rest
    of a results tree scored against its own audio."""
    out = os.path.join(os.path.dirname(results), f"lipsync_{os.path.basename(results)}.json")
    _run("main/evaluate.py", "--config", DEMO_CONFIG, "--lipsync", "--no_plots", "--results", results,
         "--coeffs", coeffs, "--out", out, *overrides)
    with open(out) as f:
        pooled = json.load(f)["overall"]
    return {k: pooled.get(k) for k in LIPSYNC_KEYS}


def write_ground_truth(config: str, overrides, tmp: str):
    """The test split's own motion written as a results tree (what a perfect model makes), to read the
    lip-sync numbers of real motion -> (results, coeffs)."""
    from scripts.lipsync_validation import write_ground_truth as write_truth
    cfg = load_config(config, list(overrides))
    write_truth(cfg, "ground_truth")
    return (os.path.join(cfg.INFER.output_root, "ground_truth"), os.path.join(cfg.INFER.coeff_root, "ground_truth"))


def summarise_modes(rows: list[dict]) -> list[dict]:
    """Per mode: mean and spread (min, max) over seeds of the numbers that decide the default."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        rs = [r for r in rows if r["mode"] == mode]
        row = {"mode": mode, "seeds": len(rs)}
        for key in ("LVE/baseline", "LVE/linear", "gen/tf", "listening", *LIPSYNC_KEYS, "epoch_s_vs_first"):
            vals = [np.nan if r[key] is None else r[key] for r in rs]
            row[key] = float(np.mean(vals))
            row[key + " range"] = f"{min(vals):.3f}-{max(vals):.3f}"
        row["sequential_decoder_calls"] = rs[0]["sequential_decoder_calls"]
        out.append(row)
    return out


# ---- streaming and bounded attention (section "stream") -----------------------------------------
