"""One result folder, read once for every export of main/export.py: its meta.json, motion, frame rate,
audio, FLAME model and identity shape, and (for the rig and the viewer) its vertex frames and its face at
rest.

``--results DIR`` names one result (main/results/layout.py):

- a single-audio or streaming result: ``DIR/meta.json`` beside ``DIR/vertices/{i}.npy``;
- a sample of the results tree: its coefficient folder ``{INFER.coeff_root}/.../{STYLE_ID}`` (meta.json,
  motion.npy) or its vertex folder ``{INFER.output_root}/.../{STYLE_ID}``; the other one is found through
  the config, as main/render.py does.

Exports are written beside meta.json (never into the vertex folder, which the evaluation reads whole).
Every missing or unusable piece is one error naming the file and what was expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from main.results.formats import ARRAYS, result_shape
from main.results.reader import META, is_inside, load_frames, read_meta
from models.flame import FLAME, load_flame
from utils.config import flame_path_for
from utils.errors import ExportError, ResultsError
from utils.framing import MOTION_DIM

IDENTITY_FRAMES = 50  # frames averaged to find the identity at rest (it is the same in every frame)


@dataclass
class ExportResult:
    """A result ready to export. motion (T,51) float32 at ``fps``; audio: the file the motion was made
    from, as meta.json names it (None: stdin); shape (S,) float32 or None (the mean face); flame: the
    models/flame.py FLAME of the vertices. Read only when asked (``load_result``): vertices (T,V,3)
    float32 and identity (V,3) float32, the result's face with zero motion (its own, not FLAME's template)."""
    folder: str      # holds meta.json; exports go here
    vert_dir: str
    meta: dict
    motion: np.ndarray
    fps: float
    audio: str | None
    flame_path: str
    flame: FLAME
    shape: np.ndarray | None
    vertices: np.ndarray | None = None
    identity: np.ndarray | None = None

    @property
    def faces(self) -> np.ndarray:
        return self.flame.faces

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


def load_result(path: str, cfg, flame_path: str | None = None, vertices: bool = True,
                config_flame: bool = True) -> ExportResult:
    """The result ``path`` names (see the module doc). The FLAME model: ``flame_path``, else the one
    meta.json records, else (a result made before meta.json recorded it) the config's, the result's
    dataset's or FLAME.model_path, when ``config_flame`` says the config is the one that made the result.
    ``vertices``: also read the vertex frames and the identity at rest (the rig and the viewer need them)."""
    if not os.path.isdir(path):
        raise ResultsError(f"{path}: result folder not found")
    folder, vert_dir = result_folders(path, cfg)
    meta_path = os.path.join(folder, META)
    meta = read_meta(folder)
    if meta is None:
        raise ResultsError(f"{meta_path}: not found; expected a result folder written by inference.py (DIR/meta.json "
                           f"beside DIR/vertices/, or a sample's folder of its results tree)")
    try:
        n_frames, fps = int(meta["n_frames"]), float(meta["fps"])
    except (KeyError, TypeError, ValueError):
        raise ResultsError(f"{meta_path}: expected numbers 'n_frames' and 'fps'") from None
    if not fps > 0:
        raise ResultsError(f"{meta_path}: fps is {fps}; expected a positive frame rate")
    arrays = {name: _array(folder, name, n_frames) for name in ARRAYS}
    # a meta.json without flame_model predates the identity keys: its shape lives only in coeffs287's block
    recorded = bool(meta.get("flame_model"))
    dataset = meta.get("dataset") if meta.get("dataset") in cfg.DATA.datasets else None
    model = flame_path or meta.get("flame_model") or (flame_path_for(cfg, dataset) if config_flame else None)
    if not model:
        raise ResultsError(f"{meta_path} names no flame_model; pass the FLAME file the result was made with "
                           f"(--flame FILE), or the --config that made it")
    shape = meta.get("shape") if recorded else result_shape(arrays)
    try:
        shape = None if shape is None else np.asarray(shape, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ResultsError(f"{meta_path}: expected 'shape' a list of numbers or null") from None
    model = os.path.abspath(model)
    flame = load_flame(model)
    if shape is not None and shape.shape[0] > flame.n_shape:
        raise ResultsError(f"{meta_path}: its shape has {shape.shape[0]} coefficients; the FLAME model {model} "
                           f"has {flame.n_shape}")
    result = ExportResult(folder, vert_dir, meta, arrays["motion"], fps, meta.get("audio_path") or None, model,
                          flame, shape)
    if vertices:
        _read_vertices(result, n_frames)
    return result


def _array(folder: str, name: str, n_frames: int) -> np.ndarray:
    """The result's ``name``.npy, (n_frames, width) float32 as ``ARRAYS`` says."""
    path, width = os.path.join(folder, f"{name}.npy"), ARRAYS[name].width
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ResultsError(f"{path} not found; every result holds its (T,{width}) {name} beside meta.json") from None
    except (OSError, ValueError, EOFError) as e:
        raise ResultsError(f"{path}: unreadable ({e})") from None
    if a.shape != (n_frames, width) or n_frames == 0:
        raise ResultsError(f"{path}: holds an array of shape {a.shape}; expected ({n_frames},{width}) "
                           f"(meta.json's n_frames, at least 1)")
    if not np.isfinite(a).all():
        raise ResultsError(f"{path}: holds NaN/inf values")
    return a.astype(np.float32)


def _read_vertices(result: ExportResult, n_frames: int):
    vertices = load_frames(result.vert_dir)
    if len(vertices) != n_frames:
        raise ResultsError(f"{result.vert_dir}: {len(vertices)} frames but {result.out(META)} says {n_frames}: an "
                           f"incomplete result (rerun inference with --resume)")
    if vertices.shape[1] != result.flame.n_vertices:
        raise ExportError(f"{result.flame_path}: FLAME model of {result.flame.n_vertices} vertices, but the result "
                          f"{result.vert_dir} has {vertices.shape[1]}; expected the model the result was made with "
                          f"(--flame)")
    result.vertices = vertices
    result.identity = identity_at_rest(result.flame, vertices, result.motion, result.shape)


def identity_at_rest(flame, vertices: np.ndarray, motion: np.ndarray, shape: np.ndarray | None) -> np.ndarray:
    """(V,3) the result's face with zero motion: FLAME's face of ``shape`` at rest, corrected by the mean
    of (vertices - FLAME of the same motion) over a few frames. An old result's shape is coeffs287's
    100 dims only, so one made with more of them differs from FLAME(shape) by a constant, which the
    correction restores (expression offsets hardly depend on the identity)."""
    pick = np.unique(np.linspace(0, len(vertices) - 1, min(IDENTITY_FRAMES, len(vertices))).round().astype(int))
    rest = flame.motion_to_vertices(np.zeros((1, MOTION_DIM), np.float32), shape)[0]
    moved = flame.motion_to_vertices(motion[pick], shape)
    return (rest + (vertices[pick] - moved).mean(0)).astype(np.float32)
