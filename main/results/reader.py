"""Reading results: the frame files of a result folder, its meta.json, the result folders under a root,
and a folder's frame rate (main/render.py, main/evaluate.py, main/lipsync.py; the layout is main/results/layout.py).
Every missing, torn or wrong-shaped file is a ResultsError naming it."""
from __future__ import annotations

import json
import os
import re

import numpy as np

from utils.atomic import TMP_PREFIX
from utils.errors import ResultsError
from utils.framing import DEFAULT_FPS, output_fps

FRAME_FILE = re.compile(r"^(\d+)\.npy$")
META = "meta.json"


def frame_files(folder: str) -> list[str]:
    """The ``{i}.npy`` files of a folder ordered by i; i must run 0..N-1 without gaps."""
    ids = sorted(int(m.group(1)) for m in map(FRAME_FILE.match, os.listdir(folder)) if m)
    if ids and ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))[:5]
        raise ResultsError(f"{folder}: frame files must be 0.npy..{len(ids) - 1}.npy without gaps; "
                           f"missing e.g. {missing}")
    return [os.path.join(folder, f"{i}.npy") for i in ids]


def _load_npy(path: str) -> np.ndarray:
    """np.load naming the file when it is missing, empty or torn."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ResultsError(f"frame file not found: {path}") from None
    except (OSError, ValueError, EOFError) as e:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise ResultsError(f"{path}: unreadable frame file ({size} bytes; {str(e) or type(e).__name__}): torn by "
                           f"an interrupted run? regenerate it (inference --resume)") from None


def load_frames(path: str) -> np.ndarray:
    """A leaf folder of ``{i}.npy`` (V,3) files, or one .npy (T,V,3) -> (T,V,3) float32. A missing, torn or
    wrong-shaped file -> ResultsError naming it."""
    if os.path.isfile(path):
        arr = _load_npy(path)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ResultsError(f"{path}: expected a (T,V,3) array, got {arr.shape}")
        return arr.astype(np.float32)
    if not os.path.isdir(path):
        raise ResultsError(f"results not found: {path}")
    files = frame_files(path)
    if not files:
        raise ResultsError(f"{path}: no frame files 0.npy, 1.npy, ... found")
    out = None
    for i, f in enumerate(files):
        a = _load_npy(f)
        if out is None:
            if a.ndim != 2 or a.shape[1] != 3:
                raise ResultsError(f"{f}: expected (V,3) vertices, got {a.shape}")
            out = np.empty((len(files), *a.shape), np.float32)
        elif a.shape != out.shape[1:]:
            raise ResultsError(f"{f}: expected {out.shape[1:]} vertices like 0.npy, got {a.shape}")
        out[i] = a
    return out


def find_leaves(root: str) -> list[str]:
    """Folders under (and including) ``root`` that hold ``{i}.npy`` frame files, sorted; temporary
    ``.tmp-*`` folders of a running or crashed inference are not results."""
    leaves = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
        if any(FRAME_FILE.match(f) for f in files):
            leaves.append(folder)
    return sorted(leaves)


def read_meta(folder: str | None) -> dict | None:
    """``folder/meta.json`` as a dict, None when absent; an unreadable one -> ResultsError naming it."""
    path = os.path.join(folder, META) if folder else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    return meta


def is_inside(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def leaf_meta(leaf: str, cfg) -> dict | None:
    """meta.json of a leaf: from the parallel coeff tree when the leaf is under INFER.output_root, else
    next to the leaf folder (single-audio inference writes DIR/vertices/ and DIR/meta.json)."""
    if cfg is not None and is_inside(leaf, cfg.INFER.output_root):
        rel = os.path.relpath(os.path.abspath(leaf), os.path.abspath(cfg.INFER.output_root))
        return read_meta(os.path.join(cfg.INFER.coeff_root, rel))
    if os.path.isdir(leaf):
        return read_meta(os.path.dirname(os.path.abspath(leaf)))
    return None


def leaf_fps(meta: dict | None, dataset: str | None, cfg, override: float | None) -> tuple[float, str]:
    """Frame rate of a leaf and where it came from: --fps, meta.json, the config, or 25."""
    if override:
        return float(override), "--fps"
    if meta and meta.get("fps"):
        return float(meta["fps"]), "meta.json"
    if cfg is not None and cfg.INFER.output_fps != "native":
        return output_fps(cfg, None), "INFER.output_fps"
    if cfg is not None and dataset in cfg.DATA.datasets:
        return output_fps(cfg, cfg.DATA.datasets[dataset].fps), f"DATA.datasets.{dataset}.fps"
    return float(DEFAULT_FPS), "default"


def default_out_path(results_dir: str, prefix: str = "metrics") -> str:
    """``{prefix}_{name}.json`` beside the results folder (outside it: vertex folders hold only frames)."""
    results_dir = os.path.abspath(results_dir)
    return os.path.join(os.path.dirname(results_dir), f"{prefix}_{os.path.basename(results_dir)}.json")
