"""A user's own identity for inference (``--identity FILE``): the FLAME shape of any file the dataset layer
reads (a VHAP npz, EMOCA/DECA codes, inferno's HDF5, a per-frame folder, a plain ``.npy`` of shape
coefficients), and the FLAME model it was tracked with.

The model: a file holding a tracker's keys (utils/trackers.py ``FORMATS``) was tracked with the FLAME
model of the config's datasets of that format (their ``flame_model``: VHAP -> FLAME 2023, EMOCA ->
FLAME 2020 in config/faceformer.yaml); a plain shape array, or a format no dataset uses, takes
``FLAME.model_path``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dataset.flame_files import load_flame_params
from dataset.flame_params import load_shape
from utils.config import flame_path_for
from utils.errors import DataError
from utils.trackers import FORMATS


@dataclass(frozen=True)
class Identity:
    """file: absolute path; shape (S,) float32; fmt: the tracker format whose keys the file holds, None
    for a plain shape array."""
    file: str
    shape: np.ndarray
    fmt: str | None


def _tracker_format(path: str) -> str | None:
    """The format whose expression keys the file holds; None for a plain array (no keys at all)."""
    try:
        with load_flame_params(path) as params:
            return next((fmt for fmt, names in FORMATS.items() if any(k in params for k in names["expr"])), None)
    except DataError:
        return None


def read_identity(path: str) -> Identity:
    """``--identity FILE`` -> Identity; a missing file, one without a shape or with NaN -> DataError naming it."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(path):
        raise DataError(f"identity file not found: {path}")
    shape = load_shape(path)
    if shape is None:
        names = sorted({k for row in FORMATS.values() for k in row["shape"]})
        raise DataError(f"{path}: holds no identity shape; expected a key {' / '.join(names)} or a plain (S,) array")
    if shape.shape[0] == 0 or not np.isfinite(shape).all():
        raise DataError(f"{path}: the identity shape must be a non-empty vector of finite numbers")
    return Identity(path, shape, _tracker_format(path))


def identity_flame_path(cfg, identity: Identity) -> str:
    """The FLAME model file the identity was tracked with (module docstring), resolved."""
    for name, ds in cfg.DATA.datasets.items():
        if identity.fmt is not None and ds.get("format") == identity.fmt and ds.get("flame_model"):
            return flame_path_for(cfg, name)
    return flame_path_for(cfg)


def fit_identity(identity: Identity, n_shape: int, model: str) -> np.ndarray:
    """The shape zero-padded to the model's ``n_shape`` components -> (n_shape,) float32; a longer one
    (tracked with another model) -> DataError."""
    n = identity.shape.shape[0]
    if n > n_shape:
        raise DataError(f"{identity.file}: its shape has {n} coefficients; expected at most {n_shape}, the shape "
                        f"components of the FLAME model {model}")
    out = np.zeros(n_shape, np.float32)
    out[:n] = identity.shape
    return out
