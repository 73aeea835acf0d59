"""FLAME parameter files -> the 51-dim motion, the identity shape and the detail code.

The motion vector is ``[expr[:, :50], jaw[:, 0:1]]``:

- ``emoca`` files (old FLAME, DECA/EMOCA tracking): ``expcode`` or ``exp`` (T,50), jaw =
  ``posecode[:, 3:4]`` or ``pose[:, 3:4]`` (global rotation (3) + jaw (3)) or ``jaw[:, 0:1]`` (the
  inferno pipeline's jaw (3) beside ``global_pose``), optional ``shapecode`` / ``shape`` (T,100) and
  ``detailcode`` / ``detail`` (T,128).
- ``vhap`` files (new FLAME, VHAP tracking): ``expr`` (T,100), jaw = ``jaw_pose[:, 0:1]``,
  ``shape`` (300,).

The file layouts (npz, HDF5, pickles, per-frame files or folders) and the axis normalisation are
``load_flame_params``'s; only the keys the motion, shape and detail need are ever decoded.

Every sequence is resampled from its native fps to the framing's fps by linear interpolation
(``resample_motion``, the one motion resampler). Errors a user can cause (missing or corrupt files,
wrong keys, NaN) raise ``DataError`` naming the data file.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import numpy as np

from utils.errors import DataError
from utils.framing import DEFAULT_FPS, N_EXPR
from utils.safe_pickle import safe_pickle_load


# The key names each tracker writes, in order of preference: expression, jaw as
# (key, column of the jaw opening) and identity shape. emoca covers DECA and EMOCA: their code dict in
# memory (``expcode``, ``posecode`` = global rotation 3 + jaw 3, ``shapecode``), EMOCA's save_codes
# files and DECA's dict without the ``code`` suffix (``exp``, ``pose``, ``shape``), and the inferno
# pipeline's ``jaw`` (3) beside a separate ``global_pose`` (not needed: the motion has the jaw only).
FORMATS = {
    "emoca": {"expr": ("expcode", "exp"), "jaw": (("posecode", 3), ("pose", 3), ("jaw", 0)),
              "shape": ("shapecode", "shape")},
    "vhap": {"expr": ("expr",), "jaw": (("jaw_pose", 0),), "shape": ("shape",)},
}
# EMOCA/DECA detail code, the last block of the 287 coefficients
DETAIL_KEYS, DETAIL_DIM = ("detailcode", "detail"), 128
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PARAM_EXTS = (".npz", ".npy", ".pkl")  # per-frame files of a folder
FILE_EXTS = PARAM_EXTS + (".hdf5", ".h5")


# ----------------------------------------------------------------------------- FLAME parameter files

class FlameParams(Mapping):
    """The parameter arrays of one FLAME file or folder, each key decoded when it is first read.

    Listing the keys and ``key in params`` decode nothing; ``params[key]`` decodes that key alone
    (once), so what a tracker stores beside the motion (VHAP's 48 MB ``tex_extra``, its vertex offsets)
    costs nothing. A pickle (``.pkl``, ``.npy`` holding a dict) cannot be read in parts: it is decoded
    when opened. ``decoded`` lists the keys read so far. The open file is released by ``close()``, at
    the end of a ``with`` block or when the object is garbage collected.
    """

    def __init__(self, path: str, names, read, close=None):
        self.path = path
        self._names = list(names)
        self._known = set(self._names)
        self._read = read
        self._close = close
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            if key not in self._known:
                raise KeyError(key)
            self._cache[key] = self._read(key)
        return self._cache[key]

    def __contains__(self, key) -> bool:
        return key in self._known

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def decoded(self) -> list[str]:
        return sorted(self._cache)

    def close(self):
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"FlameParams({self.path!r}, keys={self._names}, decoded={self.decoded})"


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
        # the object payload goes through the restricted unpickler (utils/safe_pickle.py)
        obj = safe_pickle_load(f, source=path)
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}; expected a dict of FLAME parameters")
    return obj


def _numeric(v, path: str, key: str) -> np.ndarray:
    """One parameter as a numeric array; DataError naming the file and key otherwise."""
    if hasattr(v, "detach"):  # a torch tensor in a pickle
        v = v.detach().cpu().numpy()
    try:
        a = v if isinstance(v, np.ndarray) else np.asarray(v)
    except ValueError:  # ragged nested lists
        a = np.asarray(v, dtype=object)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: key '{key}' holds {a.dtype} values; expected a numeric array")
    return a


def _strip_leading(a: np.ndarray, min_ndim: int) -> np.ndarray:
    """Drop leading size-1 axes (a batch axis) while the array has more than ``min_ndim`` axes."""
    while a.ndim > min_ndim and a.shape[0] == 1:
        a = a[0]
    return a


def _natural_key(name: str):
    """Sort 'frame_2' before 'frame_10': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_failure(path: str, e: Exception, key: str | None = None) -> DataError:
    what = f"key '{key}' of " if key else ""
    return DataError(f"cannot read {what}FLAME parameter file {path}: {type(e).__name__}: {e}")


def _open_npz(path: str) -> FlameParams:
    # np.load of an .npz reads the zip directory only; each member is decoded when indexed
    z = np.load(path, allow_pickle=False)

    def read(key):
        try:
            a = z[key]
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise DataError(f"{path}: key '{key}' holds pickled Python objects; expected a numeric "
                                f"array") from None
            raise _read_failure(path, e, key) from None
        except Exception as e:  # a corrupt member: zlib.error, BadZipFile, EOFError, OSError ...
            raise _read_failure(path, e, key) from None
        return _strip_leading(_numeric(a, path, key), 2)

    return FlameParams(path, z.files, read, z.close)


def _open_hdf5(path: str) -> FlameParams:
    """An HDF5 file read with h5py (data only: nothing in the file is executed). hickle, which the
    inferno pipeline uses to write ``shape_pose_cam.pkl``, stores a dict as the group ``data`` with
    one dataset per key named with quotes (``data/"exp"``); a plain h5py file has the datasets at
    its root."""
    try:
        import h5py
    except ImportError:
        raise DataError(f"{path}: is an HDF5 file (written by hickle or h5py); reading it needs h5py "
                        f"(pip install h5py, listed in requirements.txt)") from None
    f = h5py.File(path, "r")
    try:
        group = f["data"] if isinstance(f.get("data"), h5py.Group) else f
        names = {}
        for name, item in group.items():
            if isinstance(item, h5py.Dataset):
                names[name.strip("\"'")] = name
    except Exception:
        f.close()
        raise
    if not names:
        f.close()
        raise DataError(f"{path}: HDF5 file holds no arrays at its root or in group 'data'; expected a "
                        f"dict of FLAME parameters (as hickle.dump({{'exp': ..., 'jaw': ...}}) writes)")

    def read(key):
        try:
            a = group[names[key]][()]
        except Exception as e:
            raise _read_failure(path, e, key) from None
        return _strip_leading(_numeric(a, path, key), 2)

    return FlameParams(path, names, read, f.close)


def _open_dict(path: str, obj) -> FlameParams:
    """A dict decoded from a pickle: every value is already in memory."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}; expected a dict of FLAME parameters")
    by_name = {str(k): v for k, v in obj.items()}
    return FlameParams(path, by_name, lambda key: _strip_leading(_numeric(by_name[key], path, key), 2))


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(HDF5_MAGIC)) == HDF5_MAGIC


def _open_file(path: str) -> FlameParams:
    """One .npz / .npy / .pkl / .hdf5 file; any failure to open it becomes a DataError."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_EXTS:
        raise DataError(f"{path}: unsupported FLAME parameter file type '{ext}'; expected "
                        f"{', '.join(FILE_EXTS)} or a folder of per-frame files or folders")
    try:
        # HDF5 by its content: inferno names its hickle files .pkl; never unpickle those
        if _is_hdf5(path):
            return _open_hdf5(path)
        if ext == ".npz":
            return _open_npz(path)
        if ext == ".npy":
            return _open_dict(path, _load_npy_dict(path))
        if ext == ".pkl":
            # The restricted unpickler (utils/safe_pickle.py); load_flame_pickle itself insists on FLAME
            # *model* keys, so the parameter file goes through safe_pickle_load.
            return _open_dict(path, safe_pickle_load(path))
        raise DataError(f"{path}: not an HDF5 file (its first bytes are not the HDF5 signature)")
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, OSError, UnpicklingError, EOFError, ValueError ...
        raise _read_failure(path, e) from None


def _stack_frames(path: str, key: str, frame_paths: list[str], read_one) -> np.ndarray:
    """One key of every frame, each without leading size-1 axes, stacked on a new first axis."""
    arrs = [_strip_leading(read_one(p), 1) for p in frame_paths]
    shapes = sorted({a.shape for a in arrs})
    if len(shapes) != 1:
        first = next(p for p, a in zip(frame_paths, arrs) if a.shape != arrs[0].shape)
        raise DataError(f"{path}: key '{key}' has different shapes across frames ({shapes}; "
                        f"{frame_paths[0]} has {arrs[0].shape}, {first} does not)")
    return np.stack(arrs, axis=0)


def _open_frame_files(path: str, names: list[str]) -> FlameParams:
    """A folder of per-frame parameter files (each a dict of that frame's arrays)."""
    files = [os.path.join(path, n) for n in names]
    with _open_file(files[0]) as first:
        keys = list(first)

    def read_one(key):
        def one(p):
            with _open_file(p) as fr:
                if key not in fr:
                    raise DataError(f"{p}: per-frame file lacks key '{key}' that {names[0]} has")
                return fr[key]
        return one

    return FlameParams(path, keys, lambda key: _stack_frames(path, key, files, read_one(key)))


def _open_frame_folders(path: str, subdirs: list[str]) -> FlameParams:
    """A folder of per-frame folders, each holding one plain array per key (``<key>.npy``), as EMOCA's
    save_codes writes them: ``<frame>/{shape,exp,tex,pose,detail}.npy``."""
    folders = [os.path.join(path, d) for d in subdirs]
    keys = sorted(n[:-4] for n in os.listdir(folders[0])
                  if n.lower().endswith(".npy") and not n.startswith("."))
    if not keys:
        raise DataError(f"{folders[0]}: per-frame folder holds no .npy arrays; expected EMOCA save_codes "
                        f"files (exp.npy, pose.npy, shape.npy, detail.npy)")

    def one(key):
        def read(folder):
            p = os.path.join(folder, f"{key}.npy")
            if not os.path.isfile(p):
                raise DataError(f"{p}: not found; every per-frame folder needs {key}.npy "
                                f"({os.path.join(folders[0], key + '.npy')} exists)")
            try:
                a = np.load(p, allow_pickle=False)
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise DataError(f"{p}: holds pickled Python objects; expected a plain array "
                                    f"(key '{key}')") from None
                raise _read_failure(p, e, key) from None
            except Exception as e:
                raise _read_failure(p, e, key) from None
            return _numeric(a, p, key)
        return read

    return FlameParams(path, keys, lambda key: _stack_frames(path, key, folders, one(key)))


def load_flame_params(path: str) -> FlameParams:
    """Open a FLAME parameter file or folder: ``{key: array}``, each key decoded when first read.

    ``path`` is
    - a ``.npz`` (VHAP's ``tracked_flame_params_<epoch>.npz``, EMOCA exports): only the keys read are
      decoded;
    - an HDF5 file, recognised by its signature whatever its name (the inferno pipeline's
      ``shape_pose_cam.pkl``, written by hickle; ``.hdf5`` / ``.h5``), read with h5py;
    - a ``.npy`` holding a dict (unpickled with a numpy-only allow-list) or a ``.pkl`` holding a dict
      (the restricted unpickler of ``utils.safe_pickle``: numpy, chumpy, scipy.sparse only);
    - a folder of per-frame files of those types, stacked in natural numeric order of their names
      (frame_2 before frame_10);
    - a folder of per-frame folders each holding ``<key>.npy`` plain arrays (EMOCA's save_codes:
      ``<frame>/{shape,exp,tex,pose,detail}.npy``), in natural order of the folder names.

    Shape normalisation, done here once for every caller:
    - a file: leading size-1 axes are removed while the array has more than 2 axes, so a batch axis
      goes, ``expr (1,T,100) -> (T,100)``, while ``(1,100)`` (one frame) stays a sequence of one frame;
    - a folder: each frame's array loses all leading size-1 axes (``(1,100) -> (100,)``) and frames are
      stacked on a new first axis, ``-> (T,100)``; per-sequence keys such as ``shape`` become (T,300).
    Reading a key that is not numeric (VHAP's ``timestep_id`` strings) raises DataError.
    """
    if os.path.isdir(path):
        entries = sorted((n for n in os.listdir(path) if not n.startswith(".")), key=_natural_key)
        files = [n for n in entries if n.lower().endswith(PARAM_EXTS) and os.path.isfile(os.path.join(path, n))]
        if files:
            return _open_frame_files(path, files)
        subdirs = [n for n in entries if os.path.isdir(os.path.join(path, n))]
        if subdirs:
            return _open_frame_folders(path, subdirs)
        raise DataError(f"{path}: folder holds no per-frame FLAME parameter files ({', '.join(PARAM_EXTS)}) "
                        f"and no per-frame folders (<frame>/exp.npy, ...)")
    if not os.path.exists(path):
        raise DataError(f"FLAME parameter file not found: {path}")
    return _open_file(path)


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
            a = _strip_leading(np.asarray(a), 1)
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
