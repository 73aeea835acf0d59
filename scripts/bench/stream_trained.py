"""Section stream_trained: models trained with and without MODEL.encoder_block_frames, streamed cold at the
default settings against their own offline output, and the compute of a 60 s stream against offline
inference of the same audio (whole processes), with trained models and with wav2vec2-base's size.

    python scripts/benchmark.py stream_trained --trained RUN/best_model.pth ... --trained_data SPEECH_SET
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import numpy as np
import soundfile as sf
import torch

from scripts.bench.common import ROOT, SR, speech_like, table
from scripts.bench.stream import _deviation, demo_clips, offline_motion, stream_motion
from utils.config import load_config
from utils.config_schema import DEFAULTS

DEMO_CONFIG = os.path.join(ROOT, "config", "demo.yaml")
# the geometry of the wav2vec2-base-sized encoder trained for streaming: blocks of 4 frames, 2 of lookahead
BASE_STREAM_TRAINED = (4, 2)
# today's model at a quarter second: the chunk and lookahead of the same 0.25 s budget
QUARTER_SECOND = {"chunk_ms": 120.0, "lookahead_ms": 130.0}


def defaults() -> dict:
    """The Streamer's settings at the config's defaults (chunk and lookahead null: the model's)."""
    inf = DEFAULTS["INFER"]
    return {"chunk_ms": inf["stream_chunk_ms"], "lookahead_ms": inf["stream_lookahead_ms"],
            "left_context_ms": float(inf["stream_left_context_ms"]), "attention_window": inf["attention_window"]}


def cold_deviation(model, styles, clips, settings: dict) -> dict:
    """Each clip streamed cold (a fresh Streamer, no priming) vs the model's offline output, pooled."""
    from models.streaming import Streamer

    ref, pred = [], []
    for _, raw, spk in clips:
        style = styles.index(spk) if spk in styles else 0
        ref.append(offline_motion(model, raw, style, settings["attention_window"]))
        pred.append(stream_motion(model, raw, style, **settings)[0])
    latency = Streamer(model, 0, **settings).latency_s
    return {"deviation": _deviation(pred, ref), "max_abs_diff": max(float(np.abs(p - r).max()) for p, r in zip(pred, ref)),
            "algorithmic_latency_s": latency}


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def process_cost(args: list, env: dict | None = None) -> tuple[float, float]:
    """(wall s, CPU s) of one whole process (start-up, model load, audio read, inference, files written)."""
    c0, t0 = _child_cpu(), time.perf_counter()
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0, _child_cpu() - c0


def stream_vs_offline_processes(ckpt: str, data_root: str, wav: str, tmp: str, repeat: int = 2) -> dict:
    """CPU time of ``inference.py --stream`` over ``wav`` (one thread on a CPU, as the CLI streams) / of
    ``inference.py`` (offline, with torch's threads and with one), in turns. The ratio is taken to the
    cheaper offline run: on a busy machine threads that wait for each other spin and inflate CPU time."""
    base = ["inference.py", "--config", DEMO_CONFIG, "--checkpoint", ckpt, "--audio", wav, "--overwrite",
            f"DATA.data_root={data_root}", "INFER.device=cpu"]
    runs = {"offline": [], "offline_1thread": [], "stream": []}
    for _ in range(repeat):
        runs["offline"].append(process_cost([*base, "--out", os.path.join(tmp, "offline")]))
        runs["offline_1thread"].append(process_cost([*base, "--out", os.path.join(tmp, "offline")],
                                                    {"OMP_NUM_THREADS": "1"}))
        runs["stream"].append(process_cost([*base, "--stream", "--out", os.path.join(tmp, "stream")]))
    out = {}
    for k, v in runs.items():
        out[f"{k}_wall_s"], out[f"{k}_cpu_s"] = min(w for w, _ in v), min(c for _, c in v)
    out["stream_over_offline_cpu"] = out["stream_cpu_s"] / min(out["offline_cpu_s"], out["offline_1thread_cpu_s"])
    return out


def chunk_compute(model, seconds: float, settings: dict) -> dict:
    """Per-chunk CPU time of the Streamer on ``seconds`` of speech-like audio (one thread, as the CLI streams
    on a CPU): mean, p95, real-time factor."""
    raw = speech_like(seconds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI streams on a CPU
    try:
        stream_motion(model, raw[:SR], 0, **settings)  # warm-up
        _, stats = stream_motion(model, raw, 0, **settings)
    finally:
        torch.set_num_threads(threads)
    t = np.array([s["cpu_s"] for s in stats[:-1] if s["frames"]])
    return {"chunks": len(t), "cpu_mean_chunk_ms": 1000 * float(t.mean()),
            "cpu_p95_chunk_ms": 1000 * float(np.percentile(t, 95)),
            "cpu_real_time_factor": float(sum(s["cpu_s"] for s in stats)) / seconds}


def base_checkpoint(block: int, lookahead: int, flame_dir: str, path: str) -> str:
    """A wav2vec2-base-sized FaceFormer (random init, group-norm CNN, 12 layers) saved as training saves it."""
    from models.checkpoint import plain_values
    from models.faceformer import FaceFormer

    cfg = load_config(DEMO_CONFIG, [f"DATA.data_root={flame_dir}", "MODEL.audio_frontend=cnn",
                                    "MODEL.audio_encoder_config=null", f"MODEL.encoder_block_frames={block}",
                                    f"MODEL.encoder_lookahead_frames={lookahead}"])
    torch.manual_seed(0)
    m = FaceFormer(cfg.MODEL, n_styles=2)
    torch.save({"model": m.state_dict(), "optimizer": {}, "epoch": 0, "styles": ["A", "B"], "config": cfg.to_dict(),
                "audio_encoder_config": plain_values(m.audio_encoder.model.config.to_dict())}, path)
    return path


def bench_stream_trained(args, tmp: str) -> dict:
    from models.loading import load_model
    from models.streaming import Streamer

    data = os.path.abspath(args.trained_data)
    cfg = load_config(DEMO_CONFIG, [f"DATA.data_root={data}"])
    clips = demo_clips(data)
    settings = defaults()
    # 60 s of the held-out speech, for the whole-process comparison
    raw = np.concatenate([c[1] for c in clips])
    raw = np.tile(raw, int(np.ceil(60 * SR / len(raw))))[:60 * SR]
    wav = os.path.join(tmp, "speech60.wav")
    sf.write(wav, raw, SR, subtype="FLOAT")
    rows = []
    for ckpt in args.trained:
        model, styles = load_model(ckpt, cfg, torch.device("cpu"))
        block = model.audio_encoder.block
        row = {"checkpoint": os.path.basename(os.path.dirname(ckpt)) or ckpt, "block_frames": block,
               "lookahead_frames": model.audio_encoder.lookahead,
               "clips": len(clips), "audio_s": sum(len(c[1]) for c in clips) / SR}
        row.update({f"defaults_{k}": v for k, v in cold_deviation(model, styles, clips, settings).items()})
        if not block:
            row.update({f"quarter_s_{k}": v for k, v in
                        cold_deviation(model, styles, clips, dict(settings, **QUARTER_SECOND)).items()})
        row.update(stream_vs_offline_processes(ckpt, data, wav, tmp))
        rows.append(row)
        print(f"[stream_trained] {row}", flush=True)
    base = []
    for block, lookahead in ((0, 0), BASE_STREAM_TRAINED):
        ckpt = base_checkpoint(block, lookahead, data, os.path.join(tmp, f"base_block{block}.pth"))
        model, _ = load_model(ckpt, cfg, torch.device("cpu"))
        row = {"encoder": "wav2vec2-base size", "block_frames": block, "lookahead_frames": lookahead,
               **chunk_compute(model, 60.0, settings),
               "algorithmic_latency_s": Streamer(model, 0, **settings).latency_s}
        row.update(stream_vs_offline_processes(ckpt, data, wav, tmp, repeat=1))
        base.append(row)
        print(f"[stream_trained] {row}", flush=True)
    return {"defaults": settings, "quarter_second": QUARTER_SECOND, "trained": rows, "base": base}


def _filled(rows: list[dict], cols: list[str]) -> list[dict]:
    return [{c: row.get(c, "") for c in cols} for row in rows]


def print_stream_trained(r):
    print(f"\n[stream_trained] cold streams at the defaults {r['defaults']} vs each model's own offline output "
          f"(deviation = RMS diff / RMS of the motion's spread); today's models also at {r['quarter_second']}; "
          f"CPU of whole processes on 60 s of the held-out speech")
    cols = ["checkpoint", "block_frames", "lookahead_frames", "defaults_deviation", "defaults_algorithmic_latency_s",
            "quarter_s_deviation", "offline_cpu_s", "offline_1thread_cpu_s", "stream_cpu_s", "stream_over_offline_cpu"]
    print(table(_filled(r["trained"], cols), cols))
    print("\n[stream_trained] wav2vec2-base size (random init), 60 s")
    print(table(r["base"], ["block_frames", "lookahead_frames", "algorithmic_latency_s", "cpu_mean_chunk_ms", "cpu_p95_chunk_ms",
                            "cpu_real_time_factor", "offline_cpu_s", "offline_1thread_cpu_s", "stream_cpu_s",
                            "stream_over_offline_cpu"]))
