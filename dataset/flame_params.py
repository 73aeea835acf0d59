"""FLAME parameter files -> the 51-dim motion, the identity shape and the detail code.

The motion vector (DESIGN.md 3) is ``[expr[:, :50], jaw[:, 0:1]]``:

- ``emoca`` files (old FLAME, DECA/EMOCA tracking): ``expcode`` (T,50), jaw = ``posecode[:, 3:4]``
  (posecode = global rotation (3) + jaw (3)), optional ``shapecode`` (T,100).
- ``vhap`` files (new FLAME, VHAP tracking): ``expr`` (T,100), jaw = ``jaw_pose[:, 0:1]``,
  ``shape`` (300,).

Every sequence is resampled from its native fps to the framing's fps by linear interpolation
(``resample_motion``, the one motion resampler). Errors a user can cause (missing or corrupt files,
wrong keys, NaN) raise ``DataError`` naming the data file.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from utils.errors import DataError
from utils.framing import DEFAULT_FPS, N_EXPR
from utils.safe_pickle import safe_pickle_load


# Key names of the two formats: (expression key, jaw key, column of the jaw opening, shape key).
FORMATS = {
    "emoca": {"expr": "expcode", "jaw": "posecode", "jaw_col": 3, "shape": "shapecode"},
    "vhap": {"expr": "expr", "jaw": "jaw_pose", "jaw_col": 0, "shape": "shape"},
}
DETAIL_KEY, DETAIL_DIM = "detailcode", 128  # EMOCA/DECA detail code, the last block of the 287 coefficients


# ----------------------------------------------------------------------------- FLAME parameter files

def _load_npy_dict(path: str) -> dict:
    """A ``.npy`` file saved from a dict (``np.save(p, {...})``), read without arbitrary pickling."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        if not dtype.hasobject:
            raise DataError(f"{path}: holds a plain {dtype} array; expected a dict of FLAME parameters "
                            f"(np.save(path, {{'expr': ..., 'jaw_pose': ...}}))")
        # the object payload goes through the restricted unpickler (DESIGN.md 4)
        obj = safe_pickle_load(f, source=path)
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}; expected a dict of FLAME parameters")
    return obj


def _numeric_arrays(d: dict) -> dict[str, np.ndarray]:
    """Keep the numeric entries as arrays (strings, None and nested objects are not parameters)."""
    out = {}
    for k, v in d.items():
        if hasattr(v, "detach"):  # a torch tensor in a pickle
            v = v.detach().cpu().numpy()
        a = np.asarray(v) if not isinstance(v, np.ndarray) else v
        if a.dtype.kind in "biuf":
            out[str(k)] = a
    return out


def _read_param_file(path: str) -> dict[str, np.ndarray]:
    """Raw arrays of one .npz / .npy / .pkl file; any reading failure becomes a DataError."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            out = {}
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    try:
                        out[k] = z[k]
                    except ValueError:
                        pass  # an object array (e.g. a pickled string list): not a parameter
            return _numeric_arrays(out)
        if ext == ".npy":
            return _numeric_arrays(_load_npy_dict(path))
        if ext == ".pkl":
            # The restricted unpickler (DESIGN.md 4); load_flame_pickle itself insists on FLAME
            # *model* keys, so the parameter file goes through safe_pickle_load.
            obj = safe_pickle_load(path)
            if not isinstance(obj, dict):
                raise DataError(f"{path}: holds a {type(obj).__name__}; expected a dict of FLAME parameters")
            return _numeric_arrays(obj)
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, OSError, UnpicklingError, EOFError, ValueError ...
        raise DataError(f"cannot read FLAME parameter file {path}: {type(e).__name__}: {e}") from None
    raise DataError(f"{path}: unsupported FLAME parameter file type '{ext}'; expected .npz, .npy or .pkl "
                    f"(or a folder of per-frame files)")


def _strip_leading(a: np.ndarray, min_ndim: int) -> np.ndarray:
    """Drop leading size-1 axes (a batch axis) while the array has more than ``min_ndim`` axes."""
    while a.ndim > min_ndim and a.shape[0] == 1:
        a = a[0]
    return a


def _natural_key(name: str):
    """Sort 'frame_2' before 'frame_10': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


PARAM_EXTS = (".npz", ".npy", ".pkl")


def load_flame_params(path: str) -> dict[str, np.ndarray]:
    """Read a FLAME parameter file into ``{key: array}`` with leading singleton axes removed.

    ``path`` is a ``.npz`` (VHAP's ``tracked_flame_params_<epoch>.npz``, EMOCA exports), a ``.npy``
    holding a dict (unpickled with a numpy-only allow-list), a ``.pkl`` holding a dict (the
    restricted unpickler of ``utils.safe_pickle``: numpy, chumpy, scipy.sparse only), or a folder of
    per-frame files of those types stacked in natural numeric order of their names (frame_2 before
    frame_10). Only numeric arrays are returned.

    Shape normalisation, done here once for every caller:
    - a file: leading size-1 axes are removed while the array has more than 2 axes, so a batch axis
      goes, ``expr (1,T,100) -> (T,100)``, while ``(1,100)`` (one frame) stays a sequence of one frame;
    - a folder: each frame's array loses all leading size-1 axes (``(1,100) -> (100,)``) and frames are
      stacked on a new first axis, ``-> (T,100)``; per-sequence keys such as ``shape`` become (T,300).
    """
    if os.path.isdir(path):
        names = sorted((n for n in os.listdir(path)
                        if n.lower().endswith(PARAM_EXTS) and not n.startswith(".")), key=_natural_key)
        if not names:
            raise DataError(f"{path}: folder holds no per-frame FLAME parameter files ({', '.join(PARAM_EXTS)})")
        frames = [_read_param_file(os.path.join(path, n)) for n in names]
        keys = set(frames[0])
        out = {}
        for k in sorted(keys):
            arrs = []
            for n, fr in zip(names, frames):
                if k not in fr:
                    raise DataError(f"{os.path.join(path, n)}: per-frame file lacks key '{k}' "
                                    f"that {names[0]} has")
                arrs.append(_strip_leading(fr[k], 1))
            if len({a.shape for a in arrs}) != 1:
                raise DataError(f"{path}: key '{k}' has different shapes across per-frame files "
                                f"({sorted({a.shape for a in arrs})})")
            out[k] = np.stack(arrs, axis=0)
        return out
    if not os.path.exists(path):
        raise DataError(f"FLAME parameter file not found: {path}")
    return {k: _strip_leading(v, 2) for k, v in _read_param_file(path).items()}


# ----------------------------------------------------------------------------- motion

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


def _motion_keys(params: dict, fmt: str, path: str) -> tuple[str, str, int]:
    """The expression key, jaw key and jaw column of ``fmt``; DataError when ``params`` lacks them."""
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown FLAME format '{fmt}'; expected one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    ek, jk = spec["expr"], spec["jaw"]
    if ek not in params:
        other = [f for f, s in FORMATS.items() if s["expr"] in params]
        if other:
            raise DataError(f"{path}: has key '{FORMATS[other[0]]['expr']}' ({other[0]} format) but the "
                            f"dataset's format is '{fmt}' (expects '{ek}'); set DATA.datasets.<name>.format")
        raise DataError(f"{path}: expected key expr (vhap) or expcode (emoca); found keys "
                        f"{sorted(params)}")
    if jk not in params:
        raise DataError(f"{path}: jaw key '{jk}' is missing ({fmt} format needs '{ek}' and '{jk}'); "
                        f"found keys {sorted(params)}")
    return ek, jk, spec["jaw_col"]


def _frames_to_use(expr: np.ndarray, jaw: np.ndarray, ek: str, jk: str, col: int, fmt: str,
                   valid_frames_num: int | None, path: str) -> int:
    """Native frames of the motion after checking the arrays' shapes and ``valid_frames_num``."""
    if expr.ndim != 2 or expr.shape[1] < N_EXPR:
        raise DataError(f"{path}: key '{ek}' has shape {expr.shape}; expected (T, >={N_EXPR}) "
                        f"(frames x expression coefficients, after removing a leading batch axis)")
    if jaw.ndim != 2 or jaw.shape[1] <= col:
        raise DataError(f"{path}: key '{jk}' has shape {jaw.shape}; expected (T, {col + 3}) "
                        f"({'global + jaw axis-angle' if fmt == 'emoca' else 'jaw axis-angle'})")
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

    emoca: ``[expcode[:, :50], posecode[:, 3:4]]``; vhap: ``[expr[:, :50], jaw_pose[:, 0:1]]``.
    ``valid_frames_num`` keeps only the first N native frames, before resampling from ``fps``.
    """
    return motion_from_params(load_flame_params(path), fmt, fps, target_fps, valid_frames_num, path)


def shape_from_params(params: dict, fmt: str | None = None, path: str = "") -> np.ndarray | None:
    """The identity shape vector (S,) float32 in ``params`` or None. Per-frame shapes are averaged."""
    keys = [FORMATS[fmt]["shape"]] if fmt in FORMATS else []
    keys += [s["shape"] for s in FORMATS.values() if s["shape"] not in keys]
    for k in keys:
        if k in params:
            a = np.asarray(params[k])
            if a.ndim == 2:
                a = a.mean(axis=0)  # (T,S) per-frame estimates of one identity (EMOCA shapecode)
            if a.ndim != 1:
                raise DataError(f"{path}: key '{k}' has shape {params[k].shape}; expected (S,) or (T,S)")
            if not np.isfinite(a).all():
                raise DataError(f"{path}: key '{k}' has NaN/inf values")
            return a.astype(np.float32)
    return None


def load_shape(path: str, fmt: str | None = None) -> np.ndarray | None:
    """Shape vector (S,) float32 of a FLAME parameter or template file, or None if it has none.

    vhap: ``shape`` (300,); emoca: ``shapecode`` (T,100) averaged over frames. A ``.npy`` / ``.txt``
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
            a = _strip_leading(np.asarray(a), 1)
            if a.ndim != 1:
                raise DataError(f"{path}: holds an array of shape {a.shape}; expected a shape vector (S,)")
            return a.astype(np.float32)
    return shape_from_params(load_flame_params(path), fmt, path)


def detail_from_params(params: dict, path: str = "") -> np.ndarray | None:
    """The EMOCA/DECA detail code (128,) float32 in ``params`` (key ``detailcode``), or None.

    A per-frame code (T,128) is averaged over frames: the 287-dim coefficients carry one detail
    code per sequence, like the shape."""
    if DETAIL_KEY not in params:
        return None
    a = np.asarray(params[DETAIL_KEY], dtype=np.float64)
    if a.ndim == 2:
        a = a.mean(axis=0)
    if a.ndim != 1 or a.shape[0] != DETAIL_DIM:
        raise DataError(f"{path}: key '{DETAIL_KEY}' has shape {params[DETAIL_KEY].shape}; expected "
                        f"({DETAIL_DIM},) or (T,{DETAIL_DIM})")
    if not np.isfinite(a).all():
        raise DataError(f"{path}: key '{DETAIL_KEY}' has NaN/inf values")
    return a.astype(np.float32)


def fit_shape(shape: np.ndarray | None, n: int) -> np.ndarray:
    """Shape vector cut or zero-padded to n dims (FLAME.n_shape); zeros when there is none -> (n,) float32."""
    out = np.zeros(int(n), np.float32)
    if shape is not None:
        k = min(len(out), shape.shape[0])
        out[:k] = shape[:k]
    return out
