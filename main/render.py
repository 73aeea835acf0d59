"""Render per-frame vertex files (+ audio) to mp4: pyrender offscreen, fixed frontal camera, ffmpeg mux.

Input layout (written by main/inference.py, DESIGN.md 6)::

    {INFER.output_root}/{exp_name}/{DATASET}/{STYLE_ID}/{i}.npy      each (V,3), i = 0..T-1
    {INFER.coeff_root}/{exp_name}/{DATASET}/{STYLE_ID}/meta.json     audio_path, fps, ... (optional)

Every "leaf" folder (one holding ``{i}.npy`` files) becomes one video, by default under
``results/videos/`` mirroring the tree: ``results/videos/{exp_name}/{DATASET}/{STYLE_ID}.mp4``.

Usage (from the repo root)::

    python main/render.py                                   # whole tree of config/faceformer.yaml
    python main/render.py --config config/demo.yaml INFER.exp_name=faceformer_demo
    python main/render.py --results path/to/leaf --audio speech.wav --out clip.mp4 --gt path/to/gt_leaf

The GL platform is PYOPENGL_PLATFORM (default ``egl``: headless through libEGL, GPU or Mesa on CPU;
``osmesa`` is the pure-software alternative). A renderer that cannot start, or a frame that comes out
as a single flat colour, is an error that names the missing library: never a silent black video.

Python API: ``render_sequence(frames (T,V,3), faces (F,3), out_mp4, fps, audio=None, gt=None, size=512)``.
"""
from __future__ import annotations

import argparse
import ctypes.util
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

from main.results import find_leaves, is_inside, leaf_fps, leaf_meta, load_frames  # noqa: E402
from utils.errors import UserError  # noqa: E402

log = logging.getLogger("render")

DEFAULT_VIDEO_ROOT = "results/videos"
MESH_COLOR = (0.55, 0.55, 0.55, 1.0)
BG_COLOR = (1.0, 1.0, 1.0, 1.0)


class RenderError(UserError, RuntimeError):
    """Rendering could not produce a valid video; the message says why and what to install."""


# ----------------------------------------------------------------------------------------------
# GL diagnostics
# ----------------------------------------------------------------------------------------------

def gl_help(platform: str | None = None) -> str:
    """A message naming the GL libraries the current PYOPENGL_PLATFORM needs, which are missing,
    and how to install them (DESIGN.md 10)."""
    platform = platform or os.environ.get("PYOPENGL_PLATFORM", "egl")
    needed = {"egl": ["EGL", "GL"], "osmesa": ["OSMesa"]}.get(platform, ["GL"])
    missing = [f"lib{name}" for name in needed if ctypes.util.find_library(name) is None]
    lines = [f"PYOPENGL_PLATFORM={platform}; "
             + (f"missing library: {', '.join(missing)}." if missing
                else f"libraries {', '.join('lib' + n for n in needed)} were found, but no context/frame could be made.")]
    lines.append("  EGL (default, headless; GPU driver or Mesa on CPU): "
                 "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri, then PYOPENGL_PLATFORM=egl")
    lines.append("  OSMesa (pure software): apt-get install libosmesa6 and pip install 'PyOpenGL>=3.1.4' "
                 "(after pyrender; pyrender's pin 3.1.0 fails on Python 3.11), then PYOPENGL_PLATFORM=osmesa")
    if platform == "osmesa":
        try:
            import OpenGL
            if tuple(int(x) for x in OpenGL.__version__.split(".")[:3]) < (3, 1, 4):
                lines.append(f"  PyOpenGL {OpenGL.__version__} is installed: OSMesa needs >= 3.1.4")
        except Exception:  # pragma: no cover - diagnostics must not raise
            pass
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

def frame_camera(frames: np.ndarray, yfov: float = np.pi / 8, margin: float = 1.15):
    """A frontal camera pose (4,4) for vertices ``frames`` (T,V,3) or (V,3), fixed for the sequence.

    FLAME looks down +z with y up, and pyrender cameras look down -z, so the camera sits on the +z
    side of the bounding box centre with identity rotation, far enough that the x/y extent of the
    whole sequence (plus a margin) fits the square field of view. Returns (pose, yfov, znear, zfar).
    """
    pts = frames.reshape(-1, 3)
    lo, hi = pts.min(0), pts.max(0)
    center, extent = (lo + hi) / 2, (hi - lo)
    half = max(extent[0], extent[1], 1e-6) / 2 * margin
    dist = half / np.tan(yfov / 2) + extent[2] / 2
    pose = np.eye(4)
    pose[:3, 3] = center + np.array([0.0, 0.0, dist])
    return pose, yfov, dist * 0.01, dist * 10 + extent[2]


class MeshRenderer:
    """Offscreen pyrender renderer of one mesh topology with a fixed camera and lights.

    ``render(vertices (V,3)) -> (size, size, 3) uint8``. Raises RenderError (with install hints) if the
    GL context cannot be created or a frame is one flat colour / has no mesh pixel.
    """

    def __init__(self, faces: np.ndarray, camera_pose: np.ndarray, yfov: float, znear: float,
                 zfar: float, size: int = 512):
        try:
            import pyrender
            self._pyrender = pyrender
            self.renderer = pyrender.OffscreenRenderer(size, size)
        except Exception as e:
            raise RenderError(f"could not create an offscreen GL renderer ({type(e).__name__}: {e}).\n"
                              + gl_help()) from e
        self.faces = np.asarray(faces, dtype=np.int64)
        self.material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=MESH_COLOR, metallicFactor=0.05, roughnessFactor=0.7)
        self.scene = pyrender.Scene(bg_color=BG_COLOR, ambient_light=(0.1, 0.1, 0.1))
        self.scene.add(pyrender.PerspectiveCamera(yfov=yfov, znear=znear, zfar=zfar, aspectRatio=1.0),
                       pose=camera_pose)
        # A key light from above-right of the camera and a dimmer fill from the left: a purely frontal
        # light flattens the face and hides the lip contours.
        for direction, intensity in (((0.35, 0.45, 1.0), 2.5), ((-0.6, 0.1, 1.0), 1.0)):
            light_pose = np.eye(4)
            light_pose[:3, :3] = _look_rotation(np.array(direction))
            self.scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=intensity), pose=light_pose)
        self.node = None

    def render(self, vertices: np.ndarray, index: int = 0) -> np.ndarray:
        import trimesh
        pyrender = self._pyrender
        tm = trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64), faces=self.faces,
                             process=False)
        mesh = pyrender.Mesh.from_trimesh(tm, material=self.material, smooth=True)
        if self.node is not None:
            self.scene.remove_node(self.node)
        self.node = self.scene.add(mesh)
        try:
            color, depth = self.renderer.render(self.scene)
        except Exception as e:
            raise RenderError(f"frame {index} failed to render ({type(e).__name__}: {e}).\n" + gl_help()) from e
        color = np.ascontiguousarray(color[..., :3])
        # A broken GL stack typically returns all-black (or all-background) buffers without raising.
        if (color == color[0, 0]).all() or not (depth > 0).any():
            raise RenderError(f"frame {index} rendered as a single flat colour with no mesh pixel; the "
                              f"vertices are finite and framed by the camera, so the GL backend is not "
                              f"drawing.\n" + gl_help())
        return color

    def close(self):
        try:
            self.renderer.delete()
        except Exception:  # pragma: no cover - best effort on a context that never worked
            pass


def _look_rotation(direction: np.ndarray) -> np.ndarray:
    """Rotation (3,3) whose -z axis points from ``direction`` towards the origin (a light at
    ``direction`` shining at the face)."""
    z = direction / np.linalg.norm(direction)
    x = np.cross([0.0, 1.0, 0.0], z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _ffmpeg(args: list[str], what: str):
    """Run the imageio-ffmpeg binary; raise RenderError with its stderr on failure."""
    import imageio_ffmpeg
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"] + args
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise RenderError(f"ffmpeg failed while {what} (exit {proc.returncode}):\n"
                          f"{proc.stderr.decode(errors='replace')[-2000:]}")


def render_sequence(frames, faces, out_mp4: str, fps: float, audio: str | None = None, gt=None,
                    size: int = 512, progress: bool = True) -> str:
    """Render a vertex sequence to an H.264 (yuv420p) mp4, optionally with audio and ground truth.

    frames: (T,V,3) vertices; faces: (F,3) vertex ids; fps: frame rate of ``frames``;
    audio: a sound file muxed as AAC (not trimmed: ``-shortest`` would drop the last video frame);
    gt: optional (T',V,3) ground truth rendered to the right of the prediction with the same camera
    (the last gt frame is held / extra gt frames are cut so the video has T frames);
    size: height (and width per panel) in pixels, even. Returns ``out_mp4``. Raises RenderError.
    """
    from tqdm import tqdm

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
    pose, yfov, znear, zfar = frame_camera(frames if gt is None else np.concatenate([frames, gt]))
    renderer = MeshRenderer(faces, pose, yfov, znear, zfar, size)

    out_mp4 = os.path.abspath(out_mp4)
    out_dir = os.path.dirname(out_mp4)
    os.makedirs(out_dir, exist_ok=True)
    width = size * (2 if gt is not None else 1)
    tmp_video = tempfile.NamedTemporaryFile(prefix=".render_", suffix=".mp4", dir=out_dir, delete=False).name
    tmp_final = tmp_video[:-4] + "_av.mp4"
    try:
        import imageio_ffmpeg
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{size}", "-framerate", f"{fps:g}",
               "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
               "-movflags", "+faststart", tmp_video]
        # stderr to a file, not a pipe: a full pipe would block ffmpeg while we block on stdin.
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
            try:
                for t in tqdm(range(len(frames)), desc=f"render {os.path.basename(out_mp4)}",
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
            _ffmpeg(["-i", tmp_video, "-i", os.path.abspath(audio), "-map", "0:v:0", "-map", "1:a:0",
                     "-c:v", "copy", "-c:a", "aac", "-b:a", "160k", "-movflags", "+faststart", tmp_final],
                    f"muxing {audio} into {out_mp4}")
            os.replace(tmp_final, out_mp4)
        else:
            os.replace(tmp_video, out_mp4)
    finally:
        renderer.close()
        for p in (tmp_video, tmp_final):
            if os.path.exists(p):
                os.remove(p)
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
    from models.flame import load_flame_pickle
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
    from utils.config import load_config, resolve_data_path
    from utils.runtime import setup_logger

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
    p.add_argument("--skip_existing", action="store_true", help="keep videos that already exist")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value config overrides")
    args = p.parse_intermixed_args(argv)

    setup_logger("render")
    cfg = load_config(args.config, args.overrides)  # a repo-relative config path works from anywhere

    root = args.results or os.path.join(cfg.INFER.output_root, cfg.INFER.exp_name)
    if not os.path.exists(root):
        raise SystemExit(f"render: results not found: {root}")
    leaves = [root] if os.path.isfile(root) else find_leaves(root)
    if not leaves:
        raise SystemExit(f"render: no folder with 0.npy, 1.npy, ... frame files under {root}")
    single_out = args.out is not None and args.out.lower().endswith(".mp4")
    if single_out and len(leaves) > 1:
        raise SystemExit(f"render: --out {args.out} is one file but {root} holds {len(leaves)} sequences")

    # Videos mirror the results tree: relative to INFER.output_root when inside it, else to the
    # folder that holds --results (so its own name is kept).
    rel_base = cfg.INFER.output_root if is_inside(root, cfg.INFER.output_root) else os.path.dirname(
        os.path.abspath(root))
    out_root = args.out or DEFAULT_VIDEO_ROOT
    faces_cache: dict[str, np.ndarray] = {}
    log.info("rendering %d sequence(s) from %s (PYOPENGL_PLATFORM=%s)", len(leaves), root,
             os.environ["PYOPENGL_PLATFORM"])
    for leaf in leaves:
        rel = os.path.relpath(os.path.abspath(leaf), os.path.abspath(rel_base))
        # Style folders may contain dots: only a (T,V,3) .npy file loses its extension.
        rel = rel[:-4] if rel.lower().endswith(".npy") else rel
        out_mp4 = args.out if single_out else os.path.join(out_root, rel + ".mp4")
        if args.skip_existing and os.path.exists(out_mp4):
            log.info("exists, skipped: %s", out_mp4)
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
        render_sequence(frames, faces_cache[flame_path], out_mp4, fps, audio=audio, gt=gt, size=args.size)
        log.info("wrote %s", out_mp4)


if __name__ == "__main__":
    from utils.errors import run_reporting_user_errors
    run_reporting_user_errors("render", main)
