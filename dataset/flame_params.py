"""FLAME parameter files -> the 51-dim motion, the identity shape and the detail code.

The motion vector is ``[expr[:, :50], jaw[:, 0:1]]``:

- ``emoca`` files (old FLAME, DECA/EMOCA tracking): ``expcode`` or ``exp`` (T,50), jaw =
  ``posecode[:, 3:4]`` or ``pose[:, 3:4]`` (global rotation (3) + jaw (3)) or ``jaw[:, 0:1]`` (the
  inferno pipeline's jaw (3) beside ``global_pose``), optional ``shapecode`` / ``shape`` (T,100) and
  ``detailcode`` / ``detail`` (T,128).
- ``vhap`` files (new FLAME, VHAP tracking): ``expr`` (T,100), jaw = ``jaw_pose[:, 0:1]``,
  ``shape`` (300,).

The file layouts (npz, HDF5, pickles, per-frame files or folders) and the axis normalisation are
dataset/flame_files.py's (``load_flame_params``); only the keys the motion, shape and detail need are
ever decoded.

Every sequence is resampled from its native fps to the framing's fps by linear interpolation
(``resample_motion``, the one motion resampler). Errors a user can cause (missing or corrupt files,
wrong keys, NaN) raise ``DataError`` naming the data file.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from dataset.flame_files import load_flame_params, strip_leading
from utils.errors import DataError
from utils.framing import DEFAULT_FPS, N_EXPR
from utils.trackers import FORMATS

_log = logging.getLogger(__name__)
_WARNED_SHAPES: set = set()

# EMOCA/DECA detail code, the last block of the 287 coefficients
DETAIL_KEYS, DETAIL_DIM = ("detailcode", "detail"), 128


def resampled_length(n_frames: int, fps: float, target_fps: float = DEFAULT_FPS) -> int:
    """Frames after resampling: round(T * target / fps), halves rounded up (same duration)."""
    return int(math.floor(n_frames * target_fps / fps + 0.5))


def resample_motion(x: np.ndarray, fps: float, target_fps: float = DEFAULT_FPS) -> np.ndarray:
    """Linear resampling on the time axis. x (T,D) -> (round(T*target/fps), D), same dtype.

    Input frame j sits at time j/fps, output frame k at k/target_fps; an output time past the last
    input frame holds the last value (as ``np.interp`` does).
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"resample_motion expects (T,D) with T >= 1, got {x.shape}")
    if fps <= 0 or target_fps <= 0:
        raise ValueError(f"fps must be positive, got {fps} -> {target_fps}")
    if fps == target_fps:
        return x.copy()
    t = x.shape[0]
    n_out = resampled_length(t, fps, target_fps)
    pos = np.arange(n_out, dtype=np.float64) * (fps / target_fps)  # output times in input frames
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, t - 1)
    i1 = np.minimum(i0 + 1, t - 1)
    w = np.clip(pos - i0, 0.0, 1.0)[:, None]
    out = (1.0 - w) * x[i0].astype(np.float64) + w * x[i1].astype(np.float64)
    return out.astype(x.dtype if x.dtype.kind == "f" else np.float32)


def _first_bad_frame(a: np.ndarray) -> int | None:
    bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _first_present(params, names):
    return next((k for k in names if k in params), None)


def _motion_keys(params, fmt: str, path: str) -> tuple[str, str, int]:
    """The expression key, jaw key and jaw column ``params`` holds in format ``fmt`` (the first of the
    names in ``FORMATS``); DataError naming what was expected when it lacks them."""
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown FLAME format '{fmt}'; expected one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    ek = _first_present(params, spec["expr"])
    expected = " or ".join(f"'{k}'" for k in spec["expr"])
    if ek is None:
        for other, s in FORMATS.items():
            k = _first_present(params, s["expr"])
            if other != fmt and k is not None:
                raise DataError(f"{path}: has key '{k}' ({other} format) but the dataset's format is '{fmt}' "
                                f"(expects {expected}); set DATA.datasets.<name>.format")
        raise DataError(f"{path}: expected key expr (vhap) or expcode (emoca) or exp (emoca: DECA code dict, "
                        f"EMOCA save_codes, inferno); found keys {sorted(params)}")
    jaw = _first_present(params, [k for k, _ in spec["jaw"]])
    if jaw is None:
        names = " or ".join(f"'{k}'" for k, _ in spec["jaw"])
        raise DataError(f"{path}: jaw key {names} is missing ({fmt} format needs '{ek}' and {names}); "
                        f"found keys {sorted(params)}")
    return ek, jaw, dict(spec["jaw"])[jaw]


def _frames_to_use(expr: np.ndarray, jaw: np.ndarray, ek: str, jk: str, col: int, fmt: str,
                   valid_frames_num: int | None, path: str) -> int:
    """Native frames of the motion after checking the arrays' shapes and ``valid_frames_num``."""
    if expr.ndim != 2 or expr.shape[1] < N_EXPR:
        raise DataError(f"{path}: key '{ek}' has shape {expr.shape}; expected (T, >={N_EXPR}) "
                        f"(frames x expression coefficients, after removing a leading batch axis)")
    if jaw.ndim != 2 or jaw.shape[1] != col + 3:
        raise DataError(f"{path}: key '{jk}' has shape {jaw.shape}; expected (T, {col + 3}) "
                        f"({'global + jaw axis-angle' if col else 'jaw axis-angle'})")
    if expr.shape[0] != jaw.shape[0]:
        raise DataError(f"{path}: '{ek}' has {expr.shape[0]} frames but '{jk}' has {jaw.shape[0]}")
    n = expr.shape[0]
    if valid_frames_num is not None:
        if int(valid_frames_num) < 1:
            raise DataError(f"{path}: valid_frames_num is {valid_frames_num}; expected a positive integer")
        if int(valid_frames_num) > n:
            # the index promises frames the file does not have: a wrong file or a stale index
            raise DataError(f"{path}: valid_frames_num is {valid_frames_num} but the file has only {n} frames "
                            f"(key '{ek}' shape {expr.shape}); expected valid_frames_num <= {n}")
        n = int(valid_frames_num)  # cut native frames before resampling
    if n < 2:
        raise DataError(f"{path}: has {n} frame(s) (key '{ek}' shape {expr.shape}"
                        f"{f', valid_frames_num {valid_frames_num}' if valid_frames_num else ''}); "
                        f"expected at least 2 frames")
    return n


def motion_from_params(params: dict, fmt: str, fps: float, target_fps: float = DEFAULT_FPS,
                       valid_frames_num: int | None = None, path: str = "") -> np.ndarray:
    """``load_motion`` on already loaded parameters. Returns (T,51) float32 at ``target_fps``."""
    ek, jk, col = _motion_keys(params, fmt, path)
    n = _frames_to_use(params[ek], params[jk], ek, jk, col, fmt, valid_frames_num, path)
    used = {ek: params[ek][:n, :N_EXPR], jk: params[jk][:n, col:col + 1]}
    for k, a in used.items():
        j = _first_bad_frame(a)
        if j is not None:
            raise DataError(f"{path}: key '{k}' has NaN/inf values, first at frame {j} (native frame "
                            f"index, {fps} fps)")
    motion = np.concatenate([used[ek], used[jk]], axis=1).astype(np.float64)
    return resample_motion(motion, fps, target_fps).astype(np.float32)


def load_motion(path: str, fmt: str, fps: float, target_fps: float = DEFAULT_FPS,
                valid_frames_num: int | None = None) -> np.ndarray:
    """FLAME parameter file -> (T,51) float32 motion at ``target_fps``.

    emoca: ``[expcode[:, :50], posecode[:, 3:4]]`` (or the other names in ``FORMATS``); vhap:
    ``[expr[:, :50], jaw_pose[:, 0:1]]``. ``valid_frames_num`` keeps only the first N native frames,
    before resampling from ``fps``.
    """
    with load_flame_params(path) as params:
        return motion_from_params(params, fmt, fps, target_fps, valid_frames_num, path)


def shape_from_params(params: dict, fmt: str | None = None, path: str = "") -> np.ndarray | None:
    """The identity shape vector (S,) float32 in ``params`` or None. Per-frame shapes are averaged.
    The names of ``fmt`` are tried first, then those of the other formats."""
    keys = list(FORMATS[fmt]["shape"]) if fmt in FORMATS else []
    keys += [k for s in FORMATS.values() for k in s["shape"] if k not in keys]
    for k in keys:
        if k in params:
            a = np.asarray(params[k])
            if a.ndim == 2:
                if fmt == "vhap" and a.shape[0] > 1 and path not in _WARNED_SHAPES:
                    _WARNED_SHAPES.add(path)  # once per file: raw loading reads it every epoch
                    _log.warning("%s: key '%s' has shape %s; VHAP writes one (S,) shape per sequence: its %d rows "
                                 "are averaged", path, k, a.shape, a.shape[0])
                a = a.mean(axis=0)  # (T,S) per-frame estimates of one identity (EMOCA, inferno)
            if a.ndim != 1:
                raise DataError(f"{path}: key '{k}' has shape {params[k].shape}; expected (S,) or (T,S)")
            if not np.isfinite(a).all():
                raise DataError(f"{path}: key '{k}' has NaN/inf values")
            return a.astype(np.float32)
    return None


def load_shape(path: str, fmt: str | None = None) -> np.ndarray | None:
    """Shape vector (S,) float32 of a FLAME parameter or template file, or None if it has none.

    vhap: ``shape`` (300,); emoca: ``shapecode`` / ``shape`` (T,S) averaged over frames. A ``.npy`` / ``.txt``
    holding a plain 1-D array (a per-subject template's shape) is returned as it is.
    """
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise DataError(f"shape/template file not found: {path}")
    if ext in (".txt", ".npy") and not os.path.isdir(path):
        try:
            a = np.loadtxt(path, dtype=np.float64) if ext == ".txt" else np.load(path, allow_pickle=False)
        except ValueError:
            a = None  # a .npy dict: read below with the restricted loader
        except Exception as e:
            raise DataError(f"cannot read shape/template file {path}: {type(e).__name__}: {e}") from None
        if a is not None:
            a = strip_leading(np.asarray(a), 1)
            if a.ndim != 1:
                raise DataError(f"{path}: holds an array of shape {a.shape}; expected a shape vector (S,)")
            return a.astype(np.float32)
    with load_flame_params(path) as params:
        return shape_from_params(params, fmt, path)


def detail_from_params(params: dict, path: str = "") -> np.ndarray | None:
    """The EMOCA/DECA detail code (128,) float32 in ``params`` (key ``detailcode`` or ``detail``), or None.

    A per-frame code (T,128) is averaged over frames: the 287-dim coefficients carry one detail
    code per sequence, like the shape."""
    key = _first_present(params, DETAIL_KEYS)
    if key is None:
        return None
    a = np.asarray(params[key], dtype=np.float64)
    if a.ndim == 2:
        a = a.mean(axis=0)
    if a.ndim != 1 or a.shape[0] != DETAIL_DIM:
        raise DataError(f"{path}: key '{key}' has shape {params[key].shape}; expected "
                        f"({DETAIL_DIM},) or (T,{DETAIL_DIM})")
    if not np.isfinite(a).all():
        raise DataError(f"{path}: key '{key}' has NaN/inf values")
    return a.astype(np.float32)


def fit_shape(shape: np.ndarray | None, n: int) -> np.ndarray:
    """Shape vector cut or zero-padded to n dims (FLAME.n_shape); zeros when there is none -> (n,) float32."""
    out = np.zeros(int(n), np.float32)
    if shape is not None:
        k = min(len(out), shape.shape[0])
        out[:k] = shape[:k]
    return out
