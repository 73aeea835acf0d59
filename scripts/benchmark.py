"""Side-by-side measurements, in one run, of what this project claims to be faster at.

    python scripts/benchmark.py [--device cpu|cuda] [--encoder base|tiny] [--only train decode infer memory]
                                [--json docs/benchmarks_cpu.json]

Sections (each prints a table; all results go to one JSON):
- train:  training frames/s of this project's batched teacher-forced step vs the original FaceFormer
          recipe (batch 1, full autoregressive rollout with gradients, as its main.py does), and the
          bare wav2vec2 forward+backward on the same batch as the floor. Same model, same clips.
- decode: autoregressive decoding time with the KV cache vs re-running the prefix (the original
          method) at 10 s and 60 s of audio (decoder only, on the same audio features).
- infer:  whole single-audio inference (audio file read -> vertex/motion/coeff files written) vs
          the bare wav2vec2 forward on the same audio, at 10 s and 60 s.
- memory: peak resident memory of whole inference on a 10-minute input (fresh subprocess).
- amp:    (CUDA only) a short training run with TRAIN.amp=true; loss must fall and stay finite.

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
from utils.config import load_config  # noqa: E402

SR, FPS, HOP = 16000, 25, 640
TINY = {"conv_dim": [64] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "feat_extract_norm": "layer", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=2, warmup=1):
    """Best wall time of ``repeat`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
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


def bench_train(model, flame, device, clips: int, seconds: float, repeat: int):
    T = int(seconds * FPS)
    audio = torch.from_numpy(np.stack([speech_like(seconds, i) for i in range(clips)])).to(device)
    motion = (0.1 * torch.randn(clips, T, 51, generator=torch.Generator().manual_seed(0))).to(device)
    mask = torch.ones(clips, T, dtype=torch.bool, device=device)
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

    def batched():  # this project: one teacher-forced pass over the whole padded batch
        step(lambda r: model(audio[r], motion[r], style[r], mask[r]), slice(None))

    def original():  # FaceFormer's main.py: one clip at a time, autoregressive rollout with gradients
        for b in range(clips):
            r = slice(b, b + 1)
            step(lambda r: model.generate_naive(audio[r], style[r], T), r)

    def encoder_floor():  # wav2vec2 forward + backward alone, same batch
        opt.zero_grad(set_to_none=True)
        model.audio_encoder(audio, T).float().pow(2).mean().backward()

    frames = clips * T
    rows = []
    for name, fn in [("wav2vec2 fwd+bwd only (floor)", encoder_floor), ("batched teacher forcing (ours)", batched),
                     ("original: batch 1, AR rollout + grad", original)]:
        s = timed(fn, device, repeat=repeat, warmup=1)
        rows.append({"method": name, "seconds": s, "frames_per_s": frames / s})
    ours = rows[1]["frames_per_s"]
    for r in rows:
        r["ours_speedup_over_this"] = ours / r["frames_per_s"]
    return {"clips": clips, "seconds_per_clip": seconds, "frames": frames, "rows": rows}


@torch.no_grad()
def bench_decode(model, device, seconds_list, repeat: int):
    model.eval()
    out = []
    for seconds in seconds_list:
        T = int(seconds * FPS)
        feats = torch.randn(1, T, model.d, device=device)
        style = torch.zeros(1, dtype=torch.long, device=device)
        cached = timed(lambda: model.generate_from_features(feats, style), device, repeat=repeat)
        naive = timed(lambda: model.generate_naive_from_features(feats, style), device, repeat=1, warmup=0)
        diff = (model.generate_from_features(feats, style) - model.generate_naive_from_features(feats, style)).abs().max()
        out.append({"audio_s": seconds, "frames": T, "cached_s": cached, "naive_s": naive,
                    "speedup": naive / cached, "max_abs_diff": float(diff)})
    return out


def bench_infer(cfg, ckpt, device, seconds_list, tmp, repeat: int):
    from main.inference import load_model, run_single
    from utils.utils import setup_logger

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
    p.add_argument("--train_clips", type=int, default=4)
    p.add_argument("--train_seconds", type=float, default=4.0)
    p.add_argument("--memory_seconds", type=float, default=600.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default=None, help="output JSON (default docs/benchmarks_<device>.json)")
    args = p.parse_args(argv)
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
            r = bench_train(model, flame, device, args.train_clips, args.train_seconds, args.repeat)
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
        if "amp" in args.only and device.type == "cuda":
            r = bench_amp(cfg, flame, device)
            results["amp"] = r
            print(f"\n[amp] CUDA AMP training smoke test: loss {r['first_loss']:.3e} -> {r['last_loss']:.3e} in "
                  f"{r['steps']} steps, ok={r['ok']}, peak GPU memory {r['peak_gpu_mem_gb']:.2f} GB")
    out = args.json or os.path.join(ROOT, "docs", f"benchmarks_{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
