"""Sections train, decode, infer, memory, amp: training step, KV-cached decoding, whole inference and its
peak memory against their references (scripts/benchmark.py runs them)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import soundfile as sf
import torch

from loss.loss import motion_vertex_loss
from models.faceformer import FaceFormer
from scripts.bench.common import FPS, HOP, ROOT, SR, legacy_padded_forward, speech_like, timed, timed_in_turn
from scripts.reference_decoding import generate_naive, generate_naive_from_features


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
    """Whole single-audio inference vs the bare encoder. The results are written under the work tree
    (.bench/), as users' results/ are: on this CI machine creating a file in /tmp costs ~1 ms of
    kernel time (0.1 ms in the work tree), which would count 0.25 s per 10 s of audio against inference."""
    import shutil
    import tempfile

    os.makedirs(os.path.join(ROOT, ".bench"), exist_ok=True)
    out_root = tempfile.mkdtemp(prefix="infer-", dir=os.path.join(ROOT, ".bench"))
    try:
        return _bench_infer(cfg, ckpt, device, seconds_list, tmp, out_root, repeat)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)


def _bench_infer(cfg, ckpt, device, seconds_list, tmp, out_root, repeat: int):
    from main.infer.pipeline import run_single
    from main.infer.request import Request
    from models.loading import load_model
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
            run_single(cfg, Request("file", wav, out=os.path.join(out_root, f"out_{seconds:g}"), checkpoint=ckpt,
                                    overwrite=True), logger, loaded=(model, styles))

        t_bare, t_whole = timed_in_turn([bare, whole], device, repeat=repeat)
        out.append({"audio_s": seconds, "bare_encoder_s": t_bare, "whole_inference_s": t_whole,
                    "ratio": t_whole / t_bare})
    return out


def bench_memory(config_path, ckpt, seconds, tmp, device):
    wav = os.path.join(tmp, f"speech_{seconds:g}s.wav")
    sf.write(wav, speech_like(seconds), SR)
    code = (
        "import resource, sys; sys.path.insert(0, %r)\n"
        "from utils.config import load_config\nfrom main.infer.pipeline import run_single\n"
        "from main.infer.request import Request\n"
        "cfg = load_config(%r, sys.argv[1:])\n"
        "run_single(cfg, Request('file', %r, checkpoint=%r, out=%r, overwrite=True))\n"
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
