"""FLAME parameter files and folders -> ``FlameParams``, a mapping whose keys are decoded when first read.

The layouts: ``.npz``, HDF5 (recognised by its signature whatever its name), ``.npy`` / ``.pkl``
holding a dict (through the restricted unpickler of utils/safe_pickle.py), a folder of per-frame
files of those types, a folder of per-frame folders of ``<key>.npy`` (EMOCA's save_codes). Leading
size-1 axes are normalised here once for every caller (``load_flame_params``). What the keys mean
(motion, shape, detail code) is dataset/flame_params.py's. Errors a user can cause (missing or
corrupt files, non-numeric keys) raise ``DataError`` naming the data file.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from utils.errors import DataError
from utils.safe_pickle import safe_pickle_load

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PARAM_EXTS = (".npz", ".npy", ".pkl")  # per-frame files of a folder
FILE_EXTS = PARAM_EXTS + (".hdf5", ".h5")


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


def strip_leading(a: np.ndarray, min_ndim: int) -> np.ndarray:
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
        return strip_leading(_numeric(a, path, key), 2)

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
        return strip_leading(_numeric(a, path, key), 2)

    return FlameParams(path, names, read, f.close)


def _open_dict(path: str, obj) -> FlameParams:
    """A dict decoded from a pickle: every value is already in memory."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}; expected a dict of FLAME parameters")
    by_name = {str(k): v for k, v in obj.items()}
    return FlameParams(path, by_name, lambda key: strip_leading(_numeric(by_name[key], path, key), 2))


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
    arrs = [strip_leading(read_one(p), 1) for p in frame_paths]
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
