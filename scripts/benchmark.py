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
          30 s and 240 s; the Streamer (models/streaming.py) on the full-size encoder at the default settings:
          compute per chunk vs the chunk's duration, algorithmic latency; with a trained demo model
          (--demo_checkpoint, --demo_data), the deviation of bounded attention at 60 s and of streamed
          from offline motion per lookahead x left context. ``python scripts/benchmark.py stream``.
- stream_trained: (not in the default set) trained checkpoints (``--trained``) streamed cold at the default
          settings against their own offline output on the test clips of ``--trained_data`` (the held-out
          speech set), the CPU time of a 60 s stream against offline inference as whole processes, and
          the per-chunk compute of wav2vec2-base's size, with and without MODEL.encoder_block_frames.
- startup: (not in the default set) fresh-interpreter wall time of a bare ``import torch``, of
          transformers' wav2vec2 import, of the inference entry and of a 2 s clip end to end from the
          command line (scripts/bench/startup.py), the clip with a checkpoint that records its wav2vec2
          config (no transformers) and one that does not; ``--encoder`` picks the clip's wav2vec2
          (tiny = the demo's, base = wav2vec2-base); ``--startup_pythonpath DIR`` prices another
          transformers installed in DIR.
- render: (not in the default set) frames/s of each render backend (the numpy CPU rasteriser, pyrender
          on EGL) at 512x512 on one core and on all, render_sequence end to end with H.264, and the CPU
          rasteriser's silhouette IoU against pyrender (scripts/bench/render.py).
- loader: (not in the default set) frames/s of the training data loader in one process from the source
          files and from the prepared-data store on MEAD/VHAP-shaped files, start-up of a 20,000-sample
          index on the first and the second run, loader memory vs samples (scripts/bench/loader.py).
- export: (not in the default set) a 60 s result exported by main/export.py: the glb (time in process and
          from the command line, glb and wav size, Blender's playback of every frame), the fit onto a
          52-shape rig (bounded least squares), the browser viewer (seconds, page size, chromium's pass over
          every frame) (scripts/bench/export.py).
- train_modes: (not in the default set) every TRAIN.mode trained with the demo config on the held-out
          real-speech set (``--mode_data speech``, the default; or ``demo`` or a built folder), same
          epochs, seeds 0 and 1: teacher-forced and generated validation loss, LVE of generated test
          motion vs the mean-motion baseline, the listening ratio, training seconds per epoch side by
          side, sequential decoder calls per training step (what a step costs on a GPU).

The model is FaceFormer with the full-size wav2vec2-base architecture (random weights cost the same
as trained ones) unless --encoder tiny; FLAME is the procedural stand-in (same 5023 vertices).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from models.faceformer import FaceFormer
from models.flame import FLAME
from scripts.bench.common import ROOT, model_config, table
from scripts.bench.export import bench_export, print_export
from scripts.bench.loader import bench_loader, print_loader
from scripts.bench.render import bench_render, print_render
from scripts.bench.speed import bench_amp, bench_decode, bench_infer, bench_memory, bench_train
from scripts.bench.startup import bench_startup
from scripts.bench.stream import bench_stream, print_stream
from scripts.bench.stream_trained import bench_stream_trained, print_stream_trained
from scripts.bench.train_modes import TRAIN_MODE_DEFAULT, TRAIN_MODE_RUNS, bench_train_modes
from scripts.flame_standin import make_standin_flame, write_standin_files


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
    p.add_argument("--mode_data", default="speech", help="train_modes: 'speech' (the held-out real-speech set, "
                                                          "built), 'demo', or a built data folder")
    p.add_argument("--mode_seeds", type=int, nargs="+", default=[0, 1], help="train_modes: TRAIN.seed of each run")
    p.add_argument("--mode_jobs", type=int, default=4, help="train_modes: trainings run side by side")
    p.add_argument("--startup_pythonpath", default=None, help="startup: also time with this folder first on "
                   "PYTHONPATH (e.g. pip install --target DIR 'transformers<5' --no-deps)")
    p.add_argument("--trained", nargs="+", default=[], help="stream_trained: checkpoints to stream cold and "
                                                             "compare with their offline output")
    p.add_argument("--trained_data", default=None, help="stream_trained: the data folder whose test clips are "
                                                        "streamed (e.g. the speech set of make_speech_set.py)")
    p.add_argument("--workdir", default=None, help="keep the data, trainings and results here (default: a "
                                                    "temporary folder, removed at the end)")
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
    with (contextlib.nullcontext(os.path.abspath(args.workdir)) if args.workdir else tempfile.TemporaryDirectory()) as tmp:
        write_standin_files(tmp, seed=0)
        cfg = model_config(args.encoder, tmp)
        cfg.INFER.device = args.device
        flame = FLAME(make_standin_flame(0), device=device)
        model = FaceFormer(cfg.MODEL, n_styles=4).to(device)
        # the output map starts at zero; give it trained-like weights so outputs (and diffs) are real
        torch.nn.init.normal_(model.output_map.weight, std=0.05)
        ckpt = os.path.join(tmp, "bench.pth")
        # as train.py writes it: with the wav2vec2 config, so inference runs models/wav2vec2_runtime.py
        from models.checkpoint import plain_values
        torch.save({"model": model.state_dict(), "styles": ["S0", "S1", "S2", "S3"], "config": cfg.to_dict(),
                    "epoch": 0, "audio_encoder_config": plain_values(model.audio_encoder.model.config.to_dict())},
                   ckpt)
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
            r = bench_train_modes(args.modes, args.mode_epochs, tmp, device.type, data=args.mode_data,
                                  seeds=args.mode_seeds, jobs=args.mode_jobs)
            results["train_modes"] = r
            print(f"\n[train_modes] {r['data']} data, {r['epochs']} epochs each, seeds {r['seeds']}; val losses of "
                  f"the best (generated) epoch; LVE of generated test motion; mean-motion baseline LVE "
                  f"{r['baseline_LVE']:.4g}, linear listener {r['linear_LVE']:.4g}; listening = LVE with another "
                  f"clip's audio / with its own; closure (chance), corr, rest_move: main/lipsync.py (ground truth: "
                  f"{r['ground_truth_lipsync']}); epoch_s = training seconds per epoch, side by side")
            print(table(r["rows"], ["mode", "seed", "epoch", "gen/tf", "LVE", "LVE/baseline", "LVE/linear",
                                    "listening", "closure", "closure_chance", "corr", "rest_move", "epoch_s",
                                    "epoch_s_vs_first", "sequential_decoder_calls"]))
            print("\nper mode, mean (range) over seeds:")
            print(table(r["summary"], ["mode", "seeds", "LVE/baseline", "LVE/baseline range", "LVE/linear",
                                       "gen/tf", "listening", "closure", "closure_chance", "corr", "rest_move",
                                       "epoch_s_vs_first", "sequential_decoder_calls"]))
        if "stream" in args.only:
            results["stream"] = bench_stream(model, device, args)
            print_stream(results["stream"])
        if "stream_trained" in args.only:
            if not args.trained or not args.trained_data:
                raise SystemExit("stream_trained needs --trained CHECKPOINT ... and --trained_data DATA_ROOT")
            results["stream_trained"] = bench_stream_trained(args, tmp)
            print_stream_trained(results["stream_trained"])
        if "startup" in args.only:
            r = bench_startup(tmp, max(args.repeat, 3), args.startup_pythonpath, args.encoder)
            results["startup"] = r
            print(f"\n[startup] fresh interpreters in turn, median of {r['repeat']} rounds (wall s); clip = python "
                  f"inference.py --audio (2 s, demo config, {r['encoder']} wav2vec2); target: clip <= "
                  f"{r['target_clip_over_torch']:g}x import torch")
            print(table(r["rows"], ["command", "transformers", "median_s", "min_s", "x_import_torch"]))
        if "loader" in args.only:
            results["loader"] = bench_loader(tmp, repeat=max(args.repeat, 3))
            print_loader(results["loader"])
        if "render" in args.only:
            results["render"] = bench_render(tmp, max(args.repeat, 3))
            print_render(results["render"])
        if "export" in args.only:
            results["export"] = bench_export(tmp, max(args.repeat, 3))
            print_export(results["export"])
        if "amp" in args.only and device.type == "cuda":
            r = bench_amp(cfg, flame, device)
            results["amp"] = r
            print(f"\n[amp] CUDA AMP training smoke test: loss {r['first_loss']:.3e} -> {r['last_loss']:.3e} in "
                  f"{r['steps']} steps, ok={r['ok']}, peak GPU memory {r['peak_gpu_mem_gb']:.2f} GB")
    section = f"_{args.only[0]}" if args.only in (["train_modes"], ["stream"], ["startup"], ["render"],
                                                  ["loader"], ["export"]) else ""
    out = args.json or os.path.join(ROOT, "docs", f"benchmarks{section}_{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
