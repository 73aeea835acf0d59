"""Section export: ``main/export.py`` on a 60 s result (1,500 frames at 25 fps, stand-in FLAME).

- ``rig``: the bounded least-squares fit onto scripts/make_rig.py's 52-shape rig (``fit_rig``: the (T,3V) x
  (3V,K) product, the batched solver, the residuals), best of ``repeat``; the fraction of frames with a
  weight on a bound and how well the rig explains the (speech-like) motion;
- ``viewer``: packing three 60 s faces (as ground truth, prediction and mean baseline) and 60 s of audio into
  one page: seconds, page size, the packing's largest vertex error; with chromium installed, the wall time
  of the page's #selftest over all 1,500 frames (software WebGL 2, virtual time).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import soundfile as sf

from utils.framing import WAV2VEC2_SAMPLE_RATE

FPS, SECONDS = 25, 60


def _motion(n: int, seed: int) -> np.ndarray:
    """(n,51) speech-like motion: a syllable-rate jaw and slowly drifting expressions."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FPS
    motion = np.zeros((n, 51), np.float32)
    motion[:, 50] = 0.12 * (1 - np.cos(2 * np.pi * 4 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t))
    for k in range(50):
        motion[:, k] = rng.normal(0, 1.0 / (1 + k / 5)) * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t + rng.uniform(0, 6))
    return motion


def bench_export(tmp: str, repeat: int = 3) -> dict:
    from main.exporting.rig import fit_rig
    from main.exporting.viewer import viewer_page
    from main.exporting.viewer_data import pack_sequences, wav_data_uri
    from models.flame import FLAME
    from scripts.flame_standin import make_standin_flame
    from scripts.make_rig import make_rig

    flame = FLAME(make_standin_flame(0))
    n = FPS * SECONDS
    rest = flame.motion_to_vertices(np.zeros((1, 51), np.float32))[0]
    faces = [flame.motion_to_vertices(_motion(n, s)) for s in (0, 1)]
    _, _, deltas = make_rig(flame)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        w, err, unexplained = fit_rig(deltas, faces[0] - rest[None])
        times.append(time.perf_counter() - t0)
    rig = {"frames": n, "shapes": len(deltas), "seconds": min(times), "on_a_bound": float(((w == 0) | (w == 1)).mean()),
           "unexplained_fraction": unexplained, "fit_error_mean_m": float(err.mean())}

    wav = os.path.join(tmp, "speech60.wav")
    sr = WAV2VEC2_SAMPLE_RATE
    sf.write(wav, (0.1 * np.sin(np.arange(sr * SECONDS) * 0.05)).astype(np.float32), sr)
    t0 = time.perf_counter()
    mean_face = np.repeat(faces[0].mean(0, keepdims=True), n, 0)
    data = pack_sequences([("ground truth", faces[1], FPS), ("prediction", faces[0], FPS),
                           ("mean baseline", mean_face, FPS)], flame.faces)
    data.update(audio=wav_data_uri(wav), title="benchmark")
    page = viewer_page(data)
    viewer = {"seconds": time.perf_counter() - t0, "page_mb": len(page.encode()) / 1e6,
              "max_error_m": data["max_error"], "audio_mb": len(data["audio"]) / 1e6}
    path = os.path.join(tmp, "viewer.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    browser = shutil.which("chromium")
    if browser:
        t0 = time.perf_counter()
        run = subprocess.run([browser, "--headless", "--no-sandbox", "--use-angle=swiftshader",
                              "--enable-unsafe-swiftshader", "--virtual-time-budget=3600000", "--dump-dom",
                              f"file://{path}#selftest"], capture_output=True, text=True, timeout=1800,
                             env=dict(os.environ, HOME=tmp))
        viewer["selftest_seconds"] = time.perf_counter() - t0
        viewer["selftest_title"] = (run.stdout.split("<title>")[-1].split("</title>")[0])[:120]
    return {"rig": rig, "viewer": viewer}


def print_export(r: dict):
    g, v = r["rig"], r["viewer"]
    print(f"\n[export] {SECONDS} s result ({g['frames']} frames) onto {g['shapes']} shapes: {g['seconds']:.2f} s "
          f"(on a bound: {100 * g['on_a_bound']:.0f}% of weights; unexplained {100 * g['unexplained_fraction']:.0f}%)")
    print(f"[export] viewer.html, three {SECONDS} s faces + audio: {v['page_mb']:.1f} MB (audio {v['audio_mb']:.1f} MB) "
          f"in {v['seconds']:.1f} s, packing error <= {v['max_error_m']:.2g} m")
    if "selftest_seconds" in v:
        print(f"[export] chromium #selftest over every frame: {v['selftest_seconds']:.1f} s ({v['selftest_title']})")
