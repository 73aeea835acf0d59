"""Section export: ``main/export.py`` on a 60 s result (1,500 frames at 25 fps) of the stand-in FLAME (same
5023 vertices and array shapes as the licensed model) with an identity shape and speech-like motion.

- ``glb``: ``export_s``, reading the result and ``write_glb`` in process, FLAME already loaded (median of
  ``repeat``); ``cli_s``, ``python main/export.py --results DIR --overwrite`` in a fresh interpreter, end to
  end; ``glb_bytes`` / ``wav_bytes``, the files written; ``blender_s`` / ``blender_max_error_m``,
  scripts/check_glb_blender.py over every frame, where Blender is installed (import, playback through the
  depsgraph, comparison with the vertex files);
- ``rig``: the bounded least-squares fit onto scripts/make_rig.py's 52-shape rig (``fit_rig``: the (T,3V) x
  (3V,K) product, the batched solver, the residuals), best of ``repeat``; the fraction of weights on a
  bound and how well the rig explains the motion;
- ``viewer``: packing three 60 s faces (as ground truth, prediction and mean baseline) and 60 s of audio into
  one page: seconds, page size, the packing's largest vertex error; with chromium installed, the wall time
  of the page's #selftest over all 1,500 frames (software WebGL 2, virtual time).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

from scripts.bench.common import ROOT
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


def _speech_wav(tmp: str) -> str:
    wav, sr = os.path.join(tmp, "speech60.wav"), WAV2VEC2_SAMPLE_RATE
    sf.write(wav, (0.1 * np.sin(np.arange(sr * SECONDS) * 0.05)).astype(np.float32), sr)
    return wav


def make_result(tmp: str) -> tuple[str, str]:
    """A 60 s single-audio result folder of the stand-in FLAME -> (its path, the FLAME file)."""
    from main.results.formats import sample_arrays
    from main.results.layout import build_meta
    from main.results.writer import write_sample
    from models.flame import load_flame
    from scripts.flame_standin import write_standin_files

    write_standin_files(os.path.join(tmp, "FLAME"))
    model = os.path.join(tmp, "FLAME", "standin_generic_model.pkl")
    n = SECONDS * FPS
    motion, shape = _motion(n, 0), np.random.default_rng(0).normal(size=300).astype(np.float32)
    folder = os.path.join(tmp, "export_result")
    shutil.rmtree(folder, ignore_errors=True)
    write_sample(os.path.join(folder, "vertices"), folder, load_flame(model).motion_to_vertices(motion, shape),
                 sample_arrays(motion, shape), build_meta("speech", None, "A", None, _speech_wav(tmp), FPS, n,
                                                          "bench", "A", model, shape, None))
    return folder, model


def bench_glb(tmp: str, repeat: int) -> dict:
    from main.exporting.glb import write_glb
    from main.exporting.result import load_result
    from utils.config import load_config

    folder, _ = make_result(tmp)
    cfg = load_config(os.path.join(ROOT, "config", "demo.yaml"))
    times = []
    for _ in range(repeat + 1):  # the first call loads FLAME: not counted
        t0 = time.perf_counter()
        glb = write_glb(load_result(folder, cfg, vertices=False))
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "main", "export.py"), "--results", folder, "--overwrite"],
                   check=True, capture_output=True, cwd=ROOT)
    out = {"seconds": SECONDS, "fps": FPS, "frames": SECONDS * FPS, "export_s": statistics.median(times[1:]),
           "cli_s": time.perf_counter() - t0, "glb_bytes": os.path.getsize(glb),
           "wav_bytes": os.path.getsize(os.path.splitext(glb)[0] + ".wav"), "cpu_count": os.cpu_count()}
    if shutil.which("blender"):
        from scripts.check_glb_blender import check
        t0 = time.perf_counter()
        report = check(glb, os.path.join(folder, "vertices"))
        out.update(blender_s=time.perf_counter() - t0, blender_max_error_m=report["max_abs_error_m"],
                   blender=report["blender"])
    return out


def bench_rig_and_viewer(tmp: str, repeat: int) -> tuple[dict, dict]:
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

    t0 = time.perf_counter()
    mean_face = np.repeat(faces[0].mean(0, keepdims=True), n, 0)
    data = pack_sequences([("ground truth", faces[1], FPS), ("prediction", faces[0], FPS),
                           ("mean baseline", mean_face, FPS)], flame.faces)
    data.update(audio=wav_data_uri(_speech_wav(tmp)), title="benchmark")
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
    return rig, viewer


def bench_export(tmp: str, repeat: int = 3) -> dict:
    rig, viewer = bench_rig_and_viewer(tmp, repeat)
    return {"glb": bench_glb(tmp, repeat), "rig": rig, "viewer": viewer}


def print_export(r: dict):
    b, g, v = r["glb"], r["rig"], r["viewer"]
    print(f"\n[export] {SECONDS} s result ({b['frames']} frames at {b['fps']} fps), stand-in FLAME, CPU")
    print(f"[export] glb: read + write_glb (FLAME loaded) {b['export_s']:.2f} s, python main/export.py (fresh "
          f"process) {b['cli_s']:.2f} s; animation.glb {b['glb_bytes'] / 1e6:.1f} MB, animation.wav "
          f"{b['wav_bytes'] / 1e6:.1f} MB")
    if "blender_s" in b:
        print(f"[export] Blender {b['blender']} import + playback of every frame: {b['blender_s']:.1f} s, max error "
              f"{b['blender_max_error_m']:.1e} m")
    print(f"[export] rig: onto {g['shapes']} shapes in {g['seconds']:.2f} s (on a bound: {100 * g['on_a_bound']:.0f}% "
          f"of weights; unexplained {100 * g['unexplained_fraction']:.0f}%)")
    print(f"[export] viewer.html, three {SECONDS} s faces + audio: {v['page_mb']:.1f} MB (audio {v['audio_mb']:.1f} MB) "
          f"in {v['seconds']:.1f} s, packing error <= {v['max_error_m']:.2g} m")
    if "selftest_seconds" in v:
        print(f"[export] chromium #selftest over every frame: {v['selftest_seconds']:.1f} s ({v['selftest_title']})")
