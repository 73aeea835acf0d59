"""One result folder, read for export: its vertex frames, meta.json, FLAME faces and the identity at rest.

``--results DIR`` of main/export.py is any folder that names one result (main/results/layout.py):

- a single-audio or streaming result: ``DIR/meta.json`` beside ``DIR/vertices/{i}.npy``;
- a result of the evaluation tree: its coefficient folder ``{INFER.coeff_root}/.../{STYLE_ID}`` (meta.json,
  motion.npy) or its vertex folder ``{INFER.output_root}/.../{STYLE_ID}``; the other one is found through
  the config, as main/render.py does.

Exports are written beside meta.json (never into the vertex folder, which the evaluation reads whole).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from main.results.formats import ARRAYS, result_shape
from main.results.reader import META, is_inside, load_frames, read_meta
from models.flame import load_flame
from utils.config import flame_path_for
from utils.errors import ExportError, ResultsError
from utils.framing import DEFAULT_FPS, MOTION_DIM

IDENTITY_FRAMES = 50  # frames averaged to find the identity at rest (it is the same in every frame)


@dataclass
class ExportResult:
    """A result ready to export. vertices (T,V,3) float32 at ``fps``; faces (F,3) int64; identity (V,3)
    float32: the result's face with zero motion (its own identity, not FLAME's template)."""
    folder: str      # holds meta.json; exports go here
    vert_dir: str
    meta: dict
    vertices: np.ndarray
    fps: float
    faces: np.ndarray
    identity: np.ndarray
    flame_path: str

    def out(self, name: str) -> str:
        return os.path.join(self.folder, name)


def result_folders(path: str, cfg) -> tuple[str, str]:
    """(meta folder, vertex folder) of the result ``path`` names."""
    path = os.path.abspath(path)
    out_root, coeff_root = os.path.abspath(cfg.INFER.output_root), os.path.abspath(cfg.INFER.coeff_root)
    if os.path.isdir(os.path.join(path, "vertices")):
        return path, os.path.join(path, "vertices")
    if is_inside(path, coeff_root) and path != coeff_root:
        return path, os.path.join(out_root, os.path.relpath(path, coeff_root))
    if is_inside(path, out_root) and path != out_root:
        return os.path.join(coeff_root, os.path.relpath(path, out_root)), path
    return path, os.path.join(path, "vertices")


def load_result(path: str, cfg, flame_path: str | None = None) -> ExportResult:
    """The result ``path`` names (see the module doc). ``flame_path``: the FLAME model (default: the
    result's dataset's, else FLAME.model_path). A missing or unreadable part -> ResultsError naming it."""
    if not os.path.isdir(path):
        raise ResultsError(f"{path}: result folder not found")
    folder, vert_dir = result_folders(path, cfg)
    meta = read_meta(folder)
    if meta is None:
        raise ResultsError(f"{os.path.join(folder, META)}: not found; expected a result folder written by "
                           f"inference.py (DIR/meta.json beside DIR/vertices/, or a folder of its results tree)")
    vertices = load_frames(vert_dir)
    if len(vertices) != int(meta.get("n_frames", -1)):
        raise ResultsError(f"{vert_dir}: {len(vertices)} frames but {os.path.join(folder, META)} says "
                           f"{meta.get('n_frames')}: an incomplete result (rerun inference with --resume)")
    dataset = meta.get("dataset") if meta.get("dataset") in cfg.DATA.datasets else None
    flame_path = flame_path or flame_path_for(cfg, dataset)
    flame = load_flame(flame_path)
    if vertices.shape[1] != flame.n_vertices:
        raise ExportError(f"{flame_path}: FLAME model of {flame.n_vertices} vertices, but the result {vert_dir} "
                          f"has {vertices.shape[1]}; expected the model the result was made with (--flame)")
    motion, shape = _result_motion(folder, len(vertices))
    return ExportResult(folder, vert_dir, meta, vertices, float(meta.get("fps") or DEFAULT_FPS), flame.faces,
                        identity_at_rest(flame, vertices, motion, shape), flame_path)


def _result_motion(folder: str, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """motion (T,51) and identity shape (100,) of a result, from the arrays written beside meta.json."""
    arrays = {}
    for name, spec in ARRAYS.items():
        p = os.path.join(folder, f"{name}.npy")
        try:
            a = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ResultsError(f"{p}: unreadable or missing ({e}); expected the ({n_frames},{spec.width}) array "
                               f"inference writes beside meta.json") from None
        if a.shape != (n_frames, spec.width):
            raise ResultsError(f"{p}: expected a ({n_frames},{spec.width}) array, got {a.shape}")
        arrays[name] = a.astype(np.float32)
    return arrays["motion"], result_shape(arrays)


def identity_at_rest(flame, vertices: np.ndarray, motion: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """(V,3) the result's face with zero motion: FLAME's face of ``shape`` at rest, corrected by the mean
    of (vertices - FLAME of the same motion) over a few frames. coeffs287 keeps only 100 shape dims, so
    a result made with more of them differs from FLAME(shape) by a constant, which the correction
    restores (expression offsets hardly depend on the identity)."""
    pick = np.unique(np.linspace(0, len(vertices) - 1, min(IDENTITY_FRAMES, len(vertices))).round().astype(int))
    rest = flame.motion_to_vertices(np.zeros((1, MOTION_DIM), np.float32), shape)[0]
    moved = flame.motion_to_vertices(motion[pick], shape)
    return (rest + (vertices[pick] - moved).mean(0)).astype(np.float32)
