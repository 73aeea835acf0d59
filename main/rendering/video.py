"""Vertex frames (+ audio) -> mp4: backend choice (``open_renderer``: egl / osmesa / cpu / auto), frames
piped to ffmpeg, audio mux, the FLAME faces. Both backends draw the scene of main/rendering/scene.py.
A renderer that cannot start (when asked for by name), or a frame without a mesh pixel, is an error that
says what to install: never a silent black video. Videos get the permissions of any file the user
creates (0666 less the umask).
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile

# Must be set before pyrender / PyOpenGL are imported; a value the user set is honoured.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
from tqdm import tqdm

from main.rendering.cpu import CpuMeshRenderer
from main.rendering.gl import MeshRenderer, missing_libraries, use_platform
from main.rendering.scene import Camera, RenderError, frame_camera
from models.flame import load_flame_pickle
from utils.atomic import atomic_write

log = logging.getLogger("render")


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
# Faces
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
