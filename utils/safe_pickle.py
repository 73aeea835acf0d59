"""Restricted unpickling of FLAME-era pickles (FLAME 2020 / 2023 models, ``FLAME_masks.pkl``, parameter
files): an allow-list of numpy / scipy.sparse / chumpy names, chumpy ``Ch`` objects and sparse matrices
become numpy arrays, so neither chumpy nor trust in the file is needed. Anything outside the
allow-list raises ``UnsafePickleError`` instead of running.

Lives in utils/ because both the FLAME loader (models/) and the parameter-file reader (dataset/) use it.
"""
from __future__ import annotations

import contextlib
import os
import pickle

import numpy as np

from utils.errors import UserError


class FlameLoadError(UserError, ValueError):
    """A FLAME / mask / parameter pickle that cannot be used; the message names the file and the key."""


class UnsafePickleError(FlameLoadError):
    """A pickle that refers to a class or function outside the allow-list (it is never called)."""


class _ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling. chumpy's ``Ch.__getstate__`` stores the
    object's ``__dict__``; a plain ``Ch`` keeps its value in key ``'x'``. (Unpickling creates it with
    ``__new__`` only, so the defaults are class attributes.)"""

    _state: dict = {}
    _chumpy_class = "chumpy"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state if isinstance(state, dict) else {"x": state}

    def to_numpy(self, where: str) -> np.ndarray:
        x = self._state.get("x")
        if x is None:
            raise FlameLoadError(
                f"{where} is a chumpy expression ({self._chumpy_class}) without a stored value ('x'); "
                f"it cannot be evaluated without chumpy. Convert the model to .npz on a machine with chumpy: "
                f"np.savez(out, **{{k: np.asarray(v) for k, v in model.items()}})")
        return np.asarray(to_plain(x, where))


class _SparseStandIn:
    """Takes the place of scipy.sparse csc/csr/coo classes (old and new module paths); turned into a
    dense array from its pickled attributes, so scipy's private pickle layout never has to match."""

    fmt = "csc"
    _state: dict = {}

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state if isinstance(state, dict) else {}

    def to_numpy(self, where: str) -> np.ndarray:
        # dense in numpy (entries at the same place summed, as todense does): importing scipy.sparse
        # would slow every inference start-up (docs/BENCHMARKS.md, "Start-up")
        s = self._state
        try:
            data = np.asarray(to_plain(s["data"], where))
            shape = s.get("_shape", s.get("shape"))
            if self.fmt == "coo":
                if "coords" in s:
                    row, col = (np.asarray(c) for c in s["coords"])
                else:
                    row, col = np.asarray(s["row"]), np.asarray(s["col"])
                if shape is None:
                    shape = (int(row.max()) + 1 if len(row) else 0, int(col.max()) + 1 if len(col) else 0)
            else:
                indices, indptr = np.asarray(s["indices"]), np.asarray(s["indptr"])
                if shape is None:  # very old pickles: infer from the index arrays
                    n_major, n_minor = len(indptr) - 1, int(indices.max()) + 1 if len(indices) else 0
                    shape = (n_minor, n_major) if self.fmt == "csc" else (n_major, n_minor)
                major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
                if len(indptr) - 1 != shape[1 if self.fmt == "csc" else 0] or len(major) != len(indices):
                    raise ValueError(f"index pointer of length {len(indptr)} does not fit shape {tuple(shape)} "
                                     f"and {len(indices)} indices")
                row, col = (indices, major) if self.fmt == "csc" else (major, indices)
            shape = tuple(int(d) for d in shape)
            if len(shape) != 2 or len(row) != len(data) or len(col) != len(data) or \
                    (len(data) and (row.min() < 0 or col.min() < 0)):
                raise ValueError(f"{len(data)} values, {len(row)} row and {len(col)} column indices for shape {shape}")
            out = np.zeros(shape, dtype=data.dtype)
            np.add.at(out, (row, col), data)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise FlameLoadError(f"{where}: a pickled scipy.sparse {self.fmt} matrix could not be rebuilt ({e})") from None
        return out


def _sparse_class(fmt: str):
    return type(f"_Sparse_{fmt}", (_SparseStandIn,), {"fmt": fmt})


_SPARSE = {fmt: _sparse_class(fmt) for fmt in ("csc", "csr", "coo")}


def _numpy_allowed() -> dict:
    """(module, name) -> object for numpy's pickle helpers, under their numpy 1.x and 2.x paths."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        for sub in ("multiarray", "_multiarray_umath"):
            allowed[(f"{core}.{sub}", "_reconstruct")] = reconstruct
            allowed[(f"{core}.{sub}", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _build_allow_list() -> dict:
    import builtins
    import codecs
    import collections
    import copyreg

    allowed = _numpy_allowed()
    for bmod in ("builtins", "__builtin__"):  # Python 2 pickles name the builtins module __builtin__
        for name in ("set", "frozenset", "slice", "complex", "object", "list", "dict", "tuple", "bytearray"):
            allowed[(bmod, name)] = getattr(builtins, name)
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    # copyreg._reconstructor only calls base.__new__/__init__ of classes that themselves passed this
    # list; _codecs.encode turns a latin-1 str back into bytes (Python 3 protocol-2 pickles of bytes).
    for cmod in ("copyreg", "copy_reg"):
        allowed[(cmod, "_reconstructor")] = copyreg._reconstructor
    allowed[("_codecs", "encode")] = codecs.encode
    for fmt in ("csc", "csr", "coo"):
        for mod in ("scipy.sparse", f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            for kind in ("matrix", "array"):
                allowed[(mod, f"{fmt}_{kind}")] = _SPARSE[fmt]
    return allowed


_ALLOWED = _build_allow_list()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            # every chumpy class becomes the stand-in; remember which one for error messages
            return type(name, (_ChumpyStandIn,), {"_chumpy_class": f"{module}.{name}"})
        raise UnsafePickleError(
            f"{self._source}: refusing to unpickle '{module}.{name}': only numpy arrays, scipy.sparse "
            f"matrices and chumpy arrays are allowed in FLAME files (a pickle can run arbitrary code).")


def to_plain(obj, where: str):
    """Recursively replace chumpy / sparse stand-ins by numpy arrays."""
    if isinstance(obj, (_ChumpyStandIn, _SparseStandIn)):
        return obj.to_numpy(where)
    if isinstance(obj, dict):
        return {k: to_plain(v, f"{where}['{k}']") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v, where) for v in obj)
    return obj


def safe_pickle_load(path_or_file, source: str | None = None, convert: bool = True):
    """Unpickle with the allow-list above (encoding='latin1' for Python-2 pickles).

    chumpy objects and scipy.sparse matrices come back as numpy arrays (``convert=False`` leaves the
    stand-in objects for the caller to convert). Anything else named in the pickle raises
    ``UnsafePickleError`` before it can be called. Usable for any small parameter pkl.
    """
    source = source or (path_or_file if isinstance(path_or_file, str) else "<pickle>")
    opener = open(path_or_file, "rb") if isinstance(path_or_file, (str, os.PathLike)) else contextlib.nullcontext(path_or_file)
    with opener as f:
        try:
            obj = _RestrictedUnpickler(f, str(source)).load()
        except FlameLoadError:
            raise
        except Exception as e:  # truncated / corrupt file, wrong format
            raise FlameLoadError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
    return to_plain(obj, str(source)) if convert else obj
