"""Side-by-side measurements, in one run, of what this project claims to be faster at.

    python scripts/benchmark.py [--device cpu|cuda] [--encoder base|tiny] [--only train decode infer memory]
                                [--compare_old_padding] [--json docs/benchmarks_cpu.json]

Sections (each prints a table; all results go to one JSON):
- train:  training frames/s of this project's batched teacher-forced step vs the original FaceFormer
          recipe (batch 1, full autoregressive rollout with gradients, as its main.py does), and the
          bare wav2vec2 forward+backward on the same batch as the floor. Same model, same clips.
          Also a padded batch (clips cut to 100%..50%, real frames counted); with
          --compare_old_padding the same padded step with the encoder's old batch-dependent path.
- decode: autoregressive decoding time with the KV cache vs re-running the prefix (the original
          method) at 10 s and 60 s of audio (decoder only, on the same audio features).
- infer:  whole single-audio inference (audio file read -> vertex/motion/coeff files written) vs
          the bare wav2vec2 forward on the same audio, at 10 s and 60 s.
- memory: peak resident memory of whole inference on a 10-minute input (fresh subprocess).
- amp:    (CUDA only) a short training run with TRAIN.amp=true; loss must fall and stay finite.
- stream: (not in the default set) decoder ms per frame with INFER.attention_window vs unbounded at
          30 s and 240 s; the Streamer (main/stream.py) on the full-size encoder at the default settings:
          compute per chunk vs the chunk's duration, algorithmic latency; with a trained demo model
          (--demo_checkpoint, --demo_data), the deviation of bounded attention at 60 s and of streamed
          from offline motion per lookahead x left context. ``python scripts/benchmark.py stream``.
- train_modes: (not in the default set: ~25 min on 2 CPU cores) every TRAIN.mode trained on the demo
          data with the demo config, same seed and epochs: teacher-forced and generated validation
          loss, LVE of generated test motion vs the mean-motion baseline, training frames/s.

The model is FaceFormer with the full-size wav2vec2-base architecture (random weights cost the same
as trained ones) unless --encoder tiny; FLAME is the procedural stand-in (same 5023 vertices).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from loss.loss import motion_vertex_loss  # noqa: E402
from models.faceformer import FaceFormer  # noqa: E402
from models.flame import FLAME  # noqa: E402
from models.flame_standin import make_standin_flame, write_standin_files  # noqa: E402
from scripts.reference_decoding import generate_naive, generate_naive_from_features  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.framing import DEFAULT_FRAMING  # noqa: E402

SR, FPS, HOP = DEFAULT_FRAMING.sample_rate, DEFAULT_FRAMING.fps, DEFAULT_FRAMING.samples_per_frame
TINY = {"conv_dim": [64] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "feat_extract_norm": "layer", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=2, warmup=1):
    """Best wall time of ``repeat`` calls after ``warmup`` calls (seconds)."""
    return timed_in_turn([fn], device, repeat, warmup)[0]


def timed_in_turn(fns, device, repeat=2, warmup=1):
    """Best wall time of each function, calling them in turn ``repeat`` times, so that load from
    other jobs on a shared machine hits the compared methods alike (seconds, one per function)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def model_config(encoder: str, flame_dir: str):
    overrides = ["MODEL.audio_encoder_pretrained=false", f"DATA.data_root={flame_dir}",
                 "FLAME.model_path=standin_generic_model.pkl", "FLAME.masks_path=standin_FLAME_masks.pkl"]
    cfg = load_config(None, overrides)
    if encoder == "tiny":
        cfg.MODEL.audio_encoder_config = dict(TINY)
    return cfg


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Audio with speech-like amplitude modulation (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (env * np.sin(2 * np.pi * 150 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def legacy_padded_forward(enc, audio, n_frames, audio_mask=None):
    """The audio encoder's training path before per-clip encoding (--compare_old_padding only): one
    CNN pass over the padded batch and, with group norm, no transformer mask, so a clip's features
    depended on its batch-mates. Kept here to measure what exactness costs."""
    B, N = audio.shape
    n_samples = audio_mask.long().sum(1) if audio_mask is not None else torch.full((B,), N, device=audio.device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not enc.cnn_frozen):
        feats = enc.model.feature_extractor(audio)
    x = enc.model.feature_projection(enc.resample(feats, n_frames, enc.cnn_lengths(n_samples).clamp(min=1)))[0]
    return enc.model.encoder(x)[0]


def bench_train(model, flame, device, clips: int, seconds: float, repeat: int, compare_old_padding: bool = False):
    T = int(seconds * FPS)
    audio = torch.from_numpy(np.stack([speech_like(seconds, i) for i in range(clips)])).to(device)
    motion = (0.1 * torch.randn(clips, T, 51, generator=torch.Generator().manual_seed(0))).to(device)
    mask = torch.ones(clips, T, dtype=torch.bool, device=device)
    # the same clips cut to 100%..50% of their length and right-padded, as a batch of real clips is
    lengths = [max(1, round(T * (1 - 0.5 * b / max(clips - 1, 1)))) for b in range(clips)]
    pad_mask = torch.arange(T, device=device)[None] < torch.tensor(lengths, device=device)[:, None]  # (B,T)
    pad_audio_mask = pad_mask.repeat_interleave(HOP, 1)                                            # (B,N)
    pad_audio = audio * pad_audio_mask
    style = torch.arange(clips, device=device) % model.n_styles
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-5)

    def step(pred_fn, rows):
        opt.zero_grad(set_to_none=True)
        pred = pred_fn(rows)
        loss, _ = motion_vertex_loss(pred, motion[rows], mask[rows], flame)
        loss.backward()
        opt.step()

    def batched():  # this project: one teacher-forced pass over the whole batch
        step(lambda r: model(audio[r], motion[r], style[r], mask[r]), slice(None))

    def padded():  # the same on clips of different lengths (real frames counted)
        opt.zero_grad(set_to_none=True)
        pred = model(pad_audio, motion, style, pad_mask, pad_audio_mask)
        motion_vertex_loss(pred, motion, pad_mask, flame)[0].backward()
        opt.step()

    def padded_old():  # the same with the encoder's old padded path
        model.audio_encoder.forward = lambda *a, **k: legacy_padded_forward(model.audio_encoder, *a, **k)
        try:
            padded()
        finally:
            del model.audio_encoder.forward

    def original():  # FaceFormer's main.py: one clip at a time, autoregressive rollout with gradients
        for b in range(clips):
            r = slice(b, b + 1)
            step(lambda r: generate_naive(model, audio[r], style[r], T), r)

    def encoder_floor():  # wav2vec2 forward + backward alone, same batch
        opt.zero_grad(set_to_none=True)
        model.audio_encoder(audio, T).float().pow(2).mean().backward()

    frames = clips * T
    methods = [("wav2vec2 fwd+bwd only (floor)", encoder_floor, frames),
               ("batched teacher forcing (ours)", batched, frames),
               ("original: batch 1, AR rollout + grad", original, frames)]
    rows = []
    for name, fn, n in methods:
        s = timed(fn, device, repeat=repeat, warmup=1)
        rows.append({"method": name, "seconds": s, "frames_per_s": n / s})
    padded_methods = [("ours, padded clips", padded)]
    if compare_old_padding:
        padded_methods.append(("ours, padded clips, old encoder path", padded_old))
    for (name, _), s in zip(padded_methods, timed_in_turn([fn for _, fn in padded_methods], device, repeat)):
        rows.append({"method": name, "seconds": s, "frames_per_s": sum(lengths) / s})
    ours = rows[1]["frames_per_s"]
    for r in rows:
        r["ours_speedup_over_this"] = ours / r["frames_per_s"]
    return {"clips": clips, "seconds_per_clip": seconds, "frames": frames, "padded_frames": lengths, "rows": rows}


@torch.no_grad()
def bench_decode(model, device, seconds_list, repeat: int):
    model.eval()
    out = []
    for seconds in seconds_list:
        T = int(seconds * FPS)
        feats = torch.randn(1, T, model.d, device=device)
        style = torch.zeros(1, dtype=torch.long, device=device)
        cached = timed(lambda: model.generate_from_features(feats, style), device, repeat=repeat)
        naive = timed(lambda: generate_naive_from_features(model, feats, style), device, repeat=1, warmup=0)
        diff = (model.generate_from_features(feats, style) - generate_naive_from_features(model, feats, style)).abs().max()
        out.append({"audio_s": seconds, "frames": T, "cached_s": cached, "naive_s": naive,
                    "speedup": naive / cached, "max_abs_diff": float(diff)})
    return out


def bench_infer(cfg, ckpt, device, seconds_list, tmp, repeat: int):
    from main.inference import load_model, run_single
    from utils.runtime import setup_logger

    logger = setup_logger("bench_infer")
    logger.setLevel("WARNING")
    # the model is loaded once, outside the timing: whole inference = wav read -> files written
    model, styles = load_model(ckpt, cfg, device, logger)
    out = []
    for seconds in seconds_list:
        wav = os.path.join(tmp, f"speech_{seconds:g}s.wav")
        sf.write(wav, speech_like(seconds), SR)
        audio = torch.from_numpy(speech_like(seconds))[None].to(device)
        T = int(round(seconds * FPS))

        @torch.no_grad()
        def bare():
            model.audio_encoder(audio, T)

        def whole():
            run_single(cfg, wav, None, ckpt, os.path.join(tmp, f"out_{seconds:g}"), overwrite=True, logger=logger,
                       loaded=(model, styles))

        t_bare = timed(bare, device, repeat=repeat)
        t_whole = timed(whole, device, repeat=repeat)
        out.append({"audio_s": seconds, "bare_encoder_s": t_bare, "whole_inference_s": t_whole,
                    "ratio": t_whole / t_bare})
    return out


def bench_memory(config_path, ckpt, seconds, tmp, device):
    wav = os.path.join(tmp, f"speech_{seconds:g}s.wav")
    sf.write(wav, speech_like(seconds), SR)
    code = (
        "import resource, sys; sys.path.insert(0, %r)\n"
        "from utils.config import load_config\nfrom main.inference import run_single\n"
        "cfg = load_config(%r, sys.argv[1:])\n"
        "run_single(cfg, %r, None, %r, %r, overwrite=True)\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    ) % (ROOT, config_path, wav, ckpt, os.path.join(tmp, "out_memory"))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, f"INFER.device={device.type}"], capture_output=True,
                         text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    peak_kb = int(res.stdout.split("PEAK_KB")[-1].split()[0])
    return {"audio_s": seconds, "peak_rss_gb": peak_kb / 1024 ** 2, "wall_s": wall}


def bench_amp(cfg, flame, device, steps=30):
    """CUDA + AMP smoke test: a short overfit of 2 clips; the loss must be finite and fall."""
    torch.manual_seed(0)
    model = FaceFormer(cfg.MODEL, n_styles=2).to(device)
    T = 100
    audio = torch.from_numpy(np.stack([speech_like(4, i) for i in range(2)])).to(device)
    motion = (0.2 * torch.sin(torch.linspace(0, 12, T, device=device))[None, :, None]
              * torch.randn(2, 1, 51, device=device, generator=torch.Generator(device).manual_seed(0)))
    mask = torch.ones(2, T, dtype=torch.bool, device=device)
    style = torch.arange(2, device=device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            pred = model(audio, motion, style, mask)
        loss, _ = motion_vertex_loss(pred.float(), motion, mask, flame)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    ok = all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    return {"steps": steps, "first_loss": losses[0], "last_loss": losses[-1], "ok": bool(ok),
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 1024 ** 3}


# ---- train_modes: training modes on the demo data (issue 10) ---------------------------------------
# name -> TRAIN overrides; every run uses config/demo.yaml, the same seed and the same epochs
TRAIN_MODE_DEFAULT = ["teacher_forcing", "parallel_sampling", "scheduled_rollout", "rollout"]
TRAIN_MODE_RUNS = {
    "teacher_forcing": ["TRAIN.mode=teacher_forcing"],
    "teacher_forcing+noise": ["TRAIN.mode=teacher_forcing", "TRAIN.input_noise=0.05"],
    "parallel_sampling": ["TRAIN.mode=parallel_sampling"],
    "parallel_sampling_2pass": ["TRAIN.mode=parallel_sampling", "TRAIN.sampling_passes=2"],
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
                         passes=run_cfg.sampling_passes, input_noise=run_cfg.input_noise)
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

def _deviation(pred: list, ref: list) -> float:
    """RMS of the motion difference / RMS of the reference motion's deviation from its mean (pooled
    over clips; each clip's own mean motion)."""
    num = sum(float(np.sum((p - r) ** 2)) for p, r in zip(pred, ref))
    den = sum(float(np.sum((r - r.mean(0)) ** 2)) for r in ref)
    return float(np.sqrt(num / den))


def demo_clips(data_root: str, splits=("test",)):
    """[(sample id, raw 16 kHz audio, speaker)] of the demo data's MEAD_VHAP / MultiModal200 splits."""
    from dataset.audio import load_audio

    clips = []
    for ds in ("MEAD_VHAP", "MultiModal200"):
        for split in splits:
            with open(os.path.join(data_root, "dataset_jsons", "splits", f"{ds}_{split}.json")) as f:
                index = json.load(f)
            for sid, e in sorted(index.items()):
                speaker = e["speaker_id"][0] if isinstance(e["speaker_id"], list) else e["speaker_id"]
                clips.append((sid, load_audio(os.path.join(data_root, e["audio_path"]), SR), str(speaker)))
    return clips


@torch.no_grad()
def offline_motion(model, raw: np.ndarray, style: int, attention_window) -> np.ndarray:
    """What single-audio inference generates: normalised audio cut/padded to whole frames."""
    from dataset.audio import normalize_audio

    T = DEFAULT_FRAMING.frames_in(len(raw))
    a = normalize_audio(raw)
    a = np.pad(a, (0, max(0, T * HOP - len(a))))[:T * HOP]
    return model.generate(torch.from_numpy(a)[None], torch.tensor([style]), T,
                          attention_window=attention_window)[0].numpy()


def stream_motion(model, raw, style, prime=False, **settings) -> tuple[np.ndarray, list]:
    """Streamer over raw audio pushed one chunk at a time -> ((T,51), per-chunk stats)."""
    from main.stream import Streamer

    s = Streamer(model, style, **settings)
    if prime:
        s.prime(raw)
    chunk = s.chunk
    out = [s.push(raw[i:i + chunk]) for i in range(0, len(raw), chunk)] + [s.flush()]
    return np.concatenate(out), s.stats


def wall_and_cpu(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds of all threads) of one call. On a machine shared with other
    jobs the wall time mostly measures waiting; the CPU time tracks the work (with threads that spin
    while waiting it over-counts, so it bounds an idle machine's wall time from above, roughly)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


@torch.no_grad()
def bench_attention_speed(model, device, seconds_list, window: int):
    """Decoder ms per frame, unbounded vs bounded attention, same random features, in turn (after a
    short warm-up); wall and CPU time."""
    model.eval()
    rows = []
    style = torch.zeros(1, dtype=torch.long, device=device)
    warm = torch.randn(1, 50, model.d, device=device)
    model.generate_from_features(warm, style)
    for seconds in seconds_list:
        T = int(seconds * FPS)
        feats = torch.randn(1, T, model.d, generator=torch.Generator().manual_seed(0)).to(device)
        row = {"audio_s": seconds, "frames": T}
        for name, w in (("unbounded", None), (f"window_{window}", window)):
            wall, cpu = wall_and_cpu(lambda: model.generate_from_features(feats, style, attention_window=w))
            row[f"{name}_ms_per_frame"], row[f"{name}_cpu_ms_per_frame"] = 1000 * wall / T, 1000 * cpu / T
        rows.append(row)
    return rows


def bench_attention_deviation(model, styles, clips, windows, seconds: float = 60.0):
    """Bounded vs unbounded attention on ``seconds`` of the demo audio (clips concatenated)."""
    raw = np.concatenate([c[1] for c in clips])
    if len(raw) < seconds * SR:
        raise RuntimeError(f"the demo clips hold only {len(raw) / SR:.1f} s of audio; {seconds} s needed")
    raw = raw[:int(seconds * SR)]
    style = styles.index(clips[0][2]) if clips[0][2] in styles else 0
    ref = offline_motion(model, raw, style, None)
    return [{"window_frames": w, "window_s": w / FPS, "audio_s": seconds,
             "deviation": _deviation([offline_motion(model, raw, style, w)], [ref]),
             "max_abs_diff": float(np.abs(offline_motion(model, raw, style, w) - ref).max())} for w in windows]


def bench_stream_speed(model, device, seconds: float, settings: dict):
    """Per-chunk compute of the Streamer (full-size encoder) on speech-like audio fed chunk by chunk."""
    from main.stream import Streamer

    model.eval()
    raw = speech_like(seconds)
    warm = Streamer(model, 0, **settings)  # one chunk first: allocator and thread pools warm
    warm.push(raw[:warm.chunk * 4])
    audio = torch.from_numpy(raw)[None].to(device)
    with torch.no_grad():  # the offline encoder forward over the same audio, just before and after
        enc_before = wall_and_cpu(lambda: model.audio_encoder(audio, int(seconds * FPS)))
        _, stats = stream_motion(model, raw, 0, **settings)
        enc_after = wall_and_cpu(lambda: model.audio_encoder(audio, int(seconds * FPS)))
    emitting = [s for s in stats[:-1] if s["frames"]]  # chunks that emit frames, not the flush
    chunk_s = settings["chunk_ms"] / 1000
    out = {"audio_s": seconds, **settings, "chunk_s": chunk_s, "chunks": len(emitting),
           "algorithmic_latency_s": (settings["chunk_ms"] + settings["lookahead_ms"]) / 1000}
    for key, name in (("compute_s", "wall"), ("cpu_s", "cpu")):
        t = np.array([s[key] for s in emitting])
        out.update({f"{name}_mean_chunk_s": float(t.mean()), f"{name}_p95_chunk_s": float(np.percentile(t, 95)),
                    f"{name}_max_chunk_s": float(t.max()),
                    f"{name}_real_time_factor": float(sum(s[key] for s in stats)) / seconds})
    # On a shared machine absolute times mostly measure waiting: the ratio to the offline encoder
    # forward over the same audio, timed around the stream, is what carries over to an idle machine.
    enc_wall = (enc_before[0] + enc_after[0]) / 2
    out.update({"encoder_forward_wall_s": enc_wall, "stream_total_wall_s": float(sum(s["compute_s"] for s in stats)),
                "stream_over_encoder_forward": float(sum(s["compute_s"] for s in stats)) / enc_wall,
                "mean_chunk_over_encoder_forward": out["wall_mean_chunk_s"] / enc_wall})
    return out


def bench_stream_deviation(model, styles, clips, lookaheads, lefts, base: dict):
    """Deviation of streamed from offline motion over the demo clips, per lookahead x left context;
    plus the default setting with the normalisation statistics primed on the whole clip."""
    ref = [offline_motion(model, raw, styles.index(spk) if spk in styles else 0, base["attention_window"])
           for _, raw, spk in clips]

    def deviation(prime=False, **kw):
        settings = dict(base, **kw)
        pred = [stream_motion(model, raw, styles.index(spk) if spk in styles else 0, prime, **settings)[0]
                for _, raw, spk in clips]
        return _deviation(pred, ref)

    rows = []
    for left in lefts:
        row = {"left_context_ms": "all" if left is None else left}
        for la in lookaheads:
            row[f"lookahead_{la}ms"] = deviation(lookahead_ms=la, left_context_ms=left)
        rows.append(row)
    primed = deviation(prime=True)
    return {"clips": len(clips), "audio_s": sum(len(c[1]) for c in clips) / SR, "chunk_ms": base["chunk_ms"],
            "attention_window": base["attention_window"], "rows": rows, "default_primed_deviation": primed,
            "default": dict(base)}


def bench_stream(model, device, args):
    """The "stream" section: decoder cost with bounded attention, the Streamer's real-time budget on the
    full-size encoder, and deviations on the trained demo model."""
    from main.model_io import load_model
    from utils.config import DEFAULTS

    inf = DEFAULTS["INFER"]
    base = {"chunk_ms": float(inf["stream_chunk_ms"]), "lookahead_ms": float(inf["stream_lookahead_ms"]),
            "left_context_ms": float(inf["stream_left_context_ms"]), "attention_window": inf["attention_window"]}
    out = {"defaults": base}
    out["attention_speed"] = bench_attention_speed(model, device, [30, 240], base["attention_window"])
    print("[stream] attention speed:", out["attention_speed"], flush=True)
    out["speed"] = bench_stream_speed(model, device, args.stream_seconds, base)
    print("[stream] streamer speed:", out["speed"], flush=True)
    if not os.path.isfile(args.demo_checkpoint):
        print(f"[stream] no trained demo model at {args.demo_checkpoint}: deviation tables skipped "
              f"(bash scripts/demo.sh, or pass --demo_checkpoint / --demo_data)")
        return out
    demo_cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"), [f"DATA.data_root={args.demo_data}"])
    demo, styles = load_model(args.demo_checkpoint, demo_cfg, torch.device("cpu"))
    clips = demo_clips(args.demo_data)
    all_clips = demo_clips(args.demo_data, ("test", "val", "train"))
    out["attention_deviation"] = bench_attention_deviation(demo, styles, all_clips, [150, 300, 600, 1000])
    print("[stream] attention deviation:", out["attention_deviation"], flush=True)
    raw = np.concatenate([c[1] for c in all_clips])[:60 * SR]
    style = styles.index(all_clips[0][2]) if all_clips[0][2] in styles else 0
    ref = offline_motion(demo, raw, style, base["attention_window"])
    out["long_deviation"] = {"audio_s": len(raw) / SR, **base, "deviation": _deviation(
        [stream_motion(demo, raw, style, **base)[0]], [ref]), "deviation_first_5s_excluded": _deviation(
        [stream_motion(demo, raw, style, **base)[0][125:]], [ref[125:]])}
    print("[stream] 60 s continuous stream at the defaults:", out["long_deviation"], flush=True)
    if not args.stream_quick:
        out["deviation"] = bench_stream_deviation(demo, styles, clips, [0, 150, 300, 600], [500, 1000, 2000, None],
                                                  base)
    return out


def print_stream(r):
    print("\n[stream] decoder ms per frame, unbounded vs bounded attention (random features)")
    print(table(r["attention_speed"], list(r["attention_speed"][0])))
    s = r["speed"]
    print(f"\n[stream] Streamer, full-size wav2vec2-base, {s['audio_s']:g} s fed chunk by chunk: chunk "
          f"{s['chunk_ms']:g} ms, lookahead {s['lookahead_ms']:g} ms, left context {s['left_context_ms']:g} ms -> "
          f"algorithmic latency {s['algorithmic_latency_s']:.3f} s; per chunk, wall mean "
          f"{1000 * s['wall_mean_chunk_s']:.1f} / p95 {1000 * s['wall_p95_chunk_s']:.1f} / max "
          f"{1000 * s['wall_max_chunk_s']:.1f} ms, CPU mean {1000 * s['cpu_mean_chunk_s']:.1f} / p95 "
          f"{1000 * s['cpu_p95_chunk_s']:.1f} / max {1000 * s['cpu_max_chunk_s']:.1f} ms; real-time factor wall "
          f"{s['wall_real_time_factor']:.3f}, CPU {s['cpu_real_time_factor']:.3f}; all chunks = "
          f"{s['stream_over_encoder_forward']:.2f}x one offline encoder forward over the same audio, one chunk "
          f"(mean) = {s['mean_chunk_over_encoder_forward']:.4f}x")
    if "long_deviation" in r:
        print(f"\n[stream] 60 s continuous stream at the defaults vs offline: deviation "
              f"{r['long_deviation']['deviation']:.4f}")
    if "deviation" in r:
        print("\n[stream] attention window vs unbounded, trained demo model, 60 s (deviation = RMS diff / RMS of "
              "the motion's deviation from its mean)")
        print(table(r["attention_deviation"], list(r["attention_deviation"][0])))
        d = r["deviation"]
        print(f"\n[stream] streamed vs offline, trained demo model, {d['clips']} test clips ({d['audio_s']:.1f} s), "
              f"chunk {d['chunk_ms']:g} ms: deviation per left context (rows) x lookahead (columns)")
        print(table(d["rows"], list(d["rows"][0])))
        print(f"default settings with the normalisation statistics primed on the whole clip: "
              f"{d['default_primed_deviation']:.4f}")


def table(rows, cols):
    lines = ["  ".join(f"{c:>22}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{r[c]:>22.4g}" if isinstance(r[c], float) else f"{str(r[c]):>22}" for c in cols))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="base", choices=["base", "tiny"])
    p.add_argument("--only", nargs="*", default=["train", "decode", "infer", "memory", "amp"])
    p.add_argument("sections", nargs="*", help="same as --only (e.g. python scripts/benchmark.py stream)")
    p.add_argument("--stream_seconds", type=float, default=30.0, help="stream: audio fed to the Streamer")
    p.add_argument("--demo_checkpoint", default=os.path.join(ROOT, "outputs", "demo", "best_model.pth"),
                   help="stream: trained demo model for the deviation tables (bash scripts/demo.sh)")
    p.add_argument("--demo_data", default=os.path.join(ROOT, "demo_data"), help="stream: its demo data")
    p.add_argument("--stream_quick", action="store_true", help="stream: skip the lookahead x left context table")
    p.add_argument("--train_clips", type=int, default=4)
    p.add_argument("--train_seconds", type=float, default=4.0)
    p.add_argument("--memory_seconds", type=float, default=600.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--compare_old_padding", action="store_true",
                   help="train: also time the padded batch with the audio encoder's old (batch-dependent) path")
    p.add_argument("--modes", nargs="*", default=TRAIN_MODE_DEFAULT, choices=list(TRAIN_MODE_RUNS),
                   help="train_modes: training modes to compare (the first is the speed reference)")
    p.add_argument("--mode_epochs", type=int, default=60, help="train_modes: epochs per mode (demo: 60)")
    p.add_argument("--json", default=None, help="output JSON (default docs/benchmarks_<device>.json; "
                                                 "docs/benchmarks_train_modes_<device>.json for --only train_modes)")
    args = p.parse_args(argv)
    args.only = args.sections or args.only
    device = torch.device(args.device)
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
               or platform.machine(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
               "encoder": args.encoder, "date": time.strftime("%Y-%m-%d")}
    print(f"device {results['device']}, torch {torch.__version__}, {results['cpu_threads']} CPU threads, "
          f"wav2vec2 {args.encoder}")
    with tempfile.TemporaryDirectory() as tmp:
        write_standin_files(tmp, seed=0)
        cfg = model_config(args.encoder, tmp)
        cfg.INFER.device = args.device
        flame = FLAME(make_standin_flame(0)).to(device)
        model = FaceFormer(cfg.MODEL, n_styles=4).to(device)
        # the output map starts at zero; give it trained-like weights so outputs (and diffs) are real
        torch.nn.init.normal_(model.output_map.weight, std=0.05)
        ckpt = os.path.join(tmp, "bench.pth")
        torch.save({"model": model.state_dict(), "styles": ["S0", "S1", "S2", "S3"],
                    "config": cfg.to_dict(), "epoch": 0}, ckpt)
        cfg_path = os.path.join(tmp, "bench.yaml")
        from utils.config import save_config
        save_config(cfg, cfg_path)
        if "train" in args.only:
            r = bench_train(model, flame, device, args.train_clips, args.train_seconds, args.repeat,
                            args.compare_old_padding)
            results["train"] = r
            print(f"\n[train] {r['clips']} clips x {r['seconds_per_clip']} s ({r['frames']} frames), one optimizer "
                  f"step each way")
            print(table(r["rows"], ["method", "seconds", "frames_per_s", "ours_speedup_over_this"]))
        if "decode" in args.only:
            r = bench_decode(model, device, [10, 60], args.repeat)
            results["decode"] = r
            print("\n[decode] decoder only, same features; cached = KV cache, naive = re-run the prefix")
            print(table(r, ["audio_s", "frames", "cached_s", "naive_s", "speedup", "max_abs_diff"]))
        if "infer" in args.only:
            r = bench_infer(cfg, ckpt, device, [10, 60], tmp, args.repeat)
            results["infer"] = r
            print("\n[infer] whole single-audio inference (read wav -> files written) vs bare wav2vec2 forward")
            print(table(r, ["audio_s", "bare_encoder_s", "whole_inference_s", "ratio"]))
        if "memory" in args.only:
            r = bench_memory(cfg_path, ckpt, args.memory_seconds, tmp, device)
            results["memory"] = r
            print(f"\n[memory] whole inference on {r['audio_s']:g} s of audio: peak RSS {r['peak_rss_gb']:.2f} GB "
                  f"({r['wall_s']:.1f} s incl. start-up)")
        if "train_modes" in args.only:
            r = bench_train_modes(args.modes, args.mode_epochs, tmp, device.type)
            results["train_modes"] = r
            print(f"\n[train_modes] demo data, {r['epochs']} epochs each, seed 0; val losses of the best (generated) "
                  f"epoch; LVE of generated test motion; mean-motion baseline LVE {r['baseline_LVE']:.4g}")
            print(table(r["rows"], ["mode", "epoch", "val_tf", "val_gen", "gen/tf", "LVE", "LVE/baseline",
                                    "train_frames_per_s", "speed_vs_tf"]))
        if "stream" in args.only:
            results["stream"] = bench_stream(model, device, args)
            print_stream(results["stream"])
        if "amp" in args.only and device.type == "cuda":
            r = bench_amp(cfg, flame, device)
            results["amp"] = r
            print(f"\n[amp] CUDA AMP training smoke test: loss {r['first_loss']:.3e} -> {r['last_loss']:.3e} in "
                  f"{r['steps']} steps, ok={r['ok']}, peak GPU memory {r['peak_gpu_mem_gb']:.2f} GB")
    section = f"_{args.only[0]}" if args.only in (["train_modes"], ["stream"]) else ""
    out = args.json or os.path.join(ROOT, "docs", f"benchmarks{section}_{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
