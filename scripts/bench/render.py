"""Section render: frames per second of each render backend at 512 x 512, and how closely the CPU
rasteriser's silhouettes follow pyrender's.

Each measurement runs in a fresh interpreter pinned to a set of cores (``os.sched_setaffinity``, which
ffmpeg and Mesa's threads inherit), on stand-in FLAME frames whose jaw opens and closes:

- ``render_ms``: one ``renderer.render(vertices)`` call (best of ``repeat`` passes over the clip);
- ``video_fps``: ``render_sequence`` end to end (camera, every frame, H.264 encoding, file renamed into
  place) over the clip's frame count;
- ``iou``: per frame, |A and B| / |A or B| of the non-background pixels of the two backends (pyrender
  anti-aliases its edges with 4 samples per pixel, the rasteriser samples pixel centres), min and mean
  over every fifth frame; ``mean_abs_diff``: grey levels where both show the mesh.

A GL backend that cannot start here is reported with its error instead of numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from scripts.bench.common import ROOT


def clip_files(tmp: str, n_frames: int) -> tuple[str, str]:
    """Stand-in FLAME vertices (n_frames, 5023, 3) with the jaw opening and closing twice, and faces."""
    from models.flame import FLAME
    from scripts.flame_standin import make_standin_flame
    flame = FLAME(make_standin_flame(0))
    motion = np.zeros((n_frames, 51), np.float32)
    motion[:, 50] = 0.175 * (1 - np.cos(np.linspace(0, 4 * np.pi, n_frames)))
    motion[:, :10] = 0.5 * np.sin(np.linspace(0, 3 * np.pi, n_frames))[:, None]
    frames_path, faces_path = os.path.join(tmp, "render_frames.npy"), os.path.join(tmp, "render_faces.npy")
    np.save(frames_path, flame.motion_to_vertices(motion))
    np.save(faces_path, np.asarray(flame.faces))
    return frames_path, faces_path


def _run_child(args: list[str], cores: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cores), MKL_NUM_THREADS=str(cores), OPENBLAS_NUM_THREADS=str(cores),
               PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "scripts.bench.render"] + args + [str(cores)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_render(tmp: str, repeat: int = 3, size: int = 512, n_frames: int = 100) -> dict:
    frames_path, faces_path = clip_files(tmp, n_frames)
    all_cores = len(os.sched_getaffinity(0))
    rows = []
    for backend in ("cpu", "egl"):
        for cores in sorted({1, all_cores}):
            r = _run_child(["speed", backend, frames_path, faces_path, str(size), str(repeat), tmp], cores)
            rows.append({"backend": backend, "cores": cores, **r})
    agreement = _run_child(["agree", "egl", frames_path, faces_path, str(size), "0", tmp], all_cores)
    return {"size": size, "frames": n_frames, "repeat": repeat, "rows": rows, "agreement": agreement,
            "cpu_model": _cpu_model()}


def print_render(r: dict):
    from scripts.bench.common import table
    print(f"\n[render] {r['frames']} stand-in FLAME frames at {r['size']}x{r['size']} on {r['cpu_model']}; "
          f"render_ms = one frame (best of {r['repeat']} passes), video_fps = render_sequence incl. H.264")
    rows = [dict(row, render_ms=row.get("render_ms", row.get("error", "")), frames_per_s=row.get("frames_per_s", ""),
                 video_fps=row.get("video_fps", "")) for row in r["rows"]]
    print(table(rows, ["backend", "cores", "render_ms", "frames_per_s", "video_fps"]))
    a = r["agreement"]
    if "error" in a:
        print(f"silhouettes vs pyrender: not measured ({a['error']})")
    else:
        print(f"silhouettes vs pyrender over {a['compared']} frames: IoU min {a['iou_min']:.4f}, mean "
              f"{a['iou_mean']:.4f}; mean |grey difference| where both show the mesh {a['mean_abs_diff']:.2f}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


# ----------------------------------------------------------------------------------------------
# The measured process
# ----------------------------------------------------------------------------------------------

def _child(argv: list[str]):
    mode, backend, frames_path, faces_path, size, repeat, tmp, cores = argv
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(cores)])
    import main.rendering.video as R
    frames, faces, size = np.load(frames_path), np.load(faces_path), int(size)
    camera = R.frame_camera(frames)
    if mode == "agree":
        gl, _ = R.open_renderer(backend, faces, camera, size)
        cpu, _ = R.open_renderer("cpu", faces, camera, size)
        ious, diffs = [], []
        for t in range(0, len(frames), 5):
            a, b = gl.render(frames[t], t), cpu.render(frames[t], t)
            ma, mb = (a != 255).any(-1), (b != 255).any(-1)
            ious.append((ma & mb).sum() / (ma | mb).sum())
            diffs.append(np.abs(a.astype(int) - b.astype(int))[ma & mb].mean())
        gl.close()
        print(json.dumps({"compared": len(ious), "iou_min": float(min(ious)), "iou_mean": float(np.mean(ious)),
                          "mean_abs_diff": float(np.mean(diffs))}))
        return
    renderer, used = R.open_renderer(backend, faces, camera, size)
    renderer.render(frames[0])  # first-use costs (shader compilation, allocations) are not per frame
    best = float("inf")
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        for t in range(len(frames)):
            renderer.render(frames[t], t)
        best = min(best, (time.perf_counter() - t0) / len(frames))
    renderer.close()
    t0 = time.perf_counter()
    R.render_sequence(frames, faces, os.path.join(tmp, f"bench_{backend}_{cores}.mp4"), 25, size=size,
                      progress=False, backend=backend)
    video_s = time.perf_counter() - t0
    print(json.dumps({"render_ms": 1000 * best, "frames_per_s": 1 / best, "video_fps": len(frames) / video_s}))


if __name__ == "__main__":
    _child(sys.argv[1:])
