"""FLAME face regions as vertex ids: the ``FLAME_masks.pkl`` regions and the config's overrides
(``FLAME.lip_indices`` / ``FLAME.upper_face_indices`` files), for the lip and upper-face metrics."""
from __future__ import annotations

import os

import numpy as np

from utils.safe_pickle import FlameLoadError, safe_pickle_load


def load_region_masks(path: str) -> dict:
    """FLAME_masks.pkl (or .npz) -> {region name: int64 vertex ids}. Real keys include 'lips',
    'forehead', 'eye_region', 'face', 'nose', 'scalp', ..."""
    path = str(path)
    if not os.path.isfile(path):
        raise FlameLoadError(f"FLAME masks file not found: {path} (FLAME.masks_path). It ships with FLAME as "
                             f"FLAME_masks.pkl; the demo writes standin_FLAME_masks.pkl.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            masks = {k: z[k] for k in z.files}
    else:
        masks = safe_pickle_load(path)
    if not isinstance(masks, dict):
        raise FlameLoadError(f"{path}: expected a dict of region name -> vertex ids, got {type(masks).__name__}")
    out = {}
    for k, v in masks.items():
        a = np.asarray(v)
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise FlameLoadError(f"{path}: region '{k}' should be a 1-D integer array of vertex ids, got {a.dtype} {a.shape}")
        out[str(k)] = a.astype(np.int64)
    return out


def _load_index_file(path: str, key: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FlameLoadError(f"{key}: index file not found: {path}")
    try:
        if path.endswith(".npy"):
            a = np.load(path, allow_pickle=False)
        else:
            with open(path) as f:
                a = np.array(f.read().replace(",", " ").split(), dtype=np.float64)
    except Exception as e:
        raise FlameLoadError(f"{key}: {path} is not a .npy or text list of vertex ids ({e})") from None
    a = np.asarray(a).reshape(-1)
    if a.size == 0 or (a.dtype.kind == "f" and not np.all(a == np.round(a))) or a.min() < 0:
        raise FlameLoadError(f"{key}: {path} must hold non-negative integer vertex ids")
    return a.astype(np.int64)


def region_indices(masks_path: str | None, lip_indices: str | None = None,
                   upper_face_indices: str | None = None) -> tuple:
    """-> (lip vertex ids, upper-face vertex ids), int64 arrays, from resolved file paths (a config's:
    utils/config.py ``flame_region_paths``).

    Lips: the ``lip_indices`` file if given, else mask 'lips'. Upper face: ``upper_face_indices`` if
    given, else the union of masks 'forehead' and 'eye_region' of ``masks_path``.
    """
    masks = None

    def mask(name):
        nonlocal masks
        if masks is None:
            masks = load_region_masks(masks_path)
        if name not in masks:
            raise FlameLoadError(f"{masks_path} (FLAME.masks_path): no region '{name}'; "
                                 f"found {', '.join(sorted(masks))}")
        return masks[name]

    lips = _load_index_file(lip_indices, "FLAME.lip_indices") if lip_indices else mask("lips")
    upper = (_load_index_file(upper_face_indices, "FLAME.upper_face_indices") if upper_face_indices
             else np.union1d(mask("forehead"), mask("eye_region")))
    return np.unique(lips), np.unique(upper)


def lip_split(mean_frame: np.ndarray, lip_idx) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) lip vertex ids: the lips of the central half of the mouth's width, above and below
    the midpoint of the lips' height, on a (V,3) frame (y up)."""
    lip_idx = np.asarray(lip_idx, dtype=np.int64)
    x, y = mean_frame[lip_idx, 0], mean_frame[lip_idx, 1]
    cx, half = 0.5 * (x.max() + x.min()), 0.5 * (x.max() - x.min())
    cy = 0.5 * (y.max() + y.min())
    central = np.abs(x - cx) <= 0.5 * half
    upper, lower = lip_idx[central & (y > cy)], lip_idx[central & (y < cy)]
    if len(upper) == 0 or len(lower) == 0:
        raise ValueError("the lip vertices do not lie above and below a mouth centre")
    return upper, lower
