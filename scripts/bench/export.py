"""Section export: the glb of 60 s of animation (main/exporting/glb.py), on the stand-in FLAME (same 5023
vertices and array shapes as the licensed model) with an identity shape, expressions and a moving jaw:

- ``export_s``: ``write_glb`` in process, FLAME already loaded (median of ``repeat``);
- ``cli_s``: ``python main/export.py --results DIR --overwrite`` in a fresh interpreter, end to end;
- ``glb_bytes`` / ``wav_bytes``: the files written;
- ``blender_s`` / ``blender_max_error_m``: scripts/check_glb_blender.py over every frame, where Blender
  is installed (import, playback through the depsgraph, comparison with the vertex files).
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

from scripts.bench.common import ROOT, table
from utils.framing import WAV2VEC2_SAMPLE_RATE

SECONDS, FPS = 60, 25


def make_result(tmp: str) -> str:
    """A 60 s single-audio-like result folder of the stand-in FLAME -> its path."""
    from main.results.formats import sample_arrays
    from main.results.layout import build_meta
    from main.results.writer import write_sample
    from models.flame import load_flame
    from scripts.flame_standin import write_standin_files

    write_standin_files(os.path.join(tmp, "FLAME"))
    model = os.path.join(tmp, "FLAME", "standin_generic_model.pkl")
    n = SECONDS * FPS
    r = np.random.default_rng(0)
    t = np.arange(n) / FPS
    motion = np.zeros((n, 51), np.float32)
    motion[:, :50] = 0.8 * np.sin(2 * np.pi * (0.3 + r.random(50)) * t[:, None] + r.random(50) * 6)
    motion[:, 50] = 0.15 * (1 - np.cos(2 * np.pi * 4 * t))
    shape = r.normal(size=300).astype(np.float32)
    wav = os.path.join(tmp, "speech.wav")
    sr = WAV2VEC2_SAMPLE_RATE
    sf.write(wav, 0.1 * np.sin(2 * np.pi * 150 * np.arange(SECONDS * sr) / sr), sr)
    folder = os.path.join(tmp, "export_result")
    shutil.rmtree(folder, ignore_errors=True)
    flame = load_flame(model)
    write_sample(os.path.join(folder, "vertices"), folder, flame.motion_to_vertices(motion, shape),
                 sample_arrays(motion, shape), build_meta("speech", None, "A", None, wav, FPS, n, "bench", "A",
                                                          model, shape, None))
    return folder


def bench_export(tmp: str, repeat: int = 3) -> dict:
    from main.exporting.glb import write_glb

    folder = make_result(tmp)
    times = []
    for _ in range(repeat + 1):  # the first call loads FLAME: not counted
        t0 = time.perf_counter()
        glb = write_glb(folder, overwrite=True)
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


def print_export(r: dict):
    print(f"\n[export] {r['seconds']} s of animation ({r['frames']} frames at {r['fps']} fps), stand-in FLAME, CPU")
    rows = [{"what": "write_glb (FLAME loaded)", "value": f"{r['export_s']:.2f} s"},
            {"what": "python main/export.py (fresh process)", "value": f"{r['cli_s']:.2f} s"},
            {"what": "animation.glb", "value": f"{r['glb_bytes'] / 1e6:.1f} MB"},
            {"what": "animation.wav (16 kHz mono)", "value": f"{r['wav_bytes'] / 1e6:.1f} MB"}]
    if "blender_s" in r:
        rows.append({"what": f"Blender {r['blender']} import + playback of every frame",
                     "value": f"{r['blender_s']:.1f} s, max error {r['blender_max_error_m']:.1e} m"})
    print(table(rows, ["what", "value"]))
