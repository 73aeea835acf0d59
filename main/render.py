"""Render per-frame vertex files (+ audio) to mp4: a fixed frontal camera, OpenGL or CPU, ffmpeg mux.

Input layout (written by main/inference.py, main/results.py)::

    {INFER.output_root}/{exp_name}/{DATASET}/{STYLE_ID}/{i}.npy      each (V,3), i = 0..T-1
    {INFER.coeff_root}/{exp_name}/{DATASET}/{STYLE_ID}/meta.json     audio_path, fps, ... (optional)

Every "leaf" folder (one holding ``{i}.npy`` files) becomes one video, by default under
``results/videos/`` mirroring the tree: ``results/videos/{exp_name}/{DATASET}/{STYLE_ID}.mp4``.
Existing videos follow inference's rule (main/results.py ``select_todo``): an error listing them
before anything is rendered, unless ``--overwrite`` (render all again) or ``--resume`` (keep them,
render the missing ones; ``--skip_existing`` is the same).

Usage (from the repo root)::

    python main/render.py                                   # whole tree of config/faceformer.yaml
    python main/render.py --config config/demo.yaml INFER.exp_name=faceformer_demo
    python main/render.py --results path/to/leaf --audio speech.wav --out clip.mp4 --gt path/to/gt_leaf
    python main/render.py --backend cpu ...                 # no OpenGL needed

Backends (``--backend``): ``egl`` and ``osmesa`` draw with pyrender (main/render_gl.py) on that GL
platform; ``cpu`` with the numpy rasteriser (main/raster_cpu.py); ``auto`` (default) tries
PYOPENGL_PLATFORM (default egl), then the other GL platform, then the CPU, and says why it fell back.
Both draw the scene of main/render_scene.py: same camera, lights and colours. A renderer that cannot
start (when asked for by name), or a frame without a mesh pixel, is an error that says what to install:
never a silent black video. Videos get the permissions of any file the user creates (0666 less the umask).

Python API: ``render_sequence(frames (T,V,3), faces (F,3), out_mp4, fps, audio=None, gt=None, size=512,
backend="auto")``.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile

if __name__ == "__main__":  # `python main/render.py` puts main/, not the repo root, on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Must be set before pyrender / PyOpenGL are imported; a value the user set is honoured.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from main.raster_cpu import CpuMeshRenderer  # noqa: E402
from main.render_gl import MeshRenderer, gl_help, missing_libraries, use_platform  # noqa: E402,F401
from main.render_scene import Camera, RenderError, frame_camera  # noqa: E402,F401
from main.result_reader import find_leaves, is_inside, leaf_fps, leaf_meta, load_frames  # noqa: E402
from main.results import clean_stale_temps, results_mode, select_todo  # noqa: E402
from models.flame import load_flame_pickle  # noqa: E402
from utils.atomic import atomic_write  # noqa: E402
from utils.config import load_config, resolve_data_path  # noqa: E402
from utils.errors import ResultsError, run_reporting_user_errors  # noqa: E402
from utils.runtime import setup_logger  # noqa: E402

log = logging.getLogger("render")

DEFAULT_VIDEO_ROOT = "results/videos"


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------

BACKENDS = ("auto", "egl", "osmesa", "cpu")
_auto_choice: str | None = None  # what "auto" settled on in this process: a failing GL is tried once


def _cause(err: RenderError) -> str:
    """The first line of what made a GL renderer fail, short enough for a one-line message."""
    cause = err.__cause__ or err
    text = f"{type(cause).__name__}: {cause}".splitlines()[0]
    return text if len(text) <= 120 else text[:117] + "..."


def open_renderer(backend: str, faces: np.ndarray, camera: Camera, size: int, probe: np.ndarray | None = None):
    """A renderer for ``backend`` and the backend it is: (renderer, "egl" | "osmesa" | "cpu" | ...).

    ``egl`` / ``osmesa``: pyrender on that GL platform, a RenderError with install hints if it cannot
    start. ``cpu``: the numpy rasteriser. ``auto``: PYOPENGL_PLATFORM (egl unless set), then the other GL
    platform, then the CPU rasteriser, with one warning line that says why GL was not used; a GL
    renderer that starts but cannot draw ``probe`` (vertices (V,3)) counts as failed. The choice is kept
    for the rest of the process.
    """
    global _auto_choice
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto" and _auto_choice is not None:
        backend = _auto_choice
    if backend == "cpu":
        return CpuMeshRenderer(faces, camera, size), "cpu"
    if backend != "auto":
        use_platform(backend)
        return MeshRenderer(faces, camera, size), backend

    first = os.environ.get("PYOPENGL_PLATFORM") or "egl"
    reasons = []
    for platform in [first] + [p for p in ("egl", "osmesa") if p != first]:
        missing = missing_libraries(platform)
        if missing:
            reasons.append(f"{platform}: {', '.join(missing)} not found")
            continue
        use_platform(platform)
        try:
            renderer = MeshRenderer(faces, camera, size)
        except RenderError as e:
            reasons.append(f"{platform}: {_cause(e)}")
            continue
        if probe is not None:
            try:
                renderer.render(probe)
            except RenderError as e:
                renderer.close()
                reasons.append(f"{platform}: a context but no drawing ({_cause(e)})")
                continue
        _auto_choice = platform
        return renderer, platform
    log.warning("no OpenGL context (%s): rendering with the CPU rasteriser (--backend egl|osmesa shows the "
                "GL error with install hints)", "; ".join(reasons))
    _auto_choice = "cpu"
    return CpuMeshRenderer(faces, camera, size), "cpu"


def _ffmpeg(args: list[str], what: str):
    """Run the imageio-ffmpeg binary; raise RenderError with its stderr on failure."""
    import imageio_ffmpeg
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"] + args
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise RenderError(f"ffmpeg failed while {what} (exit {proc.returncode}):\n"
                          f"{proc.stderr.decode(errors='replace')[-2000:]}")


def render_sequence(frames, faces, out_mp4: str, fps: float, audio: str | None = None, gt=None,
                    size: int = 512, progress: bool = True, backend: str = "auto") -> str:
    """Render a vertex sequence to an H.264 (yuv420p) mp4, optionally with audio and ground truth.

    frames: (T,V,3) vertices; faces: (F,3) vertex ids; fps: frame rate of ``frames``;
    audio: a sound file muxed as AAC (not trimmed: ``-shortest`` would drop the last video frame);
    gt: optional (T',V,3) ground truth rendered to the right of the prediction with the same camera
    (the last gt frame is held / extra gt frames are cut so the video has T frames);
    size: height (and width per panel) in pixels, even; backend: see ``open_renderer``.
    The mp4 appears whole (written under a temporary name, then renamed) with the mode a plain
    ``open()`` would give it. Returns ``out_mp4``. Raises RenderError.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (T,V,3) with T >= 1, got {frames.shape}")
    if not np.isfinite(frames).all():
        raise RenderError(f"{out_mp4}: the vertex frames contain NaN/inf values")
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= frames.shape[1]:
        raise RenderError(f"{out_mp4}: faces {faces.shape} do not index the {frames.shape[1]} vertices of the "
                          f"frames (wrong FLAME model for these results? see --flame)")
    if np.ptp(frames.reshape(-1, 3), axis=0).max() <= 0:
        raise RenderError(f"{out_mp4}: all vertices of all frames are the same point: nothing to render")
    if size % 2:
        raise ValueError(f"size must be even for yuv420p video, got {size}")
    if audio is not None and not os.path.isfile(audio):
        raise RenderError(f"audio file not found: {audio}")
    if gt is not None:
        gt = np.asarray(gt, dtype=np.float32)
        if gt.ndim != 3 or gt.shape[1:] != frames.shape[1:]:
            raise ValueError(f"gt must be (T,{frames.shape[1]},3) like frames, got {gt.shape}")
        if abs(len(gt) - len(frames)) > 1:
            log.warning("%s: ground truth has %d frames, prediction %d; holding/cutting gt to match",
                        out_mp4, len(gt), len(frames))
        gt = gt[np.minimum(np.arange(len(frames)), len(gt) - 1)]

    # One camera for prediction and ground truth so both panels share scale and position.
    camera = frame_camera(frames if gt is None else np.concatenate([frames, gt]))
    out_mp4 = os.path.abspath(out_mp4)
    os.makedirs(os.path.dirname(out_mp4), exist_ok=True)
    renderer, used = open_renderer(backend, faces, camera, size, probe=frames[0])
    log.info("%s: %d frames, %s backend", out_mp4, len(frames), used)
    width = size * (2 if gt is not None else 1)
    def encode(path: str):  # the whole mp4 at ``path``, a temporary name (so ffmpeg is told the format)
        video = path if audio is None else path + "-video"  # muxing copies the video stream into ``path``
        import imageio_ffmpeg
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{size}", "-framerate", f"{fps:g}",
               "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
               "-movflags", "+faststart", "-f", "mp4", video]
        try:
            # stderr to a file, not a pipe: a full pipe would block ffmpeg while we block on stdin.
            with tempfile.TemporaryFile() as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
                try:
                    for t in tqdm(range(len(frames)), desc=f"render {os.path.basename(out_mp4)} ({used})",
                                  disable=not progress, leave=False):
                        img = renderer.render(frames[t], t)
                        if gt is not None:
                            img = np.concatenate([img, renderer.render(gt[t], t)], axis=1)
                        proc.stdin.write(img.tobytes())
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # ffmpeg died: its stderr is reported below
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                rc = proc.wait()
                if rc != 0:
                    err.seek(0)
                    raise RenderError(f"ffmpeg failed while encoding {out_mp4} (exit {rc}):\n"
                                      f"{err.read().decode(errors='replace')[-2000:]}")
            if audio is not None:
                _ffmpeg(["-i", video, "-i", os.path.abspath(audio), "-map", "0:v:0", "-map", "1:a:0",
                         "-c:v", "copy", "-c:a", "aac", "-b:a", "160k", "-movflags", "+faststart", "-f", "mp4",
                         path], f"muxing {audio} into {out_mp4}")
        finally:
            if video != path and os.path.exists(video):
                os.remove(video)
    try:
        atomic_write(out_mp4, encode, umask_mode=True)
    finally:
        renderer.close()
    return out_mp4


# ----------------------------------------------------------------------------------------------
# Results trees
# ----------------------------------------------------------------------------------------------

def load_faces(path: str) -> np.ndarray:
    """Triangle indices (F,3) int64 from a FLAME model file (.pkl/.npz, key ``f``) or a mesh file."""
    if not os.path.isfile(path):
        raise RenderError(f"FLAME model file not found: {path} (set FLAME.model_path / DATA.data_root, "
                          f"or pass --flame PATH)")
    if path.lower().endswith((".obj", ".ply", ".stl", ".off")):
        import trimesh
        return np.asarray(trimesh.load(path, process=False, force="mesh").faces, dtype=np.int64)
    model = load_flame_pickle(path)
    if "f" not in model:
        raise RenderError(f"{path}: no 'f' (faces) array in the FLAME model")
    return np.asarray(model["f"], dtype=np.int64)


def _leaf_dataset(leaf: str, meta: dict | None, cfg) -> str | None:
    if meta and meta.get("dataset"):
        return meta["dataset"]
    parent = os.path.basename(os.path.dirname(os.path.abspath(leaf)))
    return parent if cfg is not None and parent in cfg.DATA.datasets else None


def main(argv=None):
    p = argparse.ArgumentParser(description="Render {i}.npy vertex frames (+ wav) to mp4.")
    p.add_argument("--config", default="config/faceformer.yaml", help="config for defaults (paths, FLAME)")
    p.add_argument("--results", help="a leaf folder of {i}.npy frames, or a tree of them "
                                     "(default: {INFER.output_root}/{INFER.exp_name})")
    p.add_argument("--audio", help="wav to mux (default: audio_path from the coeff tree's meta.json; "
                                   "else a silent video)")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_VIDEO_ROOT}, mirroring the tree) or, "
                                 "for one leaf, an .mp4 path")
    p.add_argument("--fps", type=float, help="frame rate (default: meta.json fps, else the config's, else 25)")
    p.add_argument("--gt", help="ground truth shown on the right: a folder of {i}.npy (V,3) frames, a "
                                "(T,V,3) .npy, or for a tree of results a tree with the same layout")
    p.add_argument("--flame", help="FLAME model (or mesh file) for the faces (default FLAME.model_path, "
                                   "or the dataset's flame_model)")
    p.add_argument("--size", type=int, default=512, help="frame height in pixels (even)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="egl / osmesa: pyrender on that OpenGL platform; cpu: numpy rasteriser, no GL needed; "
                        "auto (default): PYOPENGL_PLATFORM (egl unless set), the other GL platform, then cpu")
    p.add_argument("--overwrite", action="store_true", help="replace existing videos (INFER.overwrite=true)")
    p.add_argument("--resume", "--skip_existing", action="store_true", help="keep existing videos, render the "
                   "missing ones (INFER.resume=true)")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)

    setup_logger("render")
    cfg = load_config(args.config, args.overrides)  # a repo-relative config path works from anywhere

    root = args.results or os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name)
    if not os.path.exists(root):
        raise ResultsError(f"results not found: {root}")
    leaves = [root] if os.path.isfile(root) else find_leaves(root)
    if not leaves:
        raise ResultsError(f"no folder with 0.npy, 1.npy, ... frame files under {root}")
    single_out = args.out is not None and args.out.lower().endswith(".mp4")
    if single_out and len(leaves) > 1:
        raise RenderError(f"--out {args.out} is one file but {root} holds {len(leaves)} sequences")

    # Videos mirror the results tree: relative to INFER.output_root when inside it, else to the
    # folder that holds --results (so its own name is kept).
    rel_base = cfg.INFER.output_root if is_inside(root, cfg.INFER.output_root) else os.path.dirname(
        os.path.abspath(root))
    out_root = args.out or DEFAULT_VIDEO_ROOT
    videos = []
    for leaf in leaves:
        rel = os.path.relpath(os.path.abspath(leaf), os.path.abspath(rel_base))
        # Style folders may contain dots: only a (T,V,3) .npy file loses its extension.
        rel = rel[:-4] if rel.lower().endswith(".npy") else rel
        videos.append(args.out if single_out else os.path.join(out_root, rel + ".mp4"))
    todo = select_todo([(v, None) for v in videos], results_mode(args.overwrite, args.resume, cfg),
                       "rerun with --overwrite to replace them, --resume to keep them, or choose another --out")
    clean_stale_temps([v for v, t in zip(videos, todo) if t])  # a killed render's temporary video
    faces_cache: dict[str, np.ndarray] = {}
    log.info("rendering %d sequence(s) from %s (--backend %s)", len(leaves), root, args.backend)
    for leaf, out_mp4, t in zip(leaves, videos, todo):
        if not t:
            log.info("exists, kept (--resume): %s", out_mp4)
            continue
        meta = leaf_meta(leaf, cfg)
        dataset = _leaf_dataset(leaf, meta, cfg)
        fps, fps_from = leaf_fps(meta, dataset, cfg, args.fps)

        audio = args.audio or (meta or {}).get("audio_path")
        if audio and not os.path.isfile(audio):
            log.warning("%s: audio %s not found: rendering without sound", leaf, audio)
            audio = None

        flame_path = args.flame
        if flame_path is None:
            ds_model = cfg.DATA.datasets[dataset].flame_model if dataset in cfg.DATA.datasets else None
            flame_path = resolve_data_path(cfg, ds_model or cfg.FLAME.model_path)
        if flame_path not in faces_cache:
            faces_cache[flame_path] = load_faces(flame_path)

        gt = None
        if args.gt:
            gt_path = args.gt if len(leaves) == 1 else os.path.join(args.gt, os.path.relpath(leaf, root))
            if os.path.exists(gt_path):
                gt = load_frames(gt_path)
            else:
                log.warning("%s: no ground truth at %s", leaf, gt_path)

        frames = load_frames(leaf)
        log.info("%s: %d frames at %g fps (%s), audio: %s%s", leaf, len(frames), fps, fps_from,
                 audio or "none", ", with ground truth" if gt is not None else "")
        render_sequence(frames, faces_cache[flame_path], out_mp4, fps, audio=audio, gt=gt, size=args.size,
                        backend=args.backend)
        log.info("wrote %s", out_mp4)


if __name__ == "__main__":
    run_reporting_user_errors("render", main)
