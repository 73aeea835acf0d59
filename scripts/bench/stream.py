"""Section stream: bounded decoder attention and the Streamer (models/streaming.py): speed, latency, and
deviation from offline output on a trained demo model."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from scripts.bench.common import FPS, HOP, ROOT, SR, speech_like, table
from utils.config import load_config
from utils.framing import DEFAULT_FRAMING


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
    from models.streaming import Streamer

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
    from models.streaming import Streamer

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
    warm = {f"warmup_{w}ms": deviation(warmup_ms=w) for w in (1000, 2000)}
    return {"clips": len(clips), "audio_s": sum(len(c[1]) for c in clips) / SR, "chunk_ms": base["chunk_ms"],
            "attention_window": base["attention_window"], "rows": rows, "default_primed_deviation": primed,
            "default_warmup_deviation": warm, "session_deviation": session_deviation(model, styles, clips, ref, base),
            "default": dict(base)}


def session_deviation(model, styles, clips, ref, base: dict) -> float:
    """The clips as consecutive utterances of one live session (``Streamer.next_utterance``: each starts
    from the normalisation statistics of the ones before; the first starts cold)."""
    from models.streaming import Streamer

    s, pred = None, []
    for _, raw, spk in clips:
        style = styles.index(spk) if spk in styles else 0
        s = Streamer(model, style, **base) if s is None else s.next_utterance(style)
        pred.append(np.concatenate([s.push(raw[i:i + s.chunk]) for i in range(0, len(raw), s.chunk)] + [s.flush()]))
    return _deviation(pred, ref)


def bench_stream(model, device, args):
    """The "stream" section: decoder cost with bounded attention, the Streamer's real-time budget on the
    full-size encoder, and deviations on the trained demo model."""
    from models.loading import load_model
    from utils.config_schema import DEFAULTS, STREAM_MS_UNBLOCKED

    inf = {**DEFAULTS["INFER"], **STREAM_MS_UNBLOCKED}  # these models' encoders were not trained for streaming
    base = {"chunk_ms": float(inf["stream_chunk_ms"]), "lookahead_ms": float(inf["stream_lookahead_ms"]),
            "left_context_ms": float(inf["stream_left_context_ms"]), "attention_window": inf["attention_window"],
            "warmup_ms": float(inf["stream_warmup_ms"])}
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
    # the same lookahead x left context table on the continuous stream (the live use: statistics warm)
    out["long_deviation"]["rows"] = [
        {"left_context_ms": "all" if left is None else left,
         **{f"lookahead_{la}ms": _deviation([stream_motion(demo, raw, style, **dict(
             base, lookahead_ms=float(la), left_context_ms=left))[0]], [ref]) for la in (0, 150, 300, 600)}}
        for left in (500.0, 1000.0, None)] if not args.stream_quick else []
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
        if r["long_deviation"].get("rows"):
            print("per left context (rows) x lookahead (columns), 60 s continuous stream:")
            print(table(r["long_deviation"]["rows"], list(r["long_deviation"]["rows"][0])))
    if "deviation" in r:
        print("\n[stream] attention window vs unbounded, trained demo model, 60 s (deviation = RMS diff / RMS of "
              "the motion's deviation from its mean)")
        print(table(r["attention_deviation"], list(r["attention_deviation"][0])))
        d = r["deviation"]
        print(f"\n[stream] streamed vs offline, trained demo model, {d['clips']} test clips ({d['audio_s']:.1f} s), "
              f"chunk {d['chunk_ms']:g} ms: deviation per left context (rows) x lookahead (columns)")
        print(table(d["rows"], list(d["rows"][0])))
        print(f"default settings with the normalisation statistics primed on the whole clip: "
              f"{d['default_primed_deviation']:.4f}; with a warm-up {d['default_warmup_deviation']}; the clips as "
              f"one live session (next_utterance): {d['session_deviation']:.4f}")
